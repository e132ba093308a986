/*
 * Compute thread pool. A job is published by bumping an atomic generation counter; workers spin on
 * it for a short while and then wait on a condition variable. The sleeper count lets the publisher
 * skip the mutex and the wake-up syscall while every worker is still spinning.
 */
#include "engine/pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define POOL_MAX_THREADS 64
#define POOL_SPIN_NS 200000L /* 200 us of spinning before a worker sleeps */

struct kvt_eng_pool {
    unsigned n;
    pthread_t threads[POOL_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;
    atomic_uint done;
    atomic_uint sleepers;
    atomic_int stop;
    kvt_eng_pool_fn fn;
    void *arg;
    unsigned started;
};

struct worker_arg {
    struct kvt_eng_pool *p;
    unsigned ith;
};

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static unsigned wait_gen(struct kvt_eng_pool *p, unsigned seen)
{
    long deadline = now_ns() + POOL_SPIN_NS;
    for (unsigned spins = 0;; spins++) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop))
            return g;
        cpu_relax();
        if ((spins & 1023) == 1023 && now_ns() > deadline)
            break;
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    unsigned g;
    while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *v)
{
    struct worker_arg *wa = v;
    struct kvt_eng_pool *p = wa->p;
    unsigned ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        seen = wait_gen(p, seen);
        if (atomic_load(&p->stop))
            break;
        p->fn(p->arg, ith, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
    return NULL;
}

int kvt_eng_pool_create(unsigned n_threads, struct kvt_eng_pool **out)
{
    if (n_threads == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = c > 0 ? (unsigned)c : 1;
    }
    if (n_threads > POOL_MAX_THREADS)
        n_threads = POOL_MAX_THREADS;
    struct kvt_eng_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (unsigned i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        int rc = ENOMEM;
        if (wa) {
            wa->p = p;
            wa->ith = i;
            rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
        }
        if (rc) {
            free(wa);
            p->n = i; /* the threads started so far are joined by destroy */
            kvt_eng_pool_destroy(p);
            return -rc;
        }
        p->started = i;
    }
    *out = p;
    return 0;
}

void kvt_eng_pool_destroy(struct kvt_eng_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 1; i <= p->started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

unsigned kvt_eng_pool_size(const struct kvt_eng_pool *p)
{
    return p->n;
}

void kvt_eng_pool_run(struct kvt_eng_pool *p, kvt_eng_pool_fn fn, void *arg)
{
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->done, 0);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    for (unsigned spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) != p->n - 1;
         spins++) {
        cpu_relax();
        if ((spins & 4095) == 4095)
            sched_yield();
    }
}

void kvt_eng_pool_range(unsigned long n, unsigned ith, unsigned nth, unsigned long *begin,
                        unsigned long *end)
{
    *begin = n * ith / nth;
    *end = n * (ith + 1) / nth;
}
