/*
 * The engine's reuse path (engine/rag.h) through a real kvtierd: passages computed in full on a
 * miss give the full prefill's logits and are stored as versions; the same prompt again reuses
 * both passages at the same positions after the same prefix with nothing recomputed and logits
 * identical to a full prefill; a passage moved behind a new passage is planned with recompute,
 * and kvtier's plan gives a lower KL against the full prefill than naive reuse (the passage's
 * rows re-rotated, nothing recomputed).
 */
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
#include "engine/model.h"
#include "engine/quant.h"
#include "engine/rag.h"
#include "kvtier/kvtier.h"
#include "tests/engine/fixture.h"
#include "tests/lib/daemon.h"

#define CTX 512
#define BATCH 256
#define TPC 256 /* tokens per chunk: the longest passage */
#define CONT 8  /* continuation tokens scored after the prompt */

struct er_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct engine_fixture fx;
    struct kvt_eng_ctx *ctx;
    struct kvt_eng_kv *kv;
    struct kvt_test_daemon d;
    struct kvt_client *c;
    void *buf;
    size_t buf_bytes;
};

/* Fixture slices: head, passages P1, P2, P3 and a tail (a question-like run of text). */
#define HEAD_AT 0
#define HEAD_N 24
#define P1_AT 30
#define P1_N 120
#define P2_AT 160
#define P2_N 140
#define P3_AT 310
#define P3_N 110
#define TAIL_AT 430
#define TAIL_N 20

static int setup(void **state)
{
    static struct er_state st;
    char err[256];
    *state = NULL;
    kvt_eng_quant_init(0);
    if (!engine_test_have_model())
        return 0;
    memset(&st, 0, sizeof(st));
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx) ||
        st.fx.n_ids < TAIL_AT + TAIL_N + CONT ||
        kvt_eng_ctx_create(st.m, st.pool, BATCH, CTX, &st.ctx))
        return -1;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(st.m, CTX, BATCH);
    if (kvt_eng_kv_resident_create(&g, &st.kv) || kvt_test_daemon_start(&st.d, NULL))
        return -1;
    struct kvt_connect_opts co = {.socket_path = st.d.socket_path, .timeout_ms = 10000};
    if (kvt_connect(&co, &st.c))
        return -1;
    st.buf_bytes = (size_t)TPC * 2 * st.m->hp.n_layer * st.m->hp.n_head_kv * st.m->hp.head_dim * 2;
    st.buf = kvt_arena_alloc(st.c, st.buf_bytes);
    if (!st.buf)
        return -1;
    *state = &st;
    return 0;
}

static int teardown(void **state)
{
    struct er_state *st = *state;
    if (!st)
        return 0;
    kvt_close(st->c);
    int rc = kvt_test_daemon_stop(&st->d);
    kvt_test_daemon_cleanup(&st->d);
    kvt_eng_kv_destroy(st->kv);
    kvt_eng_ctx_destroy(st->ctx);
    engine_fixture_free(&st->fx);
    kvt_eng_pool_destroy(st->pool);
    kvt_eng_model_free(st->m);
    return rc == 0 ? 0 : -1;
}

#define NEED_MODEL()                                                                               \
    struct er_state *st = *state;                                                                  \
    if (!st)                                                                                       \
    skip()

static void reg(struct er_state *st, const char *id, struct kvt_ns_info *ns)
{
    struct kvt_ns_spec sp = kvt_eng_rag_ns_spec(st->m, id, TPC);
    assert_int_equal(kvt_register(st->c, &sp, ns), 0);
}

/* Prefills head + passages (fixture offsets at[], lengths len[]) + tail under cfg and scores CONT
 * teacher-forced tokens: logits (CONT + 1 rows: the prompt's last, then one per token). */
static void run(struct er_state *st, const struct kvt_eng_rag_config *cfg, const size_t *at,
                const size_t *len, size_t k, float *logits, struct kvt_eng_rag_result *res)
{
    const int32_t *ps[4];
    for (size_t i = 0; i < k; i++)
        ps[i] = st->fx.ids + at[i];
    struct kvt_eng_rag_prompt p = {
        .head = st->fx.ids + HEAD_AT,
        .n_head = HEAD_N,
        .passages = ps,
        .passage_len = len,
        .n_passages = k,
        .tail = st->fx.ids + TAIL_AT,
        .n_tail = TAIL_N,
    };
    size_t V = st->m->hp.n_vocab;
    assert_int_equal(kvt_eng_rag_prefill(st->ctx, st->kv, st->m, cfg, &p, logits, res), 0);
    size_t pos = res->n_tokens;
    for (size_t t = 0; t < CONT; t++)
        assert_int_equal(kvt_eng_forward(st->ctx, st->kv, &st->fx.ids[TAIL_AT + TAIL_N + t], 1,
                                         pos + t, logits + (t + 1) * V, 0),
                         0);
}

static double mean_kl(const float *ref, const float *cur, size_t V)
{
    double s = 0.0;
    for (size_t t = 0; t <= CONT; t++) {
        struct kvt_eng_fid_pos r;
        kvt_eng_fid_compare(ref + t * V, cur + t * V, V, -1, &r);
        s += r.kl;
    }
    return s / (CONT + 1);
}

static void test_same_position_is_exact(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab, rows = (CONT + 1) * V;
    float *ref = malloc(rows * sizeof(float)), *got = malloc(rows * sizeof(float));
    assert_non_null(ref);
    assert_non_null(got);
    const size_t at[] = {P1_AT, P2_AT}, len[] = {P1_N, P2_N};
    struct kvt_eng_rag_result res;
    struct kvt_eng_rag_config full = {.policy = KVT_ENG_RAG_FULL};
    run(st, &full, at, len, 2, ref, &res);
    assert_int_equal(res.computed, HEAD_N + P1_N + P2_N + TAIL_N);

    struct kvt_ns_info ns;
    reg(st, "rag-test/same", &ns);
    struct kvt_eng_rag_config plan = {.policy = KVT_ENG_RAG_PLAN,
                                      .client = st->c,
                                      .ns = &ns,
                                      .buf = st->buf,
                                      .buf_bytes = st->buf_bytes};
    /* First time: both passages missing, computed in full and stored as versions. */
    run(st, &plan, at, len, 2, got, &res);
    assert_int_equal(res.passages_found, 0);
    assert_int_equal(res.passages_computed, 2);
    assert_int_equal(res.versions_stored, 2);
    assert_int_equal(res.computed, HEAD_N + P1_N + P2_N + TAIL_N);
    assert_int_equal(res.head_reused, 0);
    assert_memory_equal(got, ref, rows * sizeof(float));
    assert_int_equal(kvt_test_stat(st->c, "gets_rotated"), 0);

    /* Again: same positions after the same prefix, nothing recomputed, identical logits. */
    memset(got, 0, rows * sizeof(float));
    run(st, &plan, at, len, 2, got, &res);
    assert_int_equal(res.passages_found, 2);
    assert_int_equal(res.passages_computed, 0);
    assert_int_equal(res.recomputed, 0);
    /* The head (at 0, nothing before it) is read from its cached copy too. */
    assert_int_equal(res.head_reused, HEAD_N);
    assert_int_equal(res.reused, HEAD_N + P1_N + P2_N);
    assert_int_equal(res.computed, TAIL_N);
    assert_memory_equal(got, ref, rows * sizeof(float));
    free(ref);
    free(got);
}

static void test_moved_passage_plan_beats_naive(void **state)
{
    NEED_MODEL();
    size_t V = st->m->hp.n_vocab, rows = (CONT + 1) * V;
    float *ref = malloc(rows * sizeof(float)), *naive = malloc(rows * sizeof(float)),
          *plan = malloc(rows * sizeof(float));
    assert_non_null(ref);
    assert_non_null(naive);
    assert_non_null(plan);
    const size_t at_a[] = {P1_AT, P2_AT}, len_a[] = {P1_N, P2_N};
    const size_t at_b[] = {P3_AT, P2_AT}, len_b[] = {P3_N, P2_N}; /* P2 moved behind P3 */
    struct kvt_eng_rag_result res;
    struct kvt_eng_rag_config full = {.policy = KVT_ENG_RAG_FULL};
    run(st, &full, at_b, len_b, 2, ref, &res);

    struct kvt_ns_info ns_n, ns_p;
    reg(st, "rag-test/naive", &ns_n);
    reg(st, "rag-test/plan", &ns_p);
    struct kvt_eng_rag_config cn = {.policy = KVT_ENG_RAG_NAIVE,
                                    .client = st->c,
                                    .ns = &ns_n,
                                    .buf = st->buf,
                                    .buf_bytes = st->buf_bytes};
    struct kvt_eng_rag_config cp = cn;
    cp.policy = KVT_ENG_RAG_PLAN;
    cp.ns = &ns_p;
    /* Store P1 and P2 (P2 after P1) in both namespaces. */
    run(st, &cn, at_a, len_a, 2, naive, &res);
    run(st, &cp, at_a, len_a, 2, plan, &res);
    uint64_t rotated = kvt_test_stat(st->c, "gets_rotated");

    run(st, &cn, at_b, len_b, 2, naive, &res);
    assert_int_equal(res.passages_found, 1); /* P2; P3 is new */
    assert_int_equal(res.recomputed, 0);
    assert_int_equal(kvt_test_stat(st->c, "gets_rotated"), rotated + 1);
    run(st, &cp, at_b, len_b, 2, plan, &res);
    assert_int_equal(res.passages_found + res.passages_computed, 2);
    size_t plan_recomputed = res.recomputed;
    double kl_naive = mean_kl(ref, naive, V), kl_plan = mean_kl(ref, plan, V);
    printf("moved passage: naive KL %.6f, plan KL %.6f (%zu of %d tokens recomputed)\n", kl_naive,
           kl_plan, plan_recomputed, P2_N);
    assert_true(kl_naive > 0.0);
    assert_true(plan_recomputed > 0);
    assert_true(kl_plan < kl_naive);
    free(ref);
    free(naive);
    free(plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_position_is_exact),
        cmocka_unit_test(test_moved_passage_plan_beats_naive),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
