/*
 * Log sink: formats a timestamped line into a stack buffer, then either writes it with one
 * write(2) (no log thread: lines from different threads never interleave) or appends it to a
 * byte ring under a mutex held only for the copy. The log thread writes the ring out in as large
 * pieces as it holds, and is the only user of the output descriptor while it runs: it performs
 * the switches kvt_log_set_file and kvt_log_reopen ask for, so no descriptor is closed under a
 * write. Logging never allocates.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/time.h"
#include "kvtier/errors.h"

int kvt_log_level_current = KVT_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* Enough for bursts of a few thousand lines while the output stalls; beyond that lines are
 * dropped and counted rather than queued without limit. */
#define LOG_RING_BYTES (256u * 1024u)
#define LOG_LINE_BYTES 1024u

static struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* the thread waits for lines or a switch */
    pthread_cond_t idle; /* flushers wait for the thread's progress */
    char ring[LOG_RING_BYTES];
    uint64_t head, tail; /* bytes ever appended and ever written out; tail <= head */
    uint64_t dropped_unreported;
    int running; /* the thread owns the output */
    int stopping;
    int atexit_set;
    pthread_t th;
    int fd;                    /* the output: STDERR_FILENO or a file */
    int pending_fd;            /* a switch from kvt_log_set_file for the thread to make; -1: none */
    int reopen;                /* kvt_log_reopen asked the thread to reopen path */
    uint64_t fd_at, reopen_at; /* ring positions of those requests: earlier lines go first */
    char path[PATH_MAX];       /* "" when logging to stderr */
} L = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
    .fd = STDERR_FILENO,
    .pending_fd = -1,
};

static atomic_uint_fast64_t dropped_total;

int kvt_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

const char *kvt_log_level_name(int level)
{
    return (level >= 0 && level < 4) ? level_names[level] : "?";
}

void kvt_log_set_level(int level)
{
    if (level >= KVT_LOG_ERROR && level <= KVT_LOG_DEBUG)
        kvt_log_level_current = level;
}

uint64_t kvt_log_dropped(void)
{
    return atomic_load_explicit(&dropped_total, memory_order_relaxed);
}

/* "ts level module: " into line; its length, or -1. */
static int format_prefix(char *line, size_t cap, int level, const char *module)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    return snprintf(line, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                    ts.tv_nsec / 1000000, kvt_log_level_name(level), module);
}

/* Writes all of buf to fd (a pipe takes a large write in parts); -errno on failure. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Appends len bytes to the ring; the caller holds L.mu and checked the room. */
static void ring_put(const char *p, size_t len)
{
    size_t at = (size_t)(L.head % LOG_RING_BYTES), first = LOG_RING_BYTES - at;
    if (first > len)
        first = len;
    memcpy(L.ring + at, p, first);
    memcpy(L.ring, p + first, len - first);
    L.head += len;
}

static size_t ring_room(void)
{
    return LOG_RING_BYTES - (size_t)(L.head - L.tail);
}

/* Queues one line; the caller holds L.mu. Drops it (counted) when the ring is full, and puts
 * the count of lines dropped so far in front of the first line that fits again. */
static void enqueue(const char *line, size_t len)
{
    if (L.dropped_unreported) {
        char note[128];
        int n = format_prefix(note, sizeof(note), KVT_LOG_WARN, "log");
        int m = n < 0 ? -1
                      : snprintf(note + n, sizeof(note) - (size_t)n,
                                 "%llu log lines dropped: the log output did not keep up\n",
                                 (unsigned long long)L.dropped_unreported);
        if (m > 0 && (size_t)(n + m) < sizeof(note) && (size_t)(n + m) + len <= ring_room()) {
            ring_put(note, (size_t)(n + m));
            L.dropped_unreported = 0;
        }
    }
    if (L.dropped_unreported || len > ring_room()) {
        L.dropped_unreported++;
        atomic_fetch_add_explicit(&dropped_total, 1, memory_order_relaxed);
        return;
    }
    ring_put(line, len);
    pthread_cond_signal(&L.work);
}

/* A line of the log module's own, with L.mu held: queued, or written when there is no thread. */
static void note_locked(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_locked(int level, const char *fmt, ...)
{
    char line[PATH_MAX + 160];
    int n = format_prefix(line, sizeof(line), level, "log");
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    if (L.running) {
        enqueue(line, len);
    } else {
        int rc = write_all(L.fd, line, len);
        (void)rc;
    }
}

void kvt_log_write(int level, const char *module, const char *fmt, ...)
{
    char line[LOG_LINE_BYTES];
    int n = format_prefix(line, sizeof(line), level, module);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    pthread_mutex_lock(&L.mu);
    if (L.running) {
        enqueue(line, len);
    } else {
        /* No log thread: the caller writes, as it always did; the mutex keeps the descriptor
         * from being switched under the write. */
        int rc = write_all(L.fd, line, len);
        (void)rc; /* nowhere to report a failing log */
    }
    pthread_mutex_unlock(&L.mu);
}

static int open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    return fd < 0 ? -errno : fd;
}

/* Replaces the output with fd, closing the old one unless it is stderr. With the thread running
 * only the thread calls this. */
static void switch_fd(int fd)
{
    int old = L.fd;
    L.fd = fd;
    if (old != STDERR_FILENO && old != fd)
        close(old);
}

/* The thread's part of kvt_log_set_file and kvt_log_reopen; called and returns with L.mu held,
 * dropped around the open. */
static void thread_switches(void)
{
    if (L.pending_fd >= 0 && L.tail >= L.fd_at) {
        switch_fd(L.pending_fd);
        L.pending_fd = -1;
    }
    if (L.reopen && L.tail >= L.reopen_at) {
        L.reopen = 0;
        if (!L.path[0])
            return;
        char path[PATH_MAX];
        memcpy(path, L.path, sizeof(path));
        pthread_mutex_unlock(&L.mu);
        int fd = open_log(path);
        pthread_mutex_lock(&L.mu);
        /* A kvt_log_set_file while the lock was dropped wins over this reopen. */
        if (fd >= 0 && L.pending_fd < 0 && strcmp(path, L.path) == 0)
            switch_fd(fd);
        else if (fd >= 0)
            close(fd);
        else
            note_locked(KVT_LOG_ERROR, "cannot reopen log file %s: %s; still writing the old one",
                        path, strerror(-fd));
    }
}

static void *log_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&L.mu);
    for (;;) {
        /* A switch applies at the ring position where it was asked for. */
        uint64_t next_switch = UINT64_MAX;
        if (L.pending_fd >= 0)
            next_switch = L.fd_at;
        if (L.reopen && L.reopen_at < next_switch)
            next_switch = L.reopen_at;
        if (L.tail >= next_switch) {
            thread_switches();
            continue;
        }
        if (L.head == L.tail) {
            pthread_cond_broadcast(&L.idle);
            if (L.stopping)
                break;
            pthread_cond_wait(&L.work, &L.mu);
            continue;
        }
        /* The oldest contiguous piece of the ring; it stays put while the lock is dropped,
         * since producers only write past head and never reach tail. */
        size_t at = (size_t)(L.tail % LOG_RING_BYTES);
        size_t len = (size_t)(L.head - L.tail);
        if (len > LOG_RING_BYTES - at)
            len = LOG_RING_BYTES - at;
        if (len > next_switch - L.tail)
            len = (size_t)(next_switch - L.tail);
        int fd = L.fd;
        pthread_mutex_unlock(&L.mu);
        int rc = write_all(fd, L.ring + at, len);
        uint64_t lost = 0;
        if (rc) {
            /* The output is gone (a closed pipe, a full disk): count what it lost. */
            for (const char *p = L.ring + at;
                 (p = memchr(p, '\n', (size_t)(L.ring + at + len - p))); p++)
                lost++;
        }
        pthread_mutex_lock(&L.mu);
        L.tail += len;
        if (lost) {
            L.dropped_unreported += lost;
            atomic_fetch_add_explicit(&dropped_total, lost, memory_order_relaxed);
        }
        pthread_cond_broadcast(&L.idle);
    }
    /* Stopped with the ring empty: from here on callers write directly again. */
    L.running = 0;
    L.stopping = 0;
    pthread_mutex_unlock(&L.mu);
    return NULL;
}

static void log_atexit(void)
{
    kvt_log_stop(1000);
}

int kvt_log_start(void)
{
    int rc = 0;
    pthread_mutex_lock(&L.mu);
    if (!L.running) {
        /* The thread blocks every signal (it inherits the mask it is created with), so signals
         * meant for the loop's signalfd never land on it, whenever kvt_log_start runs. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = -pthread_create(&L.th, NULL, log_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!rc)
            pthread_setname_np(L.th, "kvt-log"); /* for top -H, gdb and the tests */
        if (!rc) {
            L.running = 1;
            if (!L.atexit_set && atexit(log_atexit) == 0)
                L.atexit_set = 1;
        }
    }
    pthread_mutex_unlock(&L.mu);
    return rc;
}

/* Adds ms to now on CLOCK_REALTIME, the clock pthread_cond_timedwait uses by default. */
static struct timespec deadline_in(uint32_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Waits with L.mu held until the thread wrote everything up to target. */
static int wait_written(uint64_t target, uint32_t timeout_ms)
{
    struct timespec dl = deadline_in(timeout_ms);
    while (L.running && L.tail < target) {
        if (pthread_cond_timedwait(&L.idle, &L.mu, &dl) == ETIMEDOUT)
            return L.tail < target ? KVT_E_TIMEOUT : 0;
    }
    return 0;
}

int kvt_log_flush(uint32_t timeout_ms)
{
    pthread_mutex_lock(&L.mu);
    int rc = wait_written(L.head, timeout_ms);
    pthread_mutex_unlock(&L.mu);
    return rc;
}

void kvt_log_stop(uint32_t timeout_ms)
{
    pthread_mutex_lock(&L.mu);
    if (!L.running || L.stopping) {
        pthread_mutex_unlock(&L.mu);
        return;
    }
    if (wait_written(L.head, timeout_ms)) {
        pthread_mutex_unlock(&L.mu);
        return; /* stuck in write: leave it the output, and keep buffering */
    }
    L.stopping = 1;
    pthread_cond_signal(&L.work);
    pthread_t th = L.th;
    pthread_mutex_unlock(&L.mu);
    /* The ring was empty a moment ago and the thread leaves as soon as it is empty again: only
     * lines logged since can delay it, and each of those waits on write like any other. */
    pthread_join(th, NULL);
}

int kvt_log_set_file(const char *path)
{
    int fd = STDERR_FILENO;
    if (path && path[0]) {
        if (strlen(path) >= sizeof(L.path))
            return KVT_E_INVAL;
        fd = open_log(path);
        if (fd < 0)
            return fd;
    }
    pthread_mutex_lock(&L.mu);
    snprintf(L.path, sizeof(L.path), "%s", fd == STDERR_FILENO ? "" : path);
    L.reopen = 0; /* the new file is freshly opened */
    if (L.running) {
        if (L.pending_fd >= 0 && L.pending_fd != STDERR_FILENO)
            close(L.pending_fd);
        L.pending_fd = fd;
        L.fd_at = L.head;
        pthread_cond_signal(&L.work);
    } else {
        switch_fd(fd);
    }
    pthread_mutex_unlock(&L.mu);
    return 0;
}

void kvt_log_reopen(void)
{
    pthread_mutex_lock(&L.mu);
    if (L.path[0]) {
        if (L.running) {
            L.reopen = 1;
            L.reopen_at = L.head;
            pthread_cond_signal(&L.work);
        } else {
            int fd = open_log(L.path);
            if (fd >= 0)
                switch_fd(fd);
            else
                note_locked(KVT_LOG_ERROR,
                            "cannot reopen log file %s: %s; still writing the old one", L.path,
                            strerror(-fd));
        }
    }
    pthread_mutex_unlock(&L.mu);
}

int kvt_log_ratelimit_pass(struct kvt_log_ratelimit *rl, uint32_t *suppressed_out)
{
    enum { WINDOW_MS = 1000, BURST = 5 };
    uint64_t now = kvt_now_ms();
    if (now - rl->window_start_ms >= WINDOW_MS) {
        *suppressed_out = rl->suppressed;
        rl->window_start_ms = now;
        rl->in_window = 0;
        rl->suppressed = 0;
    }
    if (rl->in_window >= BURST) {
        rl->suppressed++;
        return 0;
    }
    rl->in_window++;
    return 1;
}
