/*
 * Unit tests for the shuffle + lz4/zstd codec: round trips for every algorithm and shuffle width
 * (including lengths that are not a multiple of the width), the raw fallback for incompressible
 * data, the minimum-saving rule, rejection of corrupt or oversized input, and stored bytes that
 * do not depend on which kernel variant ran the shuffle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/kernels.h"
#include "kvtier/errors.h"
#include "tiers/codec.h"

#define BUF_BYTES (256u * 1024u)

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* fp16-like data: random mantissas, exponents confined to a narrow range, as in KV tensors. */
static void fill_kv_like(unsigned char *b, size_t len, uint64_t seed)
{
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint64_t r = rng_next(&seed);
        uint16_t h = (uint16_t)((r & 0x3ff) | ((12 + (r >> 10) % 4) << 10) | ((r >> 20) & 1) << 15);
        b[i] = (unsigned char)h;
        b[i + 1] = (unsigned char)(h >> 8);
    }
    if (len & 1)
        b[len - 1] = 0x5a;
}

static void fill_random(unsigned char *b, size_t len, uint64_t seed)
{
    for (size_t i = 0; i < len; i++)
        b[i] = (unsigned char)rng_next(&seed);
}

static struct kvt_codec *make_codec(enum kvt_codec_algo algo, uint32_t width, double saving)
{
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;

    kvt_codec_config_init(&cfg);
    cfg.algo = algo;
    cfg.elem_bytes = width;
    cfg.min_saving_ratio = saving;
    cfg.input_bytes_max = BUF_BYTES;
    assert_int_equal(kvt_codec_create(&cfg, &c), 0);
    return c;
}

static void test_shuffle_roundtrip(void **state)
{
    (void)state;
    unsigned char src[103], mid[103], back[103];
    fill_random(src, sizeof(src), 7);
    for (uint32_t w = 2; w <= 4; w += 2) {
        kvt_codec_shuffle(src, sizeof(src), w, mid);
        assert_int_equal(mid[0], src[0]);
        assert_int_equal(mid[sizeof(src) / w], src[1]);
        kvt_codec_unshuffle(mid, sizeof(src), w, back);
        assert_memory_equal(src, back, sizeof(src));
    }
}

/* The vectorised transposes must agree byte for byte with the obvious definition. */
static void test_shuffle_matches_reference(void **state)
{
    (void)state;
    enum { MAXLEN = 4099 };
    static unsigned char src[MAXLEN], got[MAXLEN], want[MAXLEN], back[MAXLEN];

    fill_random(src, MAXLEN, 11);
    for (size_t len = 0; len <= MAXLEN; len += (len < 300 ? 1 : 397)) {
        for (uint32_t w = 2; w <= 4; w += 2) {
            size_t n = len / w;
            for (size_t i = 0; i < n; i++)
                for (uint32_t b = 0; b < w; b++)
                    want[b * n + i] = src[i * w + b];
            memcpy(want + n * w, src + n * w, len - n * w);
            kvt_codec_shuffle(src, len, w, got);
            assert_memory_equal(got, want, len);
            kvt_codec_unshuffle(got, len, w, back);
            assert_memory_equal(back, src, len);
        }
    }
}

/* The shuffle runs on whichever kernel variant is active (kernels/kernels.h): what one CPU
 * stores, any other must read. Encode under every variant this CPU has, check the stored bytes
 * are identical, and decode each under every variant. */
static void test_shuffle_same_bytes_every_variant(void **state)
{
    (void)state;
    enum { LEN = 65536 + 37 };
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = 0;
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++)
        if ((t[count] = kvt_kernels_variant((enum kvt_kernels_variant)v)) != NULL)
            count++;
    unsigned char *src = malloc(LEN), *dec = malloc(LEN);
    unsigned char *enc[KVT_KERNELS_VARIANT_COUNT];
    size_t out[KVT_KERNELS_VARIANT_COUNT];
    assert_non_null(src);
    assert_non_null(dec);
    fill_kv_like(src, LEN, 77);
    for (uint32_t w = 2; w <= 4; w += 2) {
        struct kvt_codec *c = make_codec(KVT_CODEC_ZSTD, w, 0.01);
        for (size_t v = 0; v < count; v++) {
            uint32_t id = 0;
            enc[v] = malloc(LEN);
            assert_non_null(enc[v]);
            assert_int_equal(kvt_kernels_force(t[v]->variant), 0);
            assert_int_equal(kvt_codec_encode(c, src, LEN, 0, enc[v], LEN, &out[v], &id), 0);
            assert_int_equal(id, KVT_CODEC_ID(KVT_CODEC_ZSTD, w));
            assert_int_equal(out[v], out[0]);
            assert_memory_equal(enc[v], enc[0], out[0]);
        }
        for (size_t v = 0; v < count; v++) {
            assert_int_equal(kvt_kernels_force(t[v]->variant), 0);
            for (size_t e = 0; e < count; e++) {
                memset(dec, 0, LEN);
                assert_int_equal(
                    kvt_codec_decode(c, KVT_CODEC_ID(KVT_CODEC_ZSTD, w), enc[e], out[e], dec, LEN),
                    0);
                assert_memory_equal(dec, src, LEN);
            }
        }
        for (size_t v = 0; v < count; v++)
            free(enc[v]);
        kvt_codec_destroy(c);
    }
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_AUTO), 0);
    free(src);
    free(dec);
}

static void roundtrip_all(enum kvt_codec_algo algo, uint32_t width)
{
    static const size_t lens[] = {0, 1, 63, 64, 4095, 4096, 65537, BUF_BYTES};
    struct kvt_codec *c = make_codec(algo, width, 0.10);
    unsigned char *src = malloc(BUF_BYTES), *enc = malloc(BUF_BYTES), *dec = malloc(BUF_BYTES);
    assert_non_null(src);
    assert_non_null(enc);
    assert_non_null(dec);

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t len = lens[i], out = 0;
        uint32_t id = 99;
        fill_kv_like(src, len, 1000 + i);
        assert_int_equal(kvt_codec_encode(c, src, len, 0, enc, BUF_BYTES, &out, &id), 0);
        assert_true(out <= len);
        if (algo == KVT_CODEC_NONE || len < 4096)
            assert_true(id == KVT_CODEC_RAW || len >= 64);
        if (id != KVT_CODEC_RAW) {
            assert_int_equal(KVT_CODEC_ID_ALGO(id), algo);
            assert_int_equal(KVT_CODEC_ID_WIDTH(id), width == 1 ? 0 : width);
            assert_true(out <= len - len / 10);
        }
        memset(dec, 0xee, BUF_BYTES);
        assert_int_equal(kvt_codec_decode(c, id, enc, out, dec, len), 0);
        assert_memory_equal(src, dec, len);
    }
    free(src);
    free(enc);
    free(dec);
    kvt_codec_destroy(c);
}

static void test_roundtrip_lz4(void **state)
{
    (void)state;
    roundtrip_all(KVT_CODEC_LZ4, 0);
    roundtrip_all(KVT_CODEC_LZ4, 2);
    roundtrip_all(KVT_CODEC_LZ4, 4);
}

static void test_roundtrip_zstd(void **state)
{
    (void)state;
    roundtrip_all(KVT_CODEC_ZSTD, 0);
    roundtrip_all(KVT_CODEC_ZSTD, 2);
    roundtrip_all(KVT_CODEC_ZSTD, 4);
}

static void test_roundtrip_none(void **state)
{
    (void)state;
    roundtrip_all(KVT_CODEC_NONE, 0);
}

static void test_shuffle_helps_kv_data(void **state)
{
    (void)state;
    struct kvt_codec *plain = make_codec(KVT_CODEC_ZSTD, 0, 0.0);
    struct kvt_codec *shuf = make_codec(KVT_CODEC_ZSTD, 2, 0.0);
    unsigned char *src = malloc(BUF_BYTES), *enc = malloc(BUF_BYTES);
    size_t n_plain = 0, n_shuf = 0;
    uint32_t id = 0;

    fill_kv_like(src, BUF_BYTES, 42);
    assert_int_equal(kvt_codec_encode(plain, src, BUF_BYTES, 0, enc, BUF_BYTES, &n_plain, &id), 0);
    assert_int_equal(kvt_codec_encode(shuf, src, BUF_BYTES, 0, enc, BUF_BYTES, &n_shuf, &id), 0);
    assert_int_equal(id, KVT_CODEC_ID(KVT_CODEC_ZSTD, 2));
    assert_true(n_shuf < n_plain);
    free(src);
    free(enc);
    kvt_codec_destroy(plain);
    kvt_codec_destroy(shuf);
}

static void test_incompressible_stored_raw(void **state)
{
    (void)state;
    struct kvt_codec *c = make_codec(KVT_CODEC_LZ4, 2, 0.10);
    unsigned char *src = malloc(BUF_BYTES), *enc = malloc(BUF_BYTES), *dec = malloc(BUF_BYTES);
    size_t out = 0;
    uint32_t id = 99;

    fill_random(src, BUF_BYTES, 3);
    assert_int_equal(kvt_codec_encode(c, src, BUF_BYTES, 0, enc, BUF_BYTES, &out, &id), 0);
    assert_int_equal(id, KVT_CODEC_RAW);
    assert_int_equal(out, BUF_BYTES);
    assert_int_equal(kvt_codec_decode(c, id, enc, out, dec, BUF_BYTES), 0);
    assert_memory_equal(src, dec, BUF_BYTES);
    free(src);
    free(enc);
    free(dec);
    kvt_codec_destroy(c);
}

/* A saving requirement the compressor cannot meet forces raw storage even for compressible data. */
static void test_min_saving_rule(void **state)
{
    (void)state;
    struct kvt_codec *c = make_codec(KVT_CODEC_LZ4, 2, 0.95);
    unsigned char *src = malloc(BUF_BYTES), *enc = malloc(BUF_BYTES);
    size_t out = 0;
    uint32_t id = 99;

    fill_kv_like(src, BUF_BYTES, 5);
    assert_int_equal(kvt_codec_encode(c, src, BUF_BYTES, 0, enc, BUF_BYTES, &out, &id), 0);
    assert_int_equal(id, KVT_CODEC_RAW);
    free(src);
    free(enc);
    kvt_codec_destroy(c);
}

static void test_errors(void **state)
{
    (void)state;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = make_codec(KVT_CODEC_ZSTD, 2, 0.10);
    unsigned char *src = malloc(BUF_BYTES), *enc = malloc(BUF_BYTES), *dec = malloc(BUF_BYTES);
    size_t out = 0;
    uint32_t id = 0;

    kvt_codec_config_init(&cfg);
    cfg.elem_bytes = 3;
    assert_int_equal(kvt_codec_create(&cfg, &c), KVT_E_INVAL);
    assert_int_equal(kvt_codec_encode(c, src, BUF_BYTES + 1, 0, enc, BUF_BYTES + 1, &out, &id),
                     KVT_E_TOOBIG);
    assert_int_equal(kvt_codec_encode(c, src, 100, 0, enc, 99, &out, &id), KVT_E_SMALLBUF);

    fill_kv_like(src, BUF_BYTES, 9);
    assert_int_equal(kvt_codec_encode(c, src, BUF_BYTES, 0, enc, BUF_BYTES, &out, &id), 0);
    assert_int_not_equal(id, KVT_CODEC_RAW);
    /* Wrong raw length, truncated and garbled input must all be refused, never returned. */
    assert_int_equal(kvt_codec_decode(c, id, enc, out, dec, BUF_BYTES - 2), KVT_E_CORRUPT);
    assert_int_equal(kvt_codec_decode(c, id, enc, out / 2, dec, BUF_BYTES), KVT_E_CORRUPT);
    memset(enc, 0x11, 64);
    assert_int_equal(kvt_codec_decode(c, id, enc, out, dec, BUF_BYTES), KVT_E_CORRUPT);
    assert_int_equal(kvt_codec_decode(c, KVT_CODEC_RAW, enc, 10, dec, 11), KVT_E_CORRUPT);
    assert_int_equal(kvt_codec_decode(c, 0x37, enc, 10, dec, 10), KVT_E_INVAL);
    assert_string_equal(kvt_codec_name(id), "shuf2+zstd");
    free(src);
    free(enc);
    free(dec);
    kvt_codec_destroy(c);
    kvt_codec_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shuffle_roundtrip),
        cmocka_unit_test(test_shuffle_matches_reference),
        cmocka_unit_test(test_shuffle_same_bytes_every_variant),
        cmocka_unit_test(test_roundtrip_lz4),
        cmocka_unit_test(test_roundtrip_zstd),
        cmocka_unit_test(test_roundtrip_none),
        cmocka_unit_test(test_shuffle_helps_kv_data),
        cmocka_unit_test(test_incompressible_stored_raw),
        cmocka_unit_test(test_min_saving_rule),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
