/*
 * Worker pool: one mutex and condition variable guard the pending FIFO; a second mutex guards the
 * done FIFO. Jobs are big (hundreds of microseconds of copying), so one lock per handoff costs
 * nothing measurable. The copy jobs run under the SIGBUS guard (common/memguard.h): their operands
 * include client arenas, whose pages a client can make vanish.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/memguard.h"
#include "daemon/workers.h"
#include "kernels/copy.h"
#include "kvtier/errors.h"

#define WORKERS_MAX 64

struct fifo {
    struct kvt_job *head, *tail;
};

struct kvt_workers {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct fifo pending;
    int stopping;
    pthread_mutex_t done_mu;
    struct fifo done;
    int efd;
    uint32_t n;
    pthread_t th[WORKERS_MAX];
};

static void fifo_push(struct fifo *f, struct kvt_job *j)
{
    j->next = NULL;
    if (f->tail)
        f->tail->next = j;
    else
        f->head = j;
    f->tail = j;
}

void kvt_job_copy_sum(struct kvt_job *job)
{
    job->res = kvt_copy_guarded_sum(job->dst, job->src, job->len, job->sum_off, &job->sum);
}

void kvt_job_copy(struct kvt_job *job)
{
    if (job->want_sum)
        kvt_job_copy_sum(job);
    else
        job->res = kvt_copy_guarded(job->dst, job->src, job->len, 0);
}

void kvt_job_copy_stream(struct kvt_job *job)
{
    if (job->want_sum)
        kvt_job_copy_sum(job);
    else
        job->res = kvt_copy_guarded(job->dst, job->src, job->len, 1);
}

static void *worker_main(void *arg)
{
    struct kvt_workers *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->pending.head && !w->stopping)
            pthread_cond_wait(&w->cv, &w->mu);
        struct kvt_job *j = w->pending.head;
        if (!j) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        w->pending.head = j->next;
        if (!w->pending.head)
            w->pending.tail = NULL;
        pthread_mutex_unlock(&w->mu);

        j->fn(j);

        pthread_mutex_lock(&w->done_mu);
        fifo_push(&w->done, j);
        pthread_mutex_unlock(&w->done_mu);
        uint64_t one = 1;
        ssize_t r = write(w->efd, &one, sizeof(one));
        (void)r; /* eventfd only fails on counter overflow, which 2^64 jobs cannot reach */
    }
}

int kvt_workers_create(uint32_t n, struct kvt_workers **out)
{
    if (n == 0 || n > WORKERS_MAX)
        return KVT_E_INVAL;
    int rc = kvt_memguard_init();
    if (rc)
        return rc;
    struct kvt_workers *w = kvt_calloc(KVT_ALLOC_MISC, 1, sizeof(*w));
    if (!w)
        return KVT_E_NOMEM;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) {
        rc = -errno;
        goto err_free;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->done_mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    for (w->n = 0; w->n < n; w->n++) {
        rc = -pthread_create(&w->th[w->n], NULL, worker_main, w);
        if (rc)
            goto err_stop;
    }
    *out = w;
    return 0;

err_stop:
    kvt_workers_destroy(w);
    return rc;
err_free:
    kvt_free(KVT_ALLOC_MISC, w);
    return rc;
}

void kvt_workers_stop(struct kvt_workers *w)
{
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (uint32_t i = 0; i < w->n; i++)
        pthread_join(w->th[i], NULL);
    w->n = 0;
}

int kvt_workers_stopped(const struct kvt_workers *w)
{
    /* Set by the owner thread itself (kvt_workers_stop), which is the only reader. */
    return w->n == 0;
}

void kvt_workers_destroy(struct kvt_workers *w)
{
    if (!w)
        return;
    kvt_workers_stop(w);
    close(w->efd);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->done_mu);
    kvt_free(KVT_ALLOC_MISC, w);
}

int kvt_workers_fd(const struct kvt_workers *w)
{
    return w->efd;
}

void kvt_workers_submit(struct kvt_workers *w, struct kvt_job *job)
{
    pthread_mutex_lock(&w->mu);
    fifo_push(&w->pending, job);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

struct kvt_job *kvt_workers_reap(struct kvt_workers *w)
{
    uint64_t v;
    ssize_t r = read(w->efd, &v, sizeof(v));
    (void)r; /* EAGAIN just means the jobs were reaped by an earlier call */
    pthread_mutex_lock(&w->done_mu);
    struct kvt_job *list = w->done.head;
    w->done.head = w->done.tail = NULL;
    pthread_mutex_unlock(&w->done_mu);
    return list;
}
