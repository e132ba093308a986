/*
 * The engine's sparse mode through a real kvtierd, on the real model (docs/sparse.md): prefill a
 * prompt with full attention, then decode teacher-forced positions one at a time, each layer
 * attending only to the spans kvtier's Select picks for its query (plus the local tail). With a
 * budget covering the whole context the logits are bit-identical to the resident mode; with a
 * small budget they differ (the selection is really used), stay close (top-1 agreement), and the
 * rows fetched per token are a fraction of what the offload mode reads; the layer-ahead prefetch
 * is used and changes no bit of the logits. Estimates of unselected spans (RetroInfer) change the
 * logits of a small budget, deterministically, and none of a budget that leaves nothing out.
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
#include "engine/sampler.h"
#include "engine/session.h"
#include "kvtier/kvtier.h"
#include "tests/engine/fixture.h"
#include "tests/lib/daemon.h"

#define PROMPT 256
#define DECODE 48
#define CHUNK 32

struct sp_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct engine_fixture fx;
    struct kvt_test_daemon d;
    float *resident; /* DECODE rows of logits */
};

struct run {
    enum kvt_eng_mode mode;
    struct kvt_eng_select_config sel;
    int rc;
    int fell_back;
    struct kvt_eng_kv_stats kv;
};

/* Prefill PROMPT fixture tokens, then feed the next DECODE fixture tokens one by one; row i of
 * out gets the logits after token PROMPT + i. */
static void run_decode(struct sp_state *st, const char *socket, struct run *r, float *out)
{
    size_t V = st->m->hp.n_vocab;
    struct kvt_eng_session_config sc = {
        .mode = r->mode,
        .ctx_max = PROMPT + DECODE + 1,
        .batch_max = 64,
        .select = r->sel,
        .stop_on_error = 1,
        .log = stderr,
    };
    sc.offload.socket_path = socket;
    sc.offload.tokens_per_chunk = CHUNK;
    sc.offload.timeout_ms = 5000;
    struct kvt_eng_session *s;
    r->rc = kvt_eng_session_create(st->m, st->pool, &sc, &s);
    if (r->rc)
        return;
    r->rc = kvt_eng_session_start(s, st->fx.ids, PROMPT, 0, NULL, NULL, NULL);
    for (size_t i = 0; r->rc == 0 && i < DECODE; i++)
        r->rc = kvt_eng_session_next(s, st->fx.ids[PROMPT + i], out + i * V);
    r->fell_back = s->fell_back;
    r->kv = kvt_eng_session_kv_stats(s);
    kvt_eng_session_destroy(s);
}

static int setup(void **state)
{
    static struct sp_state st;
    char err[256];
    *state = NULL;
    if (!engine_test_have_model())
        return 0;
    memset(&st, 0, sizeof(st));
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx) ||
        st.fx.n_ids < PROMPT + DECODE)
        return -1;
    if (kvt_test_daemon_start(&st.d, NULL))
        return -1;
    st.resident = calloc((size_t)DECODE * st.m->hp.n_vocab, sizeof(float));
    struct run r = {.mode = KVT_ENG_MODE_RESIDENT};
    run_decode(&st, NULL, &r, st.resident);
    if (r.rc)
        return -1;
    *state = &st;
    return 0;
}

static int teardown(void **state)
{
    struct sp_state *st = *state;
    if (!st)
        return 0;
    int rc = kvt_test_daemon_stop(&st->d);
    kvt_test_daemon_cleanup(&st->d);
    free(st->resident);
    engine_fixture_free(&st->fx);
    kvt_eng_pool_destroy(st->pool);
    kvt_eng_model_free(st->m);
    return rc == 0 ? 0 : -1;
}

static uint64_t fetched(const struct run *r)
{
    uint64_t b = 0;
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        b += r->kv.fetch_bytes[i];
    return b;
}

static void test_full_budget_is_bit_identical(void **state)
{
    struct sp_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *rows = calloc((size_t)DECODE * V, sizeof(float));
    struct run r = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.budget = 1.0}};
    run_decode(st, st->d.socket_path, &r, rows);
    assert_int_equal(r.rc, 0);
    assert_false(r.fell_back);
    assert_memory_equal(rows, st->resident, (size_t)DECODE * V * sizeof(float));
    assert_true(fetched(&r) > 0); /* the decode really read the context from kvtier */
    free(rows);
}

static void test_small_budget_reads_less(void **state)
{
    struct sp_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *rows = calloc((size_t)DECODE * V, sizeof(float));
    float *off = calloc((size_t)DECODE * V, sizeof(float));
    struct run o = {.mode = KVT_ENG_MODE_OFFLOAD};
    run_decode(st, st->d.socket_path, &o, off);
    assert_int_equal(o.rc, 0);
    struct run r = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.budget = 0.3}};
    run_decode(st, st->d.socket_path, &r, rows);
    assert_int_equal(r.rc, 0);
    assert_false(r.fell_back);
    size_t agree = 0;
    for (size_t i = 0; i < DECODE; i++)
        agree += kvt_eng_argmax(rows + i * V, V) == kvt_eng_argmax(st->resident + i * V, V);
    /* The selection is used: the logits are not those of full attention. */
    assert_memory_not_equal(rows, st->resident, (size_t)DECODE * V * sizeof(float));
    /* And it is a good one: most next-token choices agree (a loose floor for 48 positions). */
    print_message("sparse 30%%: top-1 agreement %zu/%d, bytes fetched %llu vs offload %llu\n",
                  agree, DECODE, (unsigned long long)fetched(&r), (unsigned long long)fetched(&o));
    assert_true(agree >= DECODE * 3 / 4);
    /* Decode reads a fraction of what offload reads (offload also reads during prefill, but
     * so does sparse: prefill is full attention in both). */
    assert_true(fetched(&r) < fetched(&o) * 3 / 4);
    /* The layer-ahead prefetch is used when asked for, and it changes nothing but where rows come
     * from: the logits are the same bits. */
    assert_int_equal(r.kv.prefetch_hit_bytes, 0);
    float *np = calloc((size_t)DECODE * V, sizeof(float));
    struct run n = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.budget = 0.3, .prefetch = 1}};
    run_decode(st, st->d.socket_path, &n, np);
    assert_int_equal(n.rc, 0);
    assert_true(n.kv.prefetch_hit_bytes > 0);
    print_message("with prefetch: bytes fetched %llu, found read ahead %llu\n",
                  (unsigned long long)fetched(&n), (unsigned long long)n.kv.prefetch_hit_bytes);
    assert_memory_equal(np, rows, (size_t)DECODE * V * sizeof(float));
    free(np);
    /* Top-p works too. */
    struct run p = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.top_p = 0.9}};
    run_decode(st, st->d.socket_path, &p, rows);
    assert_int_equal(p.rc, 0);
    free(rows);
    free(off);
}

static void test_estimates(void **state)
{
    struct sp_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab, bytes = (size_t)DECODE * V * sizeof(float);
    float *a = calloc((size_t)DECODE * V, sizeof(float));
    float *b = calloc((size_t)DECODE * V, sizeof(float));
    float *none = calloc((size_t)DECODE * V, sizeof(float));
    /* A budget that leaves nothing out leaves nothing to estimate: still full attention. */
    struct run r = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.budget = 1.0, .estimates = 64}};
    run_decode(st, st->d.socket_path, &r, a);
    assert_int_equal(r.rc, 0);
    assert_memory_equal(a, st->resident, bytes);
    /* A small budget: the estimated entries take part (the forward pass checked their spans'
     * order and causality, or the step would have failed), the same bits twice. */
    struct run n = {.mode = KVT_ENG_MODE_SPARSE, .sel = {.budget = 0.1}};
    run_decode(st, st->d.socket_path, &n, none);
    assert_int_equal(n.rc, 0);
    struct run e = {.mode = KVT_ENG_MODE_SPARSE,
                    .sel = {.budget = 0.1, .estimates = KVT_ENG_ESTIMATES_MAX}};
    run_decode(st, st->d.socket_path, &e, a);
    assert_int_equal(e.rc, 0);
    assert_false(e.fell_back);
    assert_memory_not_equal(a, none, bytes);
    run_decode(st, st->d.socket_path, &e, b);
    assert_int_equal(e.rc, 0);
    assert_memory_equal(a, b, bytes);
    /* Estimates only add entries: they read no more rows than the selection without them. */
    assert_int_equal(fetched(&e), fetched(&n));
    size_t agree_e = 0, agree_n = 0;
    for (size_t i = 0; i < DECODE; i++) {
        int32_t want = kvt_eng_argmax(st->resident + i * V, V);
        agree_e += kvt_eng_argmax(a + i * V, V) == want;
        agree_n += kvt_eng_argmax(none + i * V, V) == want;
    }
    print_message("sparse 10%%: top-1 agreement %zu/%d without estimates, %zu/%d with\n", agree_n,
                  DECODE, agree_e, DECODE);
    free(a);
    free(b);
    free(none);
}

static void test_bad_configs(void **state)
{
    struct sp_state *st = *state;
    if (!st)
        skip();
    struct kvt_eng_session_config sc = {.mode = KVT_ENG_MODE_SPARSE, .ctx_max = 64, .batch_max = 8};
    sc.offload.socket_path = st->d.socket_path;
    struct kvt_eng_session *s = NULL;
    /* No budget, two budgets, out of range: refused before anything connects. */
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    sc.select = (struct kvt_eng_select_config){.budget = 0.5, .top_p = 0.5};
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    sc.select = (struct kvt_eng_select_config){.budget = 1.5};
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    /* A selection for a mode that does not select. */
    sc.mode = KVT_ENG_MODE_OFFLOAD;
    sc.select = (struct kvt_eng_select_config){.budget = 0.5};
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    /* Estimates: sparse only, at most KVT_ENG_ESTIMATES_MAX. */
    sc.mode = KVT_ENG_MODE_QUANT;
    sc.select = (struct kvt_eng_select_config){.budget = 0.5, .estimates = 8};
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    sc.mode = KVT_ENG_MODE_SPARSE;
    sc.select =
        (struct kvt_eng_select_config){.budget = 0.5, .estimates = KVT_ENG_ESTIMATES_MAX + 1};
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), -EINVAL);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_budget_is_bit_identical),
        cmocka_unit_test(test_small_budget_reads_less),
        cmocka_unit_test(test_estimates),
        cmocka_unit_test(test_bad_configs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
