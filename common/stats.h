/*
 * Statistics: a typed registry (counter, gauge, histogram, each with a unit and help text) and
 * fixed-size latency histograms.
 *
 * Subsystems keep their numbers where they are counted (X-macro structs of uint64_t and
 * struct kvt_hist fields); a reader such as the daemon's Stats op fills a caller-owned registry
 * with a snapshot of them and walks it to build its answer. The registry never allocates and has
 * a fixed capacity: an add past it returns KVT_E_FULL, which the caller treats as a programmer
 * error (too small a table), never as a reason to drop a stat.
 *
 * Histograms have power-of-two buckets: bucket i counts values v <= 2^i (bucket 0 also holds 0),
 * the last bucket counts everything above 2^(KVT_HIST_BUCKETS - 2), which Prometheus shows as
 * le="+Inf". Observing is a few instructions and touches no heap, so it may run on every request
 * on the hot path. A histogram is not thread-safe: each one is written by one thread (the loop).
 *
 * X-macro lists of stats use the columns (name, type, unit, help) through KVT_STAT_DEF below, so
 * one list gives both the struct fields and the help text; KVT_STAT_NAME_ONLY adapts such a list to
 * code that wants only the names.
 */
#ifndef KVT_COMMON_STATS_H
#define KVT_COMMON_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"

/* enum kvt_stat_type (counter, gauge, histogram) is the public one, so the client library and
 * the daemon share its numbers. */

/* Adapters for X-macro lists written as LIST(X, A) with entries X(A, name, type, unit, help).
 * KVT_STAT_NAME_ONLY calls A(name); KVT_STAT_FULL calls A(name, type, unit, help). */
#define KVT_STAT_NAME_ONLY(A, name, type, unit, help) A(name)
#define KVT_STAT_FULL(A, name, type, unit, help) A(name, type, unit, help)

/* 1 us .. 2^26 us (67 s) in powers of two, plus the overflow bucket. */
#define KVT_HIST_BUCKETS 28

struct kvt_hist {
    uint64_t counts[KVT_HIST_BUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    uint64_t sum; /* of every observed value, in the histogram's unit */
};

/* Index of the bucket that counts value. */
unsigned kvt_hist_bucket(uint64_t value);
/* Largest value bucket i counts (inclusive); UINT64_MAX for the overflow bucket. */
uint64_t kvt_hist_bound(unsigned i);
void kvt_hist_observe(struct kvt_hist *h, uint64_t value);
/* Adds the observation that started at start_ns and ends now, in microseconds. A start of 0
 * means "not timed" and is ignored, so an op that never got a timestamp cannot record garbage. */
void kvt_hist_observe_since_ns(struct kvt_hist *h, uint64_t start_ns);

/* Longest name a registry entry holds, NUL included: "tenant." + a tenant name of up to 63
 * bytes + "." + the stat ("disk.checkpoint_write_us_max" is 29). */
#define KVT_STAT_NAME_MAX 112

struct kvt_stat_entry {
    char name[KVT_STAT_NAME_MAX];
    enum kvt_stat_type type;
    const char *unit;            /* borrowed, static: "bytes", "ms", "us" or "" */
    const char *help;            /* borrowed, static, one sentence */
    uint64_t value;              /* counter or gauge; a histogram's count */
    const struct kvt_hist *hist; /* histogram only; borrowed until the registry is reused */
};

/* A snapshot of stats in caller-owned storage (entries[cap]). */
struct kvt_stats_registry {
    struct kvt_stat_entry *entries;
    size_t n;
    size_t cap;
};

void kvt_stats_init(struct kvt_stats_registry *r, struct kvt_stat_entry *entries, size_t cap);
/* Forgets every entry, keeping the storage. */
void kvt_stats_reset(struct kvt_stats_registry *r);
/* Adds prefix+name (a counter or gauge) with its value. unit and help are borrowed and must be
 * static. KVT_E_INVAL for a histogram type, an empty or too long name, a NULL help; KVT_E_FULL
 * when the registry is full; KVT_E_EXISTS when the name is already registered. */
int kvt_stats_add(struct kvt_stats_registry *r, const char *prefix, const char *name,
                  enum kvt_stat_type type, const char *unit, const char *help, uint64_t value);
/* Adds a histogram; h is borrowed until the registry is reset. Same errors as kvt_stats_add. */
int kvt_stats_add_hist(struct kvt_stats_registry *r, const char *prefix, const char *name,
                       const char *unit, const char *help, const struct kvt_hist *h);
/* The entry called name, or NULL. */
const struct kvt_stat_entry *kvt_stats_find(const struct kvt_stats_registry *r, const char *name);
const char *kvt_stat_type_name(enum kvt_stat_type type);

/* Writes the Prometheus metric name of a stat into buf: "kvtier_" + name with every character
 * outside [a-zA-Z0-9_] turned into '_', plus "_total" for a counter. 0, or KVT_E_SMALLBUF (buf
 * then holds a truncated, still NUL-terminated name). */
int kvt_stats_prom_name(const char *name, enum kvt_stat_type type, char *buf, size_t cap);

#endif
