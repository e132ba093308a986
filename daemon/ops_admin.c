/*
 * Admin handlers: Stats (every subsystem's statistics in one answer), Ping, Config get, list and
 * set (admin keys only for admin uids, cross-key checks on a copy before committing), and
 * kvt__server_config_applied, which makes a committed change take effect.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/log.h"
#include "common/time.h"
#include "daemon/metrics.h"
#include "daemon/ops.h"

/* ---- Stats, Ping, Config ------------------------------------------------------------------ */

/* Room for every statistic the daemon has (about 130 with a disk tier today). A stat that does
 * not fit is a bug caught by the assertion in stat_add and by the stats tests, never a silent
 * truncation; STATS_RESERVE_BYTES likewise holds the whole packed answer (asserted below). */
#define STATS_MAX 512

/* One Stats answer: the registry snapshot, the messages that point into it, and the copies of
 * tier stats whose histograms the registry borrows. Static (in kvt__ops_stats) because the loop is
 * single-threaded and packs the answer before anything else runs. */
struct stats_buf {
    struct kvt_stat_entry entries[STATS_MAX];
    struct kvt_stats_registry reg;
    Kvtier__Stat items[STATS_MAX];
    Kvtier__Stat *ptrs[STATS_MAX];
    struct kvt_tier_stats cpu;
    struct kvt_disk_stats disk;
    uint64_t le[KVT_HIST_BUCKETS - 1];
};

_Static_assert((int)KVTIER__STAT_TYPE__STAT_COUNTER == (int)KVT_STAT_COUNTER &&
                   (int)KVTIER__STAT_TYPE__STAT_GAUGE == (int)KVT_STAT_GAUGE &&
                   (int)KVTIER__STAT_TYPE__STAT_HISTOGRAM == (int)KVT_STAT_HISTOGRAM,
               "the protocol's StatType numbers are the registry's");

static void stat_add(struct stats_buf *b, const char *prefix, const char *name,
                     enum kvt_stat_type type, const char *unit, const char *help, uint64_t v)
{
    /* Full or duplicate: STATS_MAX too small or a name registered twice, both bugs. */
    int rc = kvt_stats_add(&b->reg, prefix, name, type, unit, help, v);
    KVT_ASSERT(rc == 0);
}

static void stat_add_hist(struct stats_buf *b, const char *prefix, const char *name,
                          const char *unit, const char *help, const struct kvt_hist *h)
{
    int rc = kvt_stats_add_hist(&b->reg, prefix, name, unit, help, h);
    KVT_ASSERT(rc == 0);
}

struct kvt_tenant_stats *kvt__server_tenant_stats(struct kvt_server *s, const char *tenant)
{
    for (uint32_t i = 0; i < s->n_tenants; i++)
        if (!strcmp(s->tenants[i].name, tenant))
            return &s->tenants[i];
    struct kvt_tenant_stats *t = &s->tenants[KVT_TENANT_STATS_MAX];
    /* A tenant called "_other" shares the overflow's counters rather than make a second set of
     * stats of that name. */
    if (s->n_tenants < KVT_TENANT_STATS_MAX && strcmp(tenant, "_other"))
        t = &s->tenants[s->n_tenants++];
    snprintf(t->name, sizeof(t->name), "%s",
             t == &s->tenants[KVT_TENANT_STATS_MAX] ? "_other" : tenant);
    return t;
}

/* Per-tenant counters, and the levels the namespace table keeps per namespace summed by tenant:
 * namespaces registered, chunks stored, CPU-tier bytes (the registry copies the names). */
static void tenant_stats_fill(struct kvt_server *s, struct stats_buf *b)
{
    uint64_t nss[KVT_TENANT_STATS_MAX + 1] = {0}, objs[KVT_TENANT_STATS_MAX + 1] = {0},
                                        cpu[KVT_TENANT_STATS_MAX + 1] = {0};
    for (uint32_t slot = 0; slot < s->ns.used; slot++) {
        const struct kvt_ns *ns = &s->ns.v[slot];
        if (!ns->id)
            continue;
        size_t t = (size_t)(kvt__server_tenant_stats(s, ns->tenant) - s->tenants);
        nss[t]++;
        objs[t] += s->ns.objects[slot];
        cpu[t] += s->ns.dram_bytes[slot];
    }
    const enum kvt_stat_type g = KVT_STAT_GAUGE;
    for (uint32_t i = 0; i <= KVT_TENANT_STATS_MAX; i++) {
        const struct kvt_tenant_stats *t = &s->tenants[i];
        if (i >= s->n_tenants && !(i == KVT_TENANT_STATS_MAX && t->name[0]))
            continue; /* an unused slot, or "_other" before any tenant counted there */
        char prefix[KVT_STAT_NAME_MAX];
        snprintf(prefix, sizeof(prefix), "tenant.%s.", t->name);
#define KVT__TNSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, prefix, #name, type, unit, help, t->name);
        KVT_TENANT_STATS_DEF(KVT_STAT_FULL, KVT__TNSTAT_ADD)
#undef KVT__TNSTAT_ADD
        stat_add(b, prefix, "namespaces", g, "", "namespaces the tenant has registered", nss[i]);
        stat_add(b, prefix, "objects", g, "", "chunks the tenant's namespaces store", objs[i]);
        stat_add(b, prefix, "cpu_bytes", g, "bytes",
                 "CPU-tier bytes of the chunks the tenant's namespaces store", cpu[i]);
    }
}

/* Fills the registry from every subsystem's X-macro list, plus the few levels read on demand. */
static void stats_fill(struct kvt_server *s, struct stats_buf *b)
{
#define KVT__DSTAT_ADD(name, type, unit, help) stat_add(b, "", #name, type, unit, help, s->st.name);
    KVT_DAEMON_STATS_DEF(KVT_STAT_FULL, KVT__DSTAT_ADD)
#undef KVT__DSTAT_ADD
#define KVT__DHIST_ADD(name, unit, help) stat_add_hist(b, "", #name, unit, help, &s->st.name);
    KVT_DAEMON_HISTS(KVT__DHIST_ADD)
#undef KVT__DHIST_ADD
    const enum kvt_stat_type g = KVT_STAT_GAUGE;
    stat_add(b, "", "uptime_ms", g, "ms", "time since the daemon started",
             kvt_now_ms() - s->start_ms);
    stat_add(b, "", "connections", g, "", "client connections open", s->n_conns);
    stat_add(b, "", "namespaces", g, "", "namespaces registered", s->ns.n);
    stat_add(b, "", "index_objects", g, "", "chunks in the index", s->idx.n);
    stat_add(b, "", "index_capacity", g, "", "chunks the index can hold (index.max_objects)",
             s->idx.cap);
    stat_add(b, "", "workers", g, "", "copy worker threads", s->n_workers);
    stat_add(b, "", "contexts", g, "", "contexts open", s->ctx.n);
    stat_add(b, "", "versions", g, "", "chunk versions with version info (reuse)", s->versions.n);
    stat_add(b, "", "version_bytes", g, "bytes", "DRAM held by version info", s->versions.bytes);
    stat_add(b, "", "version_log_synced", KVT_STAT_COUNTER, "",
             "version log records written and synced to disk", s->vlog.synced);
    stat_add(b, "", "version_log_compactions", KVT_STAT_COUNTER, "",
             "version log compactions while running", s->vlog.compactions);
    stat_add(b, "", "version_log_bytes", g, "bytes",
             "bytes in the version log since start (its compaction)", s->vlog.file_bytes);
    stat_add(b, "", "holds", g, "", "Lookup holds open", s->holds.n);
    stat_add(b, "", "hold_pins", g, "", "chunks pinned by Lookup holds", s->holds.pins);
    stat_add(b, "", "holds_made", KVT_STAT_COUNTER, "", "Lookup holds made", s->holds.made);
    stat_add(b, "", "holds_released", KVT_STAT_COUNTER, "", "Lookup holds released by a client",
             s->holds.released);
    stat_add(b, "", "holds_expired", KVT_STAT_COUNTER, "",
             "Lookup holds let go because their lease ran out", s->holds.expired);
    stat_add(b, "", "contexts_expired", KVT_STAT_COUNTER, "",
             "contexts closed because their lease ran out", s->ctx.expired);
    stat_add(b, "", "abstracts", KVT_STAT_COUNTER, "", "span abstracts built and kept",
             s->abs.built);
    stat_add(b, "", "abstracts_dropped", KVT_STAT_COUNTER, "",
             "span abstracts not kept for lack of room (abstract.bytes_max)", s->abs.dropped);
    stat_add(b, "", "abstract_bytes", g, "bytes", "DRAM held by span abstracts", s->abs.bytes);
    stat_add(b, "", "log_lines_dropped", KVT_STAT_COUNTER, "",
             "log lines dropped because the log ring was full", kvt_log_dropped());
    stat_add(b, "cpu.", "page_moves", KVT_STAT_COUNTER, "",
             "CPU tier pages moved from one size class to another", kvt_host_page_moves(s->host));
    kvt_host_tier_ops.stats(s->host, &b->cpu);
    /* Moves between tiers are the tier manager's: chunks written from DRAM to disk, and read
     * from disk into DRAM. */
    struct kvt_tm_stats tms;
    kvt_tm_stats(s->tm, &tms);
    b->cpu.demotions = tms.demotions;
    b->cpu.promotions = tms.promotions;
#define KVT__TSTAT_ADD(name, type, unit, help)                                                     \
    stat_add(b, "cpu.", #name, type, unit, help, b->cpu.name);
    KVT_TIER_STATS_DEF(KVT_STAT_FULL, KVT__TSTAT_ADD)
#undef KVT__TSTAT_ADD
#define KVT__TMSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "tier.", #name, type, unit, help, tms.name);
    KVT_TM_STATS_DEF(KVT_STAT_FULL, KVT__TMSTAT_ADD)
#undef KVT__TMSTAT_ADD
    if (s->disk) {
        kvt_disk_stats(s->disk, &b->disk);
#define KVT__DTSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "disk.", #name, type, unit, help, b->disk.tier.name);
        KVT_TIER_STATS_DEF(KVT_STAT_FULL, KVT__DTSTAT_ADD)
#undef KVT__DTSTAT_ADD
#define KVT__DDSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "disk.", #name, type, unit, help, b->disk.name);
        KVT_DISK_STATS_DEF(KVT_STAT_FULL, KVT__DDSTAT_ADD)
#undef KVT__DDSTAT_ADD
#define KVT__DDHIST_ADD(name, unit, help)                                                          \
    stat_add_hist(b, "disk.", #name, unit, help, &b->disk.name);
        KVT_DISK_HISTS(KVT__DDHIST_ADD)
#undef KVT__DDHIST_ADD
    }
    /* Whether each tier serves (the cpu tier always does); a disk tier that was configured but
     * could not start is disk.configured 1, disk.serving 0, with its errno. */
    int disk_configured = s->cfg->disk_bytes > 0;
    stat_add(b, "cpu.", "serving", g, "", "1 while the tier serves requests", 1);
    stat_add(b, "disk.", "serving", g, "", "1 while the tier serves requests",
             s->disk && !b->disk.tier.failed);
    stat_add(b, "disk.", "configured", g, "",
             "1 when disk.bytes asks for a disk tier, whether or not it started",
             (uint64_t)disk_configured);
    stat_add(b, "disk.", "start_errno", g, "",
             "errno of the kernel's refusal of io_uring when the disk tier could not start, else 0",
             (uint64_t)s->disk_start_errno);
    tenant_stats_fill(s, b);
    if (s->metrics) {
        struct kvt_metrics_stats ms;
        kvt_metrics_stats(s->metrics, &ms);
#define KVT__MSTAT_ADD(name, type, unit, help)                                                     \
    stat_add(b, "metrics.", #name, type, unit, help, ms.name);
        KVT_METRICS_STATS_DEF(KVT_STAT_FULL, KVT__MSTAT_ADD)
#undef KVT__MSTAT_ADD
    }
    for (int t = 0; t < KVT_ALLOC_TAG_COUNT; t++) {
        char name[48];
        snprintf(name, sizeof(name), "%s_bytes", kvt_alloc_tag_name((enum kvt_alloc_tag)t));
        for (char *p = name; *p; p++)
            *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
        stat_add(b, "mem.", name, g, "bytes", "bytes allocated under this tag",
                 kvt_alloc_bytes((enum kvt_alloc_tag)t));
    }
}

/* The client library's form of each stat, for the metrics endpoint's renderer (common/prom.h):
 * bounds of every bucket, the overflow one's UINT64_MAX included. */
static struct kvt_stat snap_views[STATS_MAX];
static uint64_t snap_le[KVT_HIST_BUCKETS];

size_t kvt__server_stats_snapshot(struct kvt_server *s, const struct kvt_stat **out)
{
    static struct stats_buf b;
    kvt_stats_init(&b.reg, b.entries, STATS_MAX);
    stats_fill(s, &b);
    for (unsigned i = 0; i < KVT_HIST_BUCKETS; i++)
        snap_le[i] = kvt_hist_bound(i);
    for (size_t i = 0; i < b.reg.n; i++) {
        const struct kvt_stat_entry *e = &b.reg.entries[i];
        struct kvt_stat *v = &snap_views[i];
        *v = (struct kvt_stat){.name = (char *)e->name,
                               .value = e->value,
                               .type = e->type,
                               .help = (char *)e->help,
                               .unit = (char *)e->unit};
        if (e->hist) {
            v->n_buckets = KVT_HIST_BUCKETS;
            v->bucket_le = snap_le;
            v->bucket_counts = (uint64_t *)e->hist->counts;
            v->sum = e->hist->sum;
        }
    }
    *out = snap_views;
    return b.reg.n;
}

void kvt__ops_stats(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op)
{
    static struct stats_buf b;
    kvt_stats_init(&b.reg, b.entries, STATS_MAX);
    stats_fill(s, &b);
    for (unsigned i = 0; i + 1 < KVT_HIST_BUCKETS; i++)
        b.le[i] = kvt_hist_bound(i);
    for (size_t i = 0; i < b.reg.n; i++) {
        const struct kvt_stat_entry *e = &b.reg.entries[i];
        Kvtier__Stat *st = &b.items[i];
        kvtier__stat__init(st);
        st->name = (char *)e->name;
        st->value = e->value;
        st->type = (Kvtier__StatType)e->type;
        st->help = (char *)e->help;
        st->unit = (char *)e->unit;
        if (e->hist) {
            /* The histogram lives in the server or in b until the answer is packed. */
            st->n_bucket_le = KVT_HIST_BUCKETS - 1;
            st->bucket_le = b.le;
            st->n_bucket_counts = KVT_HIST_BUCKETS;
            st->bucket_counts = (uint64_t *)e->hist->counts;
            st->sum = e->hist->sum;
        }
        b.ptrs[i] = st;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__StatsResp sr = KVTIER__STATS_RESP__INIT;
    sr.n_stats = b.reg.n;
    sr.stats = b.ptrs;
    resp.result_case = KVTIER__RESPONSE__RESULT_STATS;
    resp.stats = &sr;
    /* Every stat, help included, fits the reservation with room for the frame length and the
     * request id kvt__server_respond adds; an answer past it would cost the connection. */
    KVT_ASSERT(kvtier__response__get_packed_size(&resp) + 64 <= STATS_RESERVE_BYTES);
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_ping(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                   const Kvtier__PingReq *p)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__PingResp pr = KVTIER__PING_RESP__INIT;
    pr.nonce = p->nonce;
    resp.result_case = KVTIER__RESPONSE__RESULT_PING;
    resp.ping = &pr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

#define CONFIG_VALUE_BYTES 1024 /* the longest string key (tenants) fits whole */

void kvt__ops_config_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const char *key)
{
    char val[CONFIG_VALUE_BYTES];
    int rc = kvt_cfg_get(&kvt_dconfig_table, s->cfg, key ? key : "", val, sizeof(val));
    if (rc) {
        reply_error(s, c, op, rc, "unknown config key");
        return;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__ConfigResp cr = KVTIER__CONFIG_RESP__INIT;
    cr.key = (char *)key;
    cr.value = val;
    resp.result_case = KVTIER__RESPONSE__RESULT_CONFIG;
    resp.config = &cr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

/* Room for the config table (about 70 keys today); the assertion catches a table that outgrew
 * it. Static for the same reason as the Stats answer: the loop packs the answer before anything
 * else runs. The packed answer (about 10K today, most of it help text) must fit the output
 * reserved for it, CONFIG_LIST_RESERVE_BYTES (asserted below), which is below the 64K that
 * max_frame_bytes allows at least; tests/integration/test_cli.sh checks the list is complete. */
#define CONFIG_LIST_MAX 256

void kvt__ops_config_list(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op)
{
    static Kvtier__ConfigEntry items[CONFIG_LIST_MAX];
    static Kvtier__ConfigEntry *ptrs[CONFIG_LIST_MAX];
    static char values[CONFIG_LIST_MAX][CONFIG_VALUE_BYTES];
    const struct kvt_cfg_table *t = &kvt_dconfig_table;
    KVT_ASSERT(t->n <= CONFIG_LIST_MAX);
    for (size_t i = 0; i < t->n; i++) {
        const struct kvt_cfg_entry *e = &t->entries[i];
        KVT_ASSERT(e->str_cap <= CONFIG_VALUE_BYTES); /* no value is cut short */
        int rc = kvt_cfg_get(t, s->cfg, e->key, values[i], sizeof(values[i]));
        KVT_ASSERT(rc == 0); /* every key of the table has a value */
        kvtier__config_entry__init(&items[i]);
        items[i].key = (char *)e->key;
        items[i].value = values[i];
        items[i].default_value = (char *)e->def;
        items[i].help = (char *)e->doc;
        items[i].runtime = (e->flags & KVT_CFG_RUNTIME) != 0;
        items[i].admin = (e->flags & KVT_CFG_ADMIN) != 0;
        ptrs[i] = &items[i];
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__ConfigListResp lr = KVTIER__CONFIG_LIST_RESP__INIT;
    lr.n_entries = t->n;
    lr.entries = ptrs;
    resp.result_case = KVTIER__RESPONSE__RESULT_CONFIG_LIST;
    resp.config_list = &lr;
    KVT_ASSERT(kvtier__response__get_packed_size(&resp) + 64 <= CONFIG_LIST_RESERVE_BYTES);
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_config_set(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         const Kvtier__ConfigSetReq *r)
{
    char why[256];
    const char *key = r->key ? r->key : "";
    const char *value = r->value ? r->value : "";
    const struct kvt_cfg_entry *e = kvt_cfg_find(&kvt_dconfig_table, key);
    if (e && (e->flags & KVT_CFG_RUNTIME) && (e->flags & KVT_CFG_ADMIN) && !c->admin) {
        s->st.config_denied++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "ops", "config set %s refused: uid=%u is not an admin",
                            key, (unsigned)c->uid);
        snprintf(why, sizeof(why), "'%s' can only be changed by an admin uid (admin_uids)", key);
        reply_error(s, c, op, KVT_E_NOTADMIN, why);
        return;
    }
    /* Validate cross-key constraints on a copy, then commit. */
    struct kvt_dconfig next = *s->cfg;
    int rc = kvt_cfg_set(&kvt_dconfig_table, &next, key, value, 1, why, sizeof(why));
    if (!rc)
        rc = kvt_dconfig_check(&next, why, sizeof(why));
    if (rc) {
        reply_error(s, c, op, rc, why);
        return;
    }
    *s->cfg = next;
    kvt__server_config_applied(s);
    KVT_INFO("ops", "config set %s = %s by uid=%u", key, value, (unsigned)c->uid);
    kvt__ops_config_reply(s, c, op, key);
}

void kvt__server_config_applied(struct kvt_server *s)
{
    kvt_log_set_level(kvt_log_level_parse(s->cfg->log_level));
    kvt__server_tiers_config_changed(s);
    kvt__server_spans_config(s);
}
