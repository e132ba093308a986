/*
 * Reuse at any position through a real kvtierd: passages of any length stored under their own
 * keys, versions described with kvt_version_set, kvt_chunk_lookup plans (a passage at the same
 * place after the same prefix needs nothing recomputed; after another prefix the daemon's
 * beta/gamma/cfo and recompute indices are the formulas' on the reported statistics),
 * kvt_get_rotated returns the keys re-rotated exactly as the reference kernel does (values
 * untouched), versions per key bounded by reuse.versions_max, and every bad input gets its error
 * and changes nothing.
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
#include "kernels/kernels.h"
#include "kernels/rope.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define LAYERS 2
#define HEADS 2
#define DIM 16
#define T_MAX 64
#define ROW (2 * HEADS * DIM) /* fp16 elements per token per layer */

static const struct kvt_ns_spec spec = {.model_id = "reuse-test",
                                        .layers = LAYERS,
                                        .kv_heads = HEADS,
                                        .head_dim = DIM,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = T_MAX,
                                        .rope_theta = 10000.0f};
static struct kvt_test_daemon d;

struct passage {
    int32_t tokens[T_MAX];
    uint32_t n;
    struct kvt_key key;
    uint16_t kv[LAYERS * T_MAX * ROW];
};

static void make_passage(const struct kvt_ns_info *ns, struct passage *p, uint32_t n, int seed)
{
    p->n = n;
    for (uint32_t i = 0; i < n; i++)
        p->tokens[i] = seed * 1000 + (int32_t)i;
    assert_int_equal(kvt_passage_key(ns, p->tokens, n, &p->key), 0);
    kvt_test_fill(p->kv, sizeof(p->kv), (uint64_t)seed);
    for (size_t i = 0; i < LAYERS * n * ROW; i++) /* finite fp16 values in [-2, 2) */
        p->kv[i] = kvt_f32_to_f16((float)((p->kv[i] % 4096) / 1024.0 - 2.0));
}

static size_t bytes_of(const struct passage *p)
{
    return (size_t)LAYERS * p->n * ROW * sizeof(uint16_t);
}

static struct kvt_client *connect_as(const char *tenant, const struct kvt_ns_spec *sp,
                                     struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .tenant = tenant, .arena_bytes = 4 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, sp, ns), 0);
    return c;
}

/* Statistics of a version after n_prefix passages: per layer, prefix j gets share pm[j] and the
 * passage itself `intra`; token i gets tm[i]. */
static int set_version(struct kvt_client *c, uint32_t ns, const struct passage *p, uint32_t variant,
                       uint64_t start, const struct kvt_key *prefix, uint32_t np, const float *pm,
                       float intra, const float *tm)
{
    float rows[LAYERS * 9];
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (uint32_t j = 0; j < np; j++)
            rows[l * (np + 1) + j] = pm[j];
        rows[l * (np + 1) + np] = intra;
    }
    struct kvt_version_info vi = {.start_pos = start,
                                  .prefix = prefix,
                                  .n_prefix = np,
                                  .layers = LAYERS,
                                  .n_tokens = p->n,
                                  .layer_mass = rows,
                                  .token_mass = tm};
    return kvt_version_set(c, ns, &p->key, variant, &vi);
}

static void test_plans_and_rotation(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &spec, &ns);
    static struct passage A, B, X;
    make_passage(&ns, &A, 20, 1);
    make_passage(&ns, &B, 37, 2);
    make_passage(&ns, &X, 64, 3);
    /* A passage key depends on its tokens alone, and a whole chunk's equals the chained key. */
    struct kvt_key chained;
    assert_int_equal(kvt_chunk_keys(&ns, NULL, X.tokens, 64, &chained, 1), 1);
    assert_memory_equal(&chained, &X.key, sizeof(chained));
    assert_int_equal(kvt_put_v(c, ns.handle, &A.key, 0, A.kv, bytes_of(&A), A.n), 0);
    assert_int_equal(kvt_put_v(c, ns.handle, &B.key, 0, B.kv, bytes_of(&B), B.n), 0);

    float tm_a[20] = {0}, tm_b[37];
    for (int i = 0; i < 37; i++)
        tm_b[i] = (float)((i * 7) % 37) / 37.0f; /* token 21 most (36/37), then 16 ... */
    const float pm_b[] = {0.4f};
    assert_int_equal(set_version(c, ns.handle, &A, 0, 10, NULL, 0, NULL, 0.8f, tm_a), 0);
    assert_int_equal(set_version(c, ns.handle, &B, 0, 30, &A.key, 1, pm_b, 0.4f, tm_b), 0);
    assert_int_equal(kvt_test_stat(c, "versions"), 2);

    /* The same passages at the same places: found, nothing to recompute. */
    struct kvt_key req1[] = {A.key, B.key};
    uint64_t pos1[] = {10, 30};
    uint32_t idx[2][64];
    struct kvt_reuse_plan plans[3] = {{.recompute = idx[0], .recompute_cap = 64},
                                      {.recompute = idx[1], .recompute_cap = 64}};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, req1, pos1, 2, 0, plans), 0);
    for (int i = 0; i < 2; i++) {
        assert_true(plans[i].found);
        assert_int_equal(plans[i].variant, 0);
        assert_int_equal(plans[i].tier, KVT_TIER_CPU);
        assert_int_equal(plans[i].n_recompute, 0);
        assert_float_equal(plans[i].cfo, 0.0f, 1e-6);
        assert_int_equal(plans[i].next_variant, 1);
    }
    assert_int_equal(plans[0].old_start, 10);
    assert_int_equal(plans[1].n_tokens, 37);

    /* B after an unknown passage X: its old prefix (A) is gone: beta 0, cfo = cci = 0.5. */
    struct kvt_key req2[] = {X.key, B.key};
    uint64_t pos2[] = {5, 69};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, req2, pos2, 2, 0, plans), 0);
    assert_false(plans[0].found);
    assert_int_equal(plans[0].next_variant, 0);
    assert_true(plans[1].found);
    assert_float_equal(plans[1].beta, 0.0f, 1e-6);
    assert_float_equal(plans[1].cci, 0.5f, 1e-6);
    assert_float_equal(plans[1].cfo, 0.5f, 1e-6);
    assert_int_equal(plans[1].n_recompute, 19); /* ceil(0.5 * 37) */
    /* The 19 tokens of highest token_mass, ascending: (i * 7) % 37 >= 18. */
    uint32_t want[19], n = 0;
    for (uint32_t i = 0; i < 37; i++)
        if ((i * 7) % 37 >= 18)
            want[n++] = i;
    assert_int_equal(n, 19);
    assert_memory_equal(plans[1].recompute, want, sizeof(want));
    /* alpha 0.5 halves it; fewer indices than tokens when the caller's room is small. */
    plans[1].recompute_cap = 3;
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, req2, pos2, 2, 0.5f, plans), 0);
    assert_int_equal(plans[1].n_recompute, 10); /* ceil(0.25 * 37) */
    uint32_t top10[10];
    n = 0;
    for (uint32_t i = 0; i < 37; i++)
        if ((i * 7) % 37 >= 27)
            top10[n++] = i;
    assert_int_equal(n, 10);
    assert_memory_equal(plans[1].recompute, top10, 3 * sizeof(uint32_t)); /* the first 3 */

    /* A was computed with no passage before it, so it cannot say how much it would look at one;
     * the namespace's versions that had one (B: cci 0.5, 0.4 of its attention per passage) stand
     * in: after B, A misses all of that (beta 0) and recomputes cci = 0.5 of its 20 tokens. */
    struct kvt_key req3[] = {B.key, A.key};
    uint64_t pos3[] = {10, 47};
    plans[1].recompute_cap = 64;
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, req3, pos3, 2, 0, plans), 0);
    assert_true(plans[1].found);
    assert_float_equal(plans[1].beta, 0.0f, 1e-6);
    assert_float_equal(plans[1].cci, 0.5f, 1e-6);
    assert_int_equal(plans[1].n_recompute, 10);
    /* At its own place it is still exact. */
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, req1, pos1, 1, 0, plans), 0);
    assert_int_equal(plans[0].n_recompute, 0);

    /* B fetched at a new start: keys rotated by +39, values untouched, the reference's bits. */
    static uint16_t expect[LAYERS * T_MAX * ROW];
    memcpy(expect, B.kv, bytes_of(&B));
    float cs[DIM];
    kvt_rope_shift_table(10000.0, DIM, 69 - 30, cs);
    kvt_kernels_variant(KVT_KERNELS_REF)
        ->rope_shift_f16(expect, LAYERS * B.n, ROW, HEADS, DIM, DIM, KVT_ROPE_NEOX, cs);
    uint16_t *arena = kvt_arena_alloc(c, bytes_of(&B));
    static uint16_t heap[LAYERS * T_MAX * ROW];
    size_t len = 0;
    enum kvt_tier_id tier = KVT_TIER_NONE;
    assert_int_equal(kvt_get_rotated(c, ns.handle, &B.key, 0, 69, arena, bytes_of(&B), &len, &tier),
                     0);
    assert_int_equal(len, bytes_of(&B));
    assert_int_equal(tier, KVT_TIER_CPU);
    assert_memory_equal(arena, expect, bytes_of(&B));
    assert_int_equal(kvt_get_rotated(c, ns.handle, &B.key, 0, 69, heap, sizeof(heap), &len, NULL),
                     0);
    assert_memory_equal(heap, expect, bytes_of(&B));
    assert_true(memcmp(expect, B.kv, bytes_of(&B)) != 0); /* the keys did move */
    /* Back to its own start: the stored bytes exactly. */
    assert_int_equal(kvt_get_rotated(c, ns.handle, &B.key, 0, 30, heap, sizeof(heap), &len, NULL),
                     0);
    assert_memory_equal(heap, B.kv, bytes_of(&B));
    /* A plain Get is untouched by all this. */
    assert_int_equal(kvt_get_v(c, ns.handle, &B.key, 0, heap, sizeof(heap), &len, NULL), 0);
    assert_memory_equal(heap, B.kv, bytes_of(&B));
    assert_int_equal(kvt_test_stat(c, "gets_rotated"), 3);
    assert_int_equal(kvt_test_stat(c, "chunk_lookups"), 5);
    kvt_arena_free(c, arena);
    kvt_close(c);
}

/* A passage big enough for the daemon to copy it in stripes on its workers (SmolLM2's geometry,
 * rows of 768 bytes, which no power-of-two stripe ends on): every stripe rotates its own rows,
 * and the whole is the reference's rotation of the whole. */
static void test_rotation_in_stripes(void **state)
{
    (void)state;
    struct kvt_ns_spec big = spec;
    big.model_id = "reuse-big";
    big.layers = 30;
    big.kv_heads = 3;
    big.head_dim = 64;
    big.tokens_per_chunk = 256;
    struct kvt_ns_info ns;
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 32 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &big, &ns), 0);
    const size_t row = 2 * 3 * 64, bytes = 30 * 256 * row * sizeof(uint16_t);
    uint16_t *kv = malloc(bytes), *want = malloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++)
        kv[i] = kvt_f32_to_f16((float)((i * 2654435761u >> 16) % 4096) / 1024.0f - 2.0f);
    int32_t toks[256];
    for (int i = 0; i < 256; i++)
        toks[i] = 7000 + i;
    struct kvt_key key;
    assert_int_equal(kvt_passage_key(&ns, toks, 256, &key), 0);
    assert_int_equal(kvt_put_v(c, ns.handle, &key, 0, kv, bytes, 256), 0);
    static float lm[30], tm[256];
    struct kvt_version_info vi = {
        .start_pos = 3, .layers = 30, .n_tokens = 256, .layer_mass = lm, .token_mass = tm};
    assert_int_equal(kvt_version_set(c, ns.handle, &key, 0, &vi), 0);
    memcpy(want, kv, bytes);
    float cs[64];
    kvt_rope_shift_table(10000.0, 64, 4000 - 3, cs);
    kvt_kernels_variant(KVT_KERNELS_REF)
        ->rope_shift_f16(want, 30 * 256, row, 3, 64, 64, KVT_ROPE_NEOX, cs);
    uint16_t *out = kvt_arena_alloc(c, bytes);
    assert_non_null(out);
    size_t len = 0;
    assert_int_equal(kvt_get_rotated(c, ns.handle, &key, 0, 4000, out, bytes, &len, NULL), 0);
    assert_int_equal(len, bytes);
    assert_memory_equal(out, want, bytes);
    kvt_arena_free(c, out);
    free(kv);
    free(want);
    kvt_close(c);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &spec, &ns);
    static struct passage P;
    make_passage(&ns, &P, 12, 7);
    float tm[12] = {0}, pm[1] = {0.2f};
    uint64_t versions_before = kvt_test_stat(c, "versions");
    /* Not stored yet. */
    assert_int_equal(set_version(c, ns.handle, &P, 0, 0, NULL, 0, NULL, 0.5f, tm), KVT_E_NOTFOUND);
    assert_int_equal(kvt_put_v(c, ns.handle, &P.key, 0, P.kv, bytes_of(&P), P.n), 0);
    size_t len;
    static uint16_t buf[LAYERS * T_MAX * ROW];
    /* No version info: its start is unknown. */
    assert_int_equal(kvt_get_rotated(c, ns.handle, &P.key, 0, 5, buf, sizeof(buf), &len, NULL),
                     KVT_E_NOTFOUND);
    int code;
    assert_non_null(strstr(kvt_last_error(c, &code), "no version info"));
    /* Shares outside [0, 1], a layer past 1, NaN, wrong token count, a variant past 31. */
    float bad_tm[12] = {0};
    bad_tm[3] = 1.5f;
    assert_int_equal(set_version(c, ns.handle, &P, 0, 0, NULL, 0, NULL, 0.5f, bad_tm), KVT_E_INVAL);
    pm[0] = 0.7f;
    assert_int_equal(set_version(c, ns.handle, &P, 0, 0, &P.key, 1, pm, 0.5f, tm), KVT_E_INVAL);
    assert_int_equal(set_version(c, ns.handle, &P, 0, 0, NULL, 0, NULL, NAN, tm), KVT_E_INVAL);
    struct passage Q = P;
    Q.n = 11;
    assert_int_equal(set_version(c, ns.handle, &Q, 0, 0, NULL, 0, NULL, 0.5f, tm), KVT_E_GEOMETRY);
    assert_int_equal(set_version(c, ns.handle, &P, 40, 0, NULL, 0, NULL, 0.5f, tm), KVT_E_INVAL);
    assert_int_equal(kvt_test_stat(c, "versions"), versions_before); /* none changed anything */
    /* Passage keys: too long, empty. */
    struct kvt_key k;
    int32_t toks[T_MAX + 1] = {0};
    assert_int_equal(kvt_passage_key(&ns, toks, T_MAX + 1, &k), KVT_E_INVAL);
    assert_int_equal(kvt_passage_key(&ns, toks, 0, &k), KVT_E_INVAL);
    /* ChunkLookup: more than 256 passages; indices asked without room. */
    static struct kvt_key many[257];
    static uint64_t pos[257];
    static struct kvt_reuse_plan plans[257];
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, many, pos, 257, 0, plans), KVT_E_TOOBIG);
    plans[0] = (struct kvt_reuse_plan){.recompute_cap = 4};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, many, pos, 1, 0, plans), KVT_E_INVAL);
    assert_int_equal(
        kvt_chunk_lookup(c, ns.handle, many, pos, 1, -1.0f, &(struct kvt_reuse_plan){0}),
        KVT_E_INVAL);
    /* A namespace without RoPE parameters cannot rotate. */
    struct kvt_ns_spec norope = spec;
    norope.model_id = "reuse-norope";
    norope.rope_theta = 0;
    struct kvt_ns_info ns2;
    assert_int_equal(kvt_register(c, &norope, &ns2), 0);
    assert_int_equal(kvt_put_v(c, ns2.handle, &P.key, 0, P.kv, bytes_of(&P), P.n), 0);
    assert_int_equal(set_version(c, ns2.handle, &P, 0, 0, NULL, 0, NULL, 0.5f, tm), 0);
    assert_int_equal(kvt_get_rotated(c, ns2.handle, &P.key, 0, 5, buf, sizeof(buf), &len, NULL),
                     KVT_E_INVAL);
    /* Another tenant sees nothing of this namespace's passages. */
    struct kvt_ns_info ns3;
    struct kvt_client *other = connect_as("other", &spec, &ns3);
    struct kvt_reuse_plan op = {0};
    uint64_t p0 = 0;
    assert_int_equal(kvt_chunk_lookup(other, ns3.handle, &P.key, &p0, 1, 0, &op), 0);
    assert_false(op.found);
    assert_int_equal(set_version(other, ns3.handle, &P, 0, 0, NULL, 0, NULL, 0.5f, tm),
                     KVT_E_NOTFOUND);
    kvt_close(other);
    kvt_close(c);
}

/* reuse.versions_max 2: a third version deletes the least recently planned one. */
static void test_versions_bounded(void **state)
{
    (void)state;
    struct kvt_test_daemon d2 = {0};
    const char *args[] = {"--reuse.versions_max=2", NULL};
    assert_int_equal(kvt_test_daemon_start(&d2, args), 0);
    struct kvt_test_daemon saved = d;
    d = d2;
    struct kvt_ns_info ns;
    struct kvt_client *c = connect_as(NULL, &spec, &ns);
    static struct passage P;
    make_passage(&ns, &P, 16, 9);
    float tm[16] = {0};
    for (uint32_t v = 0; v < 2; v++) {
        assert_int_equal(kvt_put_v(c, ns.handle, &P.key, v, P.kv, bytes_of(&P), P.n), 0);
        assert_int_equal(set_version(c, ns.handle, &P, v, 100 * v, NULL, 0, NULL, 0.5f, tm), 0);
    }
    /* Plan at 0: version 0 is used, so version 1 is the least recently planned. */
    uint64_t at0 = 0;
    struct kvt_reuse_plan plan = {0};
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, &P.key, &at0, 1, 0, &plan), 0);
    assert_int_equal(plan.variant, 0);
    assert_int_equal(plan.next_variant, 2);
    assert_int_equal(kvt_put_v(c, ns.handle, &P.key, 2, P.kv, bytes_of(&P), P.n), 0);
    assert_int_equal(set_version(c, ns.handle, &P, 2, 200, NULL, 0, NULL, 0.5f, tm), 0);
    assert_int_equal(kvt_test_stat(c, "versions"), 2);
    assert_int_equal(kvt_test_stat(c, "versions_evicted"), 1);
    size_t hits = 0;
    uint32_t v1 = 1, v0 = 0, v2 = 2;
    assert_int_equal(kvt_lookup_v(c, ns.handle, &P.key, &v1, 1, &hits, NULL), 0);
    assert_int_equal(hits, 0); /* version 1 went */
    assert_int_equal(kvt_lookup_v(c, ns.handle, &P.key, &v0, 1, &hits, NULL), 0);
    assert_int_equal(hits, 1);
    assert_int_equal(kvt_lookup_v(c, ns.handle, &P.key, &v2, 1, &hits, NULL), 0);
    assert_int_equal(hits, 1);
    assert_int_equal(kvt_chunk_lookup(c, ns.handle, &P.key, &at0, 1, 0, &plan), 0);
    assert_int_equal(plan.next_variant, 1); /* free again */
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d2), 0);
    kvt_test_daemon_cleanup(&d2);
    d = saved;
}

static int setup(void **state)
{
    (void)state;
    static char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=other=uid:%u", getuid());
    const char *args[] = {tenants, NULL};
    return kvt_test_daemon_start(&d, args);
}

static int teardown(void **state)
{
    (void)state;
    int rc = kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plans_and_rotation),
        cmocka_unit_test(test_rotation_in_stripes),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_versions_bounded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
