/*
 * The operations table every storage tier implements (CPU DRAM, disk, GPU, remote), so that the
 * daemon's tier manager can place, move and account chunks without knowing how a tier stores them.
 *
 * A tier stores opaque objects named by (namespace seed, 128-bit key). Space is reserved first,
 * filled, then committed; only committed objects are visible to read. Reads and writes may
 * complete asynchronously: a tier that does I/O exposes an eventfd the event loop watches and a
 * poll() that runs completion callbacks on the loop thread. A callback never runs when the call
 * that would trigger it returned an error. A tier never includes a daemon header.
 */
#ifndef KVT_TIERS_TIER_H
#define KVT_TIERS_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"

/* Per-tier statistics, generated from one list so that stats output and docs stay in step.
 * bytes_used is what the tier's objects occupy (slots, blocks); bytes_payload what their bytes
 * are, before rounding, compression or metadata (0 in a tier that does not track it). */
#define KVT_TIER_STATS(X)                                                                          \
    X(bytes_used)                                                                                  \
    X(bytes_payload)                                                                               \
    X(bytes_capacity)                                                                              \
    X(objects)                                                                                     \
    X(hits)                                                                                        \
    X(misses)                                                                                      \
    X(evictions)                                                                                   \
    X(demotions)                                                                                   \
    X(promotions)                                                                                  \
    X(checksum_failures)                                                                           \
    X(io_errors)                                                                                   \
    X(failed)

struct kvt_tier_stats {
#define KVT__TIER_STAT_FIELD(name) uint64_t name;
    KVT_TIER_STATS(KVT__TIER_STAT_FIELD)
#undef KVT__TIER_STAT_FIELD
};

/* Identity of a stored object inside a tier. */
struct kvt_obj_id {
    uint64_t ns_seed;
    struct kvt_key key;
};

/* Completion of an asynchronous tier operation: res is 0/bytes or a negative kvtier error. */
typedef void (*kvt_tier_done_fn)(void *arg, int res);

struct kvt_tier_ops {
    const char *name;
    enum kvt_tier_id id;
    /* Fills *out with this tier's counters. Cannot fail. */
    void (*stats)(void *tier, struct kvt_tier_stats *out);
    /* eventfd to watch for completions, or -1 for a tier that completes synchronously. */
    int (*event_fd)(void *tier);
    /* Runs pending completion callbacks; returns how many ran. */
    int (*poll)(void *tier);
};

#endif
