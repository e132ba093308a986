/*
 * Reuse plans (daemon/reuse.c) on hand-made statistics: the same prefix in the same order needs
 * nothing recomputed; a reordered or partly replaced prefix gives the beta, gamma, beta', cci and
 * cfo of the formulas in docs/reuse.md exactly; alpha scales and cfo clamps; the tokens chosen
 * for recompute are those with the most attention to the old prefix (ties to the lower index),
 * in ascending order; the choice between versions prefers lower cfo, then the requested start,
 * then the most recently used.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/reuse.h"

static const struct kvt_key A = {1, 0}, B = {2, 0}, C = {3, 0}, D = {4, 0};

/* A version of 2 layers after prefix[0..np) with the given per-layer rows. */
static struct kvt_version make(const struct kvt_key *prefix, uint32_t np, float *rows,
                               float *tokens, uint32_t n_tokens)
{
    return (struct kvt_version){.start_pos = 100,
                                .n_prefix = np,
                                .layers = 2,
                                .n_tokens = n_tokens,
                                .prefix = (struct kvt_key *)prefix,
                                .layer_mass = rows,
                                .token_mass = tokens};
}

static void test_same_prefix_recomputes_nothing(void **state)
{
    (void)state;
    const struct kvt_key prefix[] = {A, B};
    float rows[] = {0.3f, 0.1f, 0.5f, /* layer 0: A, B, within */ 0.2f, 0.2f, 0.4f};
    float tokens[4] = {0.5f, 0.1f, 0.9f, 0.2f};
    struct kvt_version v = make(prefix, 2, rows, tokens, 4);
    struct kvt_reuse_score s;
    kvt_reuse_score(&v, prefix, 2, 1.0f, NULL, &s);
    assert_float_equal(s.beta, 1.0f, 1e-6);
    assert_float_equal(s.gamma, 0.0f, 1e-6);
    assert_float_equal(s.cfo, 0.0f, 1e-6);
    assert_int_equal(s.n_recompute, 0);
    /* More passages before it now, the old ones still there in order, but two (C, D) it never
     * attended to, each worth what one old passage drew (masses A 0.25, B 0.15: 0.2 each):
     * beta = 0.4 / (0.4 + 2 x 0.2). */
    const struct kvt_key more[] = {C, A, D, B};
    kvt_reuse_score(&v, more, 4, 1.0f, NULL, &s);
    assert_int_equal(s.n_novel, 2);
    assert_float_equal(s.beta, 0.5f, 1e-6);
    assert_float_equal(s.gamma, 0.0f, 1e-6);
    const float cci = (0.4f / 0.9f + 0.4f / 0.8f) / 2;
    assert_float_equal(s.cci, cci, 1e-6);
    assert_float_equal(s.cfo, cci * 0.5f, 1e-6);
    assert_int_equal(s.n_recompute, 1); /* ceil(0.94) */
    /* A passage named twice before it is one passage. */
    const struct kvt_key twice[] = {A, C, B, C};
    kvt_reuse_score(&v, twice, 4, 1.0f, NULL, &s);
    assert_int_equal(s.n_novel, 1);
    assert_float_equal(s.beta, 0.4f / 0.6f, 1e-6);
}

static void test_formulas(void **state)
{
    (void)state;
    const struct kvt_key prefix[] = {A, B, C};
    /* Layer-averaged masses: A 0.3, B 0.1, C 0.2 (sum 0.6); intra 0.3 and 0.1. */
    float rows[] = {0.4f, 0.1f, 0.2f, 0.3f, 0.2f, 0.1f, 0.2f, 0.1f};
    float tokens[10] = {0.1f, 0.8f, 0.3f, 0.8f, 0.0f, 0.5f, 0.2f, 0.9f, 0.1f, 0.4f};
    struct kvt_version v = make(prefix, 3, rows, tokens, 10);
    /* cci per layer: 0.7 / 1.0 and 0.5 / 0.6; averaged. */
    const float cci = (0.7f / 1.0f + 0.5f / 0.6f) / 2;
    struct kvt_reuse_score s;

    /* Reversed order: every common pair discordant. */
    const struct kvt_key rev[] = {C, B, A};
    kvt_reuse_score(&v, rev, 3, 1.0f, NULL, &s);
    assert_float_equal(s.beta, 1.0f, 1e-6);
    assert_float_equal(s.gamma, 1.0f, 1e-6);
    assert_float_equal(s.beta_prime, 0.0f, 1e-6);
    assert_float_equal(s.cci, cci, 1e-6);
    assert_float_equal(s.cfo, cci, 1e-6);
    assert_int_equal(s.n_recompute, 8); /* ceil(0.7667 * 10) */

    /* B gone, D new (worth 0.6 / 3), C before A: beta = (0.3 + 0.2) / (0.6 + 0.2), one of one
     * pair discordant. */
    const struct kvt_key part[] = {D, C, A};
    kvt_reuse_score(&v, part, 3, 1.0f, NULL, &s);
    assert_float_equal(s.beta, 0.5f / 0.8f, 1e-6);
    assert_float_equal(s.gamma, 1.0f, 1e-6);
    assert_float_equal(s.cfo, cci, 1e-6);

    /* A and C kept in order: gamma 0, beta' = beta. */
    const struct kvt_key keep[] = {A, D, C};
    kvt_reuse_score(&v, keep, 3, 1.0f, NULL, &s);
    assert_float_equal(s.gamma, 0.0f, 1e-6);
    assert_float_equal(s.beta_prime, 0.5f / 0.8f, 1e-6);
    assert_float_equal(s.cfo, cci * (1 - 0.5f / 0.8f), 1e-6);
    assert_int_equal(s.n_recompute, 3); /* ceil(2.875) */

    /* Three common passages, one pair swapped: gamma 1/3. */
    const struct kvt_key swap[] = {B, A, C};
    kvt_reuse_score(&v, swap, 3, 1.0f, NULL, &s);
    assert_float_equal(s.gamma, 1.0f / 3, 1e-6);
    assert_float_equal(s.beta_prime, 2.0f / 3, 1e-6);

    /* Nothing in common: beta 0, cfo = alpha cci, clamped at 1. */
    kvt_reuse_score(&v, &D, 1, 1.0f, NULL, &s);
    assert_float_equal(s.beta, 0.0f, 1e-6);
    assert_float_equal(s.cfo, cci, 1e-6);
    kvt_reuse_score(&v, &D, 1, 0.5f, NULL, &s);
    assert_float_equal(s.cfo, 0.5f * cci, 1e-6);
    kvt_reuse_score(&v, &D, 1, 100.0f, NULL, &s);
    assert_float_equal(s.cfo, 1.0f, 1e-6);
    assert_int_equal(s.n_recompute, 10);

    /* The 3 tokens with most attention to the old prefix: 7 (0.9), 1 and 3 (0.8, lower first). */
    uint32_t idx[3];
    kvt_reuse_tokens(&v, 3, idx);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    assert_int_equal(idx[2], 7);

    /* What it teaches the namespace: its cci and 0.6 / 3 per prefix passage. */
    double seen_cci, seen_mass;
    assert_int_equal(kvt_reuse_observe(&v, &seen_cci, &seen_mass), 1);
    assert_float_equal(seen_cci, cci, 1e-6);
    assert_float_equal(seen_mass, 0.2, 1e-6);
}

static void test_no_prefix_and_no_attention(void **state)
{
    (void)state;
    /* Computed with no passage before it: nothing of an old prefix to lose, and no evidence that
     * it attends across passages (cci 0). */
    float rows[] = {0.6f, 0.7f};
    float tokens[2] = {0, 0};
    struct kvt_version v = make(NULL, 0, rows, tokens, 2);
    struct kvt_reuse_score s;
    kvt_reuse_score(&v, &A, 1, 1.0f, NULL, &s);
    assert_float_equal(s.beta, 1.0f, 1e-6);
    assert_float_equal(s.cci, 0.0f, 1e-6);
    assert_int_equal(s.n_recompute, 0);
    double cci, mass;
    assert_int_equal(kvt_reuse_observe(&v, &cci, &mass), 0);
    /* What the namespace's other versions showed stands in: A would draw 0.1 of its attention
     * (beta 0 / 0.1), and passages look across by 0.4 (cfo 0.4 of 2 tokens). */
    const struct kvt_reuse_prior prior = {.cci = 0.4, .passage_mass = 0.1, .n = 3};
    kvt_reuse_score(&v, &A, 1, 1.0f, &prior, &s);
    assert_int_equal(s.n_novel, 1);
    assert_float_equal(s.beta, 0.0f, 1e-6);
    assert_float_equal(s.cci, 0.4f, 1e-6);
    assert_float_equal(s.cfo, 0.4f, 1e-6);
    assert_int_equal(s.n_recompute, 1);
    /* At the start again (no passage before it): nothing it never saw, nothing to recompute. */
    kvt_reuse_score(&v, NULL, 0, 1.0f, &prior, &s);
    assert_float_equal(s.beta, 1.0f, 1e-6);
    assert_int_equal(s.n_recompute, 0);
    /* An unobserved prior (n 0) is no evidence. */
    const struct kvt_reuse_prior none = {.cci = 0.4, .passage_mass = 0.1, .n = 0};
    kvt_reuse_score(&v, &A, 1, 1.0f, &none, &s);
    assert_int_equal(s.n_recompute, 0);
    /* All-zero rows (attention entirely elsewhere): cci 0, not NaN. */
    const struct kvt_key prefix[] = {A};
    float zero[4] = {0};
    v = make(prefix, 1, zero, tokens, 2);
    kvt_reuse_score(&v, &B, 1, 1.0f, NULL, &s);
    assert_float_equal(s.cci, 0.0f, 1e-6);
    assert_float_equal(s.beta, 1.0f, 1e-6); /* no attention to lose */
    assert_int_equal(s.n_recompute, 0);
}

/* gamma against a brute-force count of discordant pairs, on random orders of up to 200 of 256
 * passages (the new prefix holding some of the old ones, shuffled, among others). */
static void test_gamma_matches_brute_force(void **state)
{
    (void)state;
    static struct kvt_key old[256], fresh[256];
    static float rows[2 * 257], tokens[1];
    uint64_t x = 99;
    for (int trial = 0; trial < 200; trial++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t np = 2 + (uint32_t)(x >> 33) % 199, nn = 0;
        for (uint32_t j = 0; j < np; j++) {
            old[j] = (struct kvt_key){1000 + j, (uint64_t)trial};
            rows[j] = rows[257 + j] = 0.5f / (float)np;
        }
        rows[np] = rows[257 + np] = 0.25f;
        /* The new prefix: every third old passage dropped, the rest shuffled, strangers mixed in.
         */
        for (uint32_t j = 0; j < np; j++)
            if (j % 3)
                fresh[nn++] = old[j];
        for (uint32_t j = nn; j > 1; j--) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t r = (uint32_t)(x >> 33) % j;
            struct kvt_key t = fresh[j - 1];
            fresh[j - 1] = fresh[r];
            fresh[r] = t;
        }
        uint32_t strangers = 0;
        for (; nn < 255 && strangers < 20; strangers++)
            fresh[nn++] = (struct kvt_key){5, 5 + strangers};
        /* Rows are per layer of np + 1 entries: lay the two layers out contiguously. */
        static float packed[2 * 257];
        for (uint32_t l = 0; l < 2; l++)
            for (uint32_t j = 0; j <= np; j++)
                packed[l * (np + 1) + j] = rows[l * 257 + j];
        struct kvt_version v = make(old, np, packed, tokens, 1);
        struct kvt_reuse_score s;
        kvt_reuse_score(&v, fresh, nn, 1.0f, NULL, &s);
        /* Brute force: positions of the common ones in the new prefix, in old order. */
        int64_t at[256];
        uint32_t m = 0;
        for (uint32_t j = 0; j < np; j++)
            for (uint32_t i = 0; i < nn; i++)
                if (fresh[i].lo == old[j].lo && fresh[i].hi == old[j].hi) {
                    at[m++] = i;
                    break;
                }
        uint64_t disc = 0;
        for (uint32_t a = 0; a < m; a++)
            for (uint32_t b = a + 1; b < m; b++)
                disc += at[a] > at[b];
        double want = m > 1 ? (double)disc / ((double)m * (m - 1) / 2) : 0;
        assert_float_equal(s.gamma, want, 1e-6);
        assert_float_equal(s.beta, (double)m / (np + strangers), 1e-5); /* equal masses */
        assert_int_equal(s.n_novel, strangers);
    }
}

static void test_choice(void **state)
{
    (void)state;
    struct kvt_reuse_score lo = {.cfo = 0.1f}, hi = {.cfo = 0.2f};
    assert_true(kvt_reuse_better(&lo, 5, 1, &hi, 7, 9, 7));
    assert_false(kvt_reuse_better(&hi, 7, 9, &lo, 5, 1, 7));
    struct kvt_reuse_score a = {.cfo = 0.1f}, b = {.cfo = 0.1f};
    assert_true(kvt_reuse_better(&a, 7, 1, &b, 5, 9, 7)); /* at the requested start */
    assert_false(kvt_reuse_better(&a, 5, 1, &b, 7, 9, 7));
    assert_true(kvt_reuse_better(&a, 5, 9, &b, 6, 1, 7)); /* then the more recent */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_prefix_recomputes_nothing),
        cmocka_unit_test(test_formulas),
        cmocka_unit_test(test_no_prefix_and_no_attention),
        cmocka_unit_test(test_gamma_matches_brute_force),
        cmocka_unit_test(test_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
