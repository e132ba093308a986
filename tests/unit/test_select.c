/*
 * Span abstracts, Select and contexts alone (daemon/abstract.c, select.c, context.c): abstracts
 * hold the exact per-channel bounds and the means of their spans; spans tile every layer; the
 * Quest bound computed from an abstract is never below the true max q.k of its span; variable
 * spans merge alike neighbours up to max_tokens and never in the fine layers; Select keeps the
 * sink, the recent window and chunks without an abstract, fills its budget by estimated mass,
 * is deterministic and returns everything under a full budget; a lease expires under the
 * injected clock and drops its references; allocation failures are reported, never crash.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/loop.h"
#include "daemon/abstract.h"
#include "daemon/context.h"
#include "daemon/select.h"
#include "kernels/half.h"
#include "kernels/kernels.h"

#define L 3u
#define H 2u
#define HD 8u
#define ROW (2u * H * HD)

static uint64_t rng = 42;
static float rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t *chunk_new(uint32_t n_tokens, float scale)
{
    uint16_t *c = test_malloc((size_t)L * n_tokens * ROW * sizeof(uint16_t));
    for (size_t i = 0; i < (size_t)L * n_tokens * ROW; i++)
        c[i] = kvt_f32_to_f16(scale * rnd());
    return c;
}

static const uint16_t *key_of(const uint16_t *c, uint32_t n_tokens, uint32_t l, uint32_t t,
                              uint32_t h)
{
    return c + ((size_t)l * n_tokens + t) * ROW + h * HD;
}

static struct kvt_abs *build(const uint16_t *c, uint32_t n_tokens, struct kvt_span_policy p)
{
    struct kvt_abs_geom g = {L, H, HD, n_tokens};
    struct kvt_abs *a = kvt_abs_alloc(&g, &p);
    assert_non_null(a);
    kvt_abs_build(a, &p, c);
    return a;
}

static void check_tiling(const struct kvt_abs *a, const struct kvt_span_policy *p)
{
    for (uint32_t l = 0; l < L; l++) {
        uint32_t t = 0;
        for (uint32_t s = a->layer_first[l]; s < a->layer_first[l + 1]; s++) {
            uint32_t n = a->span_len[s] + 1u;
            assert_int_equal(a->span_first[s], t);
            assert_true(n <= p->max_tokens || (p->kind == KVT_SPANS_FIXED && n <= p->block_tokens));
            t += n;
        }
        assert_int_equal(t, a->g.n_tokens);
    }
}

static void test_fixed_abstract_exact(void **state)
{
    (void)state;
    const uint32_t n = 45; /* not a multiple of the block: the last span is shorter */
    uint16_t *c = chunk_new(n, 2.0f);
    struct kvt_span_policy p = {KVT_SPANS_FIXED, 16, 16, 0, 0};
    struct kvt_abs *a = build(c, n, p);
    assert_int_equal(a->n_spans, L * 3);
    check_tiling(a, &p);
    assert_int_equal(a->span_len[2] + 1, 13);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t s = a->layer_first[l]; s < a->layer_first[l + 1]; s++)
            for (uint32_t h = 0; h < H; h++)
                for (uint32_t i = 0; i < HD; i++) {
                    float lo = INFINITY, hi = -INFINITY;
                    double mk = 0, mv = 0;
                    uint32_t len = a->span_len[s] + 1u;
                    for (uint32_t t = a->span_first[s]; t < a->span_first[s] + len; t++) {
                        float k = kvt_f16_to_f32(key_of(c, n, l, t, h)[i]);
                        lo = fminf(lo, k);
                        hi = fmaxf(hi, k);
                        mk += k;
                        mv += kvt_f16_to_f32(key_of(c, n, l, t, h)[H * HD + i]);
                    }
                    const uint16_t *b = kvt_abs_bounds(a, s, h);
                    assert_true(kvt_f16_to_f32(b[i]) == lo);
                    assert_true(kvt_f16_to_f32(b[HD + i]) == hi);
                    const uint16_t *m = a->means + ((size_t)s * H + h) * 2 * HD;
                    /* Means are rounded to fp16: within its half-ulp (2^-11 relative), plus
                     * the fp32 sum's rounding. */
                    assert_true(fabs(kvt_f16_to_f32(m[i]) - mk / len) <=
                                fabs(mk / len) / 1024 + 1e-6);
                    assert_true(fabs(kvt_f16_to_f32(m[HD + i]) - mv / len) <=
                                fabs(mv / len) / 1024 + 1e-6);
                }
    kvt_abs_unref(a);
    test_free(c);
}

static void test_bound_never_below(void **state)
{
    (void)state;
    const uint32_t n = 64;
    const struct kvt_kernels *k = kvt_kernels();
    for (int round = 0; round < 20; round++) {
        uint16_t *c = chunk_new(n, round % 2 ? 4.0f : 0.5f);
        struct kvt_span_policy p = {round % 3 ? KVT_SPANS_VARIABLE : KVT_SPANS_FIXED, 8, 32,
                                    (float)round * 0.05f, 1};
        struct kvt_abs *a = build(c, n, p);
        check_tiling(a, &p);
        float q[2 * HD];
        for (uint32_t i = 0; i < 2 * HD; i++)
            q[i] = 3.0f * rnd();
        for (uint32_t l = 0; l < L; l++) {
            uint32_t s0 = a->layer_first[l], ns = a->layer_first[l + 1] - s0;
            for (uint32_t h = 0; h < H; h++) {
                float out[64];
                k->bound_f16(q, 2, kvt_abs_bounds(a, s0, h), ns, H * 2 * HD, HD, out);
                for (uint32_t s = 0; s < ns; s++) {
                    double best = -INFINITY, mag = 0;
                    for (uint32_t t = a->span_first[s0 + s];
                         t < a->span_first[s0 + s] + a->span_len[s0 + s] + 1u; t++)
                        for (uint32_t j = 0; j < 2; j++) {
                            double dot = 0;
                            for (uint32_t i = 0; i < HD; i++) {
                                double kv = kvt_f16_to_f32(key_of(c, n, l, t, h)[i]);
                                dot += (double)q[j * HD + i] * kv;
                                mag += fabs((double)q[j * HD + i] * kv);
                            }
                            if (dot > best)
                                best = dot;
                        }
                    /* The bound's own fp32 sum may round: a few ulps of the magnitudes. */
                    assert_true((double)out[s] >= best - 1e-6 * mag - 1e-30);
                }
            }
        }
        kvt_abs_unref(a);
        test_free(c);
    }
}

static void test_variable_merges(void **state)
{
    (void)state;
    const uint32_t n = 64;
    uint16_t *c = test_malloc((size_t)L * n * ROW * sizeof(uint16_t));
    for (size_t i = 0; i < (size_t)L * n * ROW; i++)
        c[i] = kvt_f32_to_f16(0.5f);
    struct kvt_span_policy p = {KVT_SPANS_VARIABLE, 8, 24, 0.01f, 1};
    struct kvt_abs *a = build(c, n, p);
    check_tiling(a, &p);
    /* Layer 0 (fine): 8 blocks. Layers 1, 2: 24 + 24 + 16. */
    assert_int_equal(a->layer_first[1] - a->layer_first[0], 8);
    assert_int_equal(a->layer_first[2] - a->layer_first[1], 3);
    assert_int_equal(a->span_len[a->layer_first[1]] + 1, 24);
    assert_int_equal(a->layer_first[3] - a->layer_first[2], 3);
    /* Compacted: the same spans and bounds in a smaller allocation. */
    struct kvt_abs *k = kvt_abs_compact(a);
    assert_ptr_not_equal(k, a);
    assert_true(k->bytes < a->bytes);
    assert_int_equal(k->n_spans, a->n_spans);
    assert_memory_equal(k->layer_first, a->layer_first, (L + 1) * sizeof(uint32_t));
    assert_memory_equal(k->span_len, a->span_len, a->n_spans * sizeof(uint16_t));
    assert_memory_equal(k->bounds, a->bounds, (size_t)a->n_spans * H * 2 * HD * 2);
    assert_memory_equal(k->means, a->means, (size_t)a->n_spans * H * 2 * HD * 2);
    assert_ptr_equal(kvt_abs_compact(k), k); /* nothing left to save */
    kvt_abs_unref(k);
    kvt_abs_unref(a);
    /* Half the layer's keys at +1, half at -1: merging across the change doubles nothing
     * within a half, so each half merges but the halves stay apart. */
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t i = 0; i < ROW; i++)
                c[((size_t)l * n + t) * ROW + i] = kvt_f32_to_f16(t < 32 ? 1.0f : -1.0f);
    p.max_tokens = 64;
    a = build(c, n, p);
    assert_int_equal(a->layer_first[2] - a->layer_first[1], 2);
    assert_int_equal(a->span_first[a->layer_first[1] + 1], 32);
    kvt_abs_unref(a);
    test_free(c);
}

static void test_policy_resolve(void **state)
{
    (void)state;
    struct kvt_span_policy d = {KVT_SPANS_FIXED, 16, 128, 0.1f, 2}, out;
    const char *why = NULL;
    struct kvt_span_policy ask = {0, 0, 0, 0, UINT32_MAX};
    assert_int_equal(kvt_span_policy_resolve(&ask, &d, &out, &why), 0);
    assert_memory_equal(&out, &d, sizeof(d));
    ask = (struct kvt_span_policy){KVT_SPANS_VARIABLE, 32, 8, 0, 0};
    assert_int_equal(kvt_span_policy_resolve(&ask, &d, &out, &why), 0);
    assert_int_equal(out.kind, KVT_SPANS_VARIABLE);
    assert_int_equal(out.max_tokens, 32); /* raised to the block */
    assert_int_equal(out.fine_layers, 0);
    ask.kind = 7;
    assert_int_not_equal(kvt_span_policy_resolve(&ask, &d, &out, &why), 0);
    ask = (struct kvt_span_policy){KVT_SPANS_FIXED, 40000, 0, 0, UINT32_MAX};
    assert_int_not_equal(kvt_span_policy_resolve(&ask, &d, &out, &why), 0);
    ask = (struct kvt_span_policy){KVT_SPANS_FIXED, 0, 0, NAN, UINT32_MAX};
    assert_int_not_equal(kvt_span_policy_resolve(&ask, &d, &out, &why), 0);
    assert_non_null(why);
}

/* ---- Select -------------------------------------------------------------------------------- */

static uint64_t fake_now;
static uint64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

struct fixture {
    struct kvt_loop *loop;
    struct kvt_ctx_table t;
    struct kvt_abs *abs[4];
    uint16_t *data[4];
};

static struct fixture fx;

static int fx_setup(void **state)
{
    (void)state;
    fake_now = 1000;
    struct kvt_loop_config lc = {.timers_max = 8, .clock = fake_clock};
    assert_int_equal(kvt_loop_create(&lc, &fx.loop), 0);
    assert_int_equal(kvt_ctx_table_init(&fx.t, 4, 16, fx.loop), 0);
    struct kvt_span_policy p = {KVT_SPANS_FIXED, 16, 16, 0, 0};
    for (int i = 0; i < 4; i++) {
        fx.data[i] = chunk_new(64, 0.2f);
        fx.abs[i] = build(fx.data[i], 64, p);
    }
    return 0;
}

static int fx_teardown(void **state)
{
    (void)state;
    kvt_ctx_table_deinit(&fx.t);
    for (int i = 0; i < 4; i++) {
        kvt_abs_unref(fx.abs[i]);
        test_free(fx.data[i]);
    }
    kvt_loop_destroy(fx.loop);
    return 0;
}

static struct kvt_ctx *ctx_of(int with_hole)
{
    struct kvt_ctx *c;
    assert_int_equal(kvt_ctx_open(&fx.t, "t", 1, 7, L, H, HD, 1000, &c), 0);
    assert_int_equal(kvt_ctx_reserve(&fx.t, c, 4), 0);
    for (uint32_t i = 0; i < 4; i++) {
        struct kvt_obj_id id = {7, {i, 0}, 0};
        kvt_ctx_append(c, &id, with_hole && i == 1 ? NULL : fx.abs[i], (uint64_t)i * 64, 64);
    }
    return c;
}

static void test_select_budgets(void **state)
{
    (void)state;
    struct kvt_ctx *c = ctx_of(1);
    float q[2 * H * HD];
    for (size_t i = 0; i < 2 * H * HD; i++)
        q[i] = rnd();
    struct kvt_sel_scratch sc = {0};
    struct kvt_sel_span out[32], out2[32];
    struct kvt_sel_result r, r2;
    /* Chunk 1 has no abstract: 64 tokens forced, plus the sink (16) and recent (20 -> the last
     * two spans, 32 tokens): budget 130 leaves room for one more span. */
    struct kvt_sel_params p = {1, 2 * H, q, 130, 0, 0, 20, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), 0);
    assert_int_equal(r.tokens_selected, 16 + 64 + 32 + 16);
    assert_int_equal(r.spans_scored, 12);
    assert_int_equal(r.spans_total, 13);
    int whole = 0;
    for (uint32_t i = 0; i < r.n_out; i++)
        whole |= out[i].chunk == 1 && out[i].token_first == 0 && out[i].n_tokens == 64;
    assert_true(whole);
    assert_int_equal(out[0].chunk, 0);
    assert_int_equal(out[0].token_first, 0);
    assert_int_equal(out[r.n_out - 1].chunk, 3);
    assert_int_equal(out[r.n_out - 1].token_first + out[r.n_out - 1].n_tokens, 64);
    /* Deterministic. */
    assert_int_equal(kvt_sel_run(c, &p, &sc, out2, 32, NULL, &r2), 0);
    assert_int_equal(r2.n_out, r.n_out);
    assert_memory_equal(out, out2, r.n_out * sizeof(out[0]));
    /* Estimates: the best unselected spans, in rank order, none of them selected. */
    struct kvt_sel_est est[4];
    p.n_estimates = 4;
    assert_int_equal(kvt_sel_run(c, &p, &sc, out2, 32, est, &r2), 0);
    assert_int_equal(r2.n_est, 4);
    assert_memory_equal(out, out2, r.n_out * sizeof(out[0])); /* the selection is unchanged */
    for (uint32_t i = 0; i < 4; i++) {
        assert_true(i == 0 || est[i].mass <= est[i - 1].mass);
        assert_int_not_equal(est[i].chunk, 1); /* chunk 1 has no abstract */
        assert_int_equal(fx.abs[est[i].chunk]->span_first[est[i].span], est[i].token_first);
        for (uint32_t j = 0; j < r.n_out; j++)
            assert_false(out[j].chunk == est[i].chunk && out[j].token_first <= est[i].token_first &&
                         est[i].token_first < out[j].token_first + out[j].n_tokens);
    }
    p.n_estimates = 0;
    /* A budget below the forced spans returns the forced spans. */
    p.budget_tokens = 1;
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), 0);
    assert_int_equal(r.tokens_selected, 16 + 64 + 32);
    /* Everything. */
    p.budget_tokens = 256;
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), 0);
    assert_int_equal(r.n_out, 4);
    assert_int_equal(r.tokens_selected, 256);
    /* sink_tokens: the first 40 tokens are three spans. */
    p = (struct kvt_sel_params){0, 2 * H, q, 1, 0, 40, 0, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), 0);
    assert_int_equal(r.tokens_selected, 48 + 64);
    /* Top-p keeps going until the mass is reached. */
    p = (struct kvt_sel_params){2, 2 * H, q, 0, 0.5f, 0, 0, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), 0);
    assert_true(r.mass_selected >= 0.5f);
    /* Errors. */
    p = (struct kvt_sel_params){L, 2 * H, q, 16, 0, 0, 0, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), KVT_E_INVAL);
    p = (struct kvt_sel_params){0, 3, q, 16, 0, 0, 0, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), KVT_E_INVAL);
    p = (struct kvt_sel_params){0, 2 * H, q, 256, 0, 0, 0, 0};
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 2, NULL, &r), KVT_E_SMALLBUF);
    kvt_sel_scratch_free(&sc);
    kvt_alloc_fail_nth(1);
    assert_int_equal(kvt_sel_run(c, &p, &sc, out, 32, NULL, &r), KVT_E_NOMEM);
    kvt_alloc_fail_nth(0);
    kvt_sel_scratch_free(&sc);
    kvt_ctx_close(&fx.t, c);
}

static void test_lease_injected_clock(void **state)
{
    (void)state;
    uint32_t refs0 = fx.abs[0]->refs;
    struct kvt_ctx *c = ctx_of(0), *d;
    uint64_t id = c->id;
    assert_int_equal(fx.abs[0]->refs, refs0 + 1);
    fake_now += 600;
    kvt_loop_run_once(fx.loop, 0);
    assert_int_equal(kvt_ctx_find(&fx.t, id, "t", &d), 0); /* renewed: 1000 ms from now */
    assert_int_equal(kvt_ctx_find(&fx.t, id, "u", &d), KVT_E_ACCESS);
    fake_now += 900;
    kvt_loop_run_once(fx.loop, 0);
    assert_int_equal(fx.t.n, 1);
    fake_now += 200;
    kvt_loop_run_once(fx.loop, 0);
    assert_int_equal(fx.t.n, 0);
    assert_int_equal(fx.t.expired, 1);
    assert_int_equal(kvt_ctx_find(&fx.t, id, "t", &d), KVT_E_NOCTX);
    assert_int_equal(fx.abs[0]->refs, refs0); /* its references went with it */
    /* A new context in the same slot gets another id: the old one stays unknown. */
    c = ctx_of(0);
    assert_int_not_equal(c->id, id);
    assert_int_equal(kvt_ctx_find(&fx.t, id, "t", &d), KVT_E_NOCTX);
    /* chunks_max (16) holds. */
    assert_int_equal(kvt_ctx_reserve(&fx.t, c, 13), KVT_E_FULL);
    assert_int_equal(kvt_ctx_reserve(&fx.t, c, 12), 0);
    kvt_ctx_close(&fx.t, c);
    /* The table fills up. */
    struct kvt_ctx *v[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(kvt_ctx_open(&fx.t, "t", 1, 7, L, H, HD, 1000, &v[i]), 0);
    assert_int_equal(kvt_ctx_open(&fx.t, "t", 1, 7, L, H, HD, 1000, &d), KVT_E_FULL);
    for (int i = 0; i < 4; i++)
        kvt_ctx_close(&fx.t, v[i]);
    assert_int_equal(kvt_ctx_open(&fx.t, "t", 1, 7, L, H, HD, 1000, &d), 0);
    kvt_alloc_fail_nth(1);
    assert_int_equal(kvt_ctx_reserve(&fx.t, d, 1), KVT_E_NOMEM);
    kvt_alloc_fail_nth(0);
    kvt_ctx_close(&fx.t, d);
}

static void test_store_limits(void **state)
{
    (void)state;
    struct kvt_abs_store st;
    assert_int_equal(kvt_abs_store_init(&st, 8, fx.abs[0]->bytes), 0);
    kvt_abs_ref(fx.abs[0]);
    kvt_abs_store_set(&st, 3, fx.abs[0]);
    assert_ptr_equal(kvt_abs_store_get(&st, 3), fx.abs[0]);
    kvt_abs_ref(fx.abs[1]);
    kvt_abs_store_set(&st, 4, fx.abs[1]); /* no room: dropped */
    assert_null(kvt_abs_store_get(&st, 4));
    assert_int_equal(st.dropped, 1);
    kvt_abs_store_drop(&st, 3);
    assert_int_equal(st.bytes, 0);
    kvt_abs_store_deinit(&st);
    assert_int_equal(fx.abs[0]->refs, 1);
    assert_int_equal(fx.abs[1]->refs, 1);
    struct kvt_abs_geom g = {L, H, HD, 64};
    struct kvt_span_policy p = {KVT_SPANS_FIXED, 16, 16, 0, 0};
    kvt_alloc_fail_nth(1);
    assert_null(kvt_abs_alloc(&g, &p));
    kvt_alloc_fail_nth(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_abstract_exact),
        cmocka_unit_test(test_bound_never_below),
        cmocka_unit_test(test_variable_merges),
        cmocka_unit_test(test_policy_resolve),
        cmocka_unit_test_setup_teardown(test_select_budgets, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lease_injected_clock, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_store_limits, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
