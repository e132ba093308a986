/*
 * The stats registry and latency histograms: bucket edges (0, 1, powers of two and one past
 * them), the overflow bucket, count and sum; observations that were never timed are ignored;
 * the registry refuses duplicates, bad names and a full table rather than dropping a stat; and
 * Prometheus names map dots to underscores with the kvtier_ prefix and _total on counters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/prom.h"
#include "common/stats.h"
#include "common/time.h"
#include "kvtier/errors.h"

static void test_bucket_edges(void **state)
{
    (void)state;
    assert_int_equal(kvt_hist_bucket(0), 0);
    assert_int_equal(kvt_hist_bucket(1), 0);
    assert_int_equal(kvt_hist_bucket(2), 1);
    assert_int_equal(kvt_hist_bucket(3), 2);
    assert_int_equal(kvt_hist_bucket(4), 2);
    assert_int_equal(kvt_hist_bucket(5), 3);
    /* Every bound belongs to its own bucket and one more goes to the next. */
    for (unsigned i = 0; i + 1 < KVT_HIST_BUCKETS; i++) {
        uint64_t b = kvt_hist_bound(i);
        assert_int_equal(b, (uint64_t)1 << i);
        assert_int_equal(kvt_hist_bucket(b), i);
        assert_int_equal(kvt_hist_bucket(b + 1), i + 1);
    }
    assert_true(kvt_hist_bound(KVT_HIST_BUCKETS - 1) == UINT64_MAX);
}

static void test_overflow_bucket(void **state)
{
    (void)state;
    const unsigned last = KVT_HIST_BUCKETS - 1;
    uint64_t top = kvt_hist_bound(last - 1); /* 2^26 us, 67 s */
    assert_int_equal(kvt_hist_bucket(top), last - 1);
    assert_int_equal(kvt_hist_bucket(top + 1), last);
    assert_int_equal(kvt_hist_bucket(UINT64_MAX), last);
    assert_int_equal(kvt_hist_bucket((uint64_t)1 << 63), last);
}

static void test_count_and_sum(void **state)
{
    (void)state;
    struct kvt_hist h;
    memset(&h, 0, sizeof(h));
    const uint64_t v[] = {0, 1, 2, 3, 1000, 1024, 1025, (uint64_t)1 << 40};
    uint64_t sum = 0;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        kvt_hist_observe(&h, v[i]);
        sum += v[i];
    }
    assert_int_equal(h.count, 8);
    assert_true(h.sum == sum);
    assert_int_equal(h.counts[0], 2);  /* 0, 1 */
    assert_int_equal(h.counts[1], 1);  /* 2 */
    assert_int_equal(h.counts[2], 1);  /* 3 */
    assert_int_equal(h.counts[10], 2); /* 1000, 1024 */
    assert_int_equal(h.counts[11], 1); /* 1025 */
    assert_int_equal(h.counts[KVT_HIST_BUCKETS - 1], 1);
    uint64_t total = 0;
    for (unsigned i = 0; i < KVT_HIST_BUCKETS; i++)
        total += h.counts[i];
    assert_int_equal(total, h.count);
}

static void test_observe_since(void **state)
{
    (void)state;
    struct kvt_hist h;
    memset(&h, 0, sizeof(h));
    kvt_hist_observe_since_ns(&h, 0); /* never timed: ignored */
    assert_int_equal(h.count, 0);
    uint64_t start = kvt_now_ns() - 5000000; /* 5 ms ago */
    kvt_hist_observe_since_ns(&h, start);
    assert_int_equal(h.count, 1);
    assert_true(h.sum >= 5000 && h.sum < 5000000);
    assert_int_equal(h.counts[kvt_hist_bucket(h.sum)], 1);
    /* A start in the future (clock confusion) counts as 0 us, not as 2^64 - x. */
    kvt_hist_observe_since_ns(&h, kvt_now_ns() + 1000000000ull);
    assert_int_equal(h.counts[0], 1);
}

static void test_registry(void **state)
{
    (void)state;
    struct kvt_stat_entry e[4];
    struct kvt_stats_registry r;
    struct kvt_hist h;
    memset(&h, 0, sizeof(h));
    kvt_hist_observe(&h, 7);
    kvt_stats_init(&r, e, 4);
    assert_int_equal(kvt_stats_add(&r, "disk.", "reads", KVT_STAT_COUNTER, "", "reads", 3), 0);
    assert_int_equal(kvt_stats_add(&r, "", "objects", KVT_STAT_GAUGE, NULL, "objects", 9), 0);
    assert_int_equal(kvt_stats_add_hist(&r, "", "put_latency_us", "us", "puts", &h), 0);
    /* Duplicates, histograms through the scalar add, missing help and bad names are refused. */
    assert_int_equal(kvt_stats_add(&r, "disk.", "reads", KVT_STAT_COUNTER, "", "x", 1),
                     KVT_E_EXISTS);
    assert_int_equal(kvt_stats_add(&r, "", "h", KVT_STAT_HISTOGRAM, "", "x", 1), KVT_E_INVAL);
    assert_int_equal(kvt_stats_add(&r, "", "nohelp", KVT_STAT_GAUGE, "", NULL, 1), KVT_E_INVAL);
    assert_int_equal(kvt_stats_add(&r, "", "", KVT_STAT_GAUGE, "", "x", 1), KVT_E_INVAL);
    char longname[KVT_STAT_NAME_MAX + 1];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    assert_int_equal(kvt_stats_add(&r, "", longname, KVT_STAT_GAUGE, "", "x", 1), KVT_E_INVAL);
    assert_int_equal(kvt_stats_add_hist(&r, "", "nohist", "us", "x", NULL), KVT_E_INVAL);
    assert_int_equal(r.n, 3);
    assert_int_equal(kvt_stats_add(&r, "", "fourth", KVT_STAT_GAUGE, "", "x", 4), 0);
    assert_int_equal(kvt_stats_add(&r, "", "fifth", KVT_STAT_GAUGE, "", "x", 5), KVT_E_FULL);
    assert_int_equal(r.n, 4);

    const struct kvt_stat_entry *f = kvt_stats_find(&r, "disk.reads");
    assert_non_null(f);
    assert_int_equal(f->type, KVT_STAT_COUNTER);
    assert_int_equal(f->value, 3);
    assert_string_equal(f->help, "reads");
    f = kvt_stats_find(&r, "objects");
    assert_non_null(f);
    assert_string_equal(f->unit, "");
    f = kvt_stats_find(&r, "put_latency_us");
    assert_non_null(f);
    assert_int_equal(f->type, KVT_STAT_HISTOGRAM);
    assert_ptr_equal(f->hist, &h);
    assert_int_equal(f->value, 1); /* the count */
    assert_string_equal(f->unit, "us");
    assert_null(kvt_stats_find(&r, "reads"));

    kvt_stats_reset(&r);
    assert_int_equal(r.n, 0);
    assert_null(kvt_stats_find(&r, "disk.reads"));
    assert_int_equal(kvt_stats_add(&r, "disk.", "reads", KVT_STAT_COUNTER, "", "reads", 4), 0);
}

static void test_prom_name(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(kvt_stats_prom_name("disk.reads", KVT_STAT_COUNTER, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "kvtier_disk_reads_total");
    assert_int_equal(kvt_stats_prom_name("cpu.bytes_used", KVT_STAT_GAUGE, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "kvtier_cpu_bytes_used");
    assert_int_equal(kvt_stats_prom_name("a-b c", KVT_STAT_HISTOGRAM, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "kvtier_a_b_c");
    char small[10];
    assert_int_equal(kvt_stats_prom_name("disk.reads", KVT_STAT_GAUGE, small, sizeof(small)),
                     KVT_E_SMALLBUF);
    assert_string_equal(small, "kvtier_di");
    char tiny[4];
    assert_int_equal(kvt_stats_prom_name("x", KVT_STAT_GAUGE, tiny, sizeof(tiny)), KVT_E_SMALLBUF);
    assert_string_equal(tiny, "kvt");
    assert_string_equal(kvt_stat_type_name(KVT_STAT_COUNTER), "counter");
    assert_string_equal(kvt_stat_type_name(KVT_STAT_GAUGE), "gauge");
    assert_string_equal(kvt_stat_type_name(KVT_STAT_HISTOGRAM), "histogram");
}

/* The renderer (common/prom.c): families gathered across the input, tier and tenant labels,
 * escaping, cumulative buckets with le after the stat's own label, and its refusals. */
static void test_prom_render(void **state)
{
    (void)state;
    uint64_t le[3] = {1, 2, UINT64_MAX}, counts[3] = {1, 0, 2};
    struct kvt_stat st[] = {
        {.name = "cpu.hits", .type = KVT_STAT_COUNTER, .help = "hits\\n", .value = 5},
        {.name = "puts", .type = KVT_STAT_COUNTER, .help = "puts", .value = 1},
        {.name = "disk.hits", .type = KVT_STAT_COUNTER, .help = "other help", .value = 6},
        {.name = "tenant.a\"b.puts", .type = KVT_STAT_COUNTER, .help = "tp", .value = 2},
        {.name = "disk.read_us",
         .type = KVT_STAT_HISTOGRAM,
         .help = "lat",
         .value = 3,
         .sum = 9,
         .n_buckets = 3,
         .bucket_le = le,
         .bucket_counts = counts},
    };
    char buf[4096];
    struct kvt_prom_out out = {.buf = buf, .cap = sizeof(buf)};
    assert_int_equal(kvt_prom_render(st, 5, &out), 0);
    assert_int_equal(out.len, strlen(buf));
    const char *want = "# HELP kvtier_hits_total hits\\\\n\n"
                       "# TYPE kvtier_hits_total counter\n"
                       "kvtier_hits_total{tier=\"cpu\"} 5\n"
                       "kvtier_hits_total{tier=\"disk\"} 6\n"
                       "# HELP kvtier_puts_total puts\n"
                       "# TYPE kvtier_puts_total counter\n"
                       "kvtier_puts_total 1\n"
                       "# HELP kvtier_tenant_puts_total tp\n"
                       "# TYPE kvtier_tenant_puts_total counter\n"
                       "kvtier_tenant_puts_total{tenant=\"a\\\"b\"} 2\n"
                       "# HELP kvtier_read_us lat\n"
                       "# TYPE kvtier_read_us histogram\n"
                       "kvtier_read_us_bucket{tier=\"disk\",le=\"1\"} 1\n"
                       "kvtier_read_us_bucket{tier=\"disk\",le=\"2\"} 1\n"
                       "kvtier_read_us_bucket{tier=\"disk\",le=\"+Inf\"} 3\n"
                       "kvtier_read_us_sum{tier=\"disk\"} 9\n"
                       "kvtier_read_us_count{tier=\"disk\"} 3\n";
    assert_string_equal(buf, want);

    /* Too small a buffer: an error, and what was written is a NUL-terminated prefix. */
    struct kvt_prom_out small = {.buf = buf, .cap = 100};
    assert_int_equal(kvt_prom_render(st, 5, &small), KVT_E_SMALLBUF);
    assert_true(small.len < 100 && strlen(buf) == small.len);
    assert_memory_equal(buf, want, small.len);

    /* One series twice, one family of two types, an empty tier or tenant: refused. */
    struct kvt_stat dup[] = {{.name = "cpu.x", .type = KVT_STAT_GAUGE, .help = "x"},
                             {.name = "cpu.x", .type = KVT_STAT_GAUGE, .help = "x"}};
    out = (struct kvt_prom_out){.buf = buf, .cap = sizeof(buf)};
    assert_int_equal(kvt_prom_render(dup, 2, &out), KVT_E_EXISTS);
    struct kvt_stat types[] = {{.name = "cpu.x", .type = KVT_STAT_GAUGE, .help = "x"},
                               {.name = "disk.x", .type = KVT_STAT_COUNTER, .help = "x"}};
    out = (struct kvt_prom_out){.buf = buf, .cap = sizeof(buf)};
    assert_int_equal(kvt_prom_render(types, 2, &out), KVT_E_EXISTS);
    /* "tenant.x" (no stat after the tenant) and "tenant..x" (no tenant) are plain names. */
    struct kvt_stat plain[] = {{.name = "tenant.x", .type = KVT_STAT_GAUGE, .help = "x"},
                               {.name = "tenant..x", .type = KVT_STAT_GAUGE, .help = "x"}};
    out = (struct kvt_prom_out){.buf = buf, .cap = sizeof(buf)};
    assert_int_equal(kvt_prom_render(plain, 2, &out), 0);
    assert_non_null(strstr(buf, "\nkvtier_tenant__x 0\n"));
    assert_non_null(strstr(buf, "\nkvtier_tenant_x 0\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_edges),  cmocka_unit_test(test_overflow_bucket),
        cmocka_unit_test(test_count_and_sum), cmocka_unit_test(test_observe_since),
        cmocka_unit_test(test_registry),      cmocka_unit_test(test_prom_name),
        cmocka_unit_test(test_prom_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
