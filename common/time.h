/* Clocks. Monotonic time for timeouts and latency; tests inject time through these wrappers. */
#ifndef KVT_COMMON_TIME_H
#define KVT_COMMON_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t kvt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t kvt_now_ms(void)
{
    return kvt_now_ns() / 1000000ull;
}

#endif
