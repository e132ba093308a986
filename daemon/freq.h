/*
 * How often objects are read, remembered past their eviction: a count-min sketch with aging
 * (TinyLFU's). Cost-aware eviction takes its estimate as a chunk's expected reuse, so a popular
 * passage that was evicted once comes back valued for its history, not as a stranger, and the
 * popularity of long ago fades: every 10 x width additions every counter is halved.
 *
 * 4 rows of `width` saturating 8-bit counters (width: a power of two >= the objects it is sized
 * for, at least 64). An estimate is never below the true count since the last halving (it may be
 * above it by collisions). Not thread-safe: the loop's.
 */
#ifndef KVT_DAEMON_FREQ_H
#define KVT_DAEMON_FREQ_H

#include <stdint.h>

#define KVT_FREQ_ROWS 4

struct kvt_freq {
    uint8_t *count; /* KVT_FREQ_ROWS x width */
    uint32_t mask;  /* width - 1 */
    uint64_t adds, halve_at;
    uint64_t halvings;
};

/* Sized for about `objects` distinct objects. 0 or KVT_E_NOMEM. */
int kvt_freq_init(struct kvt_freq *f, uint32_t objects);
void kvt_freq_deinit(struct kvt_freq *f);

/* One read of the object whose hash is h. */
void kvt_freq_add(struct kvt_freq *f, uint64_t h);

/* Reads of h since about the last halving (an over-estimate at worst). */
uint32_t kvt_freq_estimate(const struct kvt_freq *f, uint64_t h);

#endif
