/*
 * Structured logging: one line per event, "ts level module: message key=value ...", to stderr.
 * The macros test the level before evaluating their arguments, so disabled levels cost one
 * comparison. KVT_LOG_RATELIMITED drops repeats of one call site beyond a few per second, so a
 * misbehaving client cannot flood the log.
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
