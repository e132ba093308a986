/*
 * A fixed pool of compute threads for the engine's parallel loops. The caller of kvt_eng_pool_run
 * is thread 0 and works too; the others spin briefly between jobs (a forward pass issues a few
 * hundred short jobs per token) and then sleep on a condition variable, so an idle engine — or one
 * waiting on the kvtier daemon — does not hold the cores.
 */
#ifndef KVT_ENGINE_POOL_H
#define KVT_ENGINE_POOL_H

struct kvt_eng_pool;

typedef void (*kvt_eng_pool_fn)(void *arg, unsigned ith, unsigned nth);

/* n_threads counts the caller; 0 means one per online CPU. 0, -ENOMEM or -errno. */
int kvt_eng_pool_create(unsigned n_threads, struct kvt_eng_pool **out);
void kvt_eng_pool_destroy(struct kvt_eng_pool *p);
unsigned kvt_eng_pool_size(const struct kvt_eng_pool *p);

/* Runs fn(arg, ith, nth) for ith in [0, nth) on all threads and returns when every call has
 * returned. Not reentrant: one run at a time, from one thread. */
void kvt_eng_pool_run(struct kvt_eng_pool *p, kvt_eng_pool_fn fn, void *arg);

/* Splits [0, n) evenly: the half-open range of part ith of nth. */
void kvt_eng_pool_range(unsigned long n, unsigned ith, unsigned nth, unsigned long *begin,
                        unsigned long *end);

#endif
