/*
 * Span abstracts across restarts, through a real kvtierd with a disk tier (docs/sparse.md):
 * chunks are Put, a context is scored with Select, the daemon restarts (SIGTERM with its
 * write-back flush, or kill -9 after write-through Puts were answered durable), and the same
 * Selects give the same answers, while the disk's counters show that only metadata was read
 * (no payload byte). A corrupted metadata section costs its chunk its abstract only (counted; the
 * chunk is still served, Select keeps it whole). Objects of the format before metadata sections
 * (v3) are still read, and have no abstract. Restoring stops at abstract.bytes_max without reading
 * what it would not keep. And the restore time of 10,000 chunks, printed.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <xxhash.h>

#include "kernels/half.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 4 layers x 2 KV heads x 32 dims, fp16, 64-token chunks: rows of 256 bytes, 64 KiB a chunk. */
#define LAYERS 4u
#define HEADS 2u
#define HD 32u
#define TOKENS 64u
#define ROW_HALFS (2u * HEADS * HD)
#define CHUNK_HALFS (LAYERS * TOKENS * ROW_HALFS)
#define CHUNK_BYTES (CHUNK_HALFS * 2u)
#define N_CHUNKS 8u
#define QHEADS 4u

static const struct kvt_ns_spec spec = {.model_id = "restore-test",
                                        .layers = LAYERS,
                                        .kv_heads = HEADS,
                                        .head_dim = HD,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = TOKENS};

static uint16_t chunks[N_CHUNKS][CHUNK_HALFS];
static struct kvt_key keys[N_CHUNKS];
static uint64_t starts[N_CHUNKS];
static float queries[LAYERS][QHEADS * HD];

static float rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return (float)((*x >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Random keys and values; in every layer a needle token of another chunk follows that layer's
 * query, so that each layer's Select has something to find. */
static void make_data(void)
{
    uint64_t x = 0xab5;
    for (uint32_t c = 0; c < N_CHUNKS; c++) {
        for (size_t i = 0; i < CHUNK_HALFS; i++)
            chunks[c][i] = kvt_f32_to_f16(0.1f * rnd(&x));
        keys[c] = (struct kvt_key){0x5000 + c, 0xabc};
        starts[c] = (uint64_t)c * TOKENS;
    }
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (size_t i = 0; i < QHEADS * HD; i++)
            queries[l][i] = rnd(&x);
        uint32_t c = (l * 3 + 1) % N_CHUNKS, t = 5 + l * 13;
        for (uint32_t i = 0; i < HD; i++)
            chunks[c][((size_t)l * TOKENS + t) * ROW_HALFS + i] =
                kvt_f32_to_f16(3.0f * (queries[l][i] > 0 ? 1.0f : -1.0f));
    }
}

static struct kvt_client *connect_ns(struct kvt_test_daemon *d, struct kvt_ns_info *ns,
                                     const struct kvt_span_policy *spans)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 4 << 20, .timeout_ms = 10000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register_spans(c, &spec, spans, ns), 0);
    return c;
}

static uint64_t stat_of(struct kvt_client *c, const char *name)
{
    uint64_t v = kvt_test_stat(c, name);
    if (v == UINT64_MAX)
        fail_msg("no stat %s", name);
    return v;
}

/* What Select answered for every layer, under a budget of a quarter of the context. */
struct answers {
    struct kvt_span_sel sp[LAYERS][64];
    struct kvt_select_info si[LAYERS];
};

static void select_all(struct kvt_client *c, uint32_t ns, struct answers *a,
                       uint32_t *without_abstract)
{
    uint64_t ctx;
    struct kvt_context_info info;
    assert_int_equal(kvt_context_open(c, ns, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, &info), 0);
    *without_abstract = info.without_abstract;
    for (uint32_t l = 0; l < LAYERS; l++) {
        struct kvt_select_req q = {.layer = l,
                                   .n_query_heads = QHEADS,
                                   .head_dim = HD,
                                   .query = queries[l],
                                   .budget_tokens = N_CHUNKS * TOKENS / 4,
                                   .recent_tokens = 16};
        memset(a->sp[l], 0, sizeof(a->sp[l]));
        assert_int_equal(kvt_select(c, ctx, &q, a->sp[l], 64, &a->si[l]), 0);
    }
    assert_int_equal(kvt_context_close(c, ctx), 0);
}

/* Identical answers but for where the chunks are now. */
static void assert_same_answers(const struct answers *a, const struct answers *b,
                                enum kvt_tier_id b_tier)
{
    for (uint32_t l = 0; l < LAYERS; l++) {
        assert_int_equal(a->si[l].n_spans, b->si[l].n_spans);
        assert_int_equal(a->si[l].spans_scored, b->si[l].spans_scored);
        assert_int_equal(a->si[l].tokens_selected, b->si[l].tokens_selected);
        assert_true(a->si[l].mass_selected == b->si[l].mass_selected);
        for (size_t i = 0; i < a->si[l].n_spans; i++) {
            const struct kvt_span_sel *x = &a->sp[l][i], *y = &b->sp[l][i];
            assert_int_equal(x->chunk, y->chunk);
            assert_int_equal(x->token_first, y->token_first);
            assert_int_equal(x->n_tokens, y->n_tokens);
            assert_true(x->mass == y->mass);
            assert_int_equal(y->tier, b_tier);
        }
    }
}

static void put_all(struct kvt_client *c, uint32_t ns, enum kvt_tier_id want_tier)
{
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        struct kvt_item it = {.key = keys[i], .buf = chunks[i], .len = CHUNK_BYTES};
        assert_int_equal(kvt_put_batch(c, ns, &it, 1), 0);
        assert_int_equal(it.status, 0);
        assert_int_equal(it.tier, want_tier);
    }
}

static void check_chunk(struct kvt_client *c, uint32_t ns, uint32_t i)
{
    static uint16_t got[CHUNK_HALFS];
    size_t len = 0;
    enum kvt_tier_id tier;
    assert_int_equal(kvt_get(c, ns, &keys[i], got, sizeof(got), &len, &tier), 0);
    assert_int_equal(len, CHUNK_BYTES);
    assert_memory_equal(got, chunks[i], CHUNK_BYTES);
}

/* After a restart, before any Get: every abstract came back by metadata reads alone. */
static void assert_restored_without_payload(struct kvt_client *c, uint64_t n)
{
    assert_int_equal(stat_of(c, "abstracts_restored"), n);
    assert_int_equal(stat_of(c, "abstracts_restore_failed"), 0);
    assert_int_equal(stat_of(c, "tier.meta_loaded"), n);
    assert_int_equal(stat_of(c, "disk.meta_reads"), n);
    assert_int_equal(stat_of(c, "disk.reads"), 0);
    assert_int_equal(stat_of(c, "disk.range_reads"), 0);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
    uint64_t meta = stat_of(c, "disk.meta_bytes_read"),
             payload = stat_of(c, "tier.meta_load_bytes");
    assert_true(payload > 0 && meta >= payload && meta < payload + n * 4096);
    /* A section is the abstract: about an eighth of the chunk, read instead of all of it. */
    assert_true(meta < n * CHUNK_BYTES / 4);
}

static void restart_and_check(const char **args, int hard)
{
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct answers before, after;
    uint32_t without;
    int write_through = args[0] && strstr(args[0], "write-through") != NULL;

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = connect_ns(&d, &ns, NULL);
    put_all(c, ns.handle, write_through ? KVT_TIER_DISK : KVT_TIER_CPU);
    select_all(c, ns.handle, &before, &without);
    assert_int_equal(without, 0);
    uint64_t abs_bytes = stat_of(c, "abstract_bytes");
    kvt_close(c);
    if (hard)
        kvt_test_daemon_kill(&d); /* every Put was answered durable: nothing may be missing */
    else
        assert_int_equal(kvt_test_daemon_stop(&d), 0); /* the flush writes every chunk back */

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns, NULL);
    assert_restored_without_payload(c, N_CHUNKS);
    assert_int_equal(stat_of(c, "abstract_bytes"), abs_bytes); /* fixed spans: as built */
    assert_int_equal(stat_of(c, "abstracts"), 0);              /* none built since */
    select_all(c, ns.handle, &after, &without);
    assert_int_equal(without, 0);
    assert_same_answers(&before, &after, KVT_TIER_DISK);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0); /* Select reads no payload either */
    for (uint32_t i = 0; i < N_CHUNKS; i++)
        check_chunk(c, ns.handle, i);
    assert_true(stat_of(c, "disk.bytes_read") > 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static const char *wb_args[] = {"--disk.bytes=64M", "--disk.staging_bytes=8M",
                                "--disk.object_bytes_max=1M", NULL};
static const char *wt_args[] = {"--tier.write_policy=write-through", "--disk.bytes=64M",
                                "--disk.staging_bytes=8M", "--disk.object_bytes_max=1M", NULL};

static void test_restart_sigterm(void **state)
{
    (void)state;
    restart_and_check(wb_args, 0);
}

static void test_restart_kill9(void **state)
{
    (void)state;
    restart_and_check(wt_args, 1);
}

/* ---- on-disk surgery --------------------------------------------------------------------------
 */

static uint64_t le_at(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void le_put(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* File offset of the header block of the object of key k in the daemon's data file, or -1. */
static off_t find_object(int fd, const struct kvt_key *k, unsigned char *blk)
{
    for (off_t off = 4096;; off += 4096) {
        if (pread(fd, blk, 4096, off) != 4096)
            return -1;
        if (memcmp(blk, "KVTO", 4) == 0 && le_at(blk + 24, 8) == k->lo &&
            le_at(blk + 32, 8) == k->hi)
            return off;
    }
}

static int open_data(const struct kvt_test_daemon *d)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/disk.0", d->dir);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    return fd;
}

/* A flipped byte in one chunk's metadata section: that chunk alone has no abstract after the
 * restart (counted), is served with its bytes, and Select keeps it whole. */
static void test_corrupt_section(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct answers after;
    uint32_t without;
    unsigned char blk[4096];

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns, NULL);
    put_all(c, ns.handle, KVT_TIER_DISK);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    int fd = open_data(&d);
    off_t at = find_object(fd, &keys[3], blk);
    assert_true(at > 0);
    uint32_t meta_len = (uint32_t)le_at(blk + 124, 4);
    assert_true(meta_len > 0);
    off_t sec = at + (off_t)((4096 + le_at(blk + 48, 8) + 4095) / 4096 * 4096);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, sec + 64 + meta_len / 2), 1);
    b ^= 0x20;
    assert_int_equal(pwrite(fd, &b, 1, sec + 64 + meta_len / 2), 1);
    close(fd);

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns, NULL);
    assert_int_equal(stat_of(c, "abstracts_restored"), N_CHUNKS - 1);
    assert_int_equal(stat_of(c, "abstracts_restore_failed"), 1);
    assert_int_equal(stat_of(c, "tier.meta_load_failures"), 1);
    assert_int_equal(stat_of(c, "disk.meta_checksum_failures"), 1);
    assert_int_equal(stat_of(c, "disk.checksum_failures"), 0);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
    select_all(c, ns.handle, &after, &without);
    assert_int_equal(without, 1);
    for (uint32_t l = 0; l < LAYERS; l++) {
        int whole = 0;
        for (size_t i = 0; i < after.si[l].n_spans; i++)
            whole += after.sp[l][i].chunk == 3 && after.sp[l][i].token_first == 0 &&
                     after.sp[l][i].n_tokens == TOKENS;
        assert_int_equal(whole, 1);
    }
    for (uint32_t i = 0; i < N_CHUNKS; i++)
        check_chunk(c, ns.handle, i);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Chunks stored as the build before metadata sections stored them (format v3: written without
 * an abstract, their headers relabelled) are read whole, by range and after a scan, and have no
 * abstract; chunks Put since have theirs, across the next restart. */
static void test_v3_objects_read(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    const struct kvt_span_policy none = {.kind = KVT_SPANS_NONE,
                                         .fine_layers = KVT_SPANS_FINE_DEFAULT};
    struct answers after;
    uint32_t without;
    unsigned char blk[4096];

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns, &none);
    for (uint32_t i = 0; i < N_CHUNKS / 2; i++)
        assert_int_equal(kvt_put(c, ns.handle, &keys[i], chunks[i], CHUNK_BYTES, 0), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    int fd = open_data(&d);
    for (uint32_t i = 0; i < N_CHUNKS / 2; i++) {
        off_t at = find_object(fd, &keys[i], blk);
        assert_true(at > 0);
        assert_int_equal(le_at(blk + 4, 2), 4);
        assert_int_equal(le_at(blk + 124, 4), 0); /* no section: stored without an abstract */
        le_put(blk + 4, 3, 2);
        le_put(blk + 128, XXH3_64bits(blk, 128), 8);
        le_put(blk + 4088, XXH3_64bits(blk, 4088), 8);
        assert_int_equal(pwrite(fd, blk, 4096, at), 4096);
    }
    close(fd);

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns, NULL);
    assert_int_equal(stat_of(c, "tier.recovered_objects"), N_CHUNKS / 2);
    assert_int_equal(stat_of(c, "disk.meta_reads"), 0);
    for (uint32_t i = N_CHUNKS / 2; i < N_CHUNKS; i++)
        assert_int_equal(kvt_put(c, ns.handle, &keys[i], chunks[i], CHUNK_BYTES, 0), 0);
    for (uint32_t i = 0; i < N_CHUNKS; i++)
        check_chunk(c, ns.handle, i);
    uint16_t rows[16 * ROW_HALFS];
    size_t got = 0;
    enum kvt_tier_id tier;
    assert_int_equal(
        kvt_get_range(c, ns.handle, &keys[1], 2, 16, 16, rows, sizeof(rows), &got, &tier), 0);
    assert_memory_equal(rows, &chunks[1][((size_t)2 * TOKENS + 16) * ROW_HALFS], sizeof(rows));
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    /* A damaged checkpoint: the scan reads both formats. */
    char ckpt[400];
    snprintf(ckpt, sizeof(ckpt), "%s/kvtier-disk.ckpt", d.dir);
    fd = open(ckpt, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, 10), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, 10), 1);
    close(fd);
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns, NULL);
    assert_int_equal(stat_of(c, "disk.scans"), 1);
    assert_int_equal(stat_of(c, "disk.recovered_by_scan"), N_CHUNKS);
    assert_int_equal(stat_of(c, "abstracts_restored"), N_CHUNKS / 2);
    assert_int_equal(stat_of(c, "abstracts_restore_failed"), 0);
    select_all(c, ns.handle, &after, &without);
    assert_int_equal(without, N_CHUNKS / 2);
    for (uint32_t i = 0; i < N_CHUNKS; i++)
        check_chunk(c, ns.handle, i);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* A store that holds fewer abstracts than the disk has: restoring keeps what fits and reads
 * nothing it would not keep. */
static void test_bounded_by_bytes_max(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    struct kvt_client *c = connect_ns(&d, &ns, NULL);
    put_all(c, ns.handle, KVT_TIER_DISK);
    uint64_t one = stat_of(c, "abstract_bytes") / N_CHUNKS;
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    char max_arg[64];
    snprintf(max_arg, sizeof(max_arg), "--abstract.bytes_max=%llu",
             (unsigned long long)(one * 7 / 2));
    const char *args[] = {wt_args[0], wt_args[1], wt_args[2], wt_args[3], max_arg, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    c = connect_ns(&d, &ns, NULL);
    uint64_t restored = stat_of(c, "abstracts_restored");
    assert_true(restored >= 1 && restored <= 3);
    assert_int_equal(restored + stat_of(c, "abstracts_dropped"), N_CHUNKS);
    assert_int_equal(stat_of(c, "disk.meta_reads"), restored);
    assert_true(stat_of(c, "abstract_bytes") <= one * 7 / 2);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* ---- 10,000 chunks: the restore time ------------------------------------------------------ */

/* 1 layer x 2 KV heads x 64 dims, 32-token chunks (16 KiB): an abstract of two 16-token spans
 * (2 KiB, an eighth of the chunk) in a one-block section. */
static const struct kvt_ns_spec small_spec = {.model_id = "restore-10k",
                                              .layers = 1,
                                              .kv_heads = 2,
                                              .head_dim = 64,
                                              .dtype = KVT_DTYPE_FP16,
                                              .tokens_per_chunk = 32};
#define SMALL_BYTES (32u * 2u * 2u * 64u * 2u)

static void test_restore_10000_chunks(void **state)
{
    (void)state;
    enum { N = 10000, BATCH = 64 };
    const char *args[] = {"--tier.write_policy=write-through", "--disk.bytes=1G",
                          "--disk.object_bytes_max=64K", "--cpu.arena_bytes=64M", NULL};
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_connect_opts o = {.arena_bytes = 8 << 20, .timeout_ms = 10000};
    static uint16_t bufs[BATCH][SMALL_BYTES / 2];
    uint64_t x = 99;

    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    o.socket_path = d.socket_path;
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &small_spec, &ns), 0);
    for (uint64_t i = 0; i < N; i += BATCH) {
        struct kvt_item items[BATCH];
        for (int b = 0; b < BATCH; b++) {
            for (size_t j = 0; j < SMALL_BYTES / 2; j++)
                bufs[b][j] = kvt_f32_to_f16(rnd(&x));
            items[b] = (struct kvt_item){
                .key = {70000 + i + (uint64_t)b, 0x10c}, .buf = bufs[b], .len = SMALL_BYTES};
        }
        assert_int_equal(kvt_put_batch(c, ns.handle, items, BATCH), 0);
    }
    uint64_t stored = stat_of(c, "abstracts");
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &small_spec, &ns), 0);
    uint64_t restored = stat_of(c, "abstracts_restored");
    uint64_t meta_bytes = stat_of(c, "disk.meta_bytes_read");
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    print_message("restore of %llu span abstracts: %llu ms (serving after %.0f ms), %llu metadata "
                  "bytes read in %llu reads, %llu payload bytes read; %llu payload bytes on disk\n",
                  (unsigned long long)restored, (unsigned long long)stat_of(c, "tier.meta_load_ms"),
                  ms, (unsigned long long)meta_bytes,
                  (unsigned long long)stat_of(c, "disk.meta_reads"),
                  (unsigned long long)stat_of(c, "disk.bytes_read"),
                  (unsigned long long)stored * SMALL_BYTES);
    assert_int_equal(stored, N + BATCH * ((N + BATCH - 1) / BATCH) - N);
    assert_int_equal(restored, stored);
    assert_int_equal(stat_of(c, "disk.bytes_read"), 0);
    assert_int_equal(meta_bytes, restored * 4096);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static int setup(void **state)
{
    (void)state;
    make_data();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_sigterm),      cmocka_unit_test(test_restart_kill9),
        cmocka_unit_test(test_corrupt_section),      cmocka_unit_test(test_v3_objects_read),
        cmocka_unit_test(test_bounded_by_bytes_max), cmocka_unit_test(test_restore_10000_chunks),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
