/*
 * SIGBUS guard for copies from and into memory that a client shares with the daemon. A client
 * can make its own shared pages vanish under us (truncate its memfd, punch a hole in a hugetlb
 * memfd and exhaust the free huge pages), and the next access to them raises SIGBUS. A copy run
 * under the guard turns that into KVT_E_FAULT for the one request instead of killing the daemon.
 *
 * How: one process-wide SIGBUS handler (kvt_memguard_init) and one thread-local pointer to the
 * thread's armed guard. The guarded code calls sigsetjmp on the guard's jump buffer, arms the
 * guard with the ranges it is about to touch, runs the copy and disarms. When a SIGBUS arrives,
 * the handler recovers only if the faulting thread has an armed guard, the fault is a real memory
 * fault (not a SIGBUS sent with kill) and its address lies in one of the armed ranges: it then
 * disarms the guard, unblocks SIGBUS and siglongjmps back into the guarded function, which
 * returns KVT_E_FAULT. Any other SIGBUS goes to the handler installed before ours, or kills the
 * process with a core exactly as if no handler were installed.
 *
 * Only memory shared by clients (their arenas and the daemon's side of the same bytes) is ever
 * copied under the guard. The guard is not a way to survive the daemon's own bugs: a fault
 * outside the armed ranges, or outside an armed window, is not recovered. The guarded code must
 * hold no lock and allocate nothing between arming and disarming, since a fault abandons it
 * mid-way (a copy kernel qualifies: it only loads and stores).
 *
 * Use (kernels/copy.c has the real ones):
 *     struct kvt_memguard g;
 *     if (sigsetjmp(g.env, 0))
 *         return KVT_E_FAULT;          // the handler already disarmed g
 *     kvt_memguard_arm(&g, dst, n, src, n);
 *     memcpy(dst, src, n);
 *     kvt_memguard_disarm(&g);
 */
#ifndef KVT_COMMON_MEMGUARD_H
#define KVT_COMMON_MEMGUARD_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

struct kvt_memguard {
    sigjmp_buf env;         /* filled by the caller's sigsetjmp(env, 0) */
    uintptr_t lo[2], hi[2]; /* the armed ranges [lo, hi); empty when lo == hi */
};

/* Installs the process-wide SIGBUS handler, chaining to the one in place. Idempotent and
 * thread-safe: a call that finds ours in place does nothing, one that finds it replaced installs
 * it again. 0 or -errno (from sigaction). Until it has run, a guarded copy still works but a
 * fault kills the process as before. Costs a system call: call it at start, not per copy. */
int kvt_memguard_init(void);

/* Arms g for this thread over [a, a + an) and [b, b + bn) (either may be empty). The guard must
 * be a local of the function that called sigsetjmp(g->env, 0) and that is still running; guards
 * do not nest (asserted). */
void kvt_memguard_arm(struct kvt_memguard *g, const void *a, size_t an, const void *b, size_t bn);

/* Disarms this thread's guard; a SIGBUS after it is fatal again. */
void kvt_memguard_disarm(struct kvt_memguard *g);

/* How many faults guards have recovered since start (for stats). */
uint64_t kvt_memguard_faults(void);

#endif
