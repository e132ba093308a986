/*
 * The SIGBUS guard: a guarded copy from or into a page that vanished under it (a truncated memfd,
 * as a client can do to its arena) fails with KVT_E_FAULT, on the main thread and on a worker,
 * and the thread keeps working; a SIGBUS anywhere else still kills the process (forked children
 * check that), and a handler installed before ours still gets the signals that are not ours.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/checksum.h"
#include "common/memguard.h"
#include "daemon/workers.h"
#include "kernels/copy.h"
#include "kvtier/errors.h"

/* A mapping of a memfd whose pages can be made to vanish. */
struct vanishing {
    int fd;
    uint8_t *p;
    size_t bytes;
};

/* Maps bytes of a memfd (flags: 0 or MFD_HUGETLB) filled with a pattern. -1 when the memfd
 * cannot be had (no huge pages). */
static int vanishing_open(struct vanishing *v, size_t bytes, unsigned flags)
{
    v->bytes = bytes;
    v->fd = memfd_create("kvt-test-vanish", MFD_CLOEXEC | flags);
    if (v->fd < 0)
        return -1;
    if (ftruncate(v->fd, (off_t)bytes)) {
        close(v->fd);
        return -1;
    }
    v->p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->p == MAP_FAILED) {
        close(v->fd);
        return -1;
    }
    /* The fill itself is guarded: with hugetlb, the first touch faults when no huge page is
     * free, which means the sub-case cannot run here. */
    uint8_t pattern[4096];
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (uint8_t)(i * 7 + 1);
    for (size_t at = 0; at < bytes; at += sizeof(pattern)) {
        if (kvt_copy_guarded(v->p + at, pattern, sizeof(pattern), 0)) {
            munmap(v->p, bytes);
            close(v->fd);
            return -1;
        }
    }
    return 0;
}

/* Drops every page from keep_bytes on: the mapping stays, accesses to them raise SIGBUS. */
static void vanishing_cut(struct vanishing *v, size_t keep_bytes)
{
    assert_int_equal(ftruncate(v->fd, (off_t)keep_bytes), 0);
}

static void vanishing_close(struct vanishing *v)
{
    munmap(v->p, v->bytes);
    close(v->fd);
}

/* A SIGBUS handler installed before kvt_memguard_init gets the SIGBUS that are not the guard's.
 * Runs first, in a child, so that the guard is not yet installed when the sentinel goes in. */
static void sentinel(int sig)
{
    (void)sig;
    _exit(42);
}

static void test_chains_to_previous_handler(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10); /* a broken guard can jump back into a dead frame forever */
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = sentinel;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGBUS, &sa, NULL);
        if (kvt_memguard_init())
            _exit(1);
        struct sigaction now;
        sigaction(SIGBUS, NULL, &now);
        if (now.sa_handler == sentinel)
            _exit(2); /* the guard did not install its handler */
        struct vanishing v;
        uint8_t buf[8192];
        if (vanishing_open(&v, 8192, 0))
            _exit(3);
        vanishing_cut(&v, 0);
        /* The guard's own fault is recovered, not passed on... */
        if (kvt_copy_guarded(buf, v.p, sizeof(buf), 0) != KVT_E_FAULT)
            _exit(4);
        /* ...and one outside any guard reaches the sentinel. */
        volatile uint8_t x = v.p[100];
        (void)x;
        _exit(5);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 42);
}

static void test_fault_on_main_thread(void **state)
{
    (void)state;
    assert_int_equal(kvt_memguard_init(), 0);
    assert_int_equal(kvt_memguard_init(), 0); /* idempotent */
    struct vanishing v;
    assert_int_equal(vanishing_open(&v, 2 * 4096, 0), 0);
    uint8_t *buf = malloc(3 * 4096);
    assert_non_null(buf);
    uint64_t faults0 = kvt_memguard_faults();

    /* Only the second page goes: a copy over both faults part-way through, one over the first
     * page alone still works. */
    vanishing_cut(&v, 4096);
    assert_int_equal(kvt_copy_guarded(buf, v.p, 2 * 4096, 0), KVT_E_FAULT);
    assert_int_equal(kvt_copy_guarded(buf, v.p, 4096, 0), 0);
    assert_int_equal(buf[1], 8);

    /* Every flavour, both directions, several times in a row: each recovery leaves SIGBUS
     * unblocked and the guard disarmed for the next. */
    vanishing_cut(&v, 0);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(kvt_copy_guarded(buf, v.p, 4096, 0), KVT_E_FAULT);
        assert_int_equal(kvt_copy_guarded(buf, v.p, 8192, 1), KVT_E_FAULT);
        assert_int_equal(kvt_copy_guarded(v.p, buf, 4096, 0), KVT_E_FAULT);
        assert_int_equal(kvt_copy_guarded(v.p + 4096, buf, 4096, 1), KVT_E_FAULT);
        uint64_t sum = 77;
        assert_int_equal(kvt_copy_guarded_sum(buf, v.p, 8192, 0, &sum), KVT_E_FAULT);
        assert_int_equal(kvt_copy_guarded_sum(v.p, buf, 8192, 0, &sum), KVT_E_FAULT);
        assert_true(sum == 77); /* untouched on a fault */
    }
    assert_true(kvt_memguard_faults() == faults0 + 1 + 3 * 6);

    /* Normal copies still work afterwards, on this thread. */
    uint8_t a[100], b[100];
    memset(a, 0x5a, sizeof(a));
    assert_int_equal(kvt_copy_guarded(b, a, sizeof(a), 0), 0);
    assert_memory_equal(a, b, sizeof(a));
    uint64_t sum = 0;
    assert_int_equal(kvt_copy_guarded_sum(b, a, sizeof(a), 0, &sum), 0);
    assert_true(sum == kvt_checksum_part(a, sizeof(a), 0));
    free(buf);
    vanishing_close(&v);
}

/* Waits for a finished job and reaps it. */
static struct kvt_job *reap_one(struct kvt_workers *w)
{
    struct pollfd pfd = {.fd = kvt_workers_fd(w), .events = POLLIN};
    for (int i = 0; i < 100; i++) {
        struct kvt_job *j = kvt_workers_reap(w);
        if (j) {
            assert_null(j->next);
            return j;
        }
        poll(&pfd, 1, 100);
    }
    fail_msg("job did not finish");
    return NULL;
}

static void test_fault_on_worker(void **state)
{
    (void)state;
    struct kvt_workers *w = NULL;
    assert_int_equal(kvt_workers_create(1, &w), 0); /* one thread: every job runs on it */
    struct vanishing v;
    assert_int_equal(vanishing_open(&v, 2 * 4096, 0), 0);
    vanishing_cut(&v, 0);
    uint8_t *buf = malloc(2 * 4096), *good = malloc(2 * 4096);
    assert_non_null(buf);
    assert_non_null(good);
    for (size_t i = 0; i < 2 * 4096; i++)
        good[i] = (uint8_t)(i * 13);

    const kvt_job_fn fns[] = {kvt_job_copy, kvt_job_copy_stream, kvt_job_copy_sum};
    for (size_t f = 0; f < 3; f++) {
        for (int dir = 0; dir < 2; dir++) {
            struct kvt_job j;
            memset(&j, 0, sizeof(j));
            j.fn = fns[f];
            j.dst = dir ? (void *)v.p : buf;
            j.src = dir ? (const void *)buf : v.p;
            j.len = 2 * 4096;
            j.res = 1;
            kvt_workers_submit(w, &j);
            assert_ptr_equal(reap_one(w), &j);
            assert_int_equal(j.res, KVT_E_FAULT);
        }
        /* The same worker thread is still alive and copies normally. */
        struct kvt_job j;
        memset(&j, 0, sizeof(j));
        j.fn = fns[f];
        j.dst = buf;
        j.src = good;
        j.len = 2 * 4096;
        j.want_sum = 1;
        j.sum_off = KVT_CHECKSUM_BLOCK_BYTES;
        j.res = 1;
        memset(buf, 0, 2 * 4096);
        kvt_workers_submit(w, &j);
        assert_ptr_equal(reap_one(w), &j);
        assert_int_equal(j.res, 0);
        assert_memory_equal(buf, good, 2 * 4096);
        assert_true(j.sum == kvt_checksum_part(good, 2 * 4096, KVT_CHECKSUM_BLOCK_BYTES));
    }
    kvt_workers_destroy(w);
    free(buf);
    free(good);
    vanishing_close(&v);
}

/* The incident of the issue: a client's hugetlb arena page punched out. Skips without free
 * huge pages. The punched page would be refilled from the pool if one were free, so the test
 * also truncates, which faults whatever the pool holds. */
static void test_fault_hugetlb(void **state)
{
    (void)state;
    assert_int_equal(kvt_memguard_init(), 0);
    struct vanishing v;
    const size_t huge = 2u << 20;
    if (vanishing_open(&v, huge, MFD_HUGETLB)) {
        skip();
        return;
    }
    uint8_t *buf = malloc(huge);
    assert_non_null(buf);
    assert_int_equal(fallocate(v.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)huge),
                     0);
    vanishing_cut(&v, 0);
    assert_int_equal(kvt_copy_guarded(buf, v.p, huge, 1), KVT_E_FAULT);
    uint64_t sum;
    assert_int_equal(kvt_copy_guarded_sum(buf, v.p, huge, 0, &sum), KVT_E_FAULT);
    assert_int_equal(kvt_copy_guarded(buf, buf + 4096, 4096, 0), 0);
    free(buf);
    vanishing_close(&v);
}

/* Runs fn in a child and returns its wait status; no core files from the expected deaths. */
static int in_child(void (*fn)(void))
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10); /* a broken guard can jump back into a dead frame forever */
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        /* The test harness's own SIGBUS handler would carry on with the tests in the child:
         * chain the guard to the default action, as in the daemon. */
        signal(SIGBUS, SIG_DFL);
        if (kvt_memguard_init())
            _exit(1);
        fn();
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void unguarded_fault(void)
{
    struct vanishing v;
    if (vanishing_open(&v, 4096, 0))
        _exit(3);
    vanishing_cut(&v, 0);
    volatile uint8_t x = v.p[0];
    (void)x;
}

static void fault_outside_armed_ranges(void)
{
    struct vanishing v;
    if (vanishing_open(&v, 4096, 0))
        _exit(3);
    vanishing_cut(&v, 0);
    uint8_t other[64];
    struct kvt_memguard g;
    if (sigsetjmp(g.env, 0))
        _exit(4); /* recovered a fault the guard did not cover */
    kvt_memguard_arm(&g, other, sizeof(other), NULL, 0);
    volatile uint8_t x = v.p[0];
    (void)x;
    kvt_memguard_disarm(&g);
}

static void sent_sigbus(void)
{
    /* Sent, not raised by a fault: never recovered, even inside an armed guard. */
    uint8_t other[64];
    struct kvt_memguard g;
    if (sigsetjmp(g.env, 0))
        _exit(4);
    kvt_memguard_arm(&g, other, sizeof(other), NULL, 0);
    kill(getpid(), SIGBUS);
    kvt_memguard_disarm(&g);
}

static void test_other_sigbus_still_fatal(void **state)
{
    (void)state;
    assert_int_equal(kvt_memguard_init(), 0);
    void (*const cases[])(void) = {unguarded_fault, fault_outside_armed_ranges, sent_sigbus};
    for (size_t i = 0; i < 3; i++) {
        int st = in_child(cases[i]);
        assert_true(WIFSIGNALED(st));
        assert_int_equal(WTERMSIG(st), SIGBUS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chains_to_previous_handler),
        cmocka_unit_test(test_fault_on_main_thread),
        cmocka_unit_test(test_fault_on_worker),
        cmocka_unit_test(test_fault_hugetlb),
        cmocka_unit_test(test_other_sigbus_still_fatal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
