/*
 * Structured logging: one line per event, "ts level module: message key=value ...", to stderr or
 * to a file (kvt_log_set_file). The macros test the level before evaluating their arguments, so
 * disabled levels cost one comparison. KVT_LOG_RATELIMITED drops repeats of one call site beyond
 * a few per second, so a misbehaving client cannot flood the log.
 *
 * Until kvt_log_start, each line is written with one blocking write(2) by the thread that logs
 * it (tools, the client library, start-up). After it, which the daemon does before its loop
 * runs, lines go into a bounded in-memory ring that a log thread writes out, so logging never
 * blocks the caller on a full stderr pipe or a slow disk: when the ring is full the line is
 * dropped and counted (kvt_log_dropped), and the next line that fits is preceded by "N log lines
 * dropped". Logging never allocates.
 */
#ifndef KVT_COMMON_LOG_H
#define KVT_COMMON_LOG_H

#include <stdint.h>

enum kvt_log_level {
    KVT_LOG_ERROR = 0,
    KVT_LOG_WARN = 1,
    KVT_LOG_INFO = 2,
    KVT_LOG_DEBUG = 3,
};

extern int kvt_log_level_current;

/* Parses "error", "warn", "info", "debug". Returns the level or -1. */
int kvt_log_level_parse(const char *name);
const char *kvt_log_level_name(int level);
void kvt_log_set_level(int level);

/* Starts the log thread (see above) and registers a bounded flush at exit. Idempotent; 0 or
 * -errno. */
int kvt_log_start(void);
/* Waits until every line logged before the call was written, at most timeout_ms. 0, or
 * KVT_E_TIMEOUT when the output did not keep up. Returns 0 at once without a log thread. */
int kvt_log_flush(uint32_t timeout_ms);
/* Flushes (at most timeout_ms) and stops the log thread; later lines are written directly
 * again. When the flush timed out, the thread is left running (it is blocked in write and owns
 * the output) and logging stays buffered, so exiting never hangs on the log. */
void kvt_log_stop(uint32_t timeout_ms);

/* Logs to the file at path (opened O_APPEND, created 0640) instead of stderr; NULL or "" goes
 * back to stderr. The path is copied. The file is opened by the caller, so an error is returned
 * (-errno, or KVT_E_INVAL for a path longer than PATH_MAX) and logging is unchanged; with the
 * log thread running, the switch happens between two lines the thread writes. */
int kvt_log_set_file(const char *path);
/* Reopens the log file by its path (after SIGHUP: logrotate renamed it); nothing to do when
 * logging to stderr. Does not block: with the log thread running, the thread reopens; a failure
 * keeps the old file and is logged. Not async-signal-safe: call it from the loop, not from a
 * signal handler. */
void kvt_log_reopen(void);
/* Lines dropped since start because the output did not keep up (for stats). */
uint64_t kvt_log_dropped(void);

void kvt_log_write(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Per call-site state for rate limiting. */
struct kvt_log_ratelimit {
    uint64_t window_start_ms;
    uint32_t in_window;
    uint32_t suppressed;
};
/* Returns 1 when the caller may log now (and reports how many were suppressed before). */
int kvt_log_ratelimit_pass(struct kvt_log_ratelimit *rl, uint32_t *suppressed_out);

#define KVT_LOG(level, module, ...)                                                                \
    do {                                                                                           \
        if ((level) <= kvt_log_level_current)                                                      \
            kvt_log_write((level), (module), __VA_ARGS__);                                         \
    } while (0)

#define KVT_ERR(module, ...) KVT_LOG(KVT_LOG_ERROR, module, __VA_ARGS__)
#define KVT_WARN(module, ...) KVT_LOG(KVT_LOG_WARN, module, __VA_ARGS__)
#define KVT_INFO(module, ...) KVT_LOG(KVT_LOG_INFO, module, __VA_ARGS__)
#define KVT_DEBUG(module, ...) KVT_LOG(KVT_LOG_DEBUG, module, __VA_ARGS__)

/* Logs at most a few lines per second from this call site. */
#define KVT_LOG_RATELIMITED(level, module, ...)                                                    \
    do {                                                                                           \
        static struct kvt_log_ratelimit kvt__rl;                                                   \
        uint32_t kvt__supp = 0;                                                                    \
        if ((level) <= kvt_log_level_current && kvt_log_ratelimit_pass(&kvt__rl, &kvt__supp))      \
            kvt_log_write((level), (module), __VA_ARGS__);                                         \
    } while (0)

#endif
