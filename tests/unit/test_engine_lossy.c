/*
 * The lossy KV modes (issue 12) on the real model: quant and cluster through the KV seam.
 *
 * - cluster at ratio 0 clusters every window with nothing merged: the logits of a batched
 *   prefill and of the decode steps after it are bit-identical to resident;
 * - cluster at 25% and 75% (two passes): in every (layer, KV head) the counts of the entries
 *   (read back from the spans' log(count) bias) plus the rows not yet clustered add up to the
 *   positions seen, and each window kept exactly window - round(ratio * window) entries;
 * - the log(count) bias: a context whose row j+1 is a copy of row j attends like the context with
 *   the two merged into one entry of count 2, and not like that entry without its bias;
 * - sparse retrieval over the lossy rows (--budget): a budget of 1 attends to every row, bit for
 *   bit as without one; a budget of 0.25 changes the decode steps only (batches are declined);
 * - quant 8-bit scored one token at a time against resident (fidelity.h) on real text: small KL
 *   and high top-1 agreement, yet not lossless; 4-bit further from resident than 8-bit; keys per
 *   channel (KIVI) accepted; the bytes kept follow the format.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/fidelity.h"
#include "engine/kv.h"
#include "engine/model.h"
#include "engine/quant.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "tests/engine/fixture.h"

#define SEQ 320    /* tokens of the cluster runs */
#define DECODE 16  /* of them, the last ones fed one at a time */
#define BATCH 64   /* prefill step */
#define WINDOW 32  /* cluster window */
#define SINKS 4    /* kept fp16 */
#define RECENT 64  /* kept fp16 */
#define Q_SEQ 288  /* tokens of the quant decode evaluation */
#define Q_FROM 256 /* its first scored position */

struct lossy_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct kvt_eng_ctx *ctx;
    struct engine_fixture fx;
    float *ref; /* resident logits of every position of SEQ */
};

/* Runs SEQ tokens: batches of BATCH up to SEQ - DECODE, then one at a time; logits of every
 * position into out (n_vocab each). */
static int run_seq(struct lossy_state *st, struct kvt_eng_kv *kv, float *out)
{
    size_t reused, V = st->m->hp.n_vocab;
    int rc = kv->ops->begin(kv, st->fx.ids, SEQ, 0, &reused);
    for (size_t p = 0; rc == 0 && p < SEQ;) {
        size_t n = p < SEQ - DECODE ? BATCH : 1;
        if (p + n > SEQ - DECODE && p < SEQ - DECODE)
            n = SEQ - DECODE - p;
        rc = kvt_eng_forward(st->ctx, kv, st->fx.ids + p, n, p, out + p * V, 1);
        if (rc == 0)
            rc = kv->ops->commit(kv, st->fx.ids, p + n);
        p += n;
    }
    return rc;
}

static struct kvt_eng_lossy_config cluster_cfg(double ratio)
{
    struct kvt_eng_lossy_config c = {
        .ratio = ratio, .window = WINDOW, .sinks = SINKS, .recent = RECENT};
    return c;
}

static int setup(void **state)
{
    static struct lossy_state st;
    char err[256];
    *state = NULL;
    kvt_eng_quant_init(0);
    if (!engine_test_have_model())
        return 0;
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx) || st.fx.n_ids < Q_SEQ ||
        kvt_eng_ctx_create(st.m, st.pool, BATCH, SEQ, &st.ctx))
        return -1;
    st.ref = malloc((size_t)SEQ * st.m->hp.n_vocab * sizeof(float));
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st.m, SEQ, BATCH);
    struct kvt_eng_kv *res;
    if (!st.ref || kvt_eng_kv_resident_create(&g, &res))
        return -1;
    int rc = run_seq(&st, res, st.ref);
    kvt_eng_kv_destroy(res);
    if (rc)
        return -1;
    *state = &st;
    return 0;
}

static int teardown(void **state)
{
    struct lossy_state *st = *state;
    if (st) {
        free(st->ref);
        kvt_eng_ctx_destroy(st->ctx);
        engine_fixture_free(&st->fx);
        kvt_eng_pool_destroy(st->pool);
        kvt_eng_model_free(st->m);
    }
    return 0;
}

static void test_cluster_ratio0_is_resident(void **state)
{
    struct lossy_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kvt_eng_lossy_config c = cluster_cfg(0.0);
    struct kvt_eng_kv *kv;
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, NULL, &kv), 0);
    float *l = malloc((size_t)SEQ * V * sizeof(float));
    assert_non_null(l);
    assert_int_equal(run_seq(st, kv, l), 0);
    /* Windows were clustered (the entries span carries a bias), and nothing changed. */
    struct kvt_eng_kv_span sp[2] = {{0}};
    assert_int_equal(kv->ops->spans(kv, 0, SEQ, sp, 2), 2);
    assert_non_null(sp[0].bias);
    assert_true(sp[0].n_tokens >= SINKS + (SEQ - SINKS - RECENT - WINDOW) / WINDOW * WINDOW);
    assert_memory_equal(l, st->ref, (size_t)SEQ * V * sizeof(float));
    free(l);
    kvt_eng_kv_destroy(kv);
}

static void check_counts(struct lossy_state *st, double ratio)
{
    size_t V = st->m->hp.n_vocab, nh = st->m->hp.n_head_kv;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kvt_eng_lossy_config c = cluster_cfg(ratio);
    struct kvt_eng_kv *kv;
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, NULL, &kv), 0);
    float *l = malloc((size_t)SEQ * V * sizeof(float));
    assert_non_null(l);
    assert_int_equal(run_seq(st, kv, l), 0);
    /* The windows clustered by the last prepare (position SEQ - 1). */
    size_t windows = (SEQ - 1 - SINKS - RECENT) / WINDOW;
    size_t merge = (size_t)lround(ratio * WINDOW);
    size_t merged_ent = 0, multi = 0;
    for (uint32_t layer = 0; layer < g.n_layer; layer++) {
        struct kvt_eng_kv_span sp[2] = {{0}};
        assert_int_equal(kv->ops->spans(kv, layer, SEQ, sp, 2), 2);
        assert_int_equal(sp[0].n_tokens, SINKS + windows * (WINDOW - merge));
        assert_int_equal(sp[1].pos, SINKS + windows * WINDOW);
        assert_int_equal(sp[1].pos + sp[1].n_tokens, SEQ);
        assert_null(sp[1].bias);
        for (size_t h = 0; h < nh; h++) {
            uint64_t sum = 0;
            for (size_t e = 0; e < sp[0].n_tokens; e++) {
                float b = sp[0].bias[e * nh + h];
                long cnt = lround(expf(b));
                assert_true(cnt >= 1);
                /* The bias is exactly the log of an integer count. */
                assert_true(fabsf(logf((float)cnt) - b) == 0.0f);
                sum += (uint64_t)cnt;
                multi += cnt > 1;
                if (e < SINKS)
                    assert_int_equal(cnt, 1);
            }
            merged_ent += sp[0].n_tokens;
            assert_int_equal(sum + sp[1].n_tokens, SEQ);
        }
    }
    assert_true(merged_ent > 0 && multi > 0);
    /* Bytes kept: fewer rows than positions, plus a count per merged entry and head. */
    uint64_t row = 2 * nh * st->m->hp.head_dim * 2;
    uint64_t ent = SINKS + windows * (WINDOW - merge), raw = SEQ - (SINKS + windows * WINDOW);
    assert_int_equal(kv->bytes_kept, g.n_layer * ((ent + raw) * row + (ent - SINKS) * nh * 2));
    /* It changed the logits of the decode steps, but not beyond recognition. */
    size_t agree = 0;
    for (size_t p = SEQ - DECODE; p < SEQ; p++)
        agree += kvt_eng_argmax(l + p * V, V) == kvt_eng_argmax(st->ref + p * V, V);
    assert_memory_not_equal(l + (SEQ - DECODE) * V, st->ref + (SEQ - DECODE) * V,
                            DECODE * V * sizeof(float));
    assert_true(agree >= DECODE / 2);
    free(l);
    kvt_eng_kv_destroy(kv);
}

static void test_cluster_counts_sum(void **state)
{
    struct lossy_state *st = *state;
    if (!st)
        skip();
    check_counts(st, 0.25);
    check_counts(st, 0.75); /* two passes: 16, then 8 of 32 */
}

static void test_cluster_config_checked(void **state)
{
    (void)state;
    struct kvt_eng_kv_geom g = {
        .n_layer = 2, .n_head_kv = 1, .head_dim = 64, .ctx_max = 64, .batch_max = 8};
    struct kvt_eng_kv *kv = NULL;
    struct kvt_eng_lossy_config c = cluster_cfg(1.0);
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, NULL, &kv), -EINVAL);
    c = cluster_cfg(-0.1);
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, NULL, &kv), -EINVAL);
    c = cluster_cfg(0.5);
    c.window = 33;
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, NULL, &kv), -EINVAL);
    struct kvt_eng_lossy_config q = {.bits = 3};
    assert_int_equal(kvt_eng_kv_quant_create(&g, &q, NULL, &kv), -EINVAL);
    q.bits = 8;
    q.group = 48; /* does not divide head_dim 64 */
    assert_int_equal(kvt_eng_kv_quant_create(&g, &q, NULL, &kv), -EINVAL);
    q.keys_per_channel = 1; /* keys allow it, values (per token) do not */
    assert_int_equal(kvt_eng_kv_quant_create(&g, &q, NULL, &kv), -EINVAL);
    assert_null(kv);
}

static float *run_cluster(struct lossy_state *st, double ratio, double budget)
{
    size_t V = st->m->hp.n_vocab;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kvt_eng_lossy_config c = cluster_cfg(ratio);
    struct kvt_eng_select_config sel = {.budget = budget};
    struct kvt_eng_kv *kv;
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, budget > 0 ? &sel : NULL, &kv), 0);
    float *l = malloc((size_t)SEQ * V * sizeof(float));
    assert_non_null(l);
    assert_int_equal(run_seq(st, kv, l), 0);
    kvt_eng_kv_destroy(kv);
    return l;
}

static void test_cluster_with_sparse_retrieval(void **state)
{
    struct lossy_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab, pre = (size_t)(SEQ - DECODE) * V;
    float *plain = run_cluster(st, 0.5, 0.0), *all = run_cluster(st, 0.5, 1.0);
    float *part = run_cluster(st, 0.5, 0.25);
    assert_memory_equal(all, plain, (size_t)SEQ * V * sizeof(float));
    assert_memory_equal(part, plain, pre * sizeof(float)); /* the prefill: full attention */
    assert_memory_not_equal(part + pre, plain + pre, DECODE * V * sizeof(float));
    free(plain);
    free(all);
    free(part);
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kvt_eng_lossy_config c = cluster_cfg(0.5);
    struct kvt_eng_select_config bad = {.budget = 0.2, .top_p = 0.5};
    struct kvt_eng_kv *kv = NULL;
    assert_int_equal(kvt_eng_kv_cluster_create(&g, &c, &bad, &kv), -EINVAL);
    struct kvt_eng_lossy_config q = {.bits = 8};
    assert_int_equal(kvt_eng_kv_quant_create(&g, &q, &bad, &kv), -EINVAL);
    assert_null(kv);
}

/* ---- the log(count) bias ----------------------------------------------------------------------
 * A mode over a fixed context of `k` rows per layer (copied in), then the rows appended after it;
 * with bias, row j has the given bias in every head. */
struct kv_fixed {
    struct kvt_eng_kv base;
    size_t row_halfs, k, p0; /* rows given; the position the first appended row has */
    uint16_t *rows;          /* [layer][k + 8][row] */
    float *bias;             /* [k + 8][n_head_kv] */
    int with_bias;
};

static int fx_begin(struct kvt_eng_kv *kv, const int32_t *t, size_t n, int a, size_t *r)
{
    (void)kv, (void)t, (void)n, (void)a;
    *r = 0;
    return 0;
}
static int fx_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    (void)kv, (void)pos, (void)n;
    return 0;
}
static int fx_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                     const uint16_t *rows)
{
    struct kv_fixed *f = (struct kv_fixed *)kv;
    size_t at = f->k + pos - f->p0;
    if (pos < f->p0 || at + n > f->k + 8)
        return -EINVAL;
    memcpy(f->rows + ((size_t)layer * (f->k + 8) + at) * f->row_halfs, rows,
           n * f->row_halfs * sizeof(uint16_t));
    return 0;
}
static int fx_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                    size_t max)
{
    struct kv_fixed *f = (struct kv_fixed *)kv;
    (void)max;
    out[0].rows = f->rows + (size_t)layer * (f->k + 8) * f->row_halfs;
    out[0].pos = 0;
    out[0].n_tokens = f->k + end - f->p0;
    out[0].bias = f->with_bias ? f->bias : NULL;
    return 1;
}
static int fx_commit(struct kvt_eng_kv *kv, const int32_t *t, size_t n)
{
    (void)kv, (void)t, (void)n;
    return 0;
}
static void fx_destroy(struct kvt_eng_kv *kv)
{
    (void)kv;
}
static const struct kvt_eng_kv_ops fixed_ops = {"fixed",  fx_begin, fx_prepare, fx_append,
                                                fx_spans, NULL,     fx_commit,  fx_destroy};

#define B_CTX 160 /* context positions */
#define B_J 60    /* row B_J + 1 is a copy of row B_J */

/* Logits of token ids[B_CTX] at position B_CTX over a context built from the resident rows:
 * dup: row B_J + 1 replaced by row B_J; merged: row B_J + 1 left out, row B_J with bias log 2
 * (with_bias) or none. */
static void fixed_logits(struct lossy_state *st, struct kvt_eng_kv *res, int merged, int with_bias,
                         float *logits)
{
    const struct kvt_eng_kv_geom *g = &res->geom;
    size_t rh = kvt_eng_kv_row_halfs(g), nh = g->n_head_kv;
    struct kv_fixed f = {.row_halfs = rh, .k = merged ? B_CTX - 1 : B_CTX, .p0 = B_CTX};
    f.base.ops = &fixed_ops;
    f.base.geom = *g;
    f.base.spans_max = 1;
    f.with_bias = with_bias;
    f.rows = calloc((size_t)g->n_layer * (f.k + 8) * rh, sizeof(uint16_t));
    f.bias = calloc((f.k + 8) * nh, sizeof(float));
    assert_non_null(f.rows);
    assert_non_null(f.bias);
    for (size_t h = 0; h < nh; h++)
        f.bias[B_J * nh + h] = logf(2.0f);
    for (uint32_t l = 0; l < g->n_layer; l++) {
        struct kvt_eng_kv_span sp = {0};
        assert_int_equal(res->ops->spans(res, l, B_CTX, &sp, 1), 1);
        uint16_t *dst = f.rows + (size_t)l * (f.k + 8) * rh;
        for (size_t p = 0, r = 0; p < B_CTX; p++) {
            if (p == B_J + 1 && merged)
                continue;
            const uint16_t *src = sp.rows + (p == B_J + 1 ? B_J : p) * rh;
            memcpy(dst + r++ * rh, src, rh * sizeof(uint16_t));
        }
    }
    assert_int_equal(kvt_eng_forward(st->ctx, &f.base, st->fx.ids + B_CTX, 1, B_CTX, logits, 0), 0);
    free(f.rows);
    free(f.bias);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

static void test_log_count_bias(void **state)
{
    struct lossy_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, B_CTX + 8, BATCH);
    struct kvt_eng_kv *res;
    assert_int_equal(kvt_eng_kv_resident_create(&g, &res), 0);
    size_t reused;
    assert_int_equal(res->ops->begin(res, st->fx.ids, B_CTX, 0, &reused), 0);
    for (size_t p = 0; p < B_CTX; p += 32)
        assert_int_equal(kvt_eng_forward(st->ctx, res, st->fx.ids + p, 32, p, NULL, 0), 0);
    float *dup = malloc(V * sizeof(float)), *mb = malloc(V * sizeof(float));
    float *mn = malloc(V * sizeof(float));
    assert_true(dup && mb && mn);
    fixed_logits(st, res, 0, 0, dup);
    fixed_logits(st, res, 1, 1, mb);
    fixed_logits(st, res, 1, 0, mn);
    double d_bias = max_abs_diff(dup, mb, V), d_none = max_abs_diff(dup, mn, V);
    print_message("two equal rows vs one of count 2: max |dlogit| %.3g with log(2), %.3g "
                  "without\n",
                  d_bias, d_none);
    /* With log 2 the two forms differ only by the fp16 rounding of the probabilities (one p
     * rounded against two p/2), far less than the weight the bias restores. */
    assert_true(d_none > 0.0);
    assert_true(d_bias < 0.02 * d_none);
    free(dup);
    free(mb);
    free(mn);
    kvt_eng_kv_destroy(res);
}

/* ---- quant ------------------------------------------------------------------------------------
 */

static void quant_eval(struct lossy_state *st, uint32_t bits, int kivi,
                       struct kvt_eng_fid_summary *sm, uint64_t *kept)
{
    struct kvt_eng_session_config ref = {
        .mode = KVT_ENG_MODE_RESIDENT, .ctx_max = Q_SEQ, .batch_max = BATCH, .log = stderr};
    struct kvt_eng_session_config cur = ref;
    cur.mode = KVT_ENG_MODE_QUANT;
    cur.lossy = (struct kvt_eng_lossy_config){
        .bits = bits, .keys_per_channel = kivi, .sinks = SINKS, .recent = RECENT};
    struct kvt_eng_decode_eval ev;
    assert_int_equal(
        kvt_eng_decode_eval_run(st->m, st->pool, &ref, &cur, st->fx.ids, Q_SEQ, Q_FROM, &ev), 0);
    assert_int_equal(kvt_eng_fid_summarize(&ev.fid, 0, SIZE_MAX, sm), 0);
    assert_int_equal(sm->n, Q_SEQ - 1 - Q_FROM);
    *kept = ev.cur.bytes_kept;
    assert_int_equal(ev.ref.bytes_kept, (uint64_t)ev.ref.token_bytes * (Q_SEQ - 1));
    print_message("quant %u-bit%s: KL mean %.5f p99 %.5f, top-1 %.3f, bytes kept %.3f of fp16\n",
                  bits, kivi ? " (keys per channel)" : "", sm->kl_mean, sm->kl_p99, sm->top1,
                  (double)ev.cur.bytes_kept / (double)ev.ref.bytes_kept);
    kvt_eng_fid_deinit(&ev.fid);
}

static void test_quant_fidelity(void **state)
{
    struct lossy_state *st = *state;
    if (!st)
        skip();
    struct kvt_eng_fid_summary s8, s4, sk;
    uint64_t k8, k4, kk;
    quant_eval(st, 8, 0, &s8, &k8);
    /* Lossy, but close: the 8-bit bar of EVALUATION.md is a KL of a few thousandths. */
    assert_true(s8.kl_mean > 0.0);
    assert_true(s8.kl_mean < 0.02);
    assert_true(s8.top1 >= 0.9);
    quant_eval(st, 4, 0, &s4, &k4);
    assert_true(s4.kl_mean > s8.kl_mean);
    quant_eval(st, 4, 1, &sk, &kk);
    assert_true(sk.kl_mean > 0.0 && sk.kl_mean < 0.2);
    /* Head_dim 64, groups of 32, a position of SmolLM2 is 23,040 bytes in fp16. 8-bit: 72 bytes a
     * head and side instead of 128; 4-bit: 40. The positions still fp16 make up the rest. */
    size_t n = Q_SEQ - 1, lossy = n - 1 - RECENT - SINKS; /* the last prepare was at n - 1 */
    uint64_t fp16_side = 30 * 3 * 64 * 2; /* one side (k or v) of one position, all layers */
    assert_int_equal(k8, (uint64_t)lossy * 2 * 30 * 3 * 72 + (n - lossy) * 2 * fp16_side);
    assert_int_equal(k4, (uint64_t)lossy * 2 * 30 * 3 * 40 + (n - lossy) * 2 * fp16_side);
    /* Keys per channel: whole groups of 32 positions only; the rest of the keys wait in fp16. */
    size_t kq = lossy / 32 * 32;
    assert_int_equal(kk, (uint64_t)lossy * 30 * 3 * 40 + (n - lossy) * fp16_side +
                             (uint64_t)kq * 30 * 3 * 32 + (uint64_t)(kq / 32) * 30 * 3 * 64 * 4 +
                             (n - kq) * fp16_side);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_config_checked),
        cmocka_unit_test(test_cluster_ratio0_is_resident),
        cmocka_unit_test(test_cluster_counts_sum),
        cmocka_unit_test(test_log_count_bias),
        cmocka_unit_test(test_cluster_with_sparse_retrieval),
        cmocka_unit_test(test_quant_fidelity),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
