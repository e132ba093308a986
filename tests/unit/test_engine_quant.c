/*
 * Engine number formats: half-precision conversion, dequantization of each block type in the model
 * (Q4_1, Q8_0, plus F16/F32 rows) against hand-computed blocks, activation quantization, and the
 * portable and SIMD dot products and exp approximation against references.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/quant.h"

static void test_fp16_known_values(void **state)
{
    (void)state;
    kvt_eng_quant_init(0);
    assert_int_equal(kvt_eng_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(kvt_eng_fp32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(kvt_eng_fp32_to_fp16(0.0f), 0x0000);
    assert_int_equal(kvt_eng_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(kvt_eng_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(kvt_eng_fp32_to_fp16(65519.0f), 0x7bff); /* rounds down to the max */
    assert_int_equal(kvt_eng_fp32_to_fp16(65520.0f), 0x7c00); /* rounds up to infinity */
    assert_int_equal(kvt_eng_fp32_to_fp16(0x1p-24f), 0x0001); /* smallest subnormal */
    assert_int_equal(kvt_eng_fp32_to_fp16(0x1p-25f), 0x0000); /* tie to even: zero */
    assert_int_equal(kvt_eng_fp32_to_fp16(0x1.8p-25f), 0x0001);
    assert_int_equal(kvt_eng_fp32_to_fp16(0.1f), 0x2e66);
    /* 1 + 2^-11 is halfway between 1 and the next half: ties go to the even mantissa. */
    assert_int_equal(kvt_eng_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(kvt_eng_fp32_to_fp16(1.0f + 0x1.8p-10f), 0x3c02);
    assert_true(isnan(kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16(NAN))));
    assert_true(kvt_eng_fp16_to_fp32(0x0001) == 0x1p-24f);
    assert_true(kvt_eng_fp16_to_fp32(0x7c00) == INFINITY);
}

static void test_fp16_round_trip_all(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN payloads need not survive */
        assert_int_equal(kvt_eng_fp32_to_fp16(kvt_eng_fp16_to_fp32((uint16_t)h)), h);
    }
}

static void test_dequant_q4_1_block(void **state)
{
    (void)state;
    struct kvt_eng_block_q4_1 b;
    b.d = 0x3800; /* 0.5 */
    b.m = 0xbc00; /* -1.0 */
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float out[32];
    assert_int_equal(kvt_eng_dequantize_row(KVT_ENG_TYPE_Q4_1, &b, out, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == 0.5f * (float)j - 1.0f);
        assert_true(out[j + 16] == 0.5f * (float)(15 - j) - 1.0f);
    }
    assert_int_not_equal(kvt_eng_dequantize_row(KVT_ENG_TYPE_Q4_1, &b, out, 31), 0);
}

static void test_dequant_q8_0_block(void **state)
{
    (void)state;
    struct kvt_eng_block_q8_0 b[2];
    b[0].d = 0x3400; /* 0.25 */
    b[1].d = 0xc000; /* -2.0 */
    for (int j = 0; j < 32; j++) {
        b[0].qs[j] = (int8_t)(j * 8 - 128);
        b[1].qs[j] = (int8_t)(127 - j);
    }
    float out[64];
    assert_int_equal(kvt_eng_dequantize_row(KVT_ENG_TYPE_Q8_0, b, out, 64), 0);
    for (int j = 0; j < 32; j++) {
        assert_true(out[j] == 0.25f * (float)(j * 8 - 128));
        assert_true(out[32 + j] == -2.0f * (float)(127 - j));
    }
}

static void test_dequant_f16_f32_rows(void **state)
{
    (void)state;
    uint16_t h[4] = {0x3c00, 0xc000, 0x3800, 0x0000};
    float f[4] = {1.5f, -3.25f, 0.0f, 7.0f}, out[4];
    assert_int_equal(kvt_eng_dequantize_row(KVT_ENG_TYPE_F16, h, out, 4), 0);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.5f && out[3] == 0.0f);
    assert_int_equal(kvt_eng_dequantize_row(KVT_ENG_TYPE_F32, f, out, 4), 0);
    assert_memory_equal(out, f, sizeof(f));
}

static void test_quantize_q8_1(void **state)
{
    (void)state;
    float x[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16) * 0.5f; /* amax 8 at j = 0 */
    struct kvt_eng_block_q8_1 b;
    kvt_eng_quantize_act(KVT_ENG_ACT_Q8_1, x, &b, 32);
    assert_true(kvt_eng_fp16_to_fp32(b.d) ==
                kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16(8.0f / 127)));
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        assert_int_equal(b.qs[j], (int)nearbyintf(x[j] * (127.0f / 8.0f)));
        sum += b.qs[j];
    }
    assert_true(kvt_eng_fp16_to_fp32(b.s) ==
                kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16((float)sum * (8.0f / 127))));
    assert_int_equal(b.qs[0], -127);
    float zero[32] = {0};
    kvt_eng_quantize_act(KVT_ENG_ACT_Q8_1, zero, &b, 32);
    assert_int_equal(b.d, 0);
    for (int j = 0; j < 32; j++)
        assert_int_equal(b.qs[j], 0);
}

static uint32_t rng_state = 12345;
static float frand(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* Each dot product, in both the portable and the SIMD form, against a double-precision sum of
 * the dequantized operands. */
static void check_dots(void)
{
    enum { N = 576, NB = N / 32 };
    struct kvt_eng_block_q4_1 w4[NB];
    struct kvt_eng_block_q8_0 w8[NB];
    struct kvt_eng_block_q8_1 a1[NB];
    struct kvt_eng_block_q8_0 a0[NB];
    float x[N];
    for (int i = 0; i < NB; i++) {
        w4[i].d = kvt_eng_fp32_to_fp16(0.01f + 0.001f * (float)i);
        w4[i].m = kvt_eng_fp32_to_fp16(-0.08f);
        w8[i].d = kvt_eng_fp32_to_fp16(0.002f);
        for (int j = 0; j < 16; j++)
            w4[i].qs[j] = (uint8_t)((rng_state = rng_state * 1664525u + 1013904223u) >> 24);
        for (int j = 0; j < 32; j++)
            w8[i].qs[j] = (int8_t)((rng_state = rng_state * 1664525u + 1013904223u) >> 24);
    }
    for (int i = 0; i < N; i++)
        x[i] = frand();
    kvt_eng_quantize_act(KVT_ENG_ACT_Q8_1, x, a1, N);
    kvt_eng_quantize_act(KVT_ENG_ACT_Q8_0, x, a0, N);

    double ref = 0.0;
    /* Q4_1 uses the stored s = d * sum(q), rounded to fp16: the reference does the same. */
    for (int i = 0; i < NB; i++) {
        double dw = kvt_eng_fp16_to_fp32(w4[i].d), m = kvt_eng_fp16_to_fp32(w4[i].m);
        double da = kvt_eng_fp16_to_fp32(a1[i].d);
        long sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (w4[i].qs[j] & 0xf) * a1[i].qs[j] + (w4[i].qs[j] >> 4) * a1[i].qs[j + 16];
        ref += dw * da * (double)sumi + m * kvt_eng_fp16_to_fp32(a1[i].s);
    }
    float got = kvt_eng_dot(KVT_ENG_TYPE_Q4_1, w4, a1, N);
    assert_true(fabs(got - ref) <= 1e-4 * (1.0 + fabs(ref)));

    ref = 0.0;
    for (int i = 0; i < NB; i++) {
        long sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += w8[i].qs[j] * a0[i].qs[j];
        ref += (double)kvt_eng_fp16_to_fp32(w8[i].d) * kvt_eng_fp16_to_fp32(a0[i].d) * (double)sumi;
    }
    got = kvt_eng_dot(KVT_ENG_TYPE_Q8_0, w8, a0, N);
    assert_true(fabs(got - ref) <= 1e-4 * (1.0 + fabs(ref)));

    /* The four-row kernels give exactly the single dot products' bits. */
    struct kvt_eng_block_q8_1 a1s[4][NB];
    struct kvt_eng_block_q8_0 a0s[4][NB];
    for (int t = 0; t < 4; t++) {
        float xt[N];
        for (int i = 0; i < N; i++)
            xt[i] = frand() * (float)(t + 1);
        kvt_eng_quantize_act(KVT_ENG_ACT_Q8_1, xt, a1s[t], N);
        kvt_eng_quantize_act(KVT_ENG_ACT_Q8_0, xt, a0s[t], N);
    }
    const void *x1[4] = {a1s[0], a1s[1], a1s[2], a1s[3]};
    const void *x0[4] = {a0s[0], a0s[1], a0s[2], a0s[3]};
    float o4[4];
    kvt_eng_dot_x4(KVT_ENG_TYPE_Q4_1, w4, x1, N, o4);
    for (int t = 0; t < 4; t++)
        assert_true(o4[t] == kvt_eng_dot(KVT_ENG_TYPE_Q4_1, w4, a1s[t], N));
    const void *x1x8[8] = {a1s[0], a1s[1], a1s[2], a1s[3], a1s[3], a1s[2], a1s[1], a1s[0]};
    float o8[8];
    if (kvt_eng_dot_x8(KVT_ENG_TYPE_Q4_1, w4, x1x8, N, o8) == 0)
        for (int t = 0; t < 8; t++)
            assert_true(o8[t] == kvt_eng_dot(KVT_ENG_TYPE_Q4_1, w4, x1x8[t], N));
    kvt_eng_dot_x4(KVT_ENG_TYPE_Q8_0, w8, x0, N, o4);
    for (int t = 0; t < 4; t++)
        assert_true(o4[t] == kvt_eng_dot(KVT_ENG_TYPE_Q8_0, w8, a0s[t], N));

    float r16[20];
    for (int i = 0; i < 20; i++)
        r16[i] = frand();
    float want[20];
    for (int i = 0; i < 20; i++)
        want[i] = kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16(r16[i] * 0.37f));
    kvt_eng_scale_round_f16(r16, 20, 0.37f);
    assert_memory_equal(r16, want, sizeof(want));

    uint16_t h[64];
    float q[64], acc[64] = {0};
    ref = 0.0;
    for (int i = 0; i < 64; i++) {
        h[i] = kvt_eng_fp32_to_fp16(frand());
        q[i] = frand();
        ref += (double)q[i] * kvt_eng_fp16_to_fp32(h[i]);
    }
    assert_true(fabs(kvt_eng_dot_f32_f16(q, h, 64) - ref) < 1e-5);

    /* Span kernels equal per-row calls. Rows of 80 halves; 16 in head_dim 16 at offset 8. */
    uint16_t rowsbuf[5 * 80];
    float pr[5], sc[5], lanes_a[8 * 16] = {0}, lanes_b[8 * 16] = {0};
    for (int i = 0; i < 5 * 80; i++)
        rowsbuf[i] = kvt_eng_fp32_to_fp16(frand());
    for (int i = 0; i < 5; i++)
        pr[i] = frand();
    kvt_eng_attn_scores(q, rowsbuf + 8, 80, 5, 16, 0.125f, sc);
    kvt_eng_attn_values(pr, rowsbuf + 8, 80, 5, 6, 16, lanes_a);
    for (int i = 0; i < 5; i++) {
        assert_true(sc[i] == kvt_eng_dot_f32_f16(q, rowsbuf + 8 + i * 80, 16) * 0.125f);
        kvt_eng_axpy_f16(pr[i], rowsbuf + 8 + i * 80, lanes_b + ((6 + i) & 7) * 16, 16);
    }
    assert_memory_equal(lanes_a, lanes_b, sizeof(lanes_a));
    kvt_eng_axpy_f16(0.5f, h, acc, 64);
    for (int i = 0; i < 64; i++)
        assert_true(acc[i] == 0.5f * kvt_eng_fp16_to_fp32(h[i]));
}

static void test_dots_generic(void **state)
{
    (void)state;
    assert_string_equal(kvt_eng_quant_init(1), "generic");
    check_dots();
}

static void test_dots_simd(void **state)
{
    (void)state;
    const char *path = kvt_eng_quant_init(0);
    if (strcmp(path, "generic") == 0)
        skip();
    check_dots();
}

static void check_exp(void)
{
    for (float x = -100.0f; x <= 80.0f; x += 0.0137f) {
        double ref = exp((double)x);
        float got = kvt_eng_expf_approx(x);
        assert_true(fabs(got - ref) <= 4e-7 * ref + 1e-37);
    }
    assert_true(kvt_eng_expf_approx(-INFINITY) == 0.0f);
    assert_true(kvt_eng_expf_approx(0.0f) == 1.0f);

    float v[13], w[13];
    for (int i = 0; i < 13; i++)
        v[i] = w[i] = -0.3f * (float)i;
    double s = kvt_eng_softmax_exp(v, 13, 0.0f);
    double ref = 0.0;
    for (int i = 0; i < 13; i++) {
        assert_true(v[i] == kvt_eng_expf_approx(w[i]));
        ref += v[i];
    }
    assert_true(fabs(s - ref) < 1e-6);

    float g[16], u[16], out[16];
    for (int i = 0; i < 16; i++) {
        g[i] = frand() * 6.0f;
        u[i] = frand();
    }
    kvt_eng_swiglu(g, u, out, 16);
    for (int i = 0; i < 16; i++)
        assert_true(fabs(out[i] - g[i] / (1.0 + exp(-g[i])) * u[i]) < 1e-5);
}

static void test_exp_generic(void **state)
{
    (void)state;
    kvt_eng_quant_init(1);
    check_exp();
}

static void test_exp_simd(void **state)
{
    (void)state;
    if (strcmp(kvt_eng_quant_init(0), "generic") == 0)
        skip();
    check_exp();
    /* The SIMD exp must give exactly the portable one's bits. */
    float v[8], w[8];
    for (int i = 0; i < 8; i++)
        v[i] = w[i] = -2.5f * (float)i - 0.125f;
    kvt_eng_softmax_exp(v, 8, 0.0f);
    for (int i = 0; i < 8; i++)
        assert_true(v[i] == kvt_eng_expf_approx(w[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_known_values),    cmocka_unit_test(test_fp16_round_trip_all),
        cmocka_unit_test(test_dequant_q4_1_block),   cmocka_unit_test(test_dequant_q8_0_block),
        cmocka_unit_test(test_dequant_f16_f32_rows), cmocka_unit_test(test_quantize_q8_1),
        cmocka_unit_test(test_dots_generic),         cmocka_unit_test(test_dots_simd),
        cmocka_unit_test(test_exp_generic),          cmocka_unit_test(test_exp_simd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
