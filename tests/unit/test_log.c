/*
 * Logging: with the log thread, a caller never blocks on a full stderr pipe (lines are dropped
 * and counted, and flow again once the reader drains); a log file follows kvt_log_set_file and
 * kvt_log_reopen; disabled levels do not evaluate their arguments.
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"
#include "kvtier/errors.h"

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct child_report {
    uint64_t log_ms;  /* 100k lines into a pipe nobody reads */
    uint64_t stop_ms; /* kvt_log_stop against that pipe */
    uint64_t dropped_after_log, dropped_after_stop;
    int flush_rc; /* kvt_log_flush(0) while stuck: KVT_E_TIMEOUT */
};

/* The child: stderr is a pipe the parent does not read until told. */
static void child_logs(int err_w, int rep_w, int go_r)
{
    alarm(20);
    dup2(err_w, STDERR_FILENO);
    close(err_w);
    if (kvt_log_start())
        _exit(1);
    struct child_report r = {0};
    uint64_t t0 = mono_ms();
    for (int i = 0; i < 100000; i++)
        KVT_INFO("test", "line %d of a log that nobody reads key=value padding=%s", i,
                 "................................");
    r.log_ms = mono_ms() - t0;
    r.dropped_after_log = kvt_log_dropped();
    r.flush_rc = kvt_log_flush(0);
    t0 = mono_ms();
    kvt_log_stop(200); /* cannot flush: returns after the bound, the thread keeps the output */
    r.stop_ms = mono_ms() - t0;
    KVT_INFO("test", "still buffered, not blocking");
    r.dropped_after_stop = kvt_log_dropped();
    if (write(rep_w, &r, sizeof(r)) != (ssize_t)sizeof(r))
        _exit(2);
    char go;
    if (read(go_r, &go, 1) != 1)
        _exit(3);
    /* The parent drains now: the ring empties, and new lines get through. */
    if (kvt_log_flush(10000))
        _exit(4);
    KVT_INFO("test", "marker after drain");
    kvt_log_stop(10000);
    _exit(0);
}

static void test_full_pipe_never_blocks(void **state)
{
    (void)state;
    int errp[2], repp[2], gop[2];
    assert_int_equal(pipe(errp), 0);
    assert_int_equal(pipe(repp), 0);
    assert_int_equal(pipe(gop), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(errp[0]);
        close(repp[0]);
        close(gop[1]);
        child_logs(errp[1], repp[1], gop[0]);
    }
    close(errp[1]);
    close(repp[1]);
    close(gop[0]);

    struct pollfd pfd = {.fd = repp[0], .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 15000), 1); /* the child did not hang in logging */
    struct child_report r;
    assert_int_equal(read(repp[0], &r, sizeof(r)), (ssize_t)sizeof(r));
    /* 100k lines are formatted in well under a second; blocking would never finish. */
    assert_true(r.log_ms < 5000);
    assert_true(r.dropped_after_log > 0);
    assert_int_equal(r.flush_rc, KVT_E_TIMEOUT);
    assert_true(r.stop_ms >= 150 && r.stop_ms < 3000);
    assert_true(r.dropped_after_stop == r.dropped_after_log + 1);

    /* Drain everything and look for what must have come through. */
    assert_int_equal(write(gop[1], "g", 1), 1);
    size_t cap = 8u << 20, len = 0;
    char *out = malloc(cap + 1);
    assert_non_null(out);
    for (;;) {
        struct pollfd ep = {.fd = errp[0], .events = POLLIN};
        assert_int_equal(poll(&ep, 1, 15000), 1);
        ssize_t n = read(errp[0], out + len, cap - len);
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
        assert_true(len < cap);
    }
    out[len] = '\0';
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_non_null(strstr(out, "line 0 of a log"));
    assert_non_null(strstr(out, "marker after drain"));
    /* The drop was reported in the log itself, before the marker. */
    char *note = strstr(out, " log lines dropped");
    assert_non_null(note);
    assert_true(note < strstr(out, "marker after drain"));
    /* Only whole lines: every line starts with a timestamp. */
    for (char *p = out; *p; p = strchr(p, '\n') + 1) {
        assert_true(p[0] == '2' && p[4] == '-' && p[10] == 'T');
        assert_non_null(strchr(p, '\n'));
    }
    free(out);
    close(errp[0]);
    close(repp[0]);
    close(gop[1]);
}

/* Reads a whole small file into buf (NUL-terminated); "" when it does not exist. */
static void slurp(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* One round of logrotate: a line, rename, reopen, a line. */
static void rotate_round(const char *dir, const char *tag)
{
    char cur[256], old[256], buf[4096];
    snprintf(cur, sizeof(cur), "%s/kvtierd.log", dir);
    snprintf(old, sizeof(old), "%s/kvtierd.log.1", dir);
    unlink(cur);
    unlink(old);
    assert_int_equal(kvt_log_set_file(cur), 0);
    KVT_INFO("test", "%s before rotation", tag);
    assert_int_equal(rename(cur, old), 0);
    KVT_INFO("test", "%s still into the renamed file", tag);
    kvt_log_reopen();
    /* With the thread, the reopen is asynchronous but ordered before lines logged after it. */
    KVT_INFO("test", "%s after reopen", tag);
    assert_int_equal(kvt_log_flush(5000), 0);
    slurp(old, buf, sizeof(buf));
    assert_non_null(strstr(buf, "before rotation"));
    assert_non_null(strstr(buf, "still into the renamed file"));
    assert_null(strstr(buf, "after reopen"));
    slurp(cur, buf, sizeof(buf));
    assert_non_null(strstr(buf, "after reopen"));
    assert_null(strstr(buf, "before rotation"));
}

/* The SigBlk mask of this process's thread named name, or 0 when there is none. */
static uint64_t thread_sigblk(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    uint64_t mask = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char path[300], buf[4096];
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        slurp(path, buf, sizeof(buf));
        if (strncmp(buf, name, strlen(name)) != 0 || buf[strlen(name)] != '\n')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
        slurp(path, buf, sizeof(buf));
        char *blk = strstr(buf, "SigBlk:");
        assert_non_null(blk);
        mask = strtoull(blk + 7, NULL, 16);
    }
    closedir(d);
    return mask;
}

static void test_thread_blocks_signals(void **state)
{
    (void)state;
    assert_int_equal(kvt_log_start(), 0);
    uint64_t mask = thread_sigblk("kvt-log");
    /* Blocked there, so the loop's signalfd gets them even when the log started first. */
    assert_true(mask & (1ull << (SIGHUP - 1)));
    assert_true(mask & (1ull << (SIGTERM - 1)));
    assert_true(mask & (1ull << (SIGINT - 1)));
    kvt_log_stop(5000);
    assert_true(thread_sigblk("kvt-log") == 0); /* stopped: the thread is gone */
}

static void test_file_and_reopen(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvt-test-log-XXXXXX";
    assert_non_null(mkdtemp(dir));
    rotate_round(dir, "direct");
    assert_int_equal(kvt_log_start(), 0);
    rotate_round(dir, "threaded");

    /* A path that cannot be opened is refused and logging stays where it was. */
    char buf[4096], cur[256];
    snprintf(cur, sizeof(cur), "%s/kvtierd.log", dir);
    assert_int_equal(kvt_log_set_file("/nonexistent-dir/x.log"), -ENOENT);
    KVT_INFO("test", "after a refused switch");
    assert_int_equal(kvt_log_flush(5000), 0);
    slurp(cur, buf, sizeof(buf));
    assert_non_null(strstr(buf, "after a refused switch"));

    /* A reopen that fails (a directory took the file's name) keeps the old file and says so
     * in it. */
    char moved[300];
    snprintf(moved, sizeof(moved), "%s/kvtierd.log.1", dir);
    assert_int_equal(rename(cur, moved), 0);
    assert_int_equal(mkdir(cur, 0700), 0);
    kvt_log_reopen();
    KVT_INFO("test", "into the old file still");
    assert_int_equal(kvt_log_flush(5000), 0);
    slurp(moved, buf, sizeof(buf));
    assert_non_null(strstr(buf, "cannot reopen log file"));
    assert_non_null(strstr(buf, "into the old file still"));
    assert_int_equal(rmdir(cur), 0);

    kvt_log_stop(5000);
    assert_int_equal(kvt_log_set_file(NULL), 0); /* back to stderr */
    unlink(cur);
    snprintf(cur, sizeof(cur), "%s/kvtierd.log.1", dir);
    unlink(cur);
    assert_int_equal(rmdir(dir), 0);
}

static int evaluated;
static int bump(void)
{
    return ++evaluated;
}

static void test_level_before_arguments(void **state)
{
    (void)state;
    kvt_log_set_level(KVT_LOG_WARN);
    KVT_INFO("test", "never printed %d", bump());
    KVT_DEBUG("test", "never printed %d", bump());
    KVT_LOG_RATELIMITED(KVT_LOG_DEBUG, "test", "never printed %d", bump());
    assert_int_equal(evaluated, 0);
    kvt_log_set_level(KVT_LOG_INFO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_pipe_never_blocks),
        cmocka_unit_test(test_file_and_reopen),
        cmocka_unit_test(test_thread_blocks_signals),
        cmocka_unit_test(test_level_before_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
