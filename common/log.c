/*
 * Log sink: formats a timestamped line into a stack buffer and writes it with one write(2), so
 * lines from different threads never interleave. Logging never allocates.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/time.h"

int kvt_log_level_current = KVT_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

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

void kvt_log_write(int level, const char *module, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, kvt_log_level_name(level), module);
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
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
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
