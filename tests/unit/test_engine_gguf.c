/*
 * GGUF reader: a small image built in memory (metadata of several types, two tensors, custom
 * alignment) parses to the right values and pointers; truncated or corrupt images are refused at
 * every cut; and the real model, when fetched, has the tensors and types the engine expects.
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
#include "tests/engine/fixture.h"

struct img {
    uint8_t buf[4096];
    size_t n;
};

static void put(struct img *m, const void *p, size_t n)
{
    assert_true(m->n + n <= sizeof(m->buf));
    memcpy(m->buf + m->n, p, n);
    m->n += n;
}
static void put_u32(struct img *m, uint32_t v)
{
    put(m, &v, 4);
}
static void put_u64(struct img *m, uint64_t v)
{
    put(m, &v, 8);
}
static void put_str(struct img *m, const char *s)
{
    put_u64(m, strlen(s));
    put(m, s, strlen(s));
}

/* Builds: 5 metadata keys, tensor "a" (F32, 4 values) and "b" (Q4_1, 32 x 2), alignment 64. */
static void build(struct img *m)
{
    memset(m, 0, sizeof(*m));
    put(m, "GGUF", 4);
    put_u32(m, 3);
    put_u64(m, 2); /* tensors */
    put_u64(m, 5); /* kvs */
    put_str(m, "general.architecture");
    put_u32(m, KVT_GGUF_STRING);
    put_str(m, "llama");
    put_str(m, "llama.block_count");
    put_u32(m, KVT_GGUF_U32);
    put_u32(m, 30);
    put_str(m, "llama.rope.freq_base");
    put_u32(m, KVT_GGUF_F32);
    float f = 100000.0f;
    put(m, &f, 4);
    put_str(m, "tokenizer.ggml.merges");
    put_u32(m, KVT_GGUF_ARRAY);
    put_u32(m, KVT_GGUF_STRING);
    put_u64(m, 2);
    put_str(m, "a b");
    put_str(m, "ab c");
    put_str(m, "general.alignment");
    put_u32(m, KVT_GGUF_U32);
    put_u32(m, 64);

    put_str(m, "a");
    put_u32(m, 1);
    put_u64(m, 4);
    put_u32(m, KVT_ENG_TYPE_F32);
    put_u64(m, 0);
    put_str(m, "b");
    put_u32(m, 2);
    put_u64(m, 32);
    put_u64(m, 2);
    put_u32(m, KVT_ENG_TYPE_Q4_1);
    put_u64(m, 64); /* after "a", aligned */

    while (m->n % 64)
        m->buf[m->n++] = 0;
    float a[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    put(m, a, sizeof(a));
    uint8_t pad[48] = {0};
    put(m, pad, sizeof(pad));
    uint8_t q[40];
    for (int i = 0; i < 40; i++)
        q[i] = (uint8_t)i;
    put(m, q, sizeof(q));
}

static void test_parse_small_image(void **state)
{
    (void)state;
    struct img m;
    build(&m);
    struct kvt_eng_gguf *g;
    assert_int_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), 0);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kvs, 5);
    assert_int_equal(g->n_tensors, 2);

    struct kvt_eng_str s;
    assert_int_equal(kvt_eng_gguf_str(g, "general.architecture", &s), 0);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.ptr, "llama", 5);
    uint32_t u;
    assert_int_equal(kvt_eng_gguf_u32(g, "llama.block_count", &u), 0);
    assert_int_equal(u, 30);
    float f;
    assert_int_equal(kvt_eng_gguf_f32(g, "llama.rope.freq_base", &f), 0);
    assert_true(f == 100000.0f);
    assert_int_equal(kvt_eng_gguf_u32(g, "missing", &u), -ENOENT);
    assert_int_equal(kvt_eng_gguf_u32(g, "general.architecture", &u), -EINVAL);

    const struct kvt_eng_gguf_kv *kv = kvt_eng_gguf_find(g, "tokenizer.ggml.merges");
    assert_non_null(kv);
    assert_int_equal(kv->count, 2);
    struct kvt_eng_str arr[2];
    assert_int_equal(kvt_eng_gguf_str_array(g, kv, arr), 0);
    assert_int_equal(arr[1].len, 4);
    assert_memory_equal(arr[1].ptr, "ab c", 4);

    const struct kvt_eng_tensor *a = kvt_eng_gguf_tensor(g, "a");
    const struct kvt_eng_tensor *b = kvt_eng_gguf_tensor(g, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->type, KVT_ENG_TYPE_F32);
    assert_int_equal(a->nbytes, 16);
    assert_int_equal(((uintptr_t)a->data - (uintptr_t)m.buf) % 64, 0);
    assert_true(((const float *)a->data)[3] == 4.0f);
    assert_int_equal(b->ne[0], 32);
    assert_int_equal(b->ne[1], 2);
    assert_int_equal(b->row_bytes, 20);
    assert_int_equal(b->nbytes, 40);
    assert_int_equal((const uint8_t *)b->data - (const uint8_t *)a->data, 64);
    assert_int_equal(((const uint8_t *)b->data)[39], 39);
    assert_null(kvt_eng_gguf_tensor(g, "c"));
    kvt_eng_gguf_close(g);
}

static void test_every_truncation_is_refused(void **state)
{
    (void)state;
    struct img m;
    build(&m);
    for (size_t n = 0; n < m.n; n++) {
        struct kvt_eng_gguf *g = NULL;
        int rc = kvt_eng_gguf_parse(m.buf, n, &g);
        assert_int_not_equal(rc, 0);
        assert_null(g);
    }
}

static void test_corrupt_images(void **state)
{
    (void)state;
    struct img m;
    struct kvt_eng_gguf *g = NULL;
    build(&m);
    m.buf[0] = 'X';
    assert_int_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), -EINVAL);
    build(&m);
    m.buf[4] = 9; /* version */
    assert_int_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), -EPROTONOSUPPORT);
    build(&m);
    uint64_t huge = UINT64_MAX;
    memcpy(m.buf + 16, &huge, 8); /* metadata count */
    assert_int_not_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), 0);
    build(&m);
    memcpy(m.buf + 8, &huge, 8); /* tensor count */
    assert_int_not_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), 0);
    /* A string length pointing past the end. */
    build(&m);
    memcpy(m.buf + 24, &huge, 8);
    assert_int_not_equal(kvt_eng_gguf_parse(m.buf, m.n, &g), 0);
    assert_null(g);
}

static void test_real_model(void **state)
{
    (void)state;
    if (!engine_test_have_model())
        skip();
    struct kvt_eng_gguf *g;
    assert_int_equal(kvt_eng_gguf_open(engine_test_model_path(), &g), 0);
    assert_int_equal(g->n_tensors, 272);
    size_t by_type[16] = {0};
    for (size_t i = 0; i < g->n_tensors; i++) {
        assert_true(g->tensors[i].type < 16);
        by_type[g->tensors[i].type]++;
    }
    assert_int_equal(by_type[KVT_ENG_TYPE_F32], 61);
    assert_int_equal(by_type[KVT_ENG_TYPE_Q4_1], 210);
    assert_int_equal(by_type[KVT_ENG_TYPE_Q8_0], 1);
    const struct kvt_eng_tensor *e = kvt_eng_gguf_tensor(g, "token_embd.weight");
    assert_non_null(e);
    assert_int_equal(e->ne[0], 576);
    assert_int_equal(e->ne[1], 49152);
    struct kvt_eng_str pre;
    assert_int_equal(kvt_eng_gguf_str(g, "tokenizer.ggml.pre", &pre), 0);
    assert_memory_equal(pre.ptr, "smollm", 6);
    uint32_t u;
    assert_int_equal(kvt_eng_gguf_u32(g, "llama.attention.head_count_kv", &u), 0);
    assert_int_equal(u, 3);
    kvt_eng_gguf_close(g);
    assert_int_equal(kvt_eng_gguf_open("/nonexistent/model.gguf", &g), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_small_image),
        cmocka_unit_test(test_every_truncation_is_refused),
        cmocka_unit_test(test_corrupt_images),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
