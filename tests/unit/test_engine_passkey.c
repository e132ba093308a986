/*
 * The passkey test's pieces (passkey.h): keys in range and reproducible from the seed, depths
 * spread over 10-90%, the answer's first integer, and the prompt builder on the real tokenizer
 * (the key line once, at the intended depth; the opening first and the question last; within the
 * target length; the key's tokens continue the prompt's tokens as tokenizing the whole text
 * would); one trial, right, and the same text scored against another key (wrong, its
 * log-probability from the teacher-forced rerun). The command runs in tests/engine/test_cli.sh.
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
#include "engine/passkey.h"
#include "engine/quant.h"
#include "tests/engine/fixture.h"

static void test_keys(void **state)
{
    (void)state;
    uint64_t a = 42, b = 42, c = 43;
    uint32_t lo = UINT32_MAX, hi = 0;
    int differ = 0;
    for (int i = 0; i < 20000; i++) {
        uint32_t k = kvt_eng_passkey_key(&a);
        assert_int_equal(k, kvt_eng_passkey_key(&b));
        differ += k != kvt_eng_passkey_key(&c);
        assert_true(k >= 1 && k <= KVT_ENG_PASSKEY_KEY_MAX);
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    assert_true(differ > 19000);
    /* 20,000 uniform draws reach both ends of [1, 50000] within 50. */
    assert_true(lo <= 50 && hi > KVT_ENG_PASSKEY_KEY_MAX - 50);
}

static void test_depths(void **state)
{
    (void)state;
    assert_true(kvt_eng_passkey_depth(0, 1) == 0.5);
    assert_true(fabs(kvt_eng_passkey_depth(0, 3) - 0.1) < 1e-12);
    assert_true(fabs(kvt_eng_passkey_depth(1, 3) - 0.5) < 1e-12);
    assert_true(fabs(kvt_eng_passkey_depth(2, 3) - 0.9) < 1e-12);
    for (size_t i = 1; i < 20; i++)
        assert_true(kvt_eng_passkey_depth(i, 20) > kvt_eng_passkey_depth(i - 1, 20));
    assert_true(fabs(kvt_eng_passkey_depth(19, 20) - 0.9) < 1e-12);
}

static void test_first_int(void **state)
{
    (void)state;
    uint64_t v = 0;
    const char a[] = " 37079.\nThe grass";
    assert_int_equal(kvt_eng_passkey_first_int(a, strlen(a), &v), 1);
    assert_int_equal(v, 37079);
    const char b[] = "**12** and 34";
    assert_int_equal(kvt_eng_passkey_first_int(b, strlen(b), &v), 1);
    assert_int_equal(v, 12);
    const char c[] = "not a number.";
    assert_int_equal(kvt_eng_passkey_first_int(c, strlen(c), &v), 0);
    /* Only len bytes count. */
    assert_int_equal(kvt_eng_passkey_first_int(a, 1, &v), 0);
    const char d[] = "key 123456789012345678901234567890";
    assert_int_equal(kvt_eng_passkey_first_int(d, strlen(d), &v), 1);
    assert_true(v > KVT_ENG_PASSKEY_KEY_MAX);
}

struct pk_state {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
};

static int setup(void **state)
{
    static struct pk_state st;
    char err[256];
    *state = NULL;
    kvt_eng_quant_init(0);
    if (!engine_test_have_model())
        return 0;
    if (kvt_eng_model_load(engine_test_model_path(), &st.m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (kvt_eng_pool_create(0, &st.pool))
        return -1;
    *state = &st;
    return 0;
}

static int teardown(void **state)
{
    struct pk_state *st = *state;
    if (st) {
        kvt_eng_pool_destroy(st->pool);
        kvt_eng_model_free(st->m);
    }
    return 0;
}

static int32_t *encode(const struct kvt_eng_tokenizer *tok, const char *s, size_t len, size_t *n)
{
    size_t need = 0;
    int rc = kvt_eng_tok_encode(tok, s, len, 0, NULL, 0, &need);
    assert_true(rc == 0 || rc == -ENOSPC);
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    assert_non_null(ids);
    assert_int_equal(kvt_eng_tok_encode(tok, s, len, 0, ids, need, n), 0);
    return ids;
}

static char *decode_all(const struct kvt_eng_tokenizer *tok, const int32_t *ids, size_t n,
                        size_t *len)
{
    char *s = malloc(n * 64 + 1);
    size_t l = 0;
    assert_non_null(s);
    for (size_t i = 0; i < n; i++) {
        int k = kvt_eng_tok_decode(tok, ids[i], 0, s + l, 64);
        assert_true(k >= 0);
        l += (size_t)k;
    }
    s[l] = '\0';
    *len = l;
    return s;
}

static size_t count_str(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Occurrences of ids[0..m) in hay[0..n), and where the last one starts. */
static size_t count_ids(const int32_t *hay, size_t n, const int32_t *ids, size_t m, size_t *at)
{
    size_t c = 0;
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, ids, m * sizeof(int32_t)) == 0) {
            c++;
            *at = i;
        }
    return c;
}

static void check_prompt(const struct kvt_eng_tokenizer *tok, size_t target, double depth,
                         uint32_t key)
{
    struct kvt_eng_passkey_prompt p;
    assert_int_equal(kvt_eng_passkey_build(tok, target, depth, key, &p), 0);
    /* Within the target, short of it by less than one filler (22 tokens). */
    assert_true(p.n <= target && p.n + 30 > target);
    assert_int_equal(p.fillers_before, (size_t)llround(depth * (double)p.fillers));

    /* The key line, once, where the prompt says. */
    char line[128];
    snprintf(line, sizeof(line), "The pass key is %u. Remember it. %u is the pass key.", key, key);
    size_t n_line, at = 0;
    int32_t *line_ids = encode(tok, line, strlen(line), &n_line);
    assert_int_equal(p.key_len, n_line);
    assert_int_equal(count_ids(p.ids, p.n, line_ids, n_line, &at), 1);
    assert_int_equal(at, p.key_pos);
    double key_depth = (double)p.key_pos / (double)p.n;
    printf("%zu tokens, depth %.2f: key line at token %zu (%.3f)\n", p.n, depth, p.key_pos,
           key_depth);
    assert_true(fabs(key_depth - depth) < 0.05);

    /* The opening first, the question last. */
    size_t n_open, n_q;
    int32_t *open =
        encode(tok, KVT_ENG_PASSKEY_OPENING "\n", strlen(KVT_ENG_PASSKEY_OPENING) + 1, &n_open);
    int32_t *q = encode(tok, KVT_ENG_PASSKEY_QUESTION, strlen(KVT_ENG_PASSKEY_QUESTION), &n_q);
    assert_memory_equal(p.ids, open, n_open * sizeof(int32_t));
    assert_int_equal(p.question_pos + n_q, p.n);
    assert_memory_equal(p.ids + p.question_pos, q, n_q * sizeof(int32_t));

    /* As text: the key appears twice, both in its line; the filler is the one sentence. */
    size_t len;
    char *text = decode_all(tok, p.ids, p.n, &len);
    char ks[16];
    snprintf(ks, sizeof(ks), "%u", key);
    assert_int_equal(count_str(text, ks), 2);
    assert_int_equal(count_str(text, "pass key is"), 2); /* the key line and the question */
    assert_int_equal(count_str(text, KVT_ENG_PASSKEY_FILLER), p.fillers);

    /* Scoring " K" after the prompt uses the tokens that tokenizing the whole text gives. */
    char *more = malloc(len + 16);
    int ml = snprintf(more, len + 16, "%s %u", text, key);
    size_t n_more, n_k;
    int32_t *all = encode(tok, more, (size_t)ml, &n_more);
    snprintf(ks, sizeof(ks), " %u", key);
    int32_t *k_ids = encode(tok, ks, strlen(ks), &n_k);
    assert_true(n_k >= 2 && n_k <= KVT_ENG_PASSKEY_KEY_TOKENS_MAX);
    assert_int_equal(n_more, p.n + n_k);
    assert_memory_equal(all, p.ids, p.n * sizeof(int32_t));
    assert_memory_equal(all + p.n, k_ids, n_k * sizeof(int32_t));

    free(k_ids);
    free(all);
    free(more);
    free(text);
    free(q);
    free(open);
    free(line_ids);
    kvt_eng_passkey_prompt_free(&p);
}

static void test_prompt_builder(void **state)
{
    struct pk_state *st = *state;
    if (!st)
        skip();
    check_prompt(st->m->tok, 1024, 0.1, 37079);
    check_prompt(st->m->tok, 1024, 0.5, 7);
    check_prompt(st->m->tok, 1024, 0.9, 50000);
    check_prompt(st->m->tok, 8000, 0.3, 12345);
    struct kvt_eng_passkey_prompt p;
    assert_int_equal(kvt_eng_passkey_build(st->m->tok, 40, 0.5, 1, &p), -EINVAL);
    assert_int_equal(kvt_eng_passkey_build(st->m->tok, 1024, 1.5, 1, &p), -EINVAL);
    assert_int_equal(kvt_eng_passkey_build(st->m->tok, 1024, 0.5, 0, &p), -EINVAL);
    assert_int_equal(kvt_eng_passkey_build(st->m->tok, 1024, 0.5, 50001, &p), -EINVAL);
}

/* A trial on resident: right, with the key's log-probability read off the answer. Then the same
 * text scored against another key: wrong, and that key's log-probability comes from the
 * teacher-forced rerun, far below the real key's. */
static void test_trial(void **state)
{
    struct pk_state *st = *state;
    if (!st)
        skip();
    struct kvt_eng_passkey_prompt p;
    struct kvt_eng_passkey_result r, w;
    assert_int_equal(kvt_eng_passkey_build(st->m->tok, 256, 0.5, 4242, &p), 0);
    struct kvt_eng_session_config sc = {
        .mode = KVT_ENG_MODE_RESIDENT, .ctx_max = 256 + 32, .batch_max = 64};
    struct kvt_eng_session *s;
    assert_int_equal(kvt_eng_session_create(st->m, st->pool, &sc, &s), 0);
    assert_int_equal(kvt_eng_passkey_trial(s, &p, &r), 0);
    printf("answer \"%s\", log p(key) %.4f\n", r.answer_text, r.key_logprob);
    assert_true(r.correct && r.found && r.answer == 4242 && !r.logprob_rerun);
    assert_true(r.key_logprob < 0.0 && r.key_logprob > -3.0);
    assert_int_equal(r.prompt_tokens, p.n);

    p.key = 4243;
    assert_int_equal(kvt_eng_passkey_trial(s, &p, &w), 0);
    printf("answer \"%s\", log p(other key) %.4f\n", w.answer_text, w.key_logprob);
    assert_true(!w.correct && w.found && w.answer == 4242 && w.logprob_rerun);
    assert_true(w.key_logprob < r.key_logprob - 3.0);
    assert_string_equal(w.answer_text, r.answer_text);
    kvt_eng_session_destroy(s);
    kvt_eng_passkey_prompt_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),      cmocka_unit_test(test_depths),
        cmocka_unit_test(test_first_int), cmocka_unit_test(test_prompt_builder),
        cmocka_unit_test(test_trial),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
