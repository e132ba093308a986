/*
 * The KV seam's query hook (kv.h, select) and the q8 mode.
 *
 * Test modes wrap a resident cache and choose rows through select():
 * - chop: every row's causal past in 5-token spans: bit-identical to resident (attention does not
 *   depend on how the rows are cut), in batches (one list per row) and in decode steps;
 * - self: each row attends to itself alone. Attention then returns that row's value whatever its
 *   position (one score, probability 1), so the logits must be bit-identical to the same token run
 *   alone at position 0: proof that the forward pass attends to exactly the returned rows;
 * - top / bottom: the 16 rows with the highest (lowest) q.k over the heads, computed by the mode
 *   from the query it is handed; the top rows must keep the distribution much closer to full
 *   attention than the bottom ones, which holds only if the query is the real one after RoPE;
 * - drop (decode steps only; batches are declined): changes the logits;
 * - bad selections (future rows, overlapping, empty) fail the step with -EINVAL.
 * q8: the group rounding on hand-made groups, and the mode stores rounded rows.
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
#include "tests/engine/fixture.h"

#define SEQ 80      /* tokens per run */
#define PREFILL 64  /* batched, then one at a time */
#define BATCH 16    /* prefill step */
#define CHOP 5      /* span length of the chop mode */
#define TOP_ROWS 16 /* rows the top / bottom modes keep */

enum policy { P_CHOP, P_SELF, P_TOP, P_BOTTOM, P_DROP, P_DECLINE, P_FUTURE, P_OVERLAP, P_EMPTY };

struct kv_test {
    struct kvt_eng_kv base;
    struct kvt_eng_kv *res;
    enum policy policy;
    uint32_t n_head_kv;
    size_t select_calls, decode_calls;
    float *score; /* per position, top / bottom */
    size_t *order;
};

static struct kv_test *T(struct kvt_eng_kv *kv)
{
    return (struct kv_test *)kv;
}

static int t_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow, size_t *r)
{
    return T(kv)->res->ops->begin(T(kv)->res, tokens, n, allow, r);
}

static int t_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    return T(kv)->res->ops->prepare(T(kv)->res, pos, n);
}

static int t_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                    const uint16_t *rows)
{
    return T(kv)->res->ops->append(T(kv)->res, layer, pos, n, rows);
}

static int t_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                   size_t max)
{
    return T(kv)->res->ops->spans(T(kv)->res, layer, end, out, max);
}

static int t_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    return T(kv)->res->ops->commit(T(kv)->res, tokens, n);
}

static void t_destroy(struct kvt_eng_kv *kv)
{
    kvt_eng_kv_destroy(T(kv)->res);
    free(T(kv)->score);
    free(T(kv)->order);
    free(kv);
}

static const float *g_score; /* qsort has no context argument */
static int by_score_desc(const void *a, const void *b)
{
    float x = g_score[*(const size_t *)a], y = g_score[*(const size_t *)b];
    return x > y ? -1 : x < y;
}

static int by_pos(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Single rows (sorted positions) as spans, adjacent ones merged. */
static size_t rows_to_spans(const uint16_t *base, size_t row_halfs, const size_t *pos, size_t n,
                            struct kvt_eng_kv_span *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && out[k - 1].pos + out[k - 1].n_tokens == pos[i]) {
            out[k - 1].n_tokens++;
            continue;
        }
        out[k].rows = base + pos[i] * row_halfs;
        out[k].pos = pos[i];
        out[k].n_tokens = 1;
        k++;
    }
    return k;
}

/* Rows ranked by max over query heads of q.k (keys of the KV head each query head reads). */
static size_t rank_rows(struct kv_test *t, const struct kvt_eng_kv_query *q, size_t row_t,
                        const uint16_t *base, size_t last, int top, size_t *pick)
{
    size_t hd = q->head_dim, group = q->n_head / t->n_head_kv;
    size_t row_halfs = kvt_eng_kv_row_halfs(&t->base.geom);
    for (size_t i = 0; i < last; i++) {
        float best = -INFINITY;
        for (size_t h = 0; h < q->n_head; h++) {
            const float *qv = q->q + (row_t * q->n_head + h) * hd;
            const uint16_t *k = base + i * row_halfs + (h / group) * hd;
            float d = 0.0f;
            for (size_t j = 0; j < hd; j++)
                d += qv[j] * kvt_eng_fp16_to_fp32(k[j]);
            best = d > best ? d : best;
        }
        t->score[i] = top ? best : -best;
        t->order[i] = i;
    }
    g_score = t->score;
    qsort(t->order, last, sizeof(size_t), by_score_desc);
    size_t n = last < TOP_ROWS ? last : TOP_ROWS;
    memcpy(pick, t->order, n * sizeof(size_t));
    pick[n++] = last; /* the row itself */
    qsort(pick, n, sizeof(size_t), by_pos);
    return n;
}

static int t_select(struct kvt_eng_kv *kv, uint32_t layer, const struct kvt_eng_kv_query *q,
                    struct kvt_eng_kv_span *out, size_t max, size_t *counts)
{
    struct kv_test *t = T(kv);
    struct kvt_eng_kv_span all;
    size_t row_halfs = kvt_eng_kv_row_halfs(&kv->geom);
    int rc = t->res->ops->spans(t->res, layer, q->pos + q->n_tokens, &all, 1);
    if (rc < 0)
        return rc;
    t->select_calls++;
    t->decode_calls += q->n_tokens == 1;
    assert_int_equal(q->head_dim, kv->geom.head_dim);
    if (t->policy == P_DECLINE ||
        (q->n_tokens > 1 && (t->policy == P_DROP || t->policy >= P_FUTURE)))
        return KVT_ENG_KV_DECLINE;
    for (size_t r = 0; r < q->n_tokens; r++) {
        struct kvt_eng_kv_span *o = out + r * max;
        size_t last = q->pos + r, k = 0;
        switch (t->policy) {
        case P_CHOP:
            for (size_t p = 0; p <= last; p += CHOP) {
                o[k].rows = all.rows + p * row_halfs;
                o[k].pos = p;
                o[k].n_tokens = last + 1 - p < CHOP ? last + 1 - p : CHOP;
                k++;
            }
            break;
        case P_SELF:
            o[0] = (struct kvt_eng_kv_span){all.rows + last * row_halfs, last, 1, NULL};
            k = 1;
            break;
        case P_TOP:
        case P_BOTTOM: {
            size_t pick[TOP_ROWS + 1];
            size_t n = rank_rows(t, q, r, all.rows, last, t->policy == P_TOP, pick);
            k = rows_to_spans(all.rows, row_halfs, pick, n, o);
            break;
        }
        case P_DROP: /* the first 4 rows and the last 16 */
            o[0] = (struct kvt_eng_kv_span){all.rows, 0, 4, NULL};
            o[1] =
                (struct kvt_eng_kv_span){all.rows + (last - 15) * row_halfs, last - 15, 16, NULL};
            k = 2;
            break;
        case P_FUTURE: /* one row past the query */
            o[0] = (struct kvt_eng_kv_span){all.rows, 0, last + 2, NULL};
            k = 1;
            break;
        case P_OVERLAP:
            o[0] = (struct kvt_eng_kv_span){all.rows, 0, 2, NULL};
            o[1] = (struct kvt_eng_kv_span){all.rows + row_halfs, 1, last, NULL};
            k = 2;
            break;
        case P_EMPTY:
        case P_DECLINE:
            k = 0;
            break;
        }
        assert_true(k <= max);
        counts[r] = k;
    }
    return 0;
}

static const struct kvt_eng_kv_ops test_ops = {
    .name = "test-select",
    .begin = t_begin,
    .prepare = t_prepare,
    .append = t_append,
    .spans = t_spans,
    .select = t_select,
    .commit = t_commit,
    .destroy = t_destroy,
};

struct seam_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct engine_fixture fx;
    struct kvt_eng_ctx *ctx;
    float *ref; /* resident logits of every position, SEQ * V */
};

static struct kvt_eng_kv *make_test_kv(struct seam_state *st, enum policy p)
{
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kv_test *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    assert_int_equal(kvt_eng_kv_resident_create(&g, &t->res), 0);
    t->base.ops = &test_ops;
    t->base.geom = g;
    t->base.spans_max = SEQ / CHOP + 2;
    t->base.token_bytes = t->res->token_bytes;
    t->policy = p;
    t->n_head_kv = g.n_head_kv;
    t->score = calloc(SEQ, sizeof(float));
    t->order = calloc(SEQ, sizeof(size_t));
    assert_non_null(t->score);
    assert_non_null(t->order);
    return &t->base;
}

/* Prefill [0, PREFILL) in batches with every position's logits, then one position at a time;
 * returns the first error. logits: SEQ * V. */
static int run_seq(struct seam_state *st, struct kvt_eng_kv *kv, float *logits)
{
    size_t V = st->m->hp.n_vocab, reused;
    int rc = kv->ops->begin(kv, st->fx.ids, SEQ, 0, &reused);
    for (size_t p = 0; rc == 0 && p < SEQ;) {
        size_t n = p < PREFILL ? BATCH : 1;
        rc = kvt_eng_forward(st->ctx, kv, st->fx.ids + p, n, p, logits + p * V, 1);
        if (rc == 0)
            rc = kv->ops->commit(kv, st->fx.ids, p + n);
        p += n;
    }
    return rc;
}

static int setup(void **state)
{
    static struct seam_state st;
    char err[256];
    *state = NULL;
    kvt_eng_quant_init(0);
    if (!engine_test_have_model())
        return 0;
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx) || st.fx.n_ids < SEQ ||
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
    struct seam_state *st = *state;
    if (st) {
        free(st->ref);
        kvt_eng_ctx_destroy(st->ctx);
        engine_fixture_free(&st->fx);
        kvt_eng_pool_destroy(st->pool);
        kvt_eng_model_free(st->m);
    }
    return 0;
}

static float *run_policy(struct seam_state *st, enum policy p, size_t *calls, size_t *decode)
{
    size_t V = st->m->hp.n_vocab;
    float *l = malloc((size_t)SEQ * V * sizeof(float));
    assert_non_null(l);
    struct kvt_eng_kv *kv = make_test_kv(st, p);
    assert_int_equal(run_seq(st, kv, l), 0);
    if (calls)
        *calls = T(kv)->select_calls;
    if (decode)
        *decode = T(kv)->decode_calls;
    kvt_eng_kv_destroy(kv);
    return l;
}

static void test_all_rows_in_many_spans_is_resident(void **state)
{
    struct seam_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab, calls, decode;
    float *l = run_policy(st, P_CHOP, &calls, &decode);
    size_t layers = st->m->hp.n_layer;
    /* Every layer of every step asked, (PREFILL / BATCH) batches and SEQ - PREFILL decode steps. */
    assert_int_equal(calls, layers * (PREFILL / BATCH + SEQ - PREFILL));
    assert_int_equal(decode, layers * (SEQ - PREFILL));
    assert_memory_equal(l, st->ref, (size_t)SEQ * V * sizeof(float));
    free(l);
    l = run_policy(st, P_DECLINE, NULL, NULL);
    assert_memory_equal(l, st->ref, (size_t)SEQ * V * sizeof(float));
    free(l);
}

static void test_self_only_is_the_token_alone(void **state)
{
    struct seam_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *l = run_policy(st, P_SELF, NULL, NULL);
    float *alone = malloc(V * sizeof(float));
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    /* Rows from a prefill batch (3, 37) and from decode steps (64, 79). */
    const size_t at[] = {3, 37, PREFILL, SEQ - 1};
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        struct kvt_eng_kv *res;
        size_t reused;
        assert_int_equal(kvt_eng_kv_resident_create(&g, &res), 0);
        assert_int_equal(res->ops->begin(res, st->fx.ids + at[i], 1, 0, &reused), 0);
        assert_int_equal(kvt_eng_forward(st->ctx, res, st->fx.ids + at[i], 1, 0, alone, 0), 0);
        kvt_eng_kv_destroy(res);
        assert_memory_equal(l + at[i] * V, alone, V * sizeof(float));
        /* ... and nothing like the full-context logits. */
        assert_memory_not_equal(l + at[i] * V, st->ref + at[i] * V, V * sizeof(float));
    }
    free(alone);
    free(l);
}

static double mean_kl(struct seam_state *st, const float *l, size_t from)
{
    size_t V = st->m->hp.n_vocab;
    double sum = 0.0;
    for (size_t p = from; p < SEQ; p++) {
        struct kvt_eng_fid_pos r;
        kvt_eng_fid_compare(st->ref + p * V, l + p * V, V, -1, &r);
        sum += r.kl;
    }
    return sum / (double)(SEQ - from);
}

static void test_query_ranks_rows(void **state)
{
    struct seam_state *st = *state;
    if (!st)
        skip();
    float *top = run_policy(st, P_TOP, NULL, NULL);
    float *bottom = run_policy(st, P_BOTTOM, NULL, NULL);
    /* Both keep 17 rows of up to 80 at every position from 17 on. */
    double kl_top = mean_kl(st, top, TOP_ROWS + 1), kl_bottom = mean_kl(st, bottom, TOP_ROWS + 1);
    printf("mean KL keeping the %d rows of highest q.k: %.4f, of lowest: %.4f\n", TOP_ROWS, kl_top,
           kl_bottom);
    assert_true(kl_top > 0.0);
    assert_true(kl_top * 4.0 < kl_bottom);
    free(top);
    free(bottom);
}

static void test_dropping_rows_changes_decode_logits(void **state)
{
    struct seam_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *l = run_policy(st, P_DROP, NULL, NULL);
    /* Batches were declined: the prefill is full attention. Decode steps attended to 20 rows. */
    assert_memory_equal(l, st->ref, (size_t)PREFILL * V * sizeof(float));
    for (size_t p = PREFILL; p < SEQ; p++)
        assert_memory_not_equal(l + p * V, st->ref + p * V, V * sizeof(float));
    assert_true(mean_kl(st, l, PREFILL) > 0.0);
    free(l);
}

static void test_bad_selections_fail_the_step(void **state)
{
    struct seam_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *l = malloc((size_t)SEQ * V * sizeof(float));
    const enum policy bad[] = {P_FUTURE, P_OVERLAP, P_EMPTY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kvt_eng_kv *kv = make_test_kv(st, bad[i]);
        assert_int_equal(run_seq(st, kv, l), -EINVAL);
        kvt_eng_kv_destroy(kv);
    }
    free(l);
}

/* ---- q8 ---------------------------------------------------------------------------------------
 */

static uint16_t h(float x)
{
    return kvt_eng_fp32_to_fp16(x);
}

static float f(uint16_t x)
{
    return kvt_eng_fp16_to_fp32(x);
}

static void test_q8_round_groups(void **state)
{
    (void)state;
    uint16_t v[3 * KVT_ENG_Q8_GROUP], orig[3 * KVT_ENG_Q8_GROUP];
    /* Group 0: integers 0..255 at every 8th, an exact grid of scale 1: kept exactly. */
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++)
        v[i] = h((float)((i * 8) % 256));
    v[1] = h(255.0f);
    /* Group 1: constant, kept exactly. Group 2: a smooth ramp in [-3, 5]. */
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++) {
        v[KVT_ENG_Q8_GROUP + i] = h(-1.25f);
        v[2 * KVT_ENG_Q8_GROUP + i] = h(-3.0f + 8.0f * sinf((float)i) * sinf((float)i));
    }
    memcpy(orig, v, sizeof(v));
    kvt_eng_kv_q8_round(v, 3 * KVT_ENG_Q8_GROUP);
    assert_memory_equal(v, orig, 2 * KVT_ENG_Q8_GROUP * sizeof(uint16_t));
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++) {
        float x = f(orig[2 * KVT_ENG_Q8_GROUP + i]);
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    float s = f(h((hi - lo) / 255.0f));
    int changed = 0;
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++) {
        float x = f(orig[2 * KVT_ENG_Q8_GROUP + i]), y = f(v[2 * KVT_ENG_Q8_GROUP + i]);
        /* Half a step, plus the fp16 rounding of the result (values up to 5: 2^-8). */
        assert_true(fabsf(x - y) <= s / 2 + 0x1p-8f);
        /* The value is m + q s for an integer q in [0, 255], to fp16 precision (half an ulp of
         * values below 8 is 2^-9). */
        float q = (y - lo) / s, tol = 0x1p-9f / s + 1e-3f;
        assert_true(q > -tol && q < 255.0f + tol && fabsf(q - nearbyintf(q)) <= tol);
        changed += x != y;
    }
    assert_true(changed > 0);
    /* The minimum is kept exactly (q = 0). */
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++)
        if (f(orig[2 * KVT_ENG_Q8_GROUP + i]) == lo)
            assert_true(f(v[2 * KVT_ENG_Q8_GROUP + i]) == lo);
}

static void test_q8_groups_are_independent(void **state)
{
    (void)state;
    /* A tiny-range group next to a huge-range one keeps its own precision. */
    uint16_t v[2 * KVT_ENG_Q8_GROUP];
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++) {
        v[i] = h(1000.0f * (float)(i - 16));
        v[KVT_ENG_Q8_GROUP + i] = h(0.01f * (float)i / 7.0f);
    }
    uint16_t orig[2 * KVT_ENG_Q8_GROUP];
    memcpy(orig, v, sizeof(v));
    kvt_eng_kv_q8_round(v, 2 * KVT_ENG_Q8_GROUP);
    for (int i = 0; i < KVT_ENG_Q8_GROUP; i++) {
        float x = f(orig[KVT_ENG_Q8_GROUP + i]), y = f(v[KVT_ENG_Q8_GROUP + i]);
        assert_true(fabsf(x - y) <= 0.01f * 31.0f / 7.0f / 255.0f); /* within one step */
    }
}

static void test_q8_mode_stores_rounded_rows(void **state)
{
    (void)state;
    struct kvt_eng_kv_geom g = {
        .n_layer = 2, .n_head_kv = 3, .head_dim = 64, .ctx_max = 8, .batch_max = 4};
    size_t rh = kvt_eng_kv_row_halfs(&g), reused;
    struct kvt_eng_kv *kv;
    assert_int_equal(kvt_eng_kv_q8_create(&g, &kv), 0);
    assert_string_equal(kv->ops->name, "q8");
    /* Codes plus an fp16 minimum and scale per 32 values. */
    assert_int_equal(kv->token_bytes, g.n_layer * (rh + rh / 32 * 4));
    uint16_t *rows = malloc(4 * rh * sizeof(uint16_t)), *want = malloc(4 * rh * sizeof(uint16_t));
    for (size_t i = 0; i < 4 * rh; i++)
        rows[i] = h(sinf((float)i * 0.37f) * 3.0f);
    memcpy(want, rows, 4 * rh * sizeof(uint16_t));
    kvt_eng_kv_q8_round(want, 4 * rh);
    assert_memory_not_equal(want, rows, 4 * rh * sizeof(uint16_t));
    assert_int_equal(kv->ops->begin(kv, NULL, 0, 0, &reused), 0);
    assert_int_equal(kv->ops->prepare(kv, 0, 4), 0);
    for (uint32_t l = 0; l < g.n_layer; l++)
        assert_int_equal(kv->ops->append(kv, l, 0, 4, rows), 0);
    struct kvt_eng_kv_span sp;
    assert_int_equal(kv->ops->spans(kv, 1, 4, &sp, 1), 1);
    assert_int_equal(sp.pos, 0);
    assert_int_equal(sp.n_tokens, 4);
    assert_memory_equal(sp.rows, want, 4 * rh * sizeof(uint16_t));
    /* A geometry whose heads do not split into groups is refused. */
    struct kvt_eng_kv *bad;
    struct kvt_eng_kv_geom g2 = g;
    g2.head_dim = 48;
    assert_int_equal(kvt_eng_kv_q8_create(&g2, &bad), -EINVAL);
    kvt_eng_kv_destroy(kv);
    free(rows);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_rows_in_many_spans_is_resident),
        cmocka_unit_test(test_self_only_is_the_token_alone),
        cmocka_unit_test(test_query_ranks_rows),
        cmocka_unit_test(test_dropping_rows_changes_decode_logits),
        cmocka_unit_test(test_bad_selections_fail_the_step),
        cmocka_unit_test(test_q8_round_groups),
        cmocka_unit_test(test_q8_groups_are_independent),
        cmocka_unit_test(test_q8_mode_stores_rounded_rows),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
