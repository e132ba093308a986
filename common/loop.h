/*
 * The event loop: fd watchers with callbacks, timers and before-sleep hooks over epoll, on one
 * thread. Every source of work in the daemon (the listening socket, connections, the signalfd,
 * the workers' and the disk tier's eventfds, later leases, retries and a metrics listener)
 * registers here instead of being a case in a switch of the server's.
 *
 * Ownership: watchers, timers and hooks are caller-owned structs (embedded in the object they
 * serve) that stay valid while registered; the loop allocates only at create (the timer heap,
 * sized by timers_max). Callbacks run on the loop's thread and may add, modify or remove any
 * watcher, timer or hook, including their own. Time comes from an injectable clock, so tests
 * drive timers without sleeping.
 */
#ifndef KVT_COMMON_LOOP_H
#define KVT_COMMON_LOOP_H

#include <stdint.h>

struct kvt_loop;

/* Milliseconds on a monotonic clock. */
typedef uint64_t (*kvt_clock_fn)(void *arg);

struct kvt_loop_config {
    uint32_t timers_max; /* most timers armed at once; 0 means 64 */
    kvt_clock_fn clock;  /* NULL: CLOCK_MONOTONIC */
    void *clock_arg;
};

/* An fd watcher. events are EPOLLIN/EPOLLOUT/EPOLLRDHUP...; fn gets what epoll reported. */
typedef void (*kvt_watch_fn)(void *arg, uint32_t events);
struct kvt_watch {
    int fd;
    uint32_t events; /* armed now */
    kvt_watch_fn fn;
    void *arg;
};

/* A one-shot timer; re-arm it from its callback for a periodic one. */
typedef void (*kvt_timer_fn)(void *arg);
struct kvt_timer {
    uint64_t due_ms;
    kvt_timer_fn fn;
    void *arg;
    uint32_t slot; /* position in the heap + 1; 0 when not armed (UINT32_MAX: firing now) */
};

/* Runs once per iteration after the events and timers, before the loop may sleep. Returns
 * nonzero when it left work for the next iteration: the loop then does not sleep. */
typedef int (*kvt_hook_fn)(void *arg);
struct kvt_hook {
    kvt_hook_fn fn;
    void *arg;
    struct kvt_hook *next;
};

int kvt_loop_create(const struct kvt_loop_config *cfg, struct kvt_loop **out);
/* NULL-safe. Registered watchers are not closed: their fds belong to their owners. */
void kvt_loop_destroy(struct kvt_loop *l);

/* Watches fd for events. 0 or -errno (from epoll_ctl); on error nothing is registered. */
int kvt_loop_watch(struct kvt_loop *l, struct kvt_watch *w, int fd, uint32_t events,
                   kvt_watch_fn fn, void *arg);
/* Changes what w waits for; a no-op when unchanged. 0 or -errno. */
int kvt_loop_rearm(struct kvt_loop *l, struct kvt_watch *w, uint32_t events);
/* Stops watching (before the owner closes the fd). Events already collected for w in this
 * iteration are not delivered. */
void kvt_loop_unwatch(struct kvt_loop *l, struct kvt_watch *w);

/* Arms t to fire delay_ms from now (re-arming moves it). KVT_E_FULL past timers_max. */
int kvt_loop_timer_start(struct kvt_loop *l, struct kvt_timer *t, uint64_t delay_ms,
                         kvt_timer_fn fn, void *arg);
/* Disarms t; a no-op when not armed. */
void kvt_loop_timer_stop(struct kvt_loop *l, struct kvt_timer *t);
static inline int kvt_loop_timer_armed(const struct kvt_timer *t)
{
    return t->slot != 0;
}

/* Adds a before-sleep hook (run in the order added). */
void kvt_loop_before_sleep(struct kvt_loop *l, struct kvt_hook *h, kvt_hook_fn fn, void *arg);

/* Removes a hook added with kvt_loop_before_sleep (a no-op when it is not there). Not from inside
 * a hook. */
void kvt_loop_remove_hook(struct kvt_loop *l, struct kvt_hook *h);

/* One iteration: waits for events up to timeout_ms (-1: no limit), but no longer than the
 * nearest timer, and not at all when a hook left work; handles the events, fires the timers due
 * and runs the hooks. Returns the number of fd events handled, or -errno from epoll_wait. */
int kvt_loop_run_once(struct kvt_loop *l, int timeout_ms);

/* The loop's clock. */
uint64_t kvt_loop_now_ms(const struct kvt_loop *l);

#endif
