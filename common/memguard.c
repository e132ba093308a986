/*
 * SIGBUS guard: see memguard.h. The handler touches only the faulting thread's guard, a lock-free
 * counter and async-signal-safe calls (sigprocmask, sigaction, raise, siglongjmp out of a
 * synchronous fault). The thread-local pointer uses the initial-exec TLS model so that reading it
 * from the handler never enters the dynamic linker, even in libkvtier.so.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "common/memguard.h"

static __thread struct kvt_memguard *volatile tl_guard __attribute__((tls_model("initial-exec")));

static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction prev_act; /* written under init_mu, while our handler is not in place */
static atomic_uint_fast64_t faults;

static int in_range(const struct kvt_memguard *g, uintptr_t a)
{
    for (int i = 0; i < 2; i++)
        if (a >= g->lo[i] && a < g->hi[i])
            return 1;
    return 0;
}

/* What SIGBUS did before kvt_memguard_init: the previous handler, or the default action. */
static void not_ours(int sig, siginfo_t *si, void *uctx)
{
    if (prev_act.sa_flags & SA_SIGINFO) {
        if (prev_act.sa_sigaction) {
            prev_act.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (prev_act.sa_handler == SIG_IGN) {
        /* Only a sent SIGBUS can be ignored; the kernel forces a fault's SIGBUS through, with
         * the default action, so restoring it below reproduces what would have happened. */
        if (si->si_code <= 0)
            return;
    } else if (prev_act.sa_handler != SIG_DFL) {
        prev_act.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
    /* A fault re-executes the faulting access on return and dies of it with a core that shows
     * where; a sent signal has nothing to re-execute, so it is sent again (delivered as soon as
     * this handler returns and SIGBUS is unblocked). */
    if (si->si_code <= 0)
        raise(SIGBUS);
}

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
    struct kvt_memguard *g = tl_guard;
    /* si_code > 0: raised by the kernel for a memory access, not sent by a process. */
    if (g && si->si_code > 0 && in_range(g, (uintptr_t)si->si_addr)) {
        /* Disarm first: whatever happens after the jump, this guard is never armed again
         * without a new sigsetjmp. */
        tl_guard = NULL;
        atomic_fetch_add_explicit(&faults, 1, memory_order_relaxed);
        /* The jump leaves the handler without sigreturn, so SIGBUS would stay blocked and the
         * next fault on this thread would kill the process; sigsetjmp(env, 0) saved no mask to
         * restore (saving one would cost a system call on every copy). */
        sigset_t bus;
        sigemptyset(&bus);
        sigaddset(&bus, SIGBUS);
        sigprocmask(SIG_UNBLOCK, &bus, NULL);
        siglongjmp(g->env, 1);
    }
    not_ours(sig, si, uctx);
}

int kvt_memguard_init(void)
{
    int rc = 0;
    pthread_mutex_lock(&init_mu);
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur)) {
        rc = -errno;
    } else if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != on_sigbus) {
        /* Not installed, or replaced since (a test harness restores its own handlers between
         * tests): install, chaining to what is there now. prev_act is complete before the
         * handler can read it, and our handler is not in place while it is written. */
        struct sigaction act;
        memset(&act, 0, sizeof(act));
        act.sa_sigaction = on_sigbus;
        act.sa_flags = SA_SIGINFO;
        sigemptyset(&act.sa_mask);
        prev_act = cur;
        if (sigaction(SIGBUS, &act, NULL))
            rc = -errno;
    }
    pthread_mutex_unlock(&init_mu);
    return rc;
}

void kvt_memguard_arm(struct kvt_memguard *g, const void *a, size_t an, const void *b, size_t bn)
{
    assert(tl_guard == NULL); /* guards do not nest */
    g->lo[0] = (uintptr_t)a;
    g->hi[0] = (uintptr_t)a + an;
    g->lo[1] = (uintptr_t)b;
    g->hi[1] = (uintptr_t)b + bn;
    /* The ranges are complete before the handler can see the guard, and the guarded accesses
     * cannot be moved above this point by the compiler. */
    atomic_signal_fence(memory_order_seq_cst);
    tl_guard = g;
    atomic_signal_fence(memory_order_seq_cst);
}

void kvt_memguard_disarm(struct kvt_memguard *g)
{
    assert(tl_guard == g);
    (void)g;
    atomic_signal_fence(memory_order_seq_cst);
    tl_guard = NULL;
    atomic_signal_fence(memory_order_seq_cst);
}

uint64_t kvt_memguard_faults(void)
{
    return atomic_load_explicit(&faults, memory_order_relaxed);
}
