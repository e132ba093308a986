/*
 * The stats registry and latency histograms (see stats.h). Everything here works on storage the
 * caller owns; nothing allocates, so the daemon can observe latencies on every request and
 * answer a Stats request without touching the heap.
 */
#include "common/stats.h"

#include <stdio.h>
#include <string.h>

#include "common/time.h"
#include "kvtier/errors.h"

unsigned kvt_hist_bucket(uint64_t value)
{
    if (value <= 1)
        return 0;
    /* ceil(log2(value)): the smallest i with value <= 2^i. */
    unsigned i = 64u - (unsigned)__builtin_clzll(value - 1);
    return i < KVT_HIST_BUCKETS - 1 ? i : KVT_HIST_BUCKETS - 1;
}

uint64_t kvt_hist_bound(unsigned i)
{
    return i < KVT_HIST_BUCKETS - 1 ? (uint64_t)1 << i : UINT64_MAX;
}

void kvt_hist_observe(struct kvt_hist *h, uint64_t value)
{
    h->counts[kvt_hist_bucket(value)]++;
    h->count++;
    h->sum += value;
}

void kvt_hist_observe_since_ns(struct kvt_hist *h, uint64_t start_ns)
{
    if (!start_ns)
        return;
    uint64_t now = kvt_now_ns();
    kvt_hist_observe(h, now > start_ns ? (now - start_ns) / 1000u : 0);
}

void kvt_stats_init(struct kvt_stats_registry *r, struct kvt_stat_entry *entries, size_t cap)
{
    r->entries = entries;
    r->cap = cap;
    r->n = 0;
}

void kvt_stats_reset(struct kvt_stats_registry *r)
{
    r->n = 0;
}

const struct kvt_stat_entry *kvt_stats_find(const struct kvt_stats_registry *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->entries[i].name, name))
            return &r->entries[i];
    return NULL;
}

/* The common part of both adds: checks the name and takes the next entry. A duplicate would make
 * two Prometheus series of one name, so it is refused (a linear scan: a few hundred stats, read
 * once per Stats request). */
static int entry_take(struct kvt_stats_registry *r, const char *prefix, const char *name,
                      const char *help, struct kvt_stat_entry **out)
{
    char full[KVT_STAT_NAME_MAX];
    if (!name || !*name || !help)
        return KVT_E_INVAL;
    int len = snprintf(full, sizeof(full), "%s%s", prefix ? prefix : "", name);
    if (len < 0 || (size_t)len >= sizeof(full))
        return KVT_E_INVAL;
    if (kvt_stats_find(r, full))
        return KVT_E_EXISTS;
    if (r->n >= r->cap)
        return KVT_E_FULL;
    struct kvt_stat_entry *e = &r->entries[r->n];
    memset(e, 0, sizeof(*e));
    memcpy(e->name, full, (size_t)len + 1);
    e->help = help;
    *out = e;
    return 0;
}

int kvt_stats_add(struct kvt_stats_registry *r, const char *prefix, const char *name,
                  enum kvt_stat_type type, const char *unit, const char *help, uint64_t value)
{
    if (type != KVT_STAT_COUNTER && type != KVT_STAT_GAUGE)
        return KVT_E_INVAL;
    struct kvt_stat_entry *e;
    int rc = entry_take(r, prefix, name, help, &e);
    if (rc)
        return rc;
    e->type = type;
    e->unit = unit ? unit : "";
    e->value = value;
    r->n++;
    return 0;
}

int kvt_stats_add_hist(struct kvt_stats_registry *r, const char *prefix, const char *name,
                       const char *unit, const char *help, const struct kvt_hist *h)
{
    if (!h)
        return KVT_E_INVAL;
    struct kvt_stat_entry *e;
    int rc = entry_take(r, prefix, name, help, &e);
    if (rc)
        return rc;
    e->type = KVT_STAT_HISTOGRAM;
    e->unit = unit ? unit : "";
    e->value = h->count;
    e->hist = h;
    r->n++;
    return 0;
}

const char *kvt_stat_type_name(enum kvt_stat_type type)
{
    switch (type) {
    case KVT_STAT_COUNTER:
        return "counter";
    case KVT_STAT_GAUGE:
        return "gauge";
    case KVT_STAT_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

int kvt_stats_prom_name(const char *name, enum kvt_stat_type type, char *buf, size_t cap)
{
    if (!buf || !cap)
        return KVT_E_SMALLBUF;
    int len = snprintf(buf, cap, "kvtier_%s%s", name ? name : "",
                       type == KVT_STAT_COUNTER ? "_total" : "");
    /* The prefix is already valid; a buffer shorter than it holds only part of it. */
    size_t start = strnlen(buf, 7);
    for (char *p = buf + start; *p; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 *p == '_';
        if (!ok)
            *p = '_';
    }
    return len < 0 || (size_t)len >= cap ? KVT_E_SMALLBUF : 0;
}
