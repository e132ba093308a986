/*
 * Copy/compute worker pool. The event loop hands jobs (preallocated by the caller, linked
 * intrusively, so the queue is bounded by the number of jobs that exist) to a fixed set of threads;
 * finished jobs come back on a done list and an eventfd wakes the loop, which reaps them and runs
 * the follow-up on its own thread. Workers never touch the index or sockets.
 */
#ifndef KVT_DAEMON_WORKERS_H
#define KVT_DAEMON_WORKERS_H

#include <stdint.h>

struct kvt_job;
typedef void (*kvt_job_fn)(struct kvt_job *job);

struct kvt_job {
    struct kvt_job *next;
    kvt_job_fn fn;   /* runs on a worker thread */
    kvt_job_fn done; /* runs on the loop thread once the job is reaped */
    void *ctx;       /* for done: the owner (the server) */
    void *dst;
    const void *src;
    uint64_t len;
    int res;
};

struct kvt_workers;

/* Starts n threads (n >= 1). */
int kvt_workers_create(uint32_t n, struct kvt_workers **out);
/* Stops the threads after the queued jobs ran; finished jobs stay on the done list for a last
 * kvt_workers_reap. Idempotent. */
void kvt_workers_stop(struct kvt_workers *w);
/* Stops the threads and frees the pool. NULL-safe. */
void kvt_workers_destroy(struct kvt_workers *w);
/* eventfd that becomes readable when jobs are done. */
int kvt_workers_fd(const struct kvt_workers *w);
/* Queues a job; never fails (jobs are owned by the caller and bounded in number). */
void kvt_workers_submit(struct kvt_workers *w, struct kvt_job *job);
/* Takes every finished job, oldest first, as a list linked through ->next. */
struct kvt_job *kvt_workers_reap(struct kvt_workers *w);

/* The plain copy job: memcpy(dst, src, len). */
void kvt_job_copy(struct kvt_job *job);
/* The same with streaming stores, for copies into cold memory (a new chunk in the CPU tier). */
void kvt_job_copy_stream(struct kvt_job *job);

#endif
