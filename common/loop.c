/*
 * Event loop implementation: epoll for fds, a binary min-heap of caller-owned timers (fixed
 * capacity), a singly linked list of before-sleep hooks.
 *
 * A watcher removed while this iteration's events are being delivered must not be called: each
 * event carries the watcher pointer, so unwatch marks the pending copies dead by scanning the
 * current event batch (at most EVENTS_MAX entries).
 */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/loop.h"
#include "kvtier/errors.h"

#define EVENTS_MAX 64

struct kvt_loop {
    int epfd;
    kvt_clock_fn clock;
    void *clock_arg;
    struct kvt_timer **heap;
    struct kvt_timer **due; /* the timers one fire_timers pass took off the heap */
    uint32_t n_timers, timers_max;
    struct kvt_hook *hooks, *hooks_tail;
    int hooks_pending; /* a hook left work: do not sleep */
    struct epoll_event ev[EVENTS_MAX];
    int n_ev, i_ev; /* the batch being delivered */
};

static uint64_t monotonic_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int kvt_loop_create(const struct kvt_loop_config *cfg, struct kvt_loop **out)
{
    struct kvt_loop *l = kvt_calloc(KVT_ALLOC_MISC, 1, sizeof(*l));
    if (!l)
        return KVT_E_NOMEM;
    l->timers_max = cfg && cfg->timers_max ? cfg->timers_max : 64;
    l->clock = cfg && cfg->clock ? cfg->clock : monotonic_ms;
    l->clock_arg = cfg ? cfg->clock_arg : NULL;
    l->heap = kvt_calloc(KVT_ALLOC_MISC, l->timers_max, sizeof(*l->heap));
    l->due = kvt_calloc(KVT_ALLOC_MISC, l->timers_max, sizeof(*l->due));
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!l->heap || !l->due || l->epfd < 0) {
        int rc = l->heap && l->due ? -errno : KVT_E_NOMEM;
        kvt_loop_destroy(l);
        return rc;
    }
    *out = l;
    return 0;
}

void kvt_loop_destroy(struct kvt_loop *l)
{
    if (!l)
        return;
    if (l->epfd >= 0)
        close(l->epfd);
    kvt_free(KVT_ALLOC_MISC, l->heap);
    kvt_free(KVT_ALLOC_MISC, l->due);
    kvt_free(KVT_ALLOC_MISC, l);
}

uint64_t kvt_loop_now_ms(const struct kvt_loop *l)
{
    return l->clock(l->clock_arg);
}

/* ---- fd watchers -------------------------------------------------------------------------- */

int kvt_loop_watch(struct kvt_loop *l, struct kvt_watch *w, int fd, uint32_t events,
                   kvt_watch_fn fn, void *arg)
{
    w->fd = fd;
    w->events = events;
    w->fn = fn;
    w->arg = arg;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

int kvt_loop_rearm(struct kvt_loop *l, struct kvt_watch *w, uint32_t events)
{
    if (events == w->events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev))
        return -errno;
    w->events = events;
    return 0;
}

void kvt_loop_unwatch(struct kvt_loop *l, struct kvt_watch *w)
{
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    for (int i = l->i_ev; i < l->n_ev; i++)
        if (l->ev[i].data.ptr == w)
            l->ev[i].data.ptr = NULL;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void heap_set(struct kvt_loop *l, uint32_t i, struct kvt_timer *t)
{
    l->heap[i] = t;
    t->slot = i + 1;
}

static void heap_up(struct kvt_loop *l, uint32_t i)
{
    struct kvt_timer *t = l->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (l->heap[parent]->due_ms <= t->due_ms)
            break;
        heap_set(l, i, l->heap[parent]);
        i = parent;
    }
    heap_set(l, i, t);
}

static void heap_down(struct kvt_loop *l, uint32_t i)
{
    struct kvt_timer *t = l->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= l->n_timers)
            break;
        if (c + 1 < l->n_timers && l->heap[c + 1]->due_ms < l->heap[c]->due_ms)
            c++;
        if (l->heap[c]->due_ms >= t->due_ms)
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

void kvt_loop_timer_stop(struct kvt_loop *l, struct kvt_timer *t)
{
    if (t->slot == UINT32_MAX) {
        t->slot = 0; /* due in the pass being fired: not any more */
        return;
    }
    if (!t->slot)
        return;
    uint32_t i = t->slot - 1;
    t->slot = 0;
    struct kvt_timer *last = l->heap[--l->n_timers];
    if (i == l->n_timers)
        return;
    heap_set(l, i, last);
    heap_up(l, i);
    heap_down(l, last->slot - 1);
}

int kvt_loop_timer_start(struct kvt_loop *l, struct kvt_timer *t, uint64_t delay_ms,
                         kvt_timer_fn fn, void *arg)
{
    kvt_loop_timer_stop(l, t);
    if (l->n_timers == l->timers_max)
        return KVT_E_FULL;
    t->due_ms = kvt_loop_now_ms(l) + delay_ms;
    t->fn = fn;
    t->arg = arg;
    heap_set(l, l->n_timers, t);
    heap_up(l, l->n_timers++);
    return 0;
}

/* Fires the timers due now. They are all taken off the heap first, so a timer that a callback
 * re-arms (even for now) fires in the next iteration, never twice in this one; a callback that
 * stops a timer still waiting in this pass's list keeps it from firing. */
static void fire_timers(struct kvt_loop *l)
{
    uint64_t now = kvt_loop_now_ms(l);
    uint32_t n = 0;
    while (l->n_timers && l->heap[0]->due_ms <= now) {
        struct kvt_timer *t = l->heap[0];
        kvt_loop_timer_stop(l, t);
        t->slot = UINT32_MAX; /* taken for this pass: kvt_loop_timer_stop clears it */
        l->due[n++] = t;
    }
    for (uint32_t i = 0; i < n; i++) {
        struct kvt_timer *t = l->due[i];
        if (t->slot != UINT32_MAX)
            continue; /* stopped or re-armed by an earlier callback of this pass */
        t->slot = 0;
        t->fn(t->arg);
    }
}

/* ---- hooks and the iteration -------------------------------------------------------------- */

void kvt_loop_before_sleep(struct kvt_loop *l, struct kvt_hook *h, kvt_hook_fn fn, void *arg)
{
    h->fn = fn;
    h->arg = arg;
    h->next = NULL;
    if (l->hooks_tail)
        l->hooks_tail->next = h;
    else
        l->hooks = h;
    l->hooks_tail = h;
}

void kvt_loop_remove_hook(struct kvt_loop *l, struct kvt_hook *h)
{
    struct kvt_hook *prev = NULL;
    for (struct kvt_hook *x = l->hooks; x; prev = x, x = x->next) {
        if (x != h)
            continue;
        if (prev)
            prev->next = x->next;
        else
            l->hooks = x->next;
        if (l->hooks_tail == x)
            l->hooks_tail = prev;
        x->next = NULL;
        return;
    }
}

int kvt_loop_run_once(struct kvt_loop *l, int timeout_ms)
{
    if (l->hooks_pending)
        timeout_ms = 0;
    if (l->n_timers && timeout_ms != 0) {
        uint64_t now = kvt_loop_now_ms(l), due = l->heap[0]->due_ms;
        uint64_t wait = due > now ? due - now : 0;
        if (timeout_ms < 0 || wait < (uint64_t)timeout_ms)
            timeout_ms = (int)wait;
    }
    int n = epoll_wait(l->epfd, l->ev, EVENTS_MAX, timeout_ms);
    if (n < 0 && errno != EINTR)
        return -errno;
    l->n_ev = n > 0 ? n : 0;
    for (l->i_ev = 0; l->i_ev < l->n_ev; l->i_ev++) {
        struct kvt_watch *w = l->ev[l->i_ev].data.ptr;
        if (w)
            w->fn(w->arg, l->ev[l->i_ev].events);
    }
    l->n_ev = l->i_ev = 0;
    fire_timers(l);
    int pending = 0;
    for (struct kvt_hook *h = l->hooks; h; h = h->next)
        pending |= h->fn(h->arg) != 0;
    l->hooks_pending = pending;
    return n > 0 ? n : 0;
}
