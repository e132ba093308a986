/*
 * The event loop (common/loop.h): fd watchers, timers under an injected clock, before-sleep hooks,
 * and the corner cases callbacks create (a watcher removed while its event is pending, a timer
 * re-armed from its own callback).
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/loop.h"
#include "kvtier/errors.h"

static uint64_t fake_now;

static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static struct kvt_loop *fake_loop(uint32_t timers_max)
{
    struct kvt_loop_config cfg = {.timers_max = timers_max, .clock = fake_clock};
    struct kvt_loop *l;
    assert_int_equal(kvt_loop_create(&cfg, &l), 0);
    return l;
}

static int order[16], n_order;

static void record(void *arg)
{
    order[n_order++] = (int)(intptr_t)arg;
}

static void test_timers_fire_in_order(void **state)
{
    (void)state;
    fake_now = 1000;
    n_order = 0;
    struct kvt_loop *l = fake_loop(8);
    struct kvt_timer t[5] = {{0}};
    uint64_t delays[5] = {50, 10, 30, 10, 70};
    for (int i = 0; i < 5; i++)
        assert_int_equal(kvt_loop_timer_start(l, &t[i], delays[i], record, (void *)(intptr_t)i), 0);
    kvt_loop_timer_stop(l, &t[2]); /* never fires */
    assert_false(kvt_loop_timer_armed(&t[2]));
    kvt_loop_run_once(l, 0);
    assert_int_equal(n_order, 0); /* nothing due yet */
    fake_now += 10;
    kvt_loop_run_once(l, 0);
    assert_int_equal(n_order, 2);
    assert_true((order[0] == 1 && order[1] == 3) || (order[0] == 3 && order[1] == 1));
    fake_now += 100;
    kvt_loop_run_once(l, 0);
    assert_int_equal(n_order, 4);
    assert_int_equal(order[2], 0);
    assert_int_equal(order[3], 4);
    kvt_loop_destroy(l);
}

static void test_timer_limit_and_rearm(void **state)
{
    (void)state;
    fake_now = 0;
    n_order = 0;
    struct kvt_loop *l = fake_loop(2);
    struct kvt_timer a = {0}, b = {0}, c = {0};
    assert_int_equal(kvt_loop_timer_start(l, &a, 5, record, (void *)1), 0);
    assert_int_equal(kvt_loop_timer_start(l, &b, 5, record, (void *)2), 0);
    assert_int_equal(kvt_loop_timer_start(l, &c, 5, record, (void *)3), KVT_E_FULL);
    /* Re-arming an armed timer moves it instead of taking a second place. */
    assert_int_equal(kvt_loop_timer_start(l, &a, 20, record, (void *)1), 0);
    fake_now = 5;
    kvt_loop_run_once(l, 0);
    assert_int_equal(n_order, 1);
    assert_int_equal(order[0], 2);
    fake_now = 20;
    kvt_loop_run_once(l, 0);
    assert_int_equal(n_order, 2);
    kvt_loop_destroy(l);
}

struct periodic {
    struct kvt_loop *l;
    struct kvt_timer t;
    int fired;
};

static void periodic_fire(void *arg)
{
    struct periodic *p = arg;
    p->fired++;
    kvt_loop_timer_start(p->l, &p->t, 0, periodic_fire, p); /* due now: fires next iteration */
}

static void test_timer_rearmed_from_callback(void **state)
{
    (void)state;
    fake_now = 0;
    struct periodic p = {.l = fake_loop(4)};
    kvt_loop_timer_start(p.l, &p.t, 0, periodic_fire, &p);
    for (int i = 0; i < 5; i++)
        kvt_loop_run_once(p.l, 0);
    assert_int_equal(p.fired, 5); /* once per iteration, never in a loop of its own */
    kvt_loop_destroy(p.l);
}

struct pair_watch {
    struct kvt_loop *l;
    struct kvt_watch w;
    struct pair_watch *other; /* unwatched by our callback */
    int fd;
    int calls;
};

static void on_readable(void *arg, uint32_t events)
{
    struct pair_watch *p = arg;
    assert_true(events & EPOLLIN);
    p->calls++;
    char b[16];
    while (read(p->fd, b, sizeof(b)) > 0)
        ;
    if (p->other) {
        kvt_loop_unwatch(p->l, &p->other->w); /* its event of this iteration must not arrive */
        p->other->other = NULL;
        p->other = NULL;
    }
}

static void test_fd_watchers_and_unwatch_in_batch(void **state)
{
    (void)state;
    struct kvt_loop *l = fake_loop(4);
    int a[2], b[2];
    assert_int_equal(pipe2(a, O_NONBLOCK), 0);
    assert_int_equal(pipe2(b, O_NONBLOCK), 0);
    struct pair_watch pa = {.l = l, .fd = a[0]}, pb = {.l = l, .fd = b[0]};
    pa.other = &pb;
    pb.other = &pa;
    assert_int_equal(kvt_loop_watch(l, &pa.w, a[0], EPOLLIN, on_readable, &pa), 0);
    assert_int_equal(kvt_loop_watch(l, &pb.w, b[0], EPOLLIN, on_readable, &pb), 0);
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);
    assert_int_equal(kvt_loop_run_once(l, 1000), 2); /* both were ready */
    /* Whichever ran first removed the other: exactly one callback ran. */
    assert_int_equal(pa.calls + pb.calls, 1);
    /* Disarmed (events 0): nothing is delivered; re-armed: it is. */
    struct pair_watch *alive = pa.calls ? &pa : &pb;
    int wfd = alive == &pa ? a[1] : b[1];
    assert_int_equal(kvt_loop_rearm(l, &alive->w, 0), 0);
    assert_int_equal(write(wfd, "z", 1), 1);
    assert_int_equal(kvt_loop_run_once(l, 0), 0);
    assert_int_equal(kvt_loop_rearm(l, &alive->w, EPOLLIN), 0);
    assert_int_equal(kvt_loop_run_once(l, 1000), 1);
    assert_int_equal(alive->calls, 2);
    kvt_loop_unwatch(l, &alive->w);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
    kvt_loop_destroy(l);
}

static int hook_calls, hook_work;

static int busy_hook(void *arg)
{
    (void)arg;
    hook_calls++;
    return hook_work-- > 0;
}

static void test_hooks_keep_the_loop_awake(void **state)
{
    (void)state;
    struct kvt_loop_config cfg = {0}; /* the real clock: the loop would really sleep */
    struct kvt_loop *l;
    assert_int_equal(kvt_loop_create(&cfg, &l), 0);
    struct kvt_hook h;
    kvt_loop_before_sleep(l, &h, busy_hook, NULL);
    hook_calls = 0;
    hook_work = 3;
    kvt_loop_run_once(l, 0); /* the hook leaves work */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 3; i++)
        kvt_loop_run_once(l, 2000); /* work was left each time: none of these may sleep */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_int_equal(hook_calls, 4);
    assert_true(ms < 500);
    /* No work left now: the next iteration sleeps its full timeout. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kvt_loop_run_once(l, 50);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms >= 45);
    kvt_loop_destroy(l);
}

static void test_sleep_bounded_by_nearest_timer(void **state)
{
    (void)state;
    struct kvt_loop_config cfg = {0};
    struct kvt_loop *l;
    assert_int_equal(kvt_loop_create(&cfg, &l), 0);
    struct kvt_timer t = {0};
    n_order = 0;
    kvt_loop_timer_start(l, &t, 30, record, (void *)7);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (n_order == 0)
        kvt_loop_run_once(l, 5000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms >= 29 && ms < 1000);
    kvt_loop_destroy(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_fire_in_order),
        cmocka_unit_test(test_timer_limit_and_rearm),
        cmocka_unit_test(test_timer_rearmed_from_callback),
        cmocka_unit_test(test_fd_watchers_and_unwatch_in_batch),
        cmocka_unit_test(test_hooks_keep_the_loop_awake),
        cmocka_unit_test(test_sleep_bounded_by_nearest_timer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
