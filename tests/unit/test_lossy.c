/*
 * The lossy-form kernels (kernels/quant.h, kernels/cluster.h): the quantization format's checks
 * and sizes, the scale's definition, hand-worked quantize cases (layout bytes, constant groups,
 * NaN and infinity, signed zeros), the error bound on random and adversarial data element by
 * element against exact arithmetic, every variant against the reference bit for bit; clustering:
 * hand-worked matching (ties, zero keys, no B), the window's invariants (counts sum to the input,
 * merge 0 gives the input back, protected positions untouched, merged entries are the weighted
 * means), every variant against the reference; and the CUDA versions against the reference when
 * the build has them and a device is present (skipped with a line otherwise).
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

#include "kernels/cluster.h"
#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kvtier/errors.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/kcuda.h"
#endif

#define GUARD 0xa5

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t supported(const struct kvt_kernels **out)
{
    size_t count = 0;
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++) {
        const struct kvt_kernels *t = kvt_kernels_variant((enum kvt_kernels_variant)v);
        if (t)
            out[count++] = t;
    }
    return count;
}

static double h2d(uint16_t h)
{
    return (double)kvt_f16_to_f32(h);
}

static int f16_nonfinite(uint16_t h)
{
    return (h & 0x7c00u) == 0x7c00u;
}

/* Kinds of data: 0 normal-ish values, 1 the whole fp16 range (huge groups), 2 subnormals and
 * zeros of both signs, 3 few distinct values (constant and two-valued groups, exact half steps),
 * 4 like 0 with a NaN or an infinity now and then, 5 random bits (any fp16). */
static uint16_t gen_f16(uint64_t *s, int kind, size_t i)
{
    uint64_t r = rng_next(s);
    switch (kind) {
    case 0:
        return kvt_f32_to_f16((float)((double)(int64_t)(r % 20001) / 1000.0 - 10.0));
    case 1:
        return (uint16_t)(r % 2 ? 0x7bffu - r % 4096 : 0xfbffu - r % 4096);
    case 2:
        return (uint16_t)((r & 0x8000u) | (r % 1024 < 1000 ? (r >> 20) % 0x3ffu : 0));
    case 3:
        return (i / 7) % 3 == 0 ? 0x3c00u : (r % 4 == 0 ? 0x4000u : 0x3c00u + (uint16_t)(r % 3));
    case 4:
        if (r % 97 == 0)
            return r % 2 ? 0x7c00u : (uint16_t)(0x7e00u | (r >> 32 & 0x1ffu));
        return kvt_f32_to_f16((float)((double)(int64_t)(r % 20001) / 100.0 - 100.0));
    default:
        return (uint16_t)r;
    }
}

static void fill_f16(uint16_t *x, size_t count, uint64_t seed, int kind)
{
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < count; i++)
        x[i] = gen_f16(&s, kind, i);
}

static void test_quant_fmt(void **state)
{
    (void)state;
    struct kvt_quant_fmt f = {8, KVT_QUANT_AXIS_TOKEN, 32, 128};
    assert_int_equal(kvt_quant_fmt_check(&f), 0);
    assert_int_equal(kvt_quant_bytes(&f, 1), 128 + 4 * 4);
    assert_int_equal(kvt_quant_bytes(&f, 10), 1440);
    f.bits = 4;
    assert_int_equal(kvt_quant_bytes(&f, 1), 64 + 4 * 4);
    assert_int_equal(kvt_quant_code_bytes(&f, 3), 192);
    f.group = 128;
    assert_int_equal(kvt_quant_bytes(&f, 2), 128 + 8);
    f.axis = KVT_QUANT_AXIS_CHANNEL;
    f.group = 32;
    assert_int_equal(kvt_quant_groups(&f, 100), 4 * 128);
    assert_int_equal(kvt_quant_bytes(&f, 100), 6400 + 4 * 128 * 4);
    assert_int_equal(kvt_quant_groups(&f, 0), 0);
    f.group = 48; /* a channel group need not divide head_dim */
    assert_int_equal(kvt_quant_fmt_check(&f), 0);
    const struct kvt_quant_fmt bad[] = {
        {7, 0, 32, 128}, {16, 0, 32, 128}, {8, 2, 32, 128},  {8, 0, 48, 128},
        {8, 0, 0, 128},  {8, 0, 3, 129},   {8, 1, 32, 4098}, {8, 1, 32, 0},
        {4, 1, 33, 64},  {4, 1, 8192, 64}, {8, 0, 256, 128}, {8, 1, 32, 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(kvt_quant_fmt_check(&bad[i]), KVT_E_INVAL);
    assert_int_equal(kvt_quant_fmt_check(NULL), KVT_E_INVAL);
}

/* The scale is the smallest fp16 whose (2^bits - 1) multiple covers the range: checked against
 * its neighbour below on every pair of a sample of finite fp16 values, extremes included. */
static void test_quant_scale(void **state)
{
    (void)state;
    uint64_t s = 99;
    for (int i = 0; i < 200000; i++) {
        uint16_t a = (uint16_t)rng_next(&s), b = (uint16_t)rng_next(&s);
        if (i < 4) {
            a = i % 2 ? 0xfbffu : 0x0001u;
            b = i / 2 ? 0x7bffu : 0x8001u;
        }
        if (f16_nonfinite(a) || f16_nonfinite(b))
            continue;
        uint16_t lo = h2d(a) <= h2d(b) ? a : b, hi = lo == a ? b : a;
        for (uint32_t bits = 4; bits <= 8; bits += 4) {
            double L = (double)((1u << bits) - 1), range = h2d(hi) - h2d(lo);
            uint16_t sc = kvt_quant_scale_f16(lo, hi, bits);
            assert_false(f16_nonfinite(sc));
            assert_true(sc < 0x8000u);
            if (range == 0) {
                assert_int_equal(sc, 0);
                continue;
            }
            assert_true(h2d(sc) * L >= range);
            assert_true(h2d((uint16_t)(sc - 1)) * L < range);
        }
    }
}

static uint32_t code_at(const uint8_t *codes, uint32_t bits, size_t e)
{
    return bits == 8 ? codes[e] : e % 2 ? codes[e / 2] >> 4 : codes[e / 2] & 15u;
}

static void param_at(const uint8_t *p, size_t idx, uint16_t *scale, uint16_t *min)
{
    *scale = (uint16_t)(p[4 * idx] | p[4 * idx + 1] << 8);
    *min = (uint16_t)(p[4 * idx + 2] | p[4 * idx + 3] << 8);
}

/* Hand-worked cases on the reference, byte for byte. */
static void test_quant_reference_cases(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    uint8_t out[64];
    uint16_t back[8];
    /* 4-bit, one row of 4, group 4: values 0, 1, 2, 15 -> scale 1, min 0, codes as is; the
     * nibbles low first: bytes 0x10, 0xf2. */
    struct kvt_quant_fmt f = {4, KVT_QUANT_AXIS_TOKEN, 4, 4};
    uint16_t x[8] = {0x0000, 0x3c00, 0x4000, 0x4b80}; /* 0, 1, 2, 15 */
    memset(out, GUARD, sizeof(out));
    ref->quant_f16(&f, x, 1, 4, out);
    const uint8_t want[] = {0x10, 0xf2, 0x00, 0x3c, 0x00, 0x00};
    assert_memory_equal(out, want, sizeof(want));
    assert_int_equal(out[sizeof(want)], GUARD);
    ref->dequant_f16(&f, out, 1, back, 4);
    assert_memory_equal(back, x, 8);
    /* 8-bit, two groups of 2: {-1, 1} -> scale the fp16 above 2/255, min -1; 0.5 between. */
    f = (struct kvt_quant_fmt){8, KVT_QUANT_AXIS_TOKEN, 2, 4};
    uint16_t y[4] = {0xbc00, 0x3c00, 0x3800, 0x3800}; /* -1, 1 | 0.5, 0.5 (constant) */
    ref->quant_f16(&f, y, 1, 4, out);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 255);
    assert_int_equal(out[2], 0);
    assert_int_equal(out[3], 0);
    uint16_t sc, mn;
    param_at(out + 4, 0, &sc, &mn);
    assert_int_equal(sc, kvt_quant_scale_f16(0xbc00, 0x3c00, 8));
    assert_true(h2d(sc) * 255 >= 2.0 && h2d((uint16_t)(sc - 1)) * 255 < 2.0);
    assert_int_equal(mn, 0xbc00);
    param_at(out + 4, 1, &sc, &mn);
    assert_int_equal(sc, 0);
    assert_int_equal(mn, 0x3800);
    ref->dequant_f16(&f, out, 1, back, 4);
    assert_int_equal(back[0], 0xbc00);
    assert_int_equal(back[2], 0x3800);
    assert_int_equal(back[3], 0x3800);
    /* 1 comes back as the top code's value, within s/2 of it. */
    assert_true(fabs(h2d(back[1]) - 1.0) <= h2d(kvt_quant_scale_f16(0xbc00, 0x3c00, 8)) / 2);
    /* A NaN in one group and an infinity in the other: both groups become NaN, codes 0. */
    uint16_t z[4] = {0x7e01, 0x3c00, 0xfc00, 0x0000};
    ref->quant_f16(&f, z, 1, 4, out);
    for (int i = 0; i < 4; i++)
        assert_int_equal(out[i], 0);
    for (int g = 0; g < 2; g++) {
        param_at(out + 4, (size_t)g, &sc, &mn);
        assert_int_equal(sc, KVT_QUANT_NONFINITE);
        assert_int_equal(mn, KVT_QUANT_NONFINITE);
    }
    ref->dequant_f16(&f, out, 1, back, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(back[i], 0x7e00);
    /* Signed zeros: the minimum of {-0, +0} is -0 and the group is constant (both read back as
     * +0: -0 + 0*0 is +0 in IEEE arithmetic, an error of 0). */
    uint16_t w[4] = {0x0000, 0x8000, 0x8000, 0x8000};
    ref->quant_f16(&f, w, 1, 4, out);
    param_at(out + 4, 0, &sc, &mn);
    assert_int_equal(sc, 0);
    assert_int_equal(mn, 0x8000);
    ref->dequant_f16(&f, out, 1, back, 4);
    assert_int_equal(back[0], 0x0000);
    /* Channel axis, 3 rows of 2 channels, group 2: groups rows {0,1} and {2}. */
    f = (struct kvt_quant_fmt){8, KVT_QUANT_AXIS_CHANNEL, 2, 2};
    uint16_t k[6] = {0x0000, 0x3c00, 0x5bf8, 0x3c00, 0x4000, 0xc000}; /* 0,1 | 255,1 | 2,-2 */
    ref->quant_f16(&f, k, 3, 2, out);
    const uint8_t wc[6] = {0, 0, 255, 0, 0, 0};
    assert_memory_equal(out, wc, 6);
    param_at(out + 6, 0, &sc, &mn); /* group 0, channel 0: 0..255, scale 1 */
    assert_int_equal(sc, 0x3c00);
    assert_int_equal(mn, 0x0000);
    param_at(out + 6, 1, &sc, &mn); /* group 0, channel 1: constant 1 */
    assert_int_equal(sc, 0);
    assert_int_equal(mn, 0x3c00);
    param_at(out + 6, 3, &sc, &mn); /* group 1, channel 1: the single row -2 */
    assert_int_equal(mn, 0xc000);
    ref->dequant_f16(&f, out, 3, back, 2);
    assert_memory_equal(back, k, 12);
}

/*
 * The error bound, exactly, for every element of a block: with (s, m) the group's parameters and
 * q its code, read from the packed bytes,
 *  - s is kvt_quant_scale_f16 of the group's minimum and maximum (computed here) and m the
 *    minimum (bits, -0 below +0);
 *  - |x - (m + q*s)| <= s/2 in exact arithmetic (double holds both sides exactly);
 *  - the value read back is fp16(clamp(fl32(m + q*s))) (double sums m + q*s exactly, so its
 *    float conversion is the fp32 sum);
 * and a group with a NaN or an infinity has the NaN parameters, codes 0 and reads back NaN.
 */
static void check_bound(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n, size_t stride,
                        const uint8_t *packed, const uint16_t *back)
{
    const size_t d = f->head_dim, G = f->group;
    const uint8_t *params = packed + kvt_quant_code_bytes(f, n);
    const double L = (double)((1u << f->bits) - 1);
    for (size_t gi = 0; gi < kvt_quant_groups(f, n); gi++) {
        size_t r0, r1, c0, c1;
        if (f->axis == KVT_QUANT_AXIS_TOKEN) {
            r0 = gi / (d / G), r1 = r0 + 1, c0 = gi % (d / G) * G, c1 = c0 + G;
        } else {
            r0 = gi / d * G, r1 = r0 + G < n ? r0 + G : n, c0 = gi % d, c1 = c0 + 1;
        }
        int nonfinite = 0;
        uint16_t lo = 0, hi = 0;
        for (size_t r = r0; r < r1; r++) {
            for (size_t c = c0; c < c1; c++) {
                uint16_t h = x[r * stride + c];
                if (f16_nonfinite(h)) {
                    nonfinite = 1;
                    continue;
                }
                if (r == r0 && c == c0) {
                    lo = hi = h;
                    continue;
                }
                if (h2d(h) < h2d(lo) || (h == 0x8000u && lo == 0))
                    lo = h;
                if (h2d(h) > h2d(hi) || (h == 0 && hi == 0x8000u))
                    hi = h;
            }
        }
        uint16_t sc, mn;
        param_at(params, gi, &sc, &mn);
        for (size_t r = r0; r < r1; r++) {
            for (size_t c = c0; c < c1; c++) {
                const size_t e = r * d + c;
                const uint32_t q = code_at(packed, f->bits, e);
                const uint16_t xv = x[r * stride + c], got = back[r * stride + c];
                if (nonfinite) {
                    assert_int_equal(sc, KVT_QUANT_NONFINITE);
                    assert_int_equal(mn, KVT_QUANT_NONFINITE);
                    assert_int_equal(q, 0);
                    assert_int_equal(got, 0x7e00);
                    continue;
                }
                assert_int_equal(mn, lo);
                assert_int_equal(sc, kvt_quant_scale_f16(lo, hi, f->bits));
                assert_true(q <= L);
                const double v = h2d(mn) + (double)q * h2d(sc);
                if (fabs(h2d(xv) - v) > h2d(sc) / 2)
                    fail_msg("bits %u axis %u G %zu: x=%a q=%u s=%a m=%a: error %a > s/2", f->bits,
                             f->axis, G, h2d(xv), q, h2d(sc), h2d(mn), fabs(h2d(xv) - v));
                float v32 = (float)v;
                v32 = v32 < -65504.0f ? -65504.0f : v32 > 65504.0f ? 65504.0f : v32;
                assert_int_equal(got, kvt_f32_to_f16(v32));
            }
        }
    }
}

static const struct kvt_quant_fmt g_fmts[] = {
    {8, KVT_QUANT_AXIS_TOKEN, 32, 128},   {4, KVT_QUANT_AXIS_TOKEN, 32, 128},
    {8, KVT_QUANT_AXIS_TOKEN, 64, 128},   {4, KVT_QUANT_AXIS_TOKEN, 64, 64},
    {8, KVT_QUANT_AXIS_TOKEN, 128, 128},  {4, KVT_QUANT_AXIS_TOKEN, 128, 128},
    {8, KVT_QUANT_AXIS_TOKEN, 2, 6},      {4, KVT_QUANT_AXIS_TOKEN, 24, 96},
    {8, KVT_QUANT_AXIS_TOKEN, 8, 80},     {4, KVT_QUANT_AXIS_TOKEN, 40, 80},
    {8, KVT_QUANT_AXIS_CHANNEL, 32, 128}, {4, KVT_QUANT_AXIS_CHANNEL, 32, 128},
    {8, KVT_QUANT_AXIS_CHANNEL, 64, 64},  {4, KVT_QUANT_AXIS_CHANNEL, 16, 80},
    {8, KVT_QUANT_AXIS_CHANNEL, 2, 6},    {4, KVT_QUANT_AXIS_CHANNEL, 128, 14},
};

/* Every format, many block sizes and strides, every kind of data: the reference against the
 * bound, every variant against the reference bit for bit (codes, parameters, values read back),
 * with guard bytes past the packed block and around the rows read back. */
static void test_quant_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    const size_t count = supported(t);
    const size_t ns[] = {0, 1, 2, 7, 33, 100};
    enum { N_MAX = 100, D_MAX = 128, PAD = 5 };
    const size_t elems = N_MAX * (D_MAX + PAD);
    uint16_t *x = malloc(elems * 2), *want_x = malloc(elems * 2), *got_x = malloc(elems * 2);
    uint8_t *want = malloc(N_MAX * D_MAX * 3 + 64), *got = malloc(N_MAX * D_MAX * 3 + 64);
    assert_true(x && want_x && got_x && want && got);
    size_t checked = 0;
    for (size_t fi = 0; fi < sizeof(g_fmts) / sizeof(g_fmts[0]); fi++) {
        const struct kvt_quant_fmt *f = &g_fmts[fi];
        for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
            for (int kind = 0; kind < 6; kind++) {
                const size_t n = ns[ni], stride = f->head_dim + (kind % 2 ? PAD : 0);
                const size_t bytes = kvt_quant_bytes(f, n);
                fill_f16(x, elems, fi * 1000 + ni * 10 + (size_t)kind, kind);
                memset(want, GUARD, bytes + 16);
                t[0]->quant_f16(f, x, n, stride, want);
                for (size_t i = 0; i < 16; i++)
                    assert_int_equal(want[bytes + i], GUARD);
                memset(want_x, GUARD, elems * 2);
                t[0]->dequant_f16(f, want, n, want_x, stride);
                check_bound(f, x, n, stride, want, want_x);
                checked += n * f->head_dim;
                for (size_t v = 1; v < count; v++) {
                    memset(got, GUARD, bytes + 16);
                    t[v]->quant_f16(f, x, n, stride, got);
                    if (memcmp(got, want, bytes + 16))
                        fail_msg("%s quant fmt %zu n %zu kind %d differs", t[v]->name, fi, n, kind);
                    memset(got_x, GUARD, elems * 2);
                    t[v]->dequant_f16(f, want, n, got_x, stride);
                    if (memcmp(got_x, want_x, elems * 2))
                        fail_msg("%s dequant fmt %zu n %zu kind %d differs", t[v]->name, fi, n,
                                 kind);
                }
            }
        }
    }
    print_message("quantize bound checked on %zu elements, %zu variants agree\n", checked, count);
    free(x);
    free(want_x);
    free(got_x);
    free(want);
    free(got);
}

/* A canonical chunk [layer][token][k|v][kv_head][head_dim] through the chunk helpers: the bytes
 * are the blocks of the block kernel in the documented order, every variant gives the same bytes,
 * the round trip is the block kernels' round trip, and bad arguments write nothing. */
static void test_quant_chunk(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    const size_t count = supported(t);
    const struct kvt_quant_chunk c = {
        3, 2, {4, KVT_QUANT_AXIS_CHANNEL, 32, 64}, {8, KVT_QUANT_AXIS_TOKEN, 32, 64}};
    enum { T = 40, ROW = 2 * 2 * 64 };
    const size_t elems = 3 * T * ROW, bytes = kvt_quant_chunk_bytes(&c, T);
    const size_t bk = kvt_quant_bytes(&c.keys, T), bv = kvt_quant_bytes(&c.values, T);
    assert_int_equal(bytes, 3 * 2 * (bk + bv));
    uint16_t *x = malloc(elems * 2), *back = malloc(elems * 2), *blk = malloc(T * 64 * 2);
    uint8_t *want = malloc(bytes + 8), *got = malloc(bytes + 8), *one = malloc(bk + bv);
    assert_true(x && back && blk && want && got && one);
    fill_f16(x, elems, 3, 0);
    memset(want, GUARD, bytes + 8);
    assert_int_equal(kvt_quant_chunk_f16(t[0], &c, x, T, want, bytes), 0);
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(want[bytes + i], GUARD);
    /* Block (l, kv, h) is the block kernel's output for that head's rows. */
    for (size_t l = 0; l < 3; l++) {
        for (size_t kv = 0; kv < 2; kv++) {
            for (size_t h = 0; h < 2; h++) {
                const struct kvt_quant_fmt *f = kv ? &c.values : &c.keys;
                t[0]->quant_f16(f, x + l * T * ROW + (kv * 2 + h) * 64, T, ROW, one);
                size_t off = l * 2 * (bk + bv) + kv * 2 * bk + h * (kv ? bv : bk);
                assert_memory_equal(want + off, one, kv ? bv : bk);
            }
        }
    }
    assert_int_equal(kvt_dequant_chunk_f16(t[0], &c, want, bytes, T, back), 0);
    for (size_t l = 0; l < 3; l++) {
        t[0]->dequant_f16(&c.keys, want + l * 2 * (bk + bv) + bk, T, blk, 64);
        for (size_t r = 0; r < T; r++)
            assert_memory_equal(back + l * T * ROW + r * ROW + 64, blk + r * 64, 128);
    }
    for (size_t v = 1; v < count; v++) {
        memset(got, GUARD, bytes + 8);
        assert_int_equal(kvt_quant_chunk_f16(t[v], &c, x, T, got, bytes + 8), 0);
        assert_memory_equal(got, want, bytes + 8);
    }
    /* Refusals: nothing written. */
    memset(got, GUARD, bytes + 8);
    assert_int_equal(kvt_quant_chunk_f16(NULL, &c, x, T, got, bytes - 1), KVT_E_INVAL);
    struct kvt_quant_chunk bad = c;
    bad.values.head_dim = 128;
    assert_int_equal(kvt_quant_chunk_check(&bad), KVT_E_INVAL);
    assert_int_equal(kvt_quant_chunk_bytes(&bad, T), 0);
    assert_int_equal(kvt_quant_chunk_f16(NULL, &bad, x, T, got, bytes + 8), KVT_E_INVAL);
    bad = c;
    bad.n_layer = 0;
    assert_int_equal(kvt_quant_chunk_f16(NULL, &bad, x, T, got, bytes + 8), KVT_E_INVAL);
    for (size_t i = 0; i < bytes + 8; i++)
        assert_int_equal(got[i], GUARD);
    memcpy(blk, back, 128);
    assert_int_equal(kvt_dequant_chunk_f16(NULL, &c, want, bytes - 1, T, back), KVT_E_INVAL);
    assert_int_equal(kvt_dequant_chunk_f16(NULL, &c, want, bytes + 1, T, back), KVT_E_INVAL);
    assert_memory_equal(blk, back, 128);
    free(x);
    free(back);
    free(blk);
    free(want);
    free(got);
    free(one);
}

/* Cosine in double, for the oracle of the matching. */
static double cos_d(const uint16_t *a, const uint16_t *b, size_t d)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < d; i++) {
        ab += h2d(a[i]) * h2d(b[i]);
        aa += h2d(a[i]) * h2d(a[i]);
        bb += h2d(b[i]) * h2d(b[i]);
    }
    return aa == 0 || bb == 0 ? 0 : ab / sqrt(aa * bb);
}

static void test_cluster_match_reference(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    /* Window of 6, head_dim 2: A = 0, 2, 4; B = 1, 3, 5. Key 0 points like 3 and 5 (a tie: the
     * lower, 3); key 2 is zero (similarity 0 with all; ties: 1); key 4 points like 1. */
    const uint16_t k[12] = {
        0x3c00, 0x0000, /* 0: (1, 0) */
        0x0000, 0x3c00, /* 1: (0, 1) */
        0x0000, 0x0000, /* 2: (0, 0) */
        0x4000, 0x0000, /* 3: (2, 0) */
        0x0000, 0x4400, /* 4: (0, 4) */
        0x3c00, 0x0000, /* 5: (1, 0) */
    };
    uint32_t best[3];
    float sim[3];
    assert_int_equal(ref->cluster_match_f16(k, 2, 2, 6, 0, 6, best, sim), 3);
    assert_int_equal(best[0], 3);
    assert_true(sim[0] == 1.0f);
    assert_int_equal(best[1], 1);
    assert_true(sim[1] == 0.0f);
    assert_int_equal(best[2], 1);
    assert_true(sim[2] == 1.0f);
    /* Mergeable [1, 5): A = 2, 4 (even positions), B = 1, 3. */
    assert_int_equal(ref->cluster_match_f16(k, 2, 2, 6, 1, 5, best, sim), 2);
    assert_int_equal(best[0], 1);
    assert_int_equal(best[1], 1);
    /* One position: an A and no B. */
    assert_int_equal(ref->cluster_match_f16(k, 2, 2, 6, 4, 5, best, sim), 1);
    assert_int_equal(best[0], UINT32_MAX);
    assert_true(isinf(sim[0]) && sim[0] < 0);
    assert_int_equal(ref->cluster_match_f16(k, 2, 2, 6, 3, 3, best, sim), 0);
    /* The merge: entry 0 (count 3) into 1 (count 1), entry 2 stays: keys (1, 0)*3 + (5, 4) over
     * 4 is (2, 1); values (2, 2)*3 + (-6, 10) over 4 is (0, 4). */
    const uint16_t mk[6] = {0x3c00, 0x0000, 0x4500, 0x4400, 0x7e05, 0x8000};
    const uint16_t mv[6] = {0x4000, 0x4000, 0xc600, 0x4900, 0x3c00, 0x3c00};
    const uint32_t cnt[3] = {3, 1, 2}, into[3] = {1, 1, 2};
    uint16_t ko[6], vo[6];
    uint32_t co[3], po[3];
    assert_int_equal(ref->cluster_merge_f16(mk, mv, 2, 2, 3, cnt, into, ko, vo, 2, co, po), 2);
    const uint16_t wk[4] = {0x4000, 0x3c00, 0x7e05, 0x8000},
                   wv[4] = {0x0000, 0x4400, 0x3c00, 0x3c00};
    assert_memory_equal(ko, wk, 8);
    assert_memory_equal(vo, wv, 8);
    assert_int_equal(co[0], 4);
    assert_int_equal(co[1], 2);
    assert_int_equal(po[0], 1);
    assert_int_equal(po[1], 2);
}

/* Random keys with a planted structure: most A keys are noisy copies of some B key. */
static void fill_window(uint16_t *k, uint16_t *v, size_t c, size_t stride, size_t d, uint64_t seed,
                        int specials)
{
    uint64_t s = seed;
    for (size_t i = 0; i < c; i++) {
        size_t src = i % 2 == 0 && i + 1 < c && rng_next(&s) % 3
                         ? (size_t)(rng_next(&s) % (c / 2)) * 2 + 1
                         : i;
        for (size_t j = 0; j < d; j++) {
            double base = (double)(int64_t)(rng_next(&s) % 2001) / 1000.0 - 1.0;
            if (src < i) /* an A after its B: near the B key */
                base = h2d(k[src * stride + j]) + (double)(int64_t)(rng_next(&s) % 201) / 2000.0 -
                       0.05;
            k[i * stride + j] = kvt_f32_to_f16((float)base);
            v[i * stride + j] =
                kvt_f32_to_f16((float)((double)(int64_t)(rng_next(&s) % 4001) / 100.0 - 20.0));
        }
        if (specials && rng_next(&s) % 13 == 0)
            k[i * stride + rng_next(&s) % d] = rng_next(&s) % 2 ? 0x7c00 : 0x7e00;
        if (specials && rng_next(&s) % 17 == 0)
            for (size_t j = 0; j < d; j++)
                k[i * stride + j] = rng_next(&s) % 2 ? 0x8000 : 0;
    }
}

/* The window's invariants on the reference, against an oracle in double where the structure
 * makes the answer clear. */
static void test_cluster_window(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    enum { C = 256, D = 64, S = 70 };
    uint16_t *k = malloc(C * S * 2), *v = malloc(C * S * 2);
    uint16_t *ko = malloc(C * D * 2), *vo = malloc(C * D * 2), *k2 = malloc(C * D * 2),
             *v2 = malloc(C * D * 2);
    uint32_t cnt[C], cnt2[C], pos[C], pos2[C], in_cnt[C];
    void *scratch = malloc(kvt_cluster_scratch_bytes(C));
    assert_true(k && v && ko && vo && k2 && v2 && scratch);
    const size_t sb = kvt_cluster_scratch_bytes(C);
    fill_window(k, v, C, S, D, 7, 0);
    size_t n_out;
    /* merge 0: the input itself, bit for bit, counts 1 (NaN payloads and -0 included). */
    k[5 * S + 3] = 0x7e33;
    k[6 * S + 1] = 0x8000;
    struct kvt_cluster_params p = {0, 4, 16};
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, NULL, scratch, sb, ko, vo, D,
                                            cnt, pos, &n_out),
                     0);
    assert_int_equal(n_out, C);
    for (size_t i = 0; i < C; i++) {
        assert_memory_equal(ko + i * D, k + i * S, D * 2);
        assert_memory_equal(vo + i * D, v + i * S, D * 2);
        assert_int_equal(cnt[i], 1);
        assert_int_equal(pos[i], i);
    }
    fill_window(k, v, C, S, D, 7, 0);
    const size_t rs[] = {1, 10, 50, 118, 200};
    for (size_t ri = 0; ri < sizeof(rs) / sizeof(rs[0]); ri++) {
        p = (struct kvt_cluster_params){(uint32_t)rs[ri], 4, 16};
        assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, NULL, scratch, sb, ko, vo,
                                                D, cnt, pos, &n_out),
                         0);
        const size_t n_a = (C - 20 + 1) / 2, r = rs[ri] < n_a ? rs[ri] : n_a;
        assert_int_equal(n_out, C - r);
        uint64_t sum = 0;
        for (size_t e = 0; e < n_out; e++) {
            sum += cnt[e];
            if (e)
                assert_true(pos[e] > pos[e - 1]);
            /* Protected positions stay, alone, bit for bit; A entries that remain are alone. */
            if (pos[e] < 4 || pos[e] >= C - 16 || pos[e] % 2 == 0) {
                assert_int_equal(cnt[e], 1);
                assert_memory_equal(ko + e * D, k + pos[e] * S, D * 2);
                assert_memory_equal(vo + e * D, v + pos[e] * S, D * 2);
            }
        }
        assert_int_equal(sum, C);
        for (size_t i = 0; i < 4; i++)
            assert_int_equal(pos[i], i);
        for (size_t i = 0; i < 16; i++)
            assert_int_equal(pos[n_out - 16 + i], C - 16 + i);
        /* Each merged entry is the mean of its members: its B key and the A keys that chose it
         * (the oracle matches in double; the planted pairs are far apart from the rest). */
        size_t planted = 0, means = 0;
        uint32_t *best = malloc(n_a * 4);
        float *sim = malloc(n_a * 4);
        ref->cluster_match_f16(k, S, D, C, 4, C - 16, best, sim);
        for (size_t a = 0; a < n_a; a++) {
            const size_t i = 4 + 2 * a;
            double bs = -2;
            size_t bj = 0;
            for (size_t j = 5; j < C - 16; j += 2) {
                double cs = cos_d(k + i * S, k + j * S, D);
                if (cs > bs + 1e-5) {
                    bs = cs;
                    bj = j;
                }
            }
            if (bs > 0.9) { /* a planted pair: unambiguous */
                assert_int_equal(best[a], bj);
                planted++;
            }
            assert_true(fabs(sim[a] - cos_d(k + i * S, k + best[a] * S, D)) < 1e-5);
        }
        for (size_t e = 0; e < n_out; e++) {
            if (cnt[e] == 1)
                continue;
            means++;
            double mk[D] = {0};
            size_t members = 1;
            for (size_t j = 0; j < D; j++)
                mk[j] = h2d(k[pos[e] * S + j]);
            for (size_t a = 0; a < n_a; a++) {
                if (best[a] != pos[e])
                    continue;
                int kept = 0; /* merged unless it is still among the outputs */
                for (size_t f = 0; f < n_out; f++)
                    kept |= pos[f] == 4 + 2 * a;
                if (kept)
                    continue;
                members++;
                for (size_t j = 0; j < D; j++)
                    mk[j] += h2d(k[(4 + 2 * a) * S + j]);
            }
            assert_int_equal(members, cnt[e]);
            for (size_t j = 0; j < D; j++)
                assert_true(fabs(mk[j] / (double)members - h2d(ko[e * D + j])) <=
                            fabs(mk[j] / (double)members) * 1e-3 + 1e-6);
        }
        assert_true(planted > 20);
        assert_true(means >= (r + 3) / 4);
        free(best);
        free(sim);
    }
    /* Two passes with counts: 75% fewer entries, counts still summing to the tokens. */
    p = (struct kvt_cluster_params){C, 0, 0};
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, NULL, scratch, sb, ko, vo, D,
                                            cnt, pos, &n_out),
                     0);
    assert_int_equal(n_out, C / 2);
    size_t n2;
    assert_int_equal(kvt_cluster_window_f16(ref, &p, ko, vo, D, D, n_out, cnt, scratch, sb, k2, v2,
                                            D, cnt2, pos2, &n2),
                     0);
    assert_int_equal(n2, C / 4);
    uint64_t sum = 0;
    for (size_t e = 0; e < n2; e++)
        sum += cnt2[e];
    assert_int_equal(sum, C);
    /* Bad arguments: refused, nothing written. */
    memset(cnt, 0xee, sizeof(cnt));
    p = (struct kvt_cluster_params){8, 0, 0};
    for (size_t i = 0; i < C; i++)
        in_cnt[i] = 1;
    in_cnt[3] = 0;
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, in_cnt, scratch, sb, ko, vo, D,
                                            cnt, pos, &n_out),
                     KVT_E_INVAL);
    in_cnt[3] = 1u << 24;
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, in_cnt, scratch, sb, ko, vo, D,
                                            cnt, pos, &n_out),
                     KVT_E_INVAL);
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, C, NULL, scratch, sb - 1, ko, vo,
                                            D, cnt, pos, &n_out),
                     KVT_E_INVAL);
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, D - 1, D, C, NULL, scratch, sb, ko, vo,
                                            D, cnt, pos, &n_out),
                     KVT_E_INVAL);
    assert_int_equal(kvt_cluster_window_f16(ref, &p, k, v, S, D, KVT_CLUSTER_WINDOW_MAX + 1, NULL,
                                            scratch, sb, ko, vo, D, cnt, pos, &n_out),
                     KVT_E_INVAL);
    for (size_t i = 0; i < C; i++)
        assert_int_equal(cnt[i], 0xeeeeeeeeu);
    free(k);
    free(v);
    free(ko);
    free(vo);
    free(k2);
    free(v2);
    free(scratch);
}

static int same_f32(float a, float b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof(a)) == 0;
}

/* Every variant's matching, merge and whole window against the reference's, bit for bit, over
 * many window sizes, head_dims (odd ones and ones past a vector), protections and merge counts,
 * with NaN, infinity and zero keys. */
static void test_cluster_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    const size_t count = supported(t);
    const size_t cs[] = {0, 1, 2, 3, 17, 64, 257};
    const size_t ds[] = {1, 7, 16, 64, 128, 129};
    enum { C_MAX = 257, D_MAX = 129, PAD = 3 };
    const size_t S_MAX = D_MAX + PAD;
    uint16_t *k = malloc(C_MAX * S_MAX * 2), *v = malloc(C_MAX * S_MAX * 2);
    uint16_t *ko[2], *vo[2];
    uint32_t cnt_in[C_MAX], cnt[2][C_MAX], pos[2][C_MAX], best[2][C_MAX];
    float sim[2][C_MAX];
    for (int i = 0; i < 2; i++) {
        ko[i] = malloc(C_MAX * S_MAX * 2);
        vo[i] = malloc(C_MAX * S_MAX * 2);
        assert_true(ko[i] && vo[i]);
    }
    const size_t sb = kvt_cluster_scratch_bytes(C_MAX);
    void *scratch = malloc(sb);
    assert_true(k && v && scratch);
    uint64_t seed = 5;
    for (size_t ci = 0; ci < sizeof(cs) / sizeof(cs[0]); ci++) {
        for (size_t di = 0; di < sizeof(ds) / sizeof(ds[0]); di++) {
            const size_t c = cs[ci], d = ds[di], stride = d + (ci % 2 ? PAD : 0);
            fill_window(k, v, c, stride, d, rng_next(&seed), 1);
            for (size_t i = 0; i < c; i++)
                cnt_in[i] = 1 + (uint32_t)(rng_next(&seed) % 5);
            const uint32_t prot[][2] = {{0, 0}, {1, 0}, {4, 16}, {3, 3}, {300, 0}};
            for (size_t pi = 0; pi < sizeof(prot) / sizeof(prot[0]); pi++) {
                const size_t lo = prot[pi][0] < c ? prot[pi][0] : c;
                const size_t hi = prot[pi][0] + prot[pi][1] < c ? c - prot[pi][1] : lo;
                const size_t na = t[0]->cluster_match_f16(k, stride, d, c, lo, hi, best[0], sim[0]);
                for (size_t vi = 1; vi < count; vi++) {
                    assert_int_equal(
                        t[vi]->cluster_match_f16(k, stride, d, c, lo, hi, best[1], sim[1]), na);
                    for (size_t a = 0; a < na; a++) {
                        if (best[1][a] != best[0][a] || !same_f32(sim[1][a], sim[0][a]))
                            fail_msg("%s match c %zu d %zu [%zu,%zu) a %zu: %u %a, want %u %a",
                                     t[vi]->name, c, d, lo, hi, a, best[1][a], (double)sim[1][a],
                                     best[0][a], (double)sim[0][a]);
                    }
                }
                const uint32_t merges[] = {0, 1, 5, 1000};
                for (size_t mi = 0; mi < 4; mi++) {
                    struct kvt_cluster_params p = {merges[mi], prot[pi][0], prot[pi][1]};
                    size_t n[2];
                    for (size_t vi = 0; vi < count; vi++) {
                        const size_t o = vi ? 1 : 0;
                        memset(ko[o], GUARD, C_MAX * S_MAX * 2);
                        memset(vo[o], GUARD, C_MAX * S_MAX * 2);
                        assert_int_equal(kvt_cluster_window_f16(t[vi], &p, k, v, stride, d, c,
                                                                mi % 2 ? cnt_in : NULL, scratch, sb,
                                                                ko[o], vo[o], S_MAX, cnt[o], pos[o],
                                                                &n[o]),
                                         0);
                        if (!vi)
                            continue;
                        assert_int_equal(n[1], n[0]);
                        if (memcmp(ko[1], ko[0], C_MAX * S_MAX * 2) ||
                            memcmp(vo[1], vo[0], C_MAX * S_MAX * 2) ||
                            memcmp(cnt[1], cnt[0], n[0] * 4) || memcmp(pos[1], pos[0], n[0] * 4))
                            fail_msg("%s window c %zu d %zu prot %zu merge %u differs", t[vi]->name,
                                     c, d, pi, merges[mi]);
                    }
                    uint64_t sum = 0, want = 0;
                    for (size_t e = 0; e < n[0]; e++)
                        sum += cnt[0][e];
                    for (size_t i = 0; i < c; i++)
                        want += mi % 2 ? cnt_in[i] : 1;
                    assert_int_equal(sum, want);
                }
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        free(ko[i]);
        free(vo[i]);
    }
    free(k);
    free(v);
    free(scratch);
}

#ifdef HAVE_CUDA
static int f16_isnan(uint16_t h)
{
    return (h & 0x7fffu) > 0x7c00u;
}

static void cuda_lossy_cases(void)
{
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    enum { N_MAX = 100, D_MAX = 128, PAD = 5, C_MAX = 257, W = 3 };
    const size_t elems = N_MAX * (D_MAX + PAD);
    uint16_t *x = malloc(elems * 2), *want_x = malloc(elems * 2), *got_x = malloc(elems * 2);
    uint8_t *want = malloc(N_MAX * D_MAX * 3 + 64), *got = malloc(N_MAX * D_MAX * 3 + 64);
    assert_true(x && want_x && got_x && want && got);
    const size_t ns[] = {1, 7, 33, 100};
    for (size_t fi = 0; fi < sizeof(g_fmts) / sizeof(g_fmts[0]); fi++) {
        const struct kvt_quant_fmt *f = &g_fmts[fi];
        for (size_t ni = 0; ni < 4; ni++) {
            for (int kind = 0; kind < 6; kind++) {
                const size_t n = ns[ni], stride = f->head_dim + (kind % 2 ? PAD : 0);
                const size_t bytes = kvt_quant_bytes(f, n);
                fill_f16(x, elems, fi * 1000 + ni * 10 + (size_t)kind, kind);
                ref->quant_f16(f, x, n, stride, want);
                memset(got, GUARD, bytes);
                assert_int_equal(kvt_kcuda_quant_f16(f, x, n, stride, got), 0);
                if (memcmp(got, want, bytes))
                    fail_msg("cuda quant fmt %zu n %zu kind %d differs", fi, n, kind);
                memset(want_x, GUARD, elems * 2);
                memcpy(got_x, want_x, elems * 2);
                ref->dequant_f16(f, want, n, want_x, stride);
                assert_int_equal(kvt_kcuda_dequant_f16(f, want, n, got_x, stride), 0);
                if (memcmp(got_x, want_x, ((n ? n - 1 : 0) * stride + f->head_dim) * 2))
                    fail_msg("cuda dequant fmt %zu n %zu kind %d differs", fi, n, kind);
            }
        }
    }
    const size_t cs[] = {2, 3, 17, 64, 257};
    const size_t ds[] = {1, 7, 16, 64, 128, 129};
    const size_t S = 129 + 3;
    uint16_t *k = malloc(W * C_MAX * S * 2), *v = malloc(W * C_MAX * S * 2);
    uint16_t *ko = malloc(C_MAX * S * 2), *vo = malloc(C_MAX * S * 2), *kg = malloc(C_MAX * S * 2),
             *vg = malloc(C_MAX * S * 2);
    uint32_t wb[C_MAX], gb[W * C_MAX], into[C_MAX], wc[C_MAX], gc[C_MAX], wp[C_MAX], gp[C_MAX];
    uint32_t cnt_in[C_MAX];
    float ws[C_MAX], gs[W * C_MAX];
    assert_true(k && v && ko && vo && kg && vg);
    uint64_t seed = 77;
    for (size_t ci = 0; ci < 5; ci++) {
        for (size_t di = 0; di < 6; di++) {
            const size_t c = cs[ci], d = ds[di], stride = d + (ci % 2 ? 3 : 0);
            for (size_t w = 0; w < W; w++)
                fill_window(k + w * c * stride, v + w * c * stride, c, stride, d, rng_next(&seed),
                            1);
            const size_t lo = c > 4 ? 1 : 0, hi = c > 4 ? c - 2 : c;
            size_t n_a, n_b;
            kvt_cluster_sides(lo, hi, &n_a, &n_b);
            assert_int_equal(
                kvt_kcuda_cluster_match_f16(k, stride, d, c, lo, hi, W, c * stride, gb, gs), 0);
            for (size_t w = 0; w < W; w++) {
                ref->cluster_match_f16(k + w * c * stride, stride, d, c, lo, hi, wb, ws);
                for (size_t a = 0; a < n_a; a++)
                    if (gb[w * n_a + a] != wb[a] || !same_f32(gs[w * n_a + a], ws[a]))
                        fail_msg("cuda match c %zu d %zu w %zu a %zu: %u %a, want %u %a", c, d, w,
                                 a, gb[w * n_a + a], (double)gs[w * n_a + a], wb[a], (double)ws[a]);
            }
            /* The merge of a plan: every A entry with an even index merges into its best. */
            for (size_t i = 0; i < c; i++) {
                into[i] = (uint32_t)i;
                cnt_in[i] = 1 + (uint32_t)(rng_next(&seed) % 4);
            }
            for (size_t a = 0; a < n_a; a += 2)
                if (wb[a] != UINT32_MAX)
                    into[lo + lo % 2 + 2 * a] = wb[a];
            const uint16_t *kw = k + (W - 1) * c * stride, *vw = v + (W - 1) * c * stride;
            size_t n = ref->cluster_merge_f16(kw, vw, stride, d, c, cnt_in, into, ko, vo, S, wc,
                                              wp),
                   gn = 0;
            assert_int_equal(kvt_kcuda_cluster_merge_f16(kw, vw, stride, d, c, cnt_in, into, kg, vg,
                                                         S, gc, gp, &gn),
                             0);
            assert_int_equal(gn, n);
            for (size_t e = 0; e < n; e++) {
                assert_int_equal(gc[e], wc[e]);
                assert_int_equal(gp[e], wp[e]);
                /* A merged NaN's payload is the only thing allowed to differ (CUDA makes its own
                 * canonical NaN; x86 keeps an operand's). */
                for (size_t j = 0; j < d; j++) {
                    const uint16_t a[2] = {kg[e * S + j], vg[e * S + j]};
                    const uint16_t b[2] = {ko[e * S + j], vo[e * S + j]};
                    for (int h = 0; h < 2; h++)
                        if (a[h] != b[h] && !(f16_isnan(a[h]) && f16_isnan(b[h])))
                            fail_msg("cuda merge c %zu d %zu entry %zu channel %zu: %04x, want "
                                     "%04x",
                                     c, d, e, j, a[h], b[h]);
                }
            }
        }
    }
    free(k);
    free(v);
    free(ko);
    free(vo);
    free(kg);
    free(vg);
    free(x);
    free(want_x);
    free(got_x);
    free(want);
    free(got);
}
#endif

static void test_cuda(void **state)
{
    (void)state;
#ifndef HAVE_CUDA
    print_message("skip: CUDA kernels not built (no nvcc at build time)\n");
    skip();
#else
    char why[256];
    if (kvt_kcuda_probe(why, sizeof(why)) != 0) {
        print_message("skip: CUDA kernels built, but no usable device: %s\n", why);
        struct kvt_quant_fmt f = {8, KVT_QUANT_AXIS_TOKEN, 32, 64};
        uint16_t x[64] = {0};
        uint8_t out[128];
        uint32_t b[2], into[2] = {0, 1}, cnt[2], pos[2];
        float s[2];
        size_t n;
        assert_int_equal(kvt_kcuda_quant_f16(&f, x, 1, 64, out), -ENODEV);
        assert_int_equal(kvt_kcuda_dequant_f16(&f, out, 1, x, 64), -ENODEV);
        assert_int_equal(kvt_kcuda_cluster_match_f16(x, 2, 2, 2, 0, 2, 1, 4, b, s), -ENODEV);
        assert_int_equal(
            kvt_kcuda_cluster_merge_f16(x, x, 2, 2, 2, NULL, into, x, x, 2, cnt, pos, &n), -ENODEV);
        /* Argument checks come first. */
        f.bits = 5;
        assert_int_equal(kvt_kcuda_quant_f16(&f, x, 1, 64, out), KVT_E_INVAL);
        into[0] = 1;
        into[1] = 0;
        assert_int_equal(
            kvt_kcuda_cluster_merge_f16(x, x, 2, 2, 2, NULL, into, x, x, 2, cnt, pos, &n),
            KVT_E_INVAL);
        skip();
        return;
    }
    cuda_lossy_cases();
    print_message("CUDA quantize, dequantize, cluster match and merge match the reference\n");
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_fmt),
        cmocka_unit_test(test_quant_scale),
        cmocka_unit_test(test_quant_reference_cases),
        cmocka_unit_test(test_quant_variants),
        cmocka_unit_test(test_quant_chunk),
        cmocka_unit_test(test_cluster_match_reference),
        cmocka_unit_test(test_cluster_window),
        cmocka_unit_test(test_cluster_variants),
        cmocka_unit_test(test_cuda),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
