/*
 * Contexts and Select through a real kvtierd (docs/sparse.md): span abstracts are built on Put;
 * a context of four chunks finds the one span whose keys answer the query, besides the sink and
 * the recent window it always keeps; a budget covering the context returns all of it; answers
 * are deterministic; variable spans merge where the keys are alike and never in the fine
 * layers; abstracts outlive the bytes they describe (the CPU tier evicts, the context still
 * scores); SelectFetch delivers exactly the selected rows, from DRAM and, once the chunks were
 * pushed out of it, by range reads from disk; chunks that selections keep choosing from disk are
 * promoted and then served from DRAM (and with tier.select_promote off are not); AppendChunks is
 * all or nothing; a lease that nobody renews expires; every bad input gets its error and changes
 * nothing; another tenant's context is refused.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/half.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 2 KV heads x 16 dims, fp16, 64-token chunks: rows of 128 bytes. */
#define LAYERS 2u
#define HEADS 2u
#define HD 16u
#define TOKENS 64u
#define ROW_HALFS (2u * HEADS * HD)
#define CHUNK_HALFS (LAYERS * TOKENS * ROW_HALFS)
#define N_CHUNKS 4u
#define QHEADS 4u /* two query heads per KV head */

static const struct kvt_ns_spec spec = {.model_id = "select-test",
                                        .layers = LAYERS,
                                        .kv_heads = HEADS,
                                        .head_dim = HD,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = TOKENS};

static struct kvt_test_daemon d;
static uint16_t chunks[N_CHUNKS][CHUNK_HALFS];
static struct kvt_key keys[N_CHUNKS];
static uint64_t starts[N_CHUNKS];
static float query[QHEADS * HD];

/* The needle: the key of head 0 at this token of chunk 2, layer 1, points along the query. */
#define NEEDLE_CHUNK 2u
#define NEEDLE_TOKEN 37u

static float rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return (float)((*x >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t *key_at(uint32_t c, uint32_t l, uint32_t t, uint32_t h)
{
    return &chunks[c][((size_t)l * TOKENS + t) * ROW_HALFS + h * HD];
}

static void make_data(void)
{
    uint64_t x = 0x5eed;
    for (uint32_t c = 0; c < N_CHUNKS; c++) {
        for (size_t i = 0; i < CHUNK_HALFS; i++)
            chunks[c][i] = kvt_f32_to_f16(0.1f * rnd(&x));
        keys[c] = (struct kvt_key){0x1000 + c, 0x77};
        starts[c] = (uint64_t)c * TOKENS;
    }
    for (size_t i = 0; i < QHEADS * HD; i++)
        query[i] = rnd(&x);
    /* Head 0's queries (query heads 0 and 1) share a direction the needle's key follows. */
    for (uint32_t i = 0; i < HD; i++) {
        float dir = i % 2 ? 1.0f : -1.0f;
        query[i] = dir;
        query[HD + i] = dir;
        key_at(NEEDLE_CHUNK, 1, NEEDLE_TOKEN, 0)[i] = kvt_f32_to_f16(3.0f * dir);
    }
}

static struct kvt_client *connect_as(const char *tenant, struct kvt_ns_info *ns,
                                     const struct kvt_span_policy *spans)
{
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .tenant = tenant, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register_spans(c, &spec, spans, ns), 0);
    return c;
}

static void put_all(struct kvt_client *c, uint32_t ns, const struct kvt_key *k)
{
    for (uint32_t i = 0; i < N_CHUNKS; i++)
        assert_int_equal(kvt_put(c, ns, &k[i], chunks[i], sizeof(chunks[i]), 0), 0);
}

static struct kvt_select_req sel_req(uint32_t layer, uint32_t budget)
{
    return (struct kvt_select_req){.layer = layer,
                                   .n_query_heads = QHEADS,
                                   .head_dim = HD,
                                   .query = query,
                                   .budget_tokens = budget,
                                   .recent_tokens = 16};
}

static int setup(void **state)
{
    (void)state;
    make_data();
    char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=other=uid:%u", getuid());
    const char *args[] = {tenants, "--cpu.arena_bytes=64M", NULL};
    return kvt_test_daemon_start(&d, args);
}

static int teardown(void **state)
{
    (void)state;
    int rc = kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rc;
}

static void test_needle_found(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns, NULL);
    uint64_t built0 = kvt_test_stat(c, "abstracts");
    put_all(c, ns.handle, keys);
    assert_int_equal(kvt_test_stat(c, "abstracts") - built0, N_CHUNKS);
    assert_true(kvt_test_stat(c, "abstract_bytes") > 0);

    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    struct kvt_context_info info;
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, &info), 0);
    assert_int_equal(info.chunks, N_CHUNKS);
    assert_int_equal(info.tokens, N_CHUNKS * TOKENS);
    assert_int_equal(info.without_abstract, 0);

    /* 48 tokens: the sink (first 16-token span) and the recent window (last 16) are forced;
     * the one span left must be the needle's. */
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(si.tokens_selected, 48);
    assert_int_equal(si.context_tokens, N_CHUNKS * TOKENS);
    assert_int_equal(si.spans_scored, N_CHUNKS * TOKENS / 16);
    assert_int_equal(si.n_spans, 3);
    assert_int_equal(sp[0].chunk, 0);
    assert_int_equal(sp[0].token_first, 0);
    assert_int_equal(sp[0].n_tokens, 16);
    assert_int_equal(sp[1].chunk, NEEDLE_CHUNK);
    assert_int_equal(sp[1].token_first, NEEDLE_TOKEN / 16 * 16);
    assert_int_equal(sp[1].n_tokens, 16);
    assert_int_equal(sp[2].chunk, N_CHUNKS - 1);
    assert_int_equal(sp[2].token_first, TOKENS - 16);
    assert_int_equal(sp[1].tier, KVT_TIER_CPU);
    /* The needle dominates head 0's estimate: half of the mean over two heads, at least. */
    assert_true(sp[1].mass > 0.4f);
    assert_true(sp[1].mass > sp[0].mass && sp[1].mass > sp[2].mass);

    /* Deterministic. */
    struct kvt_span_sel sp2[64];
    struct kvt_select_info si2;
    assert_int_equal(kvt_select(c, ctx, &q, sp2, 64, &si2), 0);
    assert_int_equal(si2.n_spans, si.n_spans);
    assert_memory_equal(sp, sp2, si.n_spans * sizeof(sp[0]));

    /* Estimates of the best unselected spans: not among the runs, in rank order, and their
     * means are the means of their keys and values (fp16-rounded). */
    struct kvt_span_est est[3];
    uint16_t means[3 * HEADS * 2 * HD];
    q.n_estimates = 3;
    q.est = est;
    q.est_means = means;
    q.est_means_cap = sizeof(means) / sizeof(means[0]);
    assert_int_equal(kvt_select(c, ctx, &q, sp2, 64, &si2), 0);
    assert_int_equal(si2.n_estimates, 3);
    assert_memory_equal(sp, sp2, si.n_spans * sizeof(sp[0])); /* the selection is the same */
    for (uint32_t i = 0; i < 3; i++) {
        assert_true(i == 0 || est[i].mass <= est[i - 1].mass);
        for (size_t j = 0; j < si.n_spans; j++)
            assert_false(sp[j].chunk == est[i].chunk && sp[j].token_first == est[i].token_first);
        for (uint32_t h = 0; h < HEADS; h++)
            for (uint32_t ch = 0; ch < HD; ch++) {
                double k = 0, v = 0;
                for (uint32_t t = est[i].token_first; t < est[i].token_first + est[i].n_tokens;
                     t++) {
                    k += kvt_f16_to_f32(key_at(est[i].chunk, 1, t, h)[ch]);
                    v += kvt_f16_to_f32(key_at(est[i].chunk, 1, t, h)[HEADS * HD + ch]);
                }
                k /= est[i].n_tokens;
                v /= est[i].n_tokens;
                assert_true(fabs(kvt_f16_to_f32(est[i].means[h * 2 * HD + ch]) - k) < 1e-3);
                assert_true(fabs(kvt_f16_to_f32(est[i].means[h * 2 * HD + HD + ch]) - v) < 1e-3);
            }
    }
    q.est_means_cap = HEADS * 2 * HD; /* room for one */
    assert_int_equal(kvt_select(c, ctx, &q, sp2, 64, &si2), KVT_E_SMALLBUF);
    q.n_estimates = 5000;
    q.est_means_cap = sizeof(means) / sizeof(means[0]);
    assert_int_equal(kvt_select(c, ctx, &q, sp2, 64, &si2), KVT_E_INVAL);
    q = sel_req(1, 48);

    /* Layer 0 has no needle: the span chosen there is another. */
    q.layer = 0;
    assert_int_equal(kvt_select(c, ctx, &q, sp2, 64, &si2), 0);
    assert_int_equal(si2.tokens_selected, 48);

    /* A budget covering the context returns all of it, one run per chunk. */
    q = sel_req(1, 0);
    q.budget_fraction = 1.0f;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(si.n_spans, N_CHUNKS);
    assert_int_equal(si.tokens_selected, N_CHUNKS * TOKENS);
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        assert_int_equal(sp[i].chunk, i);
        assert_int_equal(sp[i].token_first, 0);
        assert_int_equal(sp[i].n_tokens, TOKENS);
    }
    assert_true(fabsf(si.mass_selected - 1.0f) < 1e-4f);

    /* Top-p: the needle holds most of head 0's mass, so a small p stops soon after it. */
    q = sel_req(1, 0);
    q.top_p = 0.3f;
    q.recent_tokens = 0;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_true(si.mass_selected >= 0.3f);
    int has_needle = 0;
    for (size_t i = 0; i < si.n_spans; i++)
        has_needle |= sp[i].chunk == NEEDLE_CHUNK && sp[i].token_first <= NEEDLE_TOKEN &&
                      sp[i].token_first + sp[i].n_tokens > NEEDLE_TOKEN;
    assert_true(has_needle);
    assert_true(si.tokens_selected < N_CHUNKS * TOKENS / 2);

    /* Too small an output array: E_SMALLBUF. */
    q = sel_req(1, 48);
    assert_int_equal(kvt_select(c, ctx, &q, sp, 2, &si), KVT_E_SMALLBUF);

    assert_int_equal(kvt_context_close(c, ctx), 0);
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_NOCTX);
    assert_int_equal(kvt_context_close(c, ctx), KVT_E_NOCTX);
    kvt_close(c);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns, NULL);
    put_all(c, ns.handle, keys);
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_open(c, 999999, 0, &ctx), KVT_E_NONS);
    assert_int_equal(kvt_context_open(c, ns.handle, 5, &ctx), KVT_E_INVAL); /* ttl below 10 ms */
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);

    /* AppendChunks: all or nothing. */
    struct kvt_key mixed[2] = {keys[0], {0xdead, 0xbeef}};
    uint64_t st[2] = {0, TOKENS};
    struct kvt_context_info info;
    assert_int_equal(kvt_context_append(c, ctx, mixed, NULL, st, 2, &info), KVT_E_NOTFOUND);
    uint64_t back[2] = {TOKENS, 0}; /* out of order */
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, back, 2, &info), KVT_E_INVAL);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, 1, &info), 0);
    assert_int_equal(info.chunks, 1); /* nothing of the refused appends stayed */
    assert_int_equal(kvt_context_append(c, ctx, keys + 1, NULL, starts, 1, &info), KVT_E_INVAL);
    assert_int_equal(kvt_context_append(c, ctx, keys + 1, NULL, starts + 1, N_CHUNKS - 1, &info),
                     0);
    assert_int_equal(info.chunks, N_CHUNKS);

    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    struct kvt_select_req q = sel_req(LAYERS, 48); /* layer out of range */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 0); /* no budget */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q.budget_fraction = 1.5f;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q.budget_fraction = -0.5f;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 48);
    q.top_p = 0.5f; /* two budgets */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 0);
    q.top_p = 1.5f;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 48);
    q.n_query_heads = 3; /* not a multiple of the 2 KV heads */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 48);
    q.head_dim = HD / 2; /* the query's size disagrees with the namespace */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_GEOMETRY);
    float bad[QHEADS * HD];
    memcpy(bad, query, sizeof(bad));
    bad[5] = NAN;
    q = sel_req(1, 48);
    q.query = bad;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), KVT_E_INVAL);
    q = sel_req(1, 48);
    assert_int_equal(kvt_select(c, ctx ^ (1ull << 40), &q, sp, 64, &si), KVT_E_NOCTX);
    assert_int_equal(kvt_select(c, 0, &q, sp, 64, &si), KVT_E_NOCTX);

    /* After all that, the context answers as before. */
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(si.tokens_selected, 48);
    assert_int_equal(si.context_tokens, N_CHUNKS * TOKENS);

    /* Another tenant cannot use it, nor learn anything from it. */
    struct kvt_ns_info ns2;
    struct kvt_client *o = connect_as("other", &ns2, NULL);
    assert_int_equal(kvt_select(o, ctx, &q, sp, 64, &si), KVT_E_ACCESS);
    assert_int_equal(kvt_context_append(o, ctx, keys, NULL, starts, 1, &info), KVT_E_ACCESS);
    assert_int_equal(kvt_context_close(o, ctx), KVT_E_ACCESS);
    /* Nor append its chunks to a context of its own: they are not its chunks. */
    uint64_t octx;
    assert_int_equal(kvt_context_open(o, ns2.handle, 0, &octx), 0);
    assert_int_equal(kvt_context_append(o, octx, keys, NULL, starts, 1, &info), KVT_E_NOTFOUND);
    assert_int_equal(kvt_context_close(o, octx), 0);
    kvt_close(o);

    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(kvt_context_close(c, ctx), 0);
    kvt_close(c);
}

static void test_lease_expires(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns, NULL);
    put_all(c, ns.handle, keys);
    uint64_t expired0 = kvt_test_stat(c, "contexts_expired");
    uint64_t ctx, kept;
    assert_int_equal(kvt_context_open(c, ns.handle, 100, &ctx), 0);
    assert_int_equal(kvt_context_open(c, ns.handle, 100, &kept), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, NULL), 0);
    /* kept is renewed every 40 ms; ctx is left alone for 300 ms. */
    for (int i = 0; i < 8; i++) {
        usleep(40 * 1000);
        assert_int_equal(kvt_context_append(c, kept, NULL, NULL, NULL, 0, NULL), 0);
    }
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, NULL), KVT_E_NOCTX);
    assert_int_equal(kvt_test_stat(c, "contexts_expired") - expired0, 1);
    assert_int_equal(kvt_context_close(c, kept), 0);
    kvt_close(c);
}

static void test_variable_spans(void **state)
{
    (void)state;
    /* Chunk 0's keys are one constant vector in every token: its spans merge up to max_tokens
     * in layer 1, never in layer 0 (fine_layers = 1). The other chunks are noise of the same
     * scale as the needle test's, whose neighbours widen the bound when merged. */
    struct kvt_span_policy vp = {.kind = KVT_SPANS_VARIABLE,
                                 .block_tokens = 8,
                                 .max_tokens = 32,
                                 .merge_tol = 0.05f,
                                 .fine_layers = 1};
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &ns, &vp);
    static uint16_t flat[CHUNK_HALFS];
    for (size_t i = 0; i < CHUNK_HALFS; i++)
        flat[i] = kvt_f32_to_f16(0.25f);
    struct kvt_key vk[2] = {{0x2000, 1}, {0x2001, 1}};
    assert_int_equal(kvt_put(c, ns.handle, &vk[0], flat, sizeof(flat), 0), 0);
    assert_int_equal(kvt_put(c, ns.handle, &vk[1], chunks[1], sizeof(chunks[1]), 0), 0);
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    uint64_t st[2] = {0, TOKENS};
    assert_int_equal(kvt_context_append(c, ctx, vk, NULL, st, 2, NULL), 0);
    struct kvt_select_req q = sel_req(1, 0);
    q.budget_fraction = 1.0f;
    struct kvt_span_sel sp[64];
    struct kvt_select_info s1, s0;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &s1), 0);
    q.layer = 0;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &s0), 0);
    /* Layer 0 keeps the 8-token blocks: 16 spans over two chunks. Layer 1: the flat chunk
     * becomes 2 spans of 32; the noisy one merges little (at least 4 spans, at most 8). */
    assert_int_equal(s0.spans_scored, 2 * TOKENS / 8);
    assert_true(s1.spans_scored >= 2 + 4 && s1.spans_scored < 2 + 8 + 1);
    assert_int_equal(s1.tokens_selected, 2 * TOKENS);

    /* Bad policies are refused at registration. */
    struct kvt_span_policy bad = {.kind = 9};
    struct kvt_ns_info ns2;
    assert_int_equal(kvt_register_spans(c, &spec, &bad, &ns2), KVT_E_INVAL);
    bad = (struct kvt_span_policy){.kind = KVT_SPANS_FIXED, .block_tokens = 40000};
    assert_int_equal(kvt_register_spans(c, &spec, &bad, &ns2), KVT_E_INVAL);
    assert_int_equal(kvt_context_close(c, ctx), 0);
    kvt_close(c);
}

static void test_abstracts_outlive_the_bytes(void **state)
{
    (void)state;
    /* A namespace of its own, whose chunks are pushed out of the CPU tier (no disk) by Puts of
     * another; the context still scores them, and says they are gone. */
    struct kvt_ns_spec big = spec;
    big.model_id = "select-evict";
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 8 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &big, &ns), 0);
    struct kvt_key ek[N_CHUNKS];
    for (uint32_t i = 0; i < N_CHUNKS; i++) {
        ek[i] = (struct kvt_key){0x3000 + i, 3};
        assert_int_equal(kvt_put(c, ns.handle, &ek[i], chunks[i], sizeof(chunks[i]), 0), 0);
    }
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, ek, NULL, starts, N_CHUNKS, NULL), 0);
    assert_int_equal(kvt_delete(c, ns.handle, ek, N_CHUNKS, NULL), 0);
    size_t hits = 9;
    assert_int_equal(kvt_lookup(c, ns.handle, ek, 1, &hits, NULL), 0);
    assert_int_equal(hits, 0);
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(si.n_spans, 3);
    assert_int_equal(sp[1].chunk, NEEDLE_CHUNK);
    for (size_t i = 0; i < si.n_spans; i++)
        assert_int_equal(sp[i].tier, KVT_TIER_NONE);
    assert_int_equal(kvt_context_close(c, ctx), 0);
    kvt_close(c);
}

/* The rows of run r of layer l, as the chunk holds them. */
static const uint16_t *rows_of(const struct kvt_span_sel *r, uint32_t l)
{
    return &chunks[r->chunk][((size_t)l * TOKENS + r->token_first) * ROW_HALFS];
}

static void test_select_fetch_dram_and_disk(void **state)
{
    (void)state;
    /* A daemon of its own with a disk tier (write-through) and a CPU tier of 256 KiB: the
     * context's chunks are pushed out of DRAM by filler chunks and read back by range reads. */
    struct kvt_test_daemon dd = {0};
    const char *args[] = {
        "--disk.bytes=64M",       "--disk.codec=none",    "--tier.write_policy=write-through",
        "--cpu.arena_bytes=256K", "--cpu.page_bytes=64K", NULL};
    assert_int_equal(kvt_test_daemon_start(&dd, args), 0);
    struct kvt_connect_opts o = {
        .socket_path = dd.socket_path, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    put_all(c, ns.handle, keys);
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, NULL), 0);

    size_t row = ROW_HALFS * 2, cap = N_CHUNKS * TOKENS * row;
    uint8_t *dst = kvt_arena_alloc(c, cap);
    assert_non_null(dst);
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    assert_int_equal(kvt_select_fetch(c, ns.handle, ctx, &q, sp, 64, dst, cap, &si), 0);
    assert_int_equal(si.n_spans, 3);
    size_t at = 0;
    for (size_t i = 0; i < si.n_spans; i++) {
        assert_int_equal(sp[i].status, 0);
        assert_int_equal(sp[i].dst_off, at);
        assert_int_equal(sp[i].key.lo, keys[sp[i].chunk].lo);
        assert_memory_equal(dst + sp[i].dst_off, rows_of(&sp[i], 1), sp[i].n_tokens * row);
        at += sp[i].n_tokens * row;
    }
    /* Too small a destination: refused before anything is read. */
    assert_int_equal(kvt_select_fetch(c, ns.handle, ctx, &q, sp, 64, dst, at - 1, &si),
                     KVT_E_SMALLBUF);

    /* Filler evicts the context's chunks from DRAM; they stay on disk. */
    struct kvt_ns_spec fs = spec;
    fs.model_id = "select-filler";
    struct kvt_ns_info fns;
    assert_int_equal(kvt_register(c, &fs, &fns), 0);
    for (uint32_t i = 0; i < 64; i++) {
        struct kvt_key k = {0x9000 + i, 9};
        assert_int_equal(kvt_put(c, fns.handle, &k, chunks[i % N_CHUNKS], sizeof(chunks[0]), 0), 0);
    }
    uint64_t reads0 = kvt_test_stat(c, "disk.range_reads");
    uint64_t considered0 = kvt_test_stat(c, "select_disk_tokens_considered");
    uint64_t chosen0 = kvt_test_stat(c, "select_disk_tokens_selected");
    memset(dst, 0, cap);
    assert_int_equal(kvt_select_fetch(c, ns.handle, ctx, &q, sp, 64, dst, cap, &si), 0);
    assert_int_equal(si.n_spans, 3);
    assert_int_equal(sp[1].chunk, NEEDLE_CHUNK); /* the same choice from the disk tier */
    int from_disk = 0;
    for (size_t i = 0; i < si.n_spans; i++) {
        assert_int_equal(sp[i].status, 0);
        from_disk += sp[i].served_from == KVT_TIER_DISK;
        assert_memory_equal(dst + sp[i].dst_off, rows_of(&sp[i], 1), sp[i].n_tokens * row);
    }
    assert_true(from_disk >= 1);
    assert_true(kvt_test_stat(c, "disk.range_reads") - reads0 >= (uint64_t)from_disk);
    /* Ranking from DRAM abstracts left most of the disk-resident context unread. */
    uint64_t considered = kvt_test_stat(c, "select_disk_tokens_considered") - considered0;
    uint64_t chosen = kvt_test_stat(c, "select_disk_tokens_selected") - chosen0;
    assert_true(considered >= (uint64_t)from_disk * 16);
    assert_true(chosen > 0 && chosen <= 48 && chosen < considered);
    kvt_arena_free(c, dst);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&dd), 0);
    kvt_test_daemon_cleanup(&dd);
}

/* Learning from selections (tier.select_promote, docs/sparse.md): a daemon like the one above
 * (CPU tier of 16 chunks, write-through disk), the context pushed out to disk by filler; then
 * SelectFetch steps that keep choosing the same three runs (the sink of chunk 0, the needle of
 * chunk 2, the recent window of chunk 3), 2 KiB of each 16 KiB chunk per step. With the feature
 * on, the first 7 steps read from disk, and once a chunk's worth was chosen (8 steps) the three
 * are promoted and served from DRAM: the disk's range reads stop growing, chunk 1 (never chosen)
 * stays on disk, and the CPU tier stays within its capacity. Off: every step reads from disk. */
static void hot_spans(int on)
{
    struct kvt_test_daemon dd = {0};
    const char *args[] = {"--disk.bytes=64M",
                          "--disk.codec=none",
                          "--tier.write_policy=write-through",
                          "--cpu.arena_bytes=256K",
                          "--cpu.page_bytes=64K",
                          on ? "--tier.select_promote=true" : "--tier.select_promote=false",
                          NULL};
    assert_int_equal(kvt_test_daemon_start(&dd, args), 0);
    struct kvt_connect_opts o = {
        .socket_path = dd.socket_path, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_info ns, fns;
    assert_int_equal(kvt_register(c, &spec, &ns), 0);
    put_all(c, ns.handle, keys);
    struct kvt_ns_spec fs = spec;
    fs.model_id = "select-filler";
    assert_int_equal(kvt_register(c, &fs, &fns), 0);
    for (uint32_t i = 0; i < 64; i++) {
        struct kvt_key k = {0x9000 + i, 9};
        assert_int_equal(kvt_put(c, fns.handle, &k, chunks[i % N_CHUNKS], sizeof(chunks[0]), 0), 0);
    }
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, ns.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, NULL), 0);
    size_t row = ROW_HALFS * 2, cap = N_CHUNKS * TOKENS * row;
    uint8_t *dst = kvt_arena_alloc(c, cap);
    assert_non_null(dst);
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    uint64_t promotions0 = kvt_test_stat(c, "tier.promotions");
    uint64_t decoded0 = kvt_test_stat(c, "tier.reads_decoded_on_workers");
    int step, all_dram = 0;
    for (step = 1; step <= 40 && !all_dram; step++) {
        uint64_t reads0 = kvt_test_stat(c, "disk.range_reads");
        assert_int_equal(kvt_select_fetch(c, ns.handle, ctx, &q, sp, 64, dst, cap, &si), 0);
        assert_int_equal(si.n_spans, 3);
        int from_disk = 0, from_dram = 0;
        for (size_t i = 0; i < si.n_spans; i++) {
            assert_int_equal(sp[i].status, 0);
            assert_int_not_equal(sp[i].chunk, 1);
            assert_memory_equal(dst + sp[i].dst_off, rows_of(&sp[i], 1), sp[i].n_tokens * row);
            from_disk += sp[i].served_from == KVT_TIER_DISK;
            from_dram += sp[i].served_from == KVT_TIER_CPU;
        }
        if (step < 8 || !on) {
            /* Below the threshold (or off): every run is a range read from disk. */
            assert_int_equal(from_disk, 3);
            assert_true(kvt_test_stat(c, "disk.range_reads") - reads0 >= 3);
        }
        all_dram = from_dram == 3;
        if (!on && step == 12)
            break;
    }
    if (on) {
        assert_true(all_dram);
        /* The 8th Select crosses the threshold; its own range reads, and on a busy machine a
         * few more, may still find the promotions in flight. */
        assert_true(step - 1 >= 8);
        assert_int_equal(kvt_test_stat(c, "tier.sel_promotions"), 3);
        /* Read as a Get's promotion is: verified on a worker, not on the loop. */
        assert_true(kvt_test_stat(c, "tier.reads_decoded_on_workers") - decoded0 >= 3);
        uint64_t runs_dram = kvt_test_stat(c, "select_runs_dram");
        /* From now on nothing of them is read from disk. */
        uint64_t reads = kvt_test_stat(c, "disk.range_reads");
        uint64_t disk_gets = kvt_test_stat(c, "gets_range_disk");
        for (int i = 0; i < 4; i++) {
            assert_int_equal(kvt_select_fetch(c, ns.handle, ctx, &q, sp, 64, dst, cap, &si), 0);
            for (size_t j = 0; j < si.n_spans; j++) {
                assert_int_equal(sp[j].served_from, KVT_TIER_CPU);
                assert_memory_equal(dst + sp[j].dst_off, rows_of(&sp[j], 1), sp[j].n_tokens * row);
            }
        }
        assert_int_equal(kvt_test_stat(c, "disk.range_reads"), reads);
        assert_int_equal(kvt_test_stat(c, "gets_range_disk"), disk_gets);
        assert_int_equal(kvt_test_stat(c, "select_runs_dram") - runs_dram, 4 * 3);
    } else {
        assert_false(all_dram);
        assert_int_equal(kvt_test_stat(c, "tier.sel_promotions"), 0);
        assert_int_equal(kvt_test_stat(c, "tier.sel_promotes_queued"), 0);
        assert_int_equal(kvt_test_stat(c, "tier.promotions"), promotions0);
        assert_int_equal(kvt_test_stat(c, "select_runs_dram"), 0);
    }
    /* Chunk 1, never chosen, is still only on disk (a whole-context Select says where each is). */
    struct kvt_select_req all = sel_req(1, N_CHUNKS * TOKENS);
    assert_int_equal(kvt_select(c, ctx, &all, sp, 64, &si), 0);
    for (size_t i = 0; i < si.n_spans; i++)
        if (sp[i].chunk == 1)
            assert_int_equal(sp[i].tier, KVT_TIER_DISK);
    assert_true(kvt_test_stat(c, "cpu.bytes_used") <= kvt_test_stat(c, "cpu.bytes_capacity"));
    kvt_arena_free(c, dst);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&dd), 0);
    kvt_test_daemon_cleanup(&dd);
}

static void test_hot_spans_promoted(void **state)
{
    (void)state;
    hot_spans(1);
}

static void test_hot_spans_off(void **state)
{
    (void)state;
    hot_spans(0);
}

/* Sends req on a raw session and returns the answer's status; every error says why. */
static int raw_call(int fd, Kvtier__Request *req)
{
    static uint64_t next_id = 100;
    req->id = ++next_id;
    assert_int_equal(kvt_test_send_request(fd, req, -1), 0);
    Kvtier__Response *r = kvt_test_read_response(fd, 1 << 20);
    assert_non_null(r);
    assert_int_equal(r->id, req->id);
    int st = r->status;
    assert_true(st == 0 || (r->error && *r->error));
    kvtier__response__free_unpacked(r, NULL);
    return st;
}

static void test_raw_frames(void **state)
{
    (void)state;
    /* What the library never sends: counts that disagree, queries of odd sizes, NaN budgets. */
    uint32_t ns;
    int fd = kvt_test_raw_session(d.socket_path, NULL, &spec, 0, NULL, &ns);
    assert_true(fd >= 0);
    struct kvt_ns_info info;
    struct kvt_client *c = connect_as(NULL, &info, NULL);
    put_all(c, info.handle, keys);
    uint64_t ctx;
    assert_int_equal(kvt_context_open(c, info.handle, 0, &ctx), 0);
    assert_int_equal(kvt_context_append(c, ctx, keys, NULL, starts, N_CHUNKS, NULL), 0);

    Kvtier__Key k[2] = {KVTIER__KEY__INIT, KVTIER__KEY__INIT}, *kp[2] = {&k[0], &k[1]};
    k[0].lo = keys[0].lo, k[0].hi = keys[0].hi;
    k[1].lo = keys[1].lo, k[1].hi = keys[1].hi;
    uint64_t st[2] = {0, 0};
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__AppendChunksReq a = KVTIER__APPEND_CHUNKS_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_APPEND_CHUNKS;
    req.append_chunks = &a;
    a.ctx = ctx;
    a.n_keys = 2;
    a.keys = kp;
    a.n_start_pos = 1; /* one position for two keys */
    a.start_pos = st;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    a.n_start_pos = 2;
    st[0] = 2 * N_CHUNKS * TOKENS, st[1] = 0; /* the second before the first */
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);

    Kvtier__SelectReq sr = KVTIER__SELECT_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_SELECT;
    req.select = &sr;
    sr.ctx = ctx;
    sr.layer = 1;
    sr.n_query_heads = QHEADS;
    sr.budget_tokens = 48;
    sr.query.data = (uint8_t *)query;
    sr.query.len = sizeof(query) - 2; /* not whole fp32 values */
    assert_int_equal(raw_call(fd, &req), KVT_E_GEOMETRY);
    sr.query.len = 0;
    assert_int_equal(raw_call(fd, &req), KVT_E_GEOMETRY);
    sr.query.len = sizeof(query);
    sr.n_query_heads = 0;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    sr.n_query_heads = QHEADS;
    sr.budget_fraction = NAN; /* two budgets, one of them NaN */
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    sr.budget_tokens = 0;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL); /* NaN alone */
    sr.budget_fraction = 0;
    sr.top_p = -0.0f; /* no budget at all: -0 is not a budget */
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    sr.top_p = 0;
    sr.budget_tokens = 48;
    sr.n_estimates = 1u << 31;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    sr.n_estimates = 0;
    sr.layer = UINT32_MAX;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);
    sr.layer = 1;
    assert_int_equal(raw_call(fd, &req), 0); /* and a good one still answers */

    Kvtier__OpenContextReq o = KVTIER__OPEN_CONTEXT_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_OPEN_CONTEXT;
    req.open_context = &o;
    o.ns = ns ^ 0x40000u; /* another generation of the slot */
    assert_int_equal(raw_call(fd, &req), KVT_E_NONS);
    o.ns = ns;
    o.ttl_ms = 86400001u;
    assert_int_equal(raw_call(fd, &req), KVT_E_INVAL);

    /* Nothing of it changed the context. */
    struct kvt_select_req q = sel_req(1, 48);
    struct kvt_span_sel sp[64];
    struct kvt_select_info si;
    assert_int_equal(kvt_select(c, ctx, &q, sp, 64, &si), 0);
    assert_int_equal(si.context_tokens, N_CHUNKS * TOKENS);
    assert_int_equal(si.n_spans, 3);
    assert_int_equal(kvt_context_close(c, ctx), 0);
    kvt_close(c);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_needle_found),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_lease_expires),
        cmocka_unit_test(test_variable_spans),
        cmocka_unit_test(test_abstracts_outlive_the_bytes),
        cmocka_unit_test(test_select_fetch_dram_and_disk),
        cmocka_unit_test(test_hot_spans_promoted),
        cmocka_unit_test(test_hot_spans_off),
        cmocka_unit_test(test_raw_frames),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
