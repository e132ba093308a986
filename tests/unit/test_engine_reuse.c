/*
 * The engine side of chunk reuse on the real model (engine/model.h, engine/rag.h): the selective
 * forward (kvt_eng_forward_at) recomputing every position gives the logits of a full prefill even
 * over rows of another text, recomputing a scattered subset over exact rows gives those
 * positions' full-prefill logits, recomputing none but the last token gives its logits, and rows
 * left stale change them (the test can fail); attention statistics (kvt_eng_forward_stats) leave
 * logits unchanged, put all of position 0's attention on itself and sum to about 1 per row; and
 * kvt_eng_rag_version_stats on hand-made shares.
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

#include "engine/model.h"
#include "engine/quant.h"
#include "engine/rag.h"
#include "tests/engine/fixture.h"

#define SEQ 96
#define BATCH 96
#define OTHER 200 /* fixture offset of the "other text" whose rows get overwritten */

struct ru_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct engine_fixture fx;
    struct kvt_eng_ctx *ctx;
    float *ref;     /* SEQ rows of full-prefill logits */
    uint16_t *rows; /* the reference cache: [layer][SEQ][row] */
};

static size_t row_halfs(const struct ru_state *st)
{
    return 2 * (size_t)st->m->hp.n_head_kv * st->m->hp.head_dim;
}

static struct kvt_eng_kv *new_kv(const struct ru_state *st)
{
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st->m, SEQ, BATCH);
    struct kvt_eng_kv *kv = NULL;
    size_t reused;
    assert_int_equal(kvt_eng_kv_resident_create(&g, &kv), 0);
    assert_int_equal(kv->ops->begin(kv, NULL, SEQ, 0, &reused), 0);
    return kv;
}

/* Writes rows [0, n) of every layer from src ([layer][SEQ][row]). */
static void load(const struct ru_state *st, struct kvt_eng_kv *kv, const uint16_t *src, size_t n)
{
    for (uint32_t l = 0; l < st->m->hp.n_layer; l++)
        assert_int_equal(kv->ops->append(kv, l, 0, n, src + (size_t)l * SEQ * row_halfs(st)), 0);
}

static void copy_out(const struct ru_state *st, struct kvt_eng_kv *kv, uint16_t *dst)
{
    struct kvt_eng_kv_span sp;
    for (uint32_t l = 0; l < st->m->hp.n_layer; l++) {
        assert_int_equal(kv->ops->spans(kv, l, SEQ, &sp, 1), 1);
        memcpy(dst + (size_t)l * SEQ * row_halfs(st), sp.rows,
               SEQ * row_halfs(st) * sizeof(uint16_t));
    }
}

static int setup(void **state)
{
    static struct ru_state st;
    char err[256];
    *state = NULL;
    kvt_eng_quant_init(0);
    if (!engine_test_have_model())
        return 0;
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx) ||
        st.fx.n_ids < OTHER + SEQ || kvt_eng_ctx_create(st.m, st.pool, BATCH, SEQ, &st.ctx))
        return -1;
    st.ref = malloc((size_t)SEQ * st.m->hp.n_vocab * sizeof(float));
    st.rows = malloc((size_t)st.m->hp.n_layer * SEQ * row_halfs(&st) * sizeof(uint16_t));
    if (!st.ref || !st.rows)
        return -1;
    *state = &st;
    struct kvt_eng_kv *kv = new_kv(&st);
    if (kvt_eng_forward(st.ctx, kv, st.fx.ids, SEQ, 0, st.ref, 1))
        return -1;
    copy_out(&st, kv, st.rows);
    kvt_eng_kv_destroy(kv);
    return 0;
}

static int teardown(void **state)
{
    struct ru_state *st = *state;
    if (st) {
        free(st->ref);
        free(st->rows);
        kvt_eng_ctx_destroy(st->ctx);
        engine_fixture_free(&st->fx);
        kvt_eng_pool_destroy(st->pool);
        kvt_eng_model_free(st->m);
    }
    return 0;
}

#define NEED_MODEL()                                                                               \
    struct ru_state *st = *state;                                                                  \
    if (!st)                                                                                       \
    skip()

/* Rows of another text at the same positions: what a reused cache from elsewhere holds. */
static uint16_t *other_rows(const struct ru_state *st)
{
    uint16_t *o = malloc((size_t)st->m->hp.n_layer * SEQ * row_halfs(st) * sizeof(uint16_t));
    assert_non_null(o);
    struct kvt_eng_kv *kv = new_kv(st);
    assert_int_equal(kvt_eng_forward(st->ctx, kv, st->fx.ids + OTHER, SEQ, 0, NULL, 0), 0);
    copy_out(st, kv, o);
    kvt_eng_kv_destroy(kv);
    return o;
}

static void test_recompute_all_is_full_prefill(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab, pos[SEQ];
    uint16_t *other = other_rows(st);
    struct kvt_eng_kv *kv = new_kv(st);
    load(st, kv, other, SEQ);
    for (size_t t = 0; t < SEQ; t++)
        pos[t] = t;
    float *lg = malloc(SEQ * V * sizeof(float));
    assert_non_null(lg);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, st->fx.ids, pos, SEQ, lg, 1), 0);
    assert_memory_equal(lg, st->ref, SEQ * V * sizeof(float));
    /* and the rows are now the full prefill's */
    uint16_t *now = malloc((size_t)st->m->hp.n_layer * SEQ * row_halfs(st) * sizeof(uint16_t));
    assert_non_null(now);
    copy_out(st, kv, now);
    assert_memory_equal(now, st->rows,
                        (size_t)st->m->hp.n_layer * SEQ * row_halfs(st) * sizeof(uint16_t));
    free(now);
    free(lg);
    free(other);
    kvt_eng_kv_destroy(kv);
}

static void test_scattered_subset_over_exact_rows(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab;
    const size_t pos[] = {3, 17, 40, 41, 42, 43, 44, 45, 70, SEQ - 2, SEQ - 1};
    const size_t n = sizeof(pos) / sizeof(pos[0]);
    int32_t tok[sizeof(pos) / sizeof(pos[0])];
    for (size_t i = 0; i < n; i++)
        tok[i] = st->fx.ids[pos[i]];
    struct kvt_eng_kv *kv = new_kv(st);
    load(st, kv, st->rows, SEQ - 2); /* the last two are new tokens */
    float *lg = malloc(n * V * sizeof(float));
    assert_non_null(lg);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, tok, pos, n, lg, 1), 0);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(lg + i * V, st->ref + pos[i] * V, V * sizeof(float));
    free(lg);
    kvt_eng_kv_destroy(kv);
}

static void test_recompute_none_is_full_prefill(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab, last = SEQ - 1;
    struct kvt_eng_kv *kv = new_kv(st);
    load(st, kv, st->rows, SEQ - 1);
    float *lg = malloc(V * sizeof(float));
    assert_non_null(lg);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, &st->fx.ids[last], &last, 1, lg, 0), 0);
    assert_memory_equal(lg, st->ref + last * V, V * sizeof(float));
    kvt_eng_kv_destroy(kv);

    /* Stale rows (another text's at [32, 64)) are attended to as they are: the logits move. */
    uint16_t *mixed = malloc((size_t)st->m->hp.n_layer * SEQ * row_halfs(st) * sizeof(uint16_t));
    uint16_t *other = other_rows(st);
    assert_non_null(mixed);
    memcpy(mixed, st->rows, (size_t)st->m->hp.n_layer * SEQ * row_halfs(st) * sizeof(uint16_t));
    for (uint32_t l = 0; l < st->m->hp.n_layer; l++)
        memcpy(mixed + ((size_t)l * SEQ + 32) * row_halfs(st),
               other + ((size_t)l * SEQ + 32) * row_halfs(st), 32 * row_halfs(st) * 2);
    kv = new_kv(st);
    load(st, kv, mixed, SEQ - 1);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, &st->fx.ids[last], &last, 1, lg, 0), 0);
    double diff = 0.0;
    for (size_t v = 0; v < V; v++)
        diff += fabs((double)lg[v] - (double)st->ref[last * V + v]);
    assert_true(diff / (double)V > 1e-3);
    kvt_eng_kv_destroy(kv);
    free(mixed);
    free(other);
    free(lg);
}

static void test_bad_positions_refused(void **state)
{
    NEED_MODEL();
    const size_t pos[] = {5, 5}, back[] = {9, 4}, far[] = {SEQ};
    int32_t tok[2] = {st->fx.ids[0], st->fx.ids[1]};
    struct kvt_eng_kv *kv = new_kv(st);
    load(st, kv, st->rows, 10);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, tok, pos, 2, NULL, 0), -EINVAL);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, tok, back, 2, NULL, 0), -EINVAL);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, tok, far, 1, NULL, 0), -EINVAL);
    assert_int_equal(kvt_eng_forward_at(st->ctx, kv, tok, NULL, 1, NULL, 0), -EINVAL);
    kvt_eng_kv_destroy(kv);
}

static void test_stats_leave_logits_and_sum_to_one(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab, L = st->m->hp.n_layer;
    const size_t bounds[] = {0, 1, 30, 60, SEQ};
    const size_t n_seg = 4;
    float *mass = malloc(L * SEQ * n_seg * sizeof(float));
    float *lg = malloc(SEQ * V * sizeof(float));
    assert_non_null(mass);
    assert_non_null(lg);
    struct kvt_eng_attn_stats sts = {.n_seg = n_seg, .bounds = bounds, .mass = mass};
    struct kvt_eng_kv *kv = new_kv(st);
    assert_int_equal(kvt_eng_forward_stats(st->ctx, kv, st->fx.ids, SEQ, 0, lg, 1, &sts), 0);
    assert_memory_equal(lg, st->ref, SEQ * V * sizeof(float));
    for (size_t l = 0; l < L; l++) {
        const float *t0 = mass + (l * SEQ + 0) * n_seg;
        /* position 0 sees only itself */
        assert_float_equal(t0[0], 1.0f, 1e-6);
        assert_float_equal(t0[1] + t0[2] + t0[3], 0.0f, 0.0);
        for (size_t t = 0; t < SEQ; t++) {
            const float *r = mass + (l * SEQ + t) * n_seg;
            double sum = 0.0;
            for (size_t g = 0; g < n_seg; g++) {
                assert_true(r[g] >= 0.0f && r[g] <= 1.0f + 1e-3f);
                /* causal: nothing goes to a segment starting after the token */
                if (bounds[g] > t)
                    assert_float_equal(r[g], 0.0f, 0.0);
                sum += r[g];
            }
            assert_true(fabs(sum - 1.0) < 5e-3);
        }
    }
    /* bad bounds */
    const size_t rev[] = {0, 50, 40};
    struct kvt_eng_attn_stats bad = {.n_seg = 2, .bounds = rev, .mass = mass};
    kvt_eng_kv_destroy(kv);
    kv = new_kv(st);
    assert_int_equal(kvt_eng_forward_stats(st->ctx, kv, st->fx.ids, 8, 0, NULL, 0, &bad), -EINVAL);
    kvt_eng_kv_destroy(kv);
    free(mass);
    free(lg);
}

/* Hand-made: 2 layers, 2 tokens, one prefix passage; segments head, prefix, self. */
static void test_version_stats_by_hand(void **state)
{
    (void)state;
    const float mass[] = {
        /* layer 0 */ 0.2f,
        0.3f,
        0.5f,
        /* t1 */ 0.1f,
        0.5f,
        0.4f,
        /* layer 1: t0 sums to 1.5 (scaled by 1/1.5), t1 has a negative share */
        0.5f,
        0.5f,
        0.5f,
        /* t1 */ -0.1f,
        0.2f,
        0.6f,
    };
    float lm[4], tm[2];
    kvt_eng_rag_version_stats(mass, 2, 2, 1, lm, tm);
    assert_float_equal(lm[0], 0.4f, 1e-6);                        /* (0.3 + 0.5) / 2 */
    assert_float_equal(lm[1], 0.45f, 1e-6);                       /* (0.5 + 0.4) / 2 */
    assert_float_equal(lm[2], (0.5f / 1.5f + 0.2f) / 2.0f, 1e-6); /* prefix */
    assert_float_equal(lm[3], (0.5f / 1.5f + 0.6f) / 2.0f, 1e-6); /* self */
    assert_float_equal(tm[0], (0.5f + 1.0f / 1.5f) / 2.0f, 1e-6); /* before: head + prefix */
    assert_float_equal(tm[1], (0.6f + 0.2f) / 2.0f, 1e-6);
    for (int l = 0; l < 2; l++)
        assert_true(lm[2 * l] + lm[2 * l + 1] <= 1.0f);

    /* No prefix passage: one column (self), token mass = the head's share. */
    const float m1[] = {0.7f, 0.3f, 0.25f, 0.75f};
    float lm1[1], tm1[2];
    kvt_eng_rag_version_stats(m1, 1, 2, 0, lm1, tm1);
    assert_float_equal(lm1[0], 0.525f, 1e-6);
    assert_float_equal(tm1[0], 0.7f, 1e-6);
    assert_float_equal(tm1[1], 0.25f, 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recompute_all_is_full_prefill),
        cmocka_unit_test(test_scattered_subset_over_exact_rows),
        cmocka_unit_test(test_recompute_none_is_full_prefill),
        cmocka_unit_test(test_bad_positions_refused),
        cmocka_unit_test(test_stats_leave_logits_and_sum_to_one),
        cmocka_unit_test(test_version_stats_by_hand),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
