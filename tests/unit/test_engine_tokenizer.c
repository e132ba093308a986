/*
 * Tokenizer: the ids of the fixture text equal llama.cpp's exactly, decoding gives the text back
 * byte for byte, and the pre-tokenizer's rules (digits one by one, contractions, whitespace runs,
 * control tokens only on request, invalid UTF-8) behave like llama.cpp's.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "tests/engine/fixture.h"

struct tok_state {
    struct kvt_eng_gguf *g;
    struct kvt_eng_tokenizer *t;
};

static int setup(void **state)
{
    static struct tok_state ts;
    if (!engine_test_have_model()) {
        *state = NULL;
        return 0;
    }
    if (kvt_eng_gguf_open(engine_test_model_path(), &ts.g) || kvt_eng_tok_create(ts.g, &ts.t))
        return -1;
    *state = &ts;
    return 0;
}

static int teardown(void **state)
{
    struct tok_state *ts = *state;
    if (ts) {
        kvt_eng_tok_destroy(ts->t);
        kvt_eng_gguf_close(ts->g);
    }
    return 0;
}

static size_t encode(const struct kvt_eng_tokenizer *t, const char *s, int special, int32_t *out,
                     size_t max)
{
    size_t n = 0;
    assert_int_equal(kvt_eng_tok_encode(t, s, strlen(s), special, out, max, &n), 0);
    return n;
}

static char *decode_all(const struct kvt_eng_tokenizer *t, const int32_t *ids, size_t n,
                        size_t *len)
{
    size_t cap = n * 64 + 1, l = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        int k = kvt_eng_tok_decode(t, ids[i], 1, out + l, cap - l);
        assert_true(k >= 0);
        l += (size_t)k;
    }
    *len = l;
    return out;
}

static void test_fixture_ids_match_llama_cpp(void **state)
{
    struct tok_state *ts = *state;
    struct engine_fixture fx;
    if (!ts)
        skip();
    assert_int_equal(engine_fixture_load(&fx), 0);
    size_t n = 0;
    int32_t *ids = malloc(fx.n_ids * 2 * sizeof(int32_t));
    assert_int_equal(kvt_eng_tok_encode(ts->t, fx.text, fx.text_len, 0, ids, fx.n_ids * 2, &n), 0);
    assert_int_equal(n, fx.n_ids);
    assert_memory_equal(ids, fx.ids, n * sizeof(int32_t));

    size_t len;
    char *back = decode_all(ts->t, ids, n, &len);
    assert_int_equal(len, fx.text_len);
    assert_memory_equal(back, fx.text, len);
    free(back);
    free(ids);
    engine_fixture_free(&fx);
}

static void test_pre_tokenizer_rules(void **state)
{
    struct tok_state *ts = *state;
    int32_t ids[64];
    char piece[64];
    if (!ts)
        skip();
    /* Digits are split one by one, and the space before a digit stands alone. */
    size_t n = encode(ts->t, "in 2024", 0, ids, 64);
    assert_int_equal(n, 6);
    const char *want[] = {"in", " ", "2", "0", "2", "4"};
    for (size_t i = 0; i < n; i++) {
        int l = kvt_eng_tok_decode(ts->t, ids[i], 0, piece, sizeof(piece));
        assert_int_equal(l, (int)strlen(want[i]));
        assert_memory_equal(piece, want[i], (size_t)l);
    }
    /* Contractions split off; a whitespace run keeps its last space for the next word. */
    n = encode(ts->t, "it's   here", 0, ids, 64);
    const char *want2[] = {"it", "'s", "  ", " here"};
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        int l = kvt_eng_tok_decode(ts->t, ids[i], 0, piece, sizeof(piece));
        assert_int_equal(l, (int)strlen(want2[i]));
        assert_memory_equal(piece, want2[i], (size_t)l);
    }
    assert_int_equal(encode(ts->t, "", 0, ids, 64), 0);
}

static void test_control_tokens_only_on_request(void **state)
{
    struct tok_state *ts = *state;
    int32_t ids[64];
    if (!ts)
        skip();
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    size_t n = encode(ts->t, s, 1, ids, 64);
    assert_true(n >= 4);
    assert_int_equal(ids[0], kvt_eng_tok_find(ts->t, "<|im_start|>", 12));
    assert_int_equal(ids[n - 1], kvt_eng_tok_eos(ts->t));
    assert_true(kvt_eng_tok_is_control(ts->t, ids[0]));
    /* Without parsing, the same text is plain bytes. */
    size_t m = encode(ts->t, s, 0, ids, 64);
    assert_true(m > n);
    for (size_t i = 0; i < m; i++)
        assert_false(kvt_eng_tok_is_control(ts->t, ids[i]));
    /* Control tokens decode to nothing unless asked. */
    char piece[32];
    assert_int_equal(kvt_eng_tok_decode(ts->t, kvt_eng_tok_eos(ts->t), 0, piece, 32), 0);
    assert_int_equal(kvt_eng_tok_decode(ts->t, kvt_eng_tok_eos(ts->t), 1, piece, 32), 10);
}

static void test_round_trip_odd_input(void **state)
{
    struct tok_state *ts = *state;
    int32_t ids[256];
    size_t len;
    if (!ts)
        skip();
    const char *texts[] = {
        "caf\xc3\xa9 na\xc3\xafve \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80!",
        "tabs\t\tand\r\nnewlines\n\n\n  end  ",
        "MiXeD CaSe WORDS's and 'quotes' -- dashes ___",
    };
    for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
        size_t n = encode(ts->t, texts[k], 0, ids, 256);
        char *back = decode_all(ts->t, ids, n, &len);
        assert_int_equal(len, strlen(texts[k]));
        assert_memory_equal(back, texts[k], len);
        free(back);
    }
    /* Invalid UTF-8 becomes U+FFFD, as in llama.cpp. */
    size_t n = encode(ts->t,
                      "a\xff"
                      "b",
                      0, ids, 256);
    char *back = decode_all(ts->t, ids, n, &len);
    assert_int_equal(len, 5);
    assert_memory_equal(back,
                        "a\xef\xbf\xbd"
                        "b",
                        5);
    free(back);
    /* A too-small output reports the size it needs. */
    size_t need = 0;
    assert_int_equal(kvt_eng_tok_encode(ts->t, "hello world", 11, 0, ids, 1, &need), -ENOSPC);
    assert_int_equal(need, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_ids_match_llama_cpp),
        cmocka_unit_test(test_pre_tokenizer_rules),
        cmocka_unit_test(test_control_tokens_only_on_request),
        cmocka_unit_test(test_round_trip_odd_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
