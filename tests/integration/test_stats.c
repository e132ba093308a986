/*
 * Stats through a real kvtierd with a write-through disk tier: every stat the X-macro lists
 * declare comes back (none truncated, none twice) with its type, unit and help; and the latency
 * histograms count exactly the Puts, Gets and Lookups sent, and the disk reads and writes, with
 * buckets that add up to the count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "common/stats.h"
#include "daemon/server.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 1 layer x 1 head x 64 dims x fp16 x (k, v) = 256 bytes per token; 128 tokens = 32 KiB. */
static const struct kvt_ns_spec spec = {.model_id = "stats-test",
                                        .layers = 1,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 128};
#define CHUNK (128 * 256)
#define N_PUTS 40
#define N_LOOKUPS 7

/* 1 MiB of DRAM holds about 24 chunks: later Gets of the first ones read the disk. */
static const char *args[] = {"--cpu.arena_bytes=1M",
                             "--cpu.page_bytes=256K",
                             "--tier.write_policy=write-through",
                             "--disk.bytes=128M",
                             "--disk.staging_bytes=4M",
                             "--disk.object_bytes_max=256K",
                             NULL};

static const struct kvt_stat *find(const struct kvt_stat *st, size_t n, const char *name)
{
    const struct kvt_stat *f = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(st[i].name, name))
            continue;
        if (f)
            fail_msg("stat %s appears twice", name);
        f = &st[i];
    }
    if (!f)
        fail_msg("stat %s is missing", name);
    return f;
}

static void expect(const struct kvt_stat *st, size_t n, const char *prefix, const char *name,
                   enum kvt_stat_type type, const char *unit, const char *help)
{
    char full[KVT_STAT_NAME_MAX];
    snprintf(full, sizeof(full), "%s%s", prefix, name);
    const struct kvt_stat *f = find(st, n, full);
    if (f->type != type)
        fail_msg("stat %s has type %d, not %d", full, (int)f->type, (int)type);
    assert_string_equal(f->unit, unit);
    assert_string_equal(f->help, help);
    assert_true(strlen(f->help) > 0);
}

static void test_every_stat_once(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_stat *st;
    size_t n;
    assert_int_equal(kvt_stats(c, &st, &n), 0);
    size_t want = 0;
#define EXPECT(pfx, name, type, unit, help) (expect(st, n, pfx, #name, type, unit, help), want++);
#define D(name, type, unit, help) EXPECT("", name, type, unit, help)
    KVT_DAEMON_STATS_DEF(KVT_STAT_FULL, D)
#define DH(name, unit, help) EXPECT("", name, KVT_STAT_HISTOGRAM, unit, help)
    KVT_DAEMON_HISTS(DH)
#define CT(name, type, unit, help) EXPECT("cpu.", name, type, unit, help)
    KVT_TIER_STATS_DEF(KVT_STAT_FULL, CT)
#define TM(name, type, unit, help) EXPECT("tier.", name, type, unit, help)
    KVT_TM_STATS_DEF(KVT_STAT_FULL, TM)
#define DT(name, type, unit, help) EXPECT("disk.", name, type, unit, help)
    KVT_TIER_STATS_DEF(KVT_STAT_FULL, DT)
    KVT_DISK_STATS_DEF(KVT_STAT_FULL, DT)
#define DDH(name, unit, help) EXPECT("disk.", name, KVT_STAT_HISTOGRAM, unit, help)
    KVT_DISK_HISTS(DDH)
    /* The levels kvt__ops_stats reads on demand, and one byte count per allocation tag. */
    static const char *const extra[] = {"uptime_ms",          "connections",
                                        "namespaces",         "index_objects",
                                        "index_capacity",     "workers",
                                        "log_lines_dropped",  "cpu.page_moves",
                                        "contexts",           "contexts_expired",
                                        "abstracts",          "abstracts_dropped",
                                        "abstract_bytes",     "holds",
                                        "hold_pins",          "holds_made",
                                        "holds_released",     "holds_expired",
                                        "versions",           "version_bytes",
                                        "version_log_synced", "version_log_compactions",
                                        "version_log_bytes",  "cpu.serving",
                                        "disk.serving",       "disk.configured",
                                        "disk.start_errno"};
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++, want++)
        assert_true(strlen(find(st, n, extra[i])->help) > 0);
    /* This connection's tenant: its counters and its namespace levels. */
    char tenant[64];
    snprintf(tenant, sizeof(tenant), "tenant.uid-%u.", (unsigned)getuid());
#define TN(name, type, unit, help) EXPECT(tenant, name, type, unit, help)
    KVT_TENANT_STATS_DEF(KVT_STAT_FULL, TN)
    static const char *const tenant_levels[] = {"namespaces", "objects", "cpu_bytes"};
    for (size_t i = 0; i < 3; i++, want++) {
        char name[KVT_STAT_NAME_MAX];
        snprintf(name, sizeof(name), "%s%s", tenant, tenant_levels[i]);
        assert_int_equal(find(st, n, name)->type, KVT_STAT_GAUGE);
    }
    assert_int_equal(find(st, n, "disk.serving")->value, 1);
    assert_int_equal(find(st, n, "disk.start_errno")->value, 0);
    for (int t = 0; t < KVT_ALLOC_TAG_COUNT; t++, want++) {
        char name[64];
        snprintf(name, sizeof(name), "mem.%s_bytes", kvt_alloc_tag_name((enum kvt_alloc_tag)t));
        for (char *p = name; *p; p++)
            *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
        assert_int_equal(find(st, n, name)->type, KVT_STAT_GAUGE);
    }
    /* Nothing beyond the lists, nothing cut off: the counts agree exactly. */
    assert_int_equal(n, want);
    for (size_t i = 0; i < n; i++) {
        assert_true(strlen(st[i].help) > 0);
        assert_true(st[i].type == KVT_STAT_HISTOGRAM ? st[i].n_buckets == KVT_HIST_BUCKETS
                                                     : st[i].n_buckets == 0);
    }
    kvt_stats_free(st, n);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* The histogram called name: bounds are the registry's, counts add up to the count. */
static const struct kvt_stat *hist(const struct kvt_stat *st, size_t n, const char *name)
{
    const struct kvt_stat *h = find(st, n, name);
    assert_int_equal(h->type, KVT_STAT_HISTOGRAM);
    assert_int_equal(h->n_buckets, KVT_HIST_BUCKETS);
    uint64_t total = 0;
    for (unsigned i = 0; i < KVT_HIST_BUCKETS; i++) {
        assert_true(h->bucket_le[i] == kvt_hist_bound(i));
        total += h->bucket_counts[i];
    }
    assert_int_equal(total, h->value);
    assert_true(h->value == 0 || h->sum > 0 || h->bucket_counts[0] == h->value);
    return h;
}

static void test_latency_counts(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 8 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    static uint8_t buf[CHUNK];
    struct kvt_key keys[N_PUTS];
    for (uint64_t i = 0; i < N_PUTS; i++) {
        kvt_test_fill(buf, CHUNK, i);
        keys[i] = (struct kvt_key){i, 0x57a7};
        assert_int_equal(kvt_put(c, ns.handle, &keys[i], buf, CHUNK, 0), 0);
    }
    /* A miss is answered too, and timed like any other Get. */
    struct kvt_key absent = {999, 0x57a7};
    size_t len;
    enum kvt_tier_id tier;
    assert_int_equal(kvt_get(c, ns.handle, &absent, buf, CHUNK, &len, &tier), KVT_E_NOTFOUND);
    int from_disk = 0;
    for (uint64_t i = 0; i < N_PUTS; i++) {
        assert_int_equal(kvt_get(c, ns.handle, &keys[i], buf, CHUNK, &len, &tier), 0);
        from_disk += tier == KVT_TIER_DISK;
    }
    assert_true(from_disk > 0);
    for (int i = 0; i < N_LOOKUPS; i++) {
        size_t hits;
        assert_int_equal(kvt_lookup(c, ns.handle, keys, N_PUTS, &hits, NULL), 0);
    }
    struct kvt_stat *st;
    size_t n;
    assert_int_equal(kvt_stats(c, &st, &n), 0);
    assert_int_equal(hist(st, n, "put_latency_us")->value, N_PUTS);
    assert_int_equal(hist(st, n, "get_latency_us")->value, N_PUTS + 1);
    assert_int_equal(hist(st, n, "lookup_latency_us")->value, N_LOOKUPS);
    /* Write-through: every Put was durable on disk before its answer, so every data write has
     * completed; every disk read completed before its Get was answered. */
    const struct kvt_stat *w = hist(st, n, "disk.write_latency_us");
    assert_true(w->value >= N_PUTS);
    assert_int_equal(w->value, find(st, n, "disk.writes")->value);
    const struct kvt_stat *r = hist(st, n, "disk.read_latency_us");
    assert_true(r->value >= (uint64_t)from_disk);
    assert_int_equal(r->value, find(st, n, "disk.reads")->value);
    /* Real I/O takes at least a microsecond. */
    assert_true(w->sum > 0 && r->sum > 0);
    kvt_stats_free(st, n);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_stat_once),
        cmocka_unit_test(test_latency_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
