/*
 * RoPE re-rotation (kernels/rope.h, kvt_kernels rope_shift_f16): every variant (and the CUDA
 * version, when a device exists) bit-identical to the reference on random keys of odd shapes,
 * both pair styles, partial rotary dims; a shift of 0 changes nothing; channels past rotary_dims
 * are untouched; and the property reuse needs: keys computed at position p and shifted to q
 * match keys computed at q directly within 2 fp16 ulps of each channel pair's length (one more
 * rounding to fp16 than the direct computation, and fp32 products).
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

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"
#ifdef HAVE_CUDA
#include <errno.h>

#include "kernels/cuda/kcuda.h"
#include "kvtier/errors.h"
#endif

static uint64_t rng = 0x12345678abcdefull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 4.0f - 2.0f;
}

/* Rotates raw fp32 keys to position pos in double precision, the way an engine computes RoPE,
 * rounded to fp16 once. */
static void rope_direct(const float *raw, size_t head_dim, size_t rot, int style, double theta,
                        int64_t pos, uint16_t *out)
{
    size_t half = rot / 2;
    for (size_t c = 0; c < head_dim; c++)
        out[c] = kvt_f32_to_f16(raw[c]);
    for (size_t i = 0; i < half; i++) {
        double a = (double)pos * pow(theta, -2.0 * (double)i / (double)rot);
        size_t x = style == KVT_ROPE_GPTJ ? 2 * i : i,
               y = style == KVT_ROPE_GPTJ ? 2 * i + 1 : i + half;
        double xv = raw[x], yv = raw[y];
        out[x] = kvt_f32_to_f16((float)(xv * cos(a) - yv * sin(a)));
        out[y] = kvt_f32_to_f16((float)(xv * sin(a) + yv * cos(a)));
    }
}

/* |a - b| in fp16 ulps at magnitude m (2^-24 below the normal range). */
static float pair_ulps(uint16_t a, uint16_t b, float m)
{
    int e;
    frexpf(m, &e);
    float ulp = m < 6.103515625e-05f ? 5.9604645e-08f : ldexpf(1.0f, e - 11);
    return fabsf(kvt_f16_to_f32(a) - kvt_f16_to_f32(b)) / ulp;
}

static void test_variants_match_reference(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    const size_t dims[] = {2, 16, 30, 64, 128, 130};
    const size_t heads[] = {1, 3};
    const size_t ns[] = {0, 1, 7, 33};
    float cs[KVT_ROPE_DIMS_MAX];
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++) {
        const struct kvt_kernels *t = kvt_kernels_variant((enum kvt_kernels_variant)v);
        if (!t)
            continue;
        assert_non_null(t->rope_shift_f16);
        for (size_t di = 0; di < sizeof(dims) / sizeof(dims[0]); di++)
            for (size_t hi = 0; hi < 2; hi++)
                for (size_t ni = 0; ni < 4; ni++)
                    for (int style = 0; style < 2; style++)
                        for (size_t rot = 2; rot <= dims[di]; rot += dims[di] > 16 ? 14 : 2) {
                            size_t hd = dims[di], nh = heads[hi], n = ns[ni];
                            size_t stride = 2 * nh * hd + 3; /* keys, values, a gap */
                            size_t elems = n * stride + 1;
                            uint16_t *a = malloc(elems * 2), *b = malloc(elems * 2);
                            for (size_t i = 0; i < elems; i++)
                                a[i] = kvt_f32_to_f16(frand());
                            memcpy(b, a, elems * 2);
                            int64_t delta = (int64_t)(rng % 20000) - 10000;
                            kvt_rope_shift_table(10000.0, rot & ~(size_t)1, delta, cs);
                            ref->rope_shift_f16(a, n, stride, nh, hd, rot & ~(size_t)1, style, cs);
                            t->rope_shift_f16(b, n, stride, nh, hd, rot & ~(size_t)1, style, cs);
                            assert_memory_equal(a, b, elems * 2);
                            free(a);
                            free(b);
                        }
    }
}

static void test_zero_shift_and_untouched_channels(void **state)
{
    (void)state;
    enum { N = 5, H = 2, D = 64, ROT = 32, STRIDE = 2 * H * D };
    uint16_t keys[N * STRIDE], orig[N * STRIDE];
    for (size_t i = 0; i < N * STRIDE; i++)
        orig[i] = keys[i] = kvt_f32_to_f16(frand());
    float cs[ROT];
    kvt_rope_shift_table(10000.0, ROT, 0, cs);
    kvt_kernels()->rope_shift_f16(keys, N, STRIDE, H, D, ROT, KVT_ROPE_NEOX, cs);
    assert_memory_equal(keys, orig, sizeof(keys)); /* cos 1, sin 0: exact */
    kvt_rope_shift_table(10000.0, ROT, 77, cs);
    kvt_kernels()->rope_shift_f16(keys, N, STRIDE, H, D, ROT, KVT_ROPE_NEOX, cs);
    for (size_t r = 0; r < N; r++) {
        for (size_t h = 0; h < H; h++)
            for (size_t c = ROT; c < D; c++) /* past rotary_dims: untouched */
                assert_int_equal(keys[r * STRIDE + h * D + c], orig[r * STRIDE + h * D + c]);
        for (size_t c = H * D; c < STRIDE; c++) /* the values: untouched */
            assert_int_equal(keys[r * STRIDE + c], orig[r * STRIDE + c]);
    }
}

/* Keys computed at p, shifted to q, against keys computed at q: the reuse property. */
static void test_shift_matches_direct(void **state)
{
    (void)state;
    enum { D = 64 };
    const int64_t ps[] = {0, 5, 300, 4000, 8000};
    const int64_t qs[] = {0, 17, 1024, 8191};
    float raw[D], cs[D];
    uint16_t at_p[D], at_q[D];
    float worst = 0;
    for (int style = 0; style < 2; style++)
        for (size_t pi = 0; pi < 5; pi++)
            for (size_t qi = 0; qi < 4; qi++)
                for (int trial = 0; trial < 50; trial++) {
                    for (size_t c = 0; c < D; c++)
                        raw[c] = frand();
                    rope_direct(raw, D, D, style, 100000.0, ps[pi], at_p);
                    rope_direct(raw, D, D, style, 100000.0, qs[qi], at_q);
                    kvt_rope_shift_table(100000.0, D, qs[qi] - ps[pi], cs);
                    kvt_kernels()->rope_shift_f16(at_p, 1, D, 1, D, D, style, cs);
                    for (size_t i = 0; i < D / 2; i++) {
                        /* A rotation mixes the two values of a pair, so the rounding of the
                         * larger one shows in the smaller: errors are counted in fp16 ulps of
                         * the pair's length. */
                        size_t x = style ? 2 * i : i, y = style ? 2 * i + 1 : i + D / 2;
                        float qx = kvt_f16_to_f32(at_q[x]), qy = kvt_f16_to_f32(at_q[y]);
                        float len = sqrtf(qx * qx + qy * qy);
                        worst = fmaxf(worst, pair_ulps(at_p[x], at_q[x], len));
                        worst = fmaxf(worst, pair_ulps(at_p[y], at_q[y], len));
                    }
                }
    print_message("rope shift vs direct: worst %.2f fp16 ulps of the pair's length\n", worst);
    assert_true(worst <= 2.0f);
}

static void test_cuda(void **state)
{
    (void)state;
#ifndef HAVE_CUDA
    print_message("skip: CUDA kernels not built (no nvcc at build time)\n");
    skip();
#else
    char why[256] = "";
    float cs[64];
    uint16_t k[128] = {0};
    kvt_rope_shift_table(10000.0, 64, 3, cs);
    assert_int_equal(kvt_kcuda_rope_shift_f16(k, 1, 128, 1, 64, 63, 0, cs), KVT_E_INVAL);
    if (kvt_kcuda_probe(why, sizeof(why)) != 0) {
        print_message("skip: CUDA kernels built, but no usable device: %s\n", why);
        assert_int_equal(kvt_kcuda_rope_shift_f16(k, 1, 128, 1, 64, 64, 0, cs), -ENODEV);
        skip();
        return;
    }
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    enum { N = 301, H = 3, D = 64, STRIDE = 2 * H * D };
    static uint16_t a[N * STRIDE], b[N * STRIDE];
    for (int style = 0; style < 2; style++) {
        for (size_t i = 0; i < N * STRIDE; i++)
            a[i] = b[i] = kvt_f32_to_f16(frand());
        kvt_rope_shift_table(10000.0, 48, -1234, cs);
        ref->rope_shift_f16(a, N, STRIDE, H, D, 48, style, cs);
        assert_int_equal(kvt_kcuda_rope_shift_f16(b, N, STRIDE, H, D, 48, style, cs), 0);
        assert_memory_equal(a, b, sizeof(a));
    }
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_variants_match_reference),
        cmocka_unit_test(test_zero_shift_and_untouched_channels),
        cmocka_unit_test(test_shift_matches_direct),
        cmocka_unit_test(test_cuda),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
