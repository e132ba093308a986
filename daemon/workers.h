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
    /* The copy jobs' operands, borrowed until the job is reaped. Either side may be memory a
     * client shares (its arena): the copy jobs run under the SIGBUS guard, so a page the client
     * made vanish fails that job with KVT_E_FAULT in res instead of killing the daemon. */
    void *dst;
    const void *src;
    uint64_t len;
    /* Checksum of what a copy job stored (common/checksum.h), for a Put to verify against the
     * client's: set want_sum (or use kvt_job_copy_sum) and sum_off, the payload offset of src[0]
     * (a multiple of KVT_CHECKSUM_BLOCK_BYTES, so a striped copy's parts are summed by the
     * threads that copy them and added up). sum is written only when res is 0. */
    uint64_t sum_off;
    uint64_t sum;
    uint8_t want_sum;
    int res;     /* 0, or the job's error (KVT_E_FAULT for the copy jobs) */
    void *owner; /* for job functions that need more than these fields: the request it serves */
};

struct kvt_workers;

/* Starts n threads (n >= 1), after kvt_memguard_init so the copy jobs are guarded. */
int kvt_workers_create(uint32_t n, struct kvt_workers **out);
/* Stops the threads after the queued jobs ran; finished jobs stay on the done list for a last
 * kvt_workers_reap. Idempotent. */
void kvt_workers_stop(struct kvt_workers *w);
/* Whether kvt_workers_stop ran: a job submitted now would never run (the owner thread only). */
int kvt_workers_stopped(const struct kvt_workers *w);
/* Stops the threads and frees the pool. NULL-safe. */
void kvt_workers_destroy(struct kvt_workers *w);
/* eventfd that becomes readable when jobs are done. */
int kvt_workers_fd(const struct kvt_workers *w);
/* Queues a job; never fails (jobs are owned by the caller and bounded in number). */
void kvt_workers_submit(struct kvt_workers *w, struct kvt_job *job);
/* Takes every finished job, oldest first, as a list linked through ->next. */
struct kvt_job *kvt_workers_reap(struct kvt_workers *w);

/* The copy jobs. Each copies len bytes from src to dst under the SIGBUS guard (the process must
 * have called kvt_memguard_init; kvt_workers_create does) and sets res to 0 or KVT_E_FAULT.
 * With want_sum set, each also computes sum over dst as kvt_job_copy_sum does. */

/* The plain copy: memcpy(dst, src, len). */
void kvt_job_copy(struct kvt_job *job);
/* The same with streaming stores, for copies into cold memory (a new chunk in the CPU tier).
 * With want_sum it runs kvt_job_copy_sum instead: hashing each block while it is still in cache
 * matches streaming and hashing the bytes back from memory on 1 and 4 MiB copies and beats it
 * on 64 KiB ones (KVT_COPY_BENCH=1 tests/unit/test_copy prints the figures). */
void kvt_job_copy_stream(struct kvt_job *job);
/* The copy with ordinary stores, fused with the checksum of dst (want_sum is implied). */
void kvt_job_copy_sum(struct kvt_job *job);

#endif
