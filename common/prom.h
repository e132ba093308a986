/*
 * The Prometheus text exposition format (0.0.4) of a set of stats: the one renderer behind both
 * the daemon's /metrics endpoint and `kvtier stats --prometheus`, so the two never disagree.
 *
 * Names and labels come from the stat names alone (docs/metrics.md):
 *   - "cpu.X" and "disk.X" (a tier's stats) are the sample tier="cpu" / tier="disk" of one
 *     family kvtier_X, so a quantity both tiers have (hits, bytes_used, ...) is one family with
 *     two series; a stat only one tier has is a family with one series;
 *   - "tenant.T.X" is the sample tenant="T" of the family kvtier_tenant_X;
 *   - any other name N is the family kvtier_N without labels.
 * Every family gets HELP (the help of its first stat) and TYPE; counters end in "_total";
 * histograms are cumulative _bucket{le=...} series ending in le="+Inf", with _sum and _count. The
 * samples of a family are written together, in the order their stats come.
 */
#ifndef KVT_COMMON_PROM_H
#define KVT_COMMON_PROM_H

#include <stddef.h>

#include "kvtier/kvtier.h"

/* Output into caller-owned memory; nothing is allocated. */
struct kvt_prom_out {
    char *buf; /* borrowed: cap bytes */
    size_t cap;
    size_t len;   /* bytes written (buf is NUL-terminated when len < cap) */
    int overflow; /* set when something did not fit */
};

/* Renders the n stats (borrowed during the call; a histogram's buckets are per bucket, not
 * cumulative, and its last bound is UINT64_MAX) into out, from out->len on. 0; KVT_E_SMALLBUF
 * when the text did not fit (out->len then says how much was written); KVT_E_INVAL for a name
 * too long for a metric name; KVT_E_EXISTS when two stats give the
 * same series, or one family two types (a naming bug the stats tests catch). */
int kvt_prom_render(const struct kvt_stat *st, size_t n, struct kvt_prom_out *out);

#endif
