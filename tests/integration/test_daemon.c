/*
 * Integration tests of the CPU-tier paths through a real kvtierd: register, put/get (arena,
 * inline and staged buffers), lookup of chained keys, delete, batches, eviction under pressure,
 * stats and runtime config, tenant isolation, reconnect after a daemon restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

static struct kvt_test_daemon daemon_proc;

/* Small geometry: 2 layers x 2 heads x 8 dims x fp16 = 128 bytes per token, 16 tokens/chunk. */
static const struct kvt_ns_spec spec = {.model_id = "test-model",
                                        .layers = 2,
                                        .kv_heads = 2,
                                        .head_dim = 8,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};
#define CHUNK_BYTES (16 * 128)

static int setup(void **state)
{
    (void)state;
    memset(&daemon_proc, 0, sizeof(daemon_proc));
    /* This uid may act for tenants alice and bob (test_tenants_isolated). */
    static char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=alice=uid:%u;bob=uid:%u", getuid(), getuid());
    const char *args[] = {tenants, NULL};
    return kvt_test_daemon_start(&daemon_proc, args);
}

static int teardown(void **state)
{
    (void)state;
    int rc = kvt_test_daemon_stop(&daemon_proc);
    kvt_test_daemon_cleanup(&daemon_proc);
    return rc; /* a clean SIGTERM shutdown exits 0 */
}

static struct kvt_client *connect_as(const char *tenant)
{
    struct kvt_connect_opts o = {.socket_path = daemon_proc.socket_path,
                                 .tenant = tenant,
                                 .arena_bytes = 16 << 20,
                                 .timeout_ms = 3000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    return c;
}

static void fill(void *buf, size_t n, uint32_t seed)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 2654435761u + seed) >> 7);
}

static void test_put_get_roundtrip(void **state)
{
    (void)state;
    struct kvt_client *c = connect_as(NULL);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    assert_int_equal(ns.chunk_bytes, CHUNK_BYTES);
    assert_int_equal(ns.bytes_per_token, 128);

    int32_t tokens[64];
    for (int i = 0; i < 64; i++)
        tokens[i] = 1000 + i;
    struct kvt_key keys[4];
    assert_int_equal(kvt_chunk_keys(&ns, NULL, tokens, 64, keys, 4), 4);

    /* Arena buffer (zero-copy), heap buffer (inline) and partial chunk. */
    uint8_t *abuf = kvt_arena_alloc(c, CHUNK_BYTES);
    assert_non_null(abuf);
    fill(abuf, CHUNK_BYTES, 1);
    assert_int_equal(kvt_put(c, ns.handle, &keys[0], abuf, CHUNK_BYTES, 0), 0);
    uint8_t heap[CHUNK_BYTES];
    fill(heap, CHUNK_BYTES, 2);
    assert_int_equal(kvt_put(c, ns.handle, &keys[1], heap, CHUNK_BYTES, 16), 0);
    fill(heap, 5 * 128, 3);
    assert_int_equal(kvt_put(c, ns.handle, &keys[2], heap, 5 * 128, 5), 0);
    /* Same key again: accepted, not copied. */
    assert_int_equal(kvt_put(c, ns.handle, &keys[0], abuf, CHUNK_BYTES, 0), 0);

    uint8_t *out = kvt_arena_alloc(c, CHUNK_BYTES);
    size_t len = 0;
    enum kvt_tier_id tier = KVT_TIER_NONE;
    assert_int_equal(kvt_get(c, ns.handle, &keys[0], out, CHUNK_BYTES, &len, &tier), 0);
    assert_int_equal(len, CHUNK_BYTES);
    assert_int_equal(tier, KVT_TIER_CPU);
    assert_memory_equal(out, abuf, CHUNK_BYTES);

    uint8_t hout[CHUNK_BYTES], want[CHUNK_BYTES];
    fill(want, CHUNK_BYTES, 2);
    assert_int_equal(kvt_get(c, ns.handle, &keys[1], hout, sizeof(hout), &len, NULL), 0);
    assert_memory_equal(hout, want, CHUNK_BYTES);
    fill(want, 5 * 128, 3);
    assert_int_equal(kvt_get(c, ns.handle, &keys[2], hout, sizeof(hout), &len, NULL), 0);
    assert_int_equal(len, 5 * 128);
    assert_memory_equal(hout, want, 5 * 128);

    /* Too small a buffer: a clear error and the needed length, in the arena and outside it
     * (an inline answer is bounded by the caller's capacity too). */
    assert_int_equal(kvt_get(c, ns.handle, &keys[0], out, 100, &len, NULL), KVT_E_SMALLBUF);
    assert_int_equal(kvt_get(c, ns.handle, &keys[0], hout, 100, &len, NULL), KVT_E_SMALLBUF);
    assert_int_equal(len, CHUNK_BYTES);
    /* Missing key. */
    assert_int_equal(kvt_get(c, ns.handle, &keys[3], out, CHUNK_BYTES, &len, &tier),
                     KVT_E_NOTFOUND);
    assert_int_equal(tier, KVT_TIER_NONE);

    /* Lookup reports the leading hits: keys 0..2 present, 3 missing. */
    size_t hits = 99;
    enum kvt_tier_id tiers[4];
    assert_int_equal(kvt_lookup(c, ns.handle, keys, 4, &hits, tiers), 0);
    assert_int_equal(hits, 3);
    assert_int_equal(tiers[0], KVT_TIER_CPU);
    /* A hole in the middle stops the prefix. */
    int st[2];
    assert_int_equal(kvt_delete(c, ns.handle, &keys[1], 1, st), 0);
    assert_int_equal(st[0], 0);
    assert_int_equal(kvt_lookup(c, ns.handle, keys, 4, &hits, NULL), 0);
    assert_int_equal(hits, 1);
    assert_int_equal(kvt_delete(c, ns.handle, &keys[1], 1, st), 0);
    assert_int_equal(st[0], KVT_E_NOTFOUND);
    kvt_arena_free(c, abuf);
    kvt_arena_free(c, out);
    kvt_close(c);
}

static void test_batches(void **state)
{
    (void)state;
    struct kvt_client *c = connect_as(NULL);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    enum { N = 200 };
    int32_t tokens[N * 16];
    for (int i = 0; i < N * 16; i++)
        tokens[i] = 7 * i + 3;
    struct kvt_key keys[N];
    assert_int_equal(kvt_chunk_keys(&ns, NULL, tokens, N * 16, keys, N), N);
    uint8_t *buf = kvt_arena_alloc(c, (size_t)N * CHUNK_BYTES);
    assert_non_null(buf);
    struct kvt_item items[N];
    for (int i = 0; i < N; i++) {
        fill(buf + (size_t)i * CHUNK_BYTES, CHUNK_BYTES, 100 + (uint32_t)i);
        items[i] = (struct kvt_item){
            .key = keys[i], .buf = buf + (size_t)i * CHUNK_BYTES, .len = CHUNK_BYTES};
    }
    /* One item has the wrong size: only it fails. */
    items[17].len = CHUNK_BYTES - 2;
    assert_int_equal(kvt_put_batch(c, ns.handle, items, N), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(items[i].status, i == 17 ? KVT_E_GEOMETRY : 0);

    uint8_t *out = kvt_arena_alloc(c, (size_t)N * CHUNK_BYTES);
    for (int i = 0; i < N; i++)
        items[i] = (struct kvt_item){
            .key = keys[i], .buf = out + (size_t)i * CHUNK_BYTES, .len = CHUNK_BYTES};
    assert_int_equal(kvt_get_batch(c, ns.handle, items, N), 0);
    for (int i = 0; i < N; i++) {
        if (i == 17) {
            assert_int_equal(items[i].status, KVT_E_NOTFOUND);
            continue;
        }
        assert_int_equal(items[i].status, 0);
        assert_int_equal(items[i].len, CHUNK_BYTES);
        assert_memory_equal(out + (size_t)i * CHUNK_BYTES, buf + (size_t)i * CHUNK_BYTES,
                            CHUNK_BYTES);
    }
    kvt_close(c);
}

static void test_tenants_isolated(void **state)
{
    (void)state;
    struct kvt_client *a = connect_as("alice");
    struct kvt_client *b = connect_as("bob");
    struct kvt_ns_info na, nb;
    assert_int_equal(kvt_register(a, &spec, &na), 0);
    assert_int_equal(kvt_register(b, &spec, &nb), 0);
    assert_true(na.seed != nb.seed); /* same model, different tenants: different keys */
    int32_t tokens[16] = {1, 2, 3};
    struct kvt_key ka, kb;
    kvt_chunk_keys(&na, NULL, tokens, 16, &ka, 1);
    kvt_chunk_keys(&nb, NULL, tokens, 16, &kb, 1);
    uint8_t buf[CHUNK_BYTES];
    fill(buf, sizeof(buf), 9);
    assert_int_equal(kvt_put(a, na.handle, &ka, buf, sizeof(buf), 0), 0);
    /* Bob, even with Alice's key, finds nothing in his namespace. */
    size_t len;
    assert_int_equal(kvt_get(b, nb.handle, &ka, buf, sizeof(buf), &len, NULL), KVT_E_NOTFOUND);
    size_t hits = 1;
    assert_int_equal(kvt_lookup(b, nb.handle, &ka, 1, &hits, NULL), 0);
    assert_int_equal(hits, 0);
    kvt_close(a);
    kvt_close(b);
}

static void test_eviction_under_pressure(void **state)
{
    (void)state;
    /* A dedicated daemon with a 4 MiB CPU tier. */
    struct kvt_test_daemon small = {0};
    const char *args[] = {"--cpu.arena_bytes=4M", "--cpu.page_bytes=1M", NULL};
    assert_int_equal(kvt_test_daemon_start(&small, args), 0);
    struct kvt_connect_opts o = {.socket_path = small.socket_path, .arena_bytes = 8 << 20};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_spec big = spec;
    big.tokens_per_chunk = 2048; /* 256 KiB chunks: 16 fit */
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &big, &ns), 0);
    uint8_t *buf = kvt_arena_alloc(c, ns.chunk_bytes);
    enum { N = 40 };
    struct kvt_key keys[N];
    for (uint32_t i = 0; i < N; i++) {
        keys[i] = (struct kvt_key){i + 1, 42};
        fill(buf, ns.chunk_bytes, i);
        assert_int_equal(kvt_put(c, ns.handle, &keys[i], buf, ns.chunk_bytes, 0), 0);
    }
    /* The newest chunks are present and intact; the oldest were evicted. */
    size_t len;
    uint8_t *want = malloc(ns.chunk_bytes);
    for (uint32_t i = N - 8; i < N; i++) {
        assert_int_equal(kvt_get(c, ns.handle, &keys[i], buf, ns.chunk_bytes, &len, NULL), 0);
        fill(want, ns.chunk_bytes, i);
        assert_memory_equal(buf, want, ns.chunk_bytes);
    }
    assert_int_equal(kvt_get(c, ns.handle, &keys[0], buf, ns.chunk_bytes, &len, NULL),
                     KVT_E_NOTFOUND);
    struct kvt_stat *st;
    size_t n;
    assert_int_equal(kvt_stats(c, &st, &n), 0);
    uint64_t evictions = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(st[i].name, "cpu.evictions"))
            evictions = st[i].value;
    kvt_stats_free(st, n);
    assert_true(evictions >= N - 16);
    free(want);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&small), 0);
    kvt_test_daemon_cleanup(&small);
}

static void test_config_and_stats(void **state)
{
    (void)state;
    struct kvt_client *c = connect_as(NULL);
    char v[64];
    assert_int_equal(kvt_config_get(c, "max_clients", v, sizeof(v)), 0);
    assert_string_equal(v, "256");
    assert_int_equal(kvt_config_set(c, "max_clients", "100"), 0);
    assert_int_equal(kvt_config_get(c, "max_clients", v, sizeof(v)), 0);
    assert_string_equal(v, "100");
    assert_int_equal(kvt_config_set(c, "max_clients", "lots"), KVT_E_BADCONFIG);
    assert_int_equal(kvt_config_set(c, "no.such.key", "1"), KVT_E_BADCONFIG);
    assert_int_equal(kvt_config_set(c, "cpu.arena_bytes", "2G"), KVT_E_READONLY);
    assert_int_equal(kvt_config_set(c, "inline_max_bytes", "1M"), KVT_E_BADCONFIG);
    assert_int_equal(kvt_config_get(c, "max_clients", v, sizeof(v)), 0);
    assert_string_equal(v, "100");
    assert_int_equal(kvt_config_set(c, "max_clients", "256"), 0);
    struct kvt_stat *st;
    size_t n;
    assert_int_equal(kvt_stats(c, &st, &n), 0);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        seen += !strcmp(st[i].name, "requests") || !strcmp(st[i].name, "cpu.bytes_capacity");
    kvt_stats_free(st, n);
    assert_int_equal(seen, 2);
    assert_int_equal(kvt_ping(c), 0);
    kvt_close(c);
}

static void test_reconnect_after_restart(void **state)
{
    (void)state;
    struct kvt_client *c = connect_as(NULL);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    uint8_t *buf = kvt_arena_alloc(c, CHUNK_BYTES);
    struct kvt_key k = {11, 22};
    fill(buf, CHUNK_BYTES, 5);
    assert_int_equal(kvt_put(c, ns.handle, &k, buf, CHUNK_BYTES, 0), 0);

    kvt_test_daemon_kill(&daemon_proc);
    /* Down: calls fail fast, lookups report a miss. */
    size_t hits = 7;
    assert_int_equal(kvt_lookup(c, ns.handle, &k, 1, &hits, NULL), KVT_E_DISCONNECTED);
    assert_int_equal(hits, 0);
    assert_int_equal(kvt_ping(c), KVT_E_DISCONNECTED);

    assert_int_equal(kvt_test_daemon_start(&daemon_proc, NULL), 0);
    /* The session comes back by itself with the same arena and namespace handle. */
    int rc = KVT_E_DISCONNECTED;
    for (int i = 0; i < 50 && rc == KVT_E_DISCONNECTED; i++) {
        rc = kvt_ping(c);
        if (rc)
            usleep(20000);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(kvt_put(c, ns.handle, &k, buf, CHUNK_BYTES, 0), 0);
    size_t len;
    uint8_t *out = kvt_arena_alloc(c, CHUNK_BYTES);
    assert_int_equal(kvt_get(c, ns.handle, &k, out, CHUNK_BYTES, &len, NULL), 0);
    assert_memory_equal(out, buf, CHUNK_BYTES);
    kvt_close(c);
}

static struct kvt_test_daemon striped;

static int striped_setup(void **state)
{
    (void)state;
    const char *const args[] = {"--workers=3", "--copy_offload_bytes=8K", "--copy_stripe_bytes=4K",
                                NULL};
    memset(&striped, 0, sizeof(striped));
    return kvt_test_daemon_start(&striped, args);
}

static int striped_teardown(void **state)
{
    (void)state;
    int rc = kvt_test_daemon_stop(&striped);
    kvt_test_daemon_cleanup(&striped);
    return rc;
}

/* Copies split into stripes (three workers and the loop, 4 KiB stripes) put and get back every
 * byte, whatever the length: whole stripes, a short last stripe, fewer stripes than workers, and
 * copies too small to split. */
static void test_striped_copies(void **state)
{
    (void)state;
    struct kvt_connect_opts o = {
        .socket_path = striped.socket_path, .arena_bytes = 4 << 20, .timeout_ms = 3000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_spec big = spec;
    big.tokens_per_chunk = 1000; /* 128,000 bytes: not a multiple of 4 KiB */
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &big, &ns), 0);
    uint8_t *in = kvt_arena_alloc(c, ns.chunk_bytes);
    uint8_t *out = kvt_arena_alloc(c, ns.chunk_bytes + 4096);
    assert_non_null(in);
    assert_non_null(out);
    const uint32_t tokens[] = {1, 63, 64, 65, 96, 97, 132, 200, 257, 511, 999, 1000};
    for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
        size_t len = (size_t)tokens[i] * 128, got = 0;
        struct kvt_key k = {0x5171fe00u + i, 42};
        fill(in, len, (uint32_t)i + 11);
        memset(out, 0xee, ns.chunk_bytes + 4096);
        assert_int_equal(kvt_put(c, ns.handle, &k, in, len, tokens[i]), 0);
        assert_int_equal(kvt_get(c, ns.handle, &k, out, ns.chunk_bytes, &got, NULL), 0);
        assert_int_equal(got, len);
        assert_memory_equal(out, in, len);
        assert_int_equal(out[len], 0xee); /* nothing written past the chunk */
    }
    struct kvt_stat *st = NULL;
    size_t n = 0;
    uint64_t jobs = 0;
    assert_int_equal(kvt_stats(c, &st, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(st[i].name, "worker_jobs"))
            jobs = st[i].value;
    kvt_stats_free(st, n);
    assert_true(jobs >= 2 * 3); /* the 128,000-byte Put and Get went to three workers each */
    kvt_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_roundtrip),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_tenants_isolated),
        cmocka_unit_test(test_eviction_under_pressure),
        cmocka_unit_test(test_config_and_stats),
        cmocka_unit_test(test_reconnect_after_restart),
        cmocka_unit_test_setup_teardown(test_striped_copies, striped_setup, striped_teardown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
