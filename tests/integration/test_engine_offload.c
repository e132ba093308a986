/*
 * The engine's offload mode through a real kvtierd: logits bit-identical to the resident mode
 * (prompt and generated positions), prefix reuse of a cached prompt, and a daemon killed in the
 * middle of generation — the engine reports the error and recomputes in resident mode with the
 * same logits, or stops with the error when told to; it never hangs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "kvtier/kvtier.h"
#include "tests/engine/fixture.h"
#include "tests/lib/daemon.h"

#define PROMPT 100
#define GEN 20
#define CHUNK 16
#define TIMEOUT_MS 2000

struct eo_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct engine_fixture fx;
    struct kvt_test_daemon d;
    float *resident; /* (PROMPT + GEN) rows of logits from the resident mode */
};

struct run {
    enum kvt_eng_mode mode;
    const char *socket;
    int allow_reuse;
    int stop_on_error;
    int kill_after; /* generated tokens before the daemon is killed; -1: never */
    struct kvt_test_daemon *victim;
    /* results */
    int rc;
    size_t rows;
    size_t reused;
    int fell_back;
    int last_error;
    double seconds;
    struct kvt_eng_kv_stats kv;
};

struct rows_cb {
    float *out;
    size_t V;
};

static void keep_rows(void *arg, size_t pos, size_t n, const float *logits)
{
    struct rows_cb *r = arg;
    memcpy(r->out + pos * r->V, logits, n * r->V * sizeof(float));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Prompt of PROMPT fixture tokens, then GEN greedy tokens; every row of logits goes to out. */
static void run_engine(struct eo_state *st, struct run *r, float *out)
{
    size_t V = st->m->hp.n_vocab;
    struct kvt_eng_session_config sc = {
        .mode = r->mode,
        .ctx_max = PROMPT + GEN + 1,
        .batch_max = 32,
        .stop_on_error = r->stop_on_error,
        .log = stderr,
    };
    sc.offload.socket_path = r->socket;
    sc.offload.tokens_per_chunk = CHUNK;
    sc.offload.timeout_ms = TIMEOUT_MS;
    struct kvt_eng_session *s;
    double t0 = now_s();
    r->rows = 0;
    r->rc = kvt_eng_session_create(st->m, st->pool, &sc, &s);
    if (r->rc)
        return;
    struct rows_cb cb = {.out = out, .V = V};
    float *last = out + (PROMPT - 1) * V;
    r->rc =
        kvt_eng_session_start(s, st->fx.ids, PROMPT, r->allow_reuse, r->allow_reuse ? last : NULL,
                              r->allow_reuse ? NULL : keep_rows, &cb);
    r->reused = s->reused;
    if (r->rc == 0)
        r->rows = PROMPT;
    for (int i = 0; r->rc == 0 && i < GEN; i++) {
        if (i == r->kill_after && r->victim)
            kvt_test_daemon_kill(r->victim);
        int32_t id = kvt_eng_argmax(out + (PROMPT + i - 1) * V, V);
        r->rc = kvt_eng_session_next(s, id, out + (PROMPT + i) * V);
        if (r->rc == 0)
            r->rows++;
    }
    r->fell_back = s->fell_back;
    r->last_error = s->last_error;
    r->kv = kvt_eng_session_kv_stats(s);
    kvt_eng_session_destroy(s);
    r->seconds = now_s() - t0;
}

static int setup(void **state)
{
    static struct eo_state st;
    char err[256];
    *state = NULL;
    if (!engine_test_have_model())
        return 0;
    memset(&st, 0, sizeof(st));
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool) || engine_fixture_load(&st.fx))
        return -1;
    if (kvt_test_daemon_start(&st.d, NULL))
        return -1;
    size_t V = st.m->hp.n_vocab;
    st.resident = calloc((PROMPT + GEN) * V, sizeof(float));
    struct run r = {.mode = KVT_ENG_MODE_RESIDENT, .kill_after = -1};
    run_engine(&st, &r, st.resident);
    if (r.rc || r.rows != PROMPT + GEN)
        return -1;
    *state = &st;
    return 0;
}

static int teardown(void **state)
{
    struct eo_state *st = *state;
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

static float *new_rows(const struct eo_state *st)
{
    float *p = calloc((PROMPT + GEN) * (size_t)st->m->hp.n_vocab, sizeof(float));
    assert_non_null(p);
    return p;
}

static void test_offload_logits_bit_exact(void **state)
{
    struct eo_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *rows = new_rows(st);
    struct run r = {.mode = KVT_ENG_MODE_OFFLOAD, .socket = st->d.socket_path, .kill_after = -1};
    run_engine(st, &r, rows);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.rows, PROMPT + GEN);
    assert_false(r.fell_back);
    assert_memory_equal(rows, st->resident, (PROMPT + GEN) * V * sizeof(float));
    /* Every full chunk was stored and read back from the CPU tier. */
    assert_int_equal(r.kv.store_chunks, (PROMPT + GEN - 1) / CHUNK);
    assert_true(r.kv.fetch_bytes[KVT_TIER_CPU] > 0);
    assert_int_equal(r.kv.fetch_bytes[0], 0);
    free(rows);
}

static void test_prefix_reuse(void **state)
{
    struct eo_state *st = *state;
    if (!st)
        skip();
    size_t V = st->m->hp.n_vocab;
    float *rows = new_rows(st);
    /* The previous test stored this prompt's chunks; a new session finds and reuses them. */
    struct run r = {.mode = KVT_ENG_MODE_OFFLOAD,
                    .socket = st->d.socket_path,
                    .allow_reuse = 1,
                    .kill_after = -1};
    run_engine(st, &r, rows);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.reused, (PROMPT - 1) / CHUNK * CHUNK);
    assert_int_equal(r.kv.reused_tokens, r.reused);
    assert_memory_equal(rows + (PROMPT - 1) * V, st->resident + (PROMPT - 1) * V,
                        (GEN + 1) * V * sizeof(float));
    free(rows);
}

static void test_daemon_killed_recomputes(void **state)
{
    struct eo_state *st = *state;
    if (!st)
        skip();
    struct kvt_test_daemon d;
    memset(&d, 0, sizeof(d));
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    size_t V = st->m->hp.n_vocab;
    float *rows = new_rows(st);
    struct run r = {
        .mode = KVT_ENG_MODE_OFFLOAD, .socket = d.socket_path, .kill_after = 5, .victim = &d};
    run_engine(st, &r, rows);
    kvt_test_daemon_cleanup(&d);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.rows, PROMPT + GEN);
    assert_true(r.fell_back);
    assert_true(r.last_error == KVT_E_DISCONNECTED || r.last_error == KVT_E_TIMEOUT);
    /* Recomputing in resident mode gives the resident logits, before and after the kill. */
    assert_memory_equal(rows, st->resident, (PROMPT + GEN) * V * sizeof(float));
    assert_true(r.seconds < 30.0);
    free(rows);
}

static void test_daemon_killed_stop(void **state)
{
    struct eo_state *st = *state;
    if (!st)
        skip();
    struct kvt_test_daemon d;
    memset(&d, 0, sizeof(d));
    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    float *rows = new_rows(st);
    struct run r = {.mode = KVT_ENG_MODE_OFFLOAD,
                    .socket = d.socket_path,
                    .kill_after = 3,
                    .victim = &d,
                    .stop_on_error = 1};
    run_engine(st, &r, rows);
    kvt_test_daemon_cleanup(&d);
    assert_true(r.rc == KVT_E_DISCONNECTED || r.rc == KVT_E_TIMEOUT);
    assert_int_equal(r.rows, PROMPT + 3);
    assert_false(r.fell_back);
    assert_true(r.seconds < 30.0);
    free(rows);
}

static void test_no_daemon_fails_fast(void **state)
{
    struct eo_state *st = *state;
    if (!st)
        skip();
    float *rows = new_rows(st);
    struct run r = {
        .mode = KVT_ENG_MODE_OFFLOAD, .socket = "/nonexistent/kvtier.sock", .kill_after = -1};
    run_engine(st, &r, rows);
    assert_int_equal(r.rc, KVT_E_DISCONNECTED);
    assert_true(r.seconds < 10.0);
    free(rows);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offload_logits_bit_exact), cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_daemon_killed_recomputes), cmocka_unit_test(test_daemon_killed_stop),
        cmocka_unit_test(test_no_daemon_fails_fast),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
