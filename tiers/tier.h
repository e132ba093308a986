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

#include "common/stats.h"
#include "kvtier/kvtier.h"

/* Per-tier statistics, generated from one list so that stats output and docs stay in step.
 * bytes_used is what the tier's objects occupy (slots, blocks); bytes_payload what their bytes
 * are, before rounding, compression or metadata (0 in a tier that does not track it). */
/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_TIER_STATS_DEF(X, A)                                                                   \
    X(A, bytes_used, KVT_STAT_GAUGE, "bytes", "bytes the tier holds, with allocation overhead")    \
    X(A, bytes_payload, KVT_STAT_GAUGE, "bytes", "bytes of chunk data the tier holds")             \
    X(A, bytes_capacity, KVT_STAT_GAUGE, "bytes", "bytes the tier may hold")                       \
    X(A, objects, KVT_STAT_GAUGE, "", "chunks the tier holds")                                     \
    X(A, hits, KVT_STAT_COUNTER, "", "reads that found their chunk in the tier")                   \
    X(A, misses, KVT_STAT_COUNTER, "", "reads of chunks the tier did not have")                    \
    X(A, evictions, KVT_STAT_COUNTER, "",                                                          \
      "chunks removed from the tier to make room or by Delete")                                    \
    X(A, demotions, KVT_STAT_COUNTER, "", "chunks moved from this tier to a lower one")            \
    X(A, promotions, KVT_STAT_COUNTER, "", "chunks moved into a higher tier from this one")        \
    X(A, checksum_failures, KVT_STAT_COUNTER, "", "reads whose data failed its checksum")          \
    X(A, io_errors, KVT_STAT_COUNTER, "", "I/O errors the tier saw")                               \
    X(A, failed, KVT_STAT_GAUGE, "", "1 once the tier latched failed after unrecoverable errors")
#define KVT_TIER_STATS(A) KVT_TIER_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_tier_stats {
#define KVT__TIER_STAT_FIELD(name) uint64_t name;
    KVT_TIER_STATS(KVT__TIER_STAT_FIELD)
#undef KVT__TIER_STAT_FIELD
};

/* Identity of a stored object: the namespace (its seed, stable across restarts), the chunk's key
 * (a hash of its tokens and their prefix) and a variant, so that several versions of one chunk
 * (computed at different positions, for reuse) and several representations of it (fp16,
 * quantized, clustered) coexist as separate objects. Variant 0 is the chunk as first stored. */
struct kvt_obj_id {
    uint64_t ns_seed;
    struct kvt_key key;
    uint32_t variant;
};

static inline int kvt_obj_id_eq(const struct kvt_obj_id *a, const struct kvt_obj_id *b)
{
    return a->ns_seed == b->ns_seed && a->key.lo == b->key.lo && a->key.hi == b->key.hi &&
           a->variant == b->variant;
}

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
