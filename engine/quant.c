/*
 * Block formats, conversions and dot products. The portable versions are written as plain loops
 * over one block; the AVX2 versions (x86-64 only) are compiled with a target attribute so the rest
 * of the build keeps the baseline instruction set, and are picked at run time by
 * kvt_eng_quant_init after a CPU check.
 */
#include "engine/quant.h"
#include "kernels/half.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KVT_ENG_HAVE_AVX2 1
#else
#define KVT_ENG_HAVE_AVX2 0
#endif

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The tree's one fp16 conversion (kernels/half.h), so that the engine and kvtier agree on every
 * bit of the KV they exchange. */
float kvt_eng_fp16_to_fp32(uint16_t h)
{
    return kvt_f16_to_f32(h);
}

uint16_t kvt_eng_fp32_to_fp16(float f)
{
    return kvt_f32_to_f16(f);
}

/* fp16 -> fp32 through a table on the hot paths of the portable code. */
static float g_f16_table[1 << 16];
static int g_f16_table_ready;

static inline float h2f(uint16_t h)
{
    return g_f16_table[h];
}

int kvt_eng_dequantize_row(enum kvt_eng_type t, const void *row, float *out, size_t n)
{
    size_t nb = n / KVT_ENG_QK;
    switch (t) {
    case KVT_ENG_TYPE_F32:
        memcpy(out, row, n * sizeof(float));
        return 0;
    case KVT_ENG_TYPE_F16: {
        const uint16_t *h = row;
        for (size_t i = 0; i < n; i++)
            out[i] = kvt_eng_fp16_to_fp32(h[i]);
        return 0;
    }
    case KVT_ENG_TYPE_Q4_1: {
        const struct kvt_eng_block_q4_1 *b = row;
        if (n % KVT_ENG_QK)
            return -EINVAL;
        for (size_t i = 0; i < nb; i++) {
            float d = kvt_eng_fp16_to_fp32(b[i].d), m = kvt_eng_fp16_to_fp32(b[i].m);
            for (int j = 0; j < 16; j++) {
                out[i * 32 + j] = (float)(b[i].qs[j] & 0xf) * d + m;
                out[i * 32 + j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
            }
        }
        return 0;
    }
    case KVT_ENG_TYPE_Q8_0: {
        const struct kvt_eng_block_q8_0 *b = row;
        if (n % KVT_ENG_QK)
            return -EINVAL;
        for (size_t i = 0; i < nb; i++) {
            float d = kvt_eng_fp16_to_fp32(b[i].d);
            for (int j = 0; j < 32; j++)
                out[i * 32 + j] = (float)b[i].qs[j] * d;
        }
        return 0;
    }
    }
    return -EINVAL;
}

enum kvt_eng_act_type kvt_eng_act_type_for(enum kvt_eng_type weight_type)
{
    switch (weight_type) {
    case KVT_ENG_TYPE_Q4_1:
        return KVT_ENG_ACT_Q8_1;
    case KVT_ENG_TYPE_Q8_0:
        return KVT_ENG_ACT_Q8_0;
    default:
        return KVT_ENG_ACT_F32;
    }
}

size_t kvt_eng_act_row_bytes(enum kvt_eng_act_type a, size_t n)
{
    switch (a) {
    case KVT_ENG_ACT_Q8_0:
        return n / KVT_ENG_QK * sizeof(struct kvt_eng_block_q8_0);
    case KVT_ENG_ACT_Q8_1:
        return n / KVT_ENG_QK * sizeof(struct kvt_eng_block_q8_1);
    default:
        return n * sizeof(float);
    }
}

void kvt_eng_quantize_act(enum kvt_eng_act_type a, const float *x, void *out, size_t n)
{
    size_t nb = n / KVT_ENG_QK;
    if (a == KVT_ENG_ACT_F32) {
        memcpy(out, x, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        const float *xb = x + i * KVT_ENG_QK;
        float amax = 0.0f;
        for (int j = 0; j < KVT_ENG_QK; j++) {
            float v = fabsf(xb[j]);
            amax = v > amax ? v : amax;
        }
        /* The scale and the rounding (to nearest even) are those of llama.cpp's x86 quantizer, so
         * that both engines feed the same integers to the dot products. */
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int8_t *qs;
        if (a == KVT_ENG_ACT_Q8_0) {
            struct kvt_eng_block_q8_0 *b = (struct kvt_eng_block_q8_0 *)out + i;
            b->d = kvt_eng_fp32_to_fp16(d);
            qs = b->qs;
            for (int j = 0; j < KVT_ENG_QK; j++)
                qs[j] = (int8_t)nearbyintf(xb[j] * id);
        } else {
            struct kvt_eng_block_q8_1 *b = (struct kvt_eng_block_q8_1 *)out + i;
            int sum = 0;
            b->d = kvt_eng_fp32_to_fp16(d);
            qs = b->qs;
            for (int j = 0; j < KVT_ENG_QK; j++) {
                qs[j] = (int8_t)nearbyintf(xb[j] * id);
                sum += qs[j];
            }
            b->s = kvt_eng_fp32_to_fp16((float)sum * d);
        }
    }
}

/* ---- portable dot products --------------------------------------------------------------------
 */

/* The portable kernels keep the lane structure of the AVX2 ones (8 float accumulators, fused
 * multiply-adds, the same final horizontal sum), so that both paths produce the same bits. */

static inline float hsum8_lanes(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

static float dot_q4_1_q8_1_c(const void *w, const void *x, size_t nb)
{
    const struct kvt_eng_block_q4_1 *a = w;
    const struct kvt_eng_block_q8_1 *b = x;
    float acc[8] = {0}, summs = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        float d = h2f(a[i].d) * h2f(b[i].d);
        summs += h2f(a[i].m) * h2f(b[i].s);
        /* Lane k holds elements 4k..4k+3 (low nibbles are elements 0..15, high 16..31). */
        for (int k = 0; k < 8; k++) {
            int s = 0;
            for (int e = 4 * k; e < 4 * k + 4; e++) {
                int q = e < 16 ? (a[i].qs[e] & 0xf) : (a[i].qs[e - 16] >> 4);
                s += q * b[i].qs[e];
            }
            acc[k] = fmaf(d, (float)s, acc[k]);
        }
    }
    return hsum8_lanes(acc) + summs;
}

static float dot_q8_0_q8_0_c(const void *w, const void *x, size_t nb)
{
    const struct kvt_eng_block_q8_0 *a = w;
    const struct kvt_eng_block_q8_0 *b = x;
    float acc[8] = {0};
    for (size_t i = 0; i < nb; i++) {
        float d = h2f(a[i].d) * h2f(b[i].d);
        for (int k = 0; k < 8; k++) {
            int s = 0;
            for (int e = 4 * k; e < 4 * k + 4; e++)
                s += a[i].qs[e] * b[i].qs[e];
            acc[k] = fmaf(d, (float)s, acc[k]);
        }
    }
    return hsum8_lanes(acc);
}

static float dot_f32_f16_c(const float *x, const uint16_t *h, size_t n)
{
    float acc[8] = {0};
    for (size_t i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] = fmaf(x[i + j], h2f(h[i + j]), acc[j]);
    return hsum8_lanes(acc);
}

static void axpy_f16_c(float a, const uint16_t *h, float *acc, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc[i] = fmaf(a, h2f(h[i]), acc[i]);
}

/* ---- exp approximation ------------------------------------------------------------------------
 */

#define EXP_SHIFT 0x1.8p23f      /* adding it rounds to an integer in the low mantissa bits */
#define EXP_LOG2E 0x1.715476p+0f /* 1 / ln 2 */
#define EXP_LN2_HI 0x1.62e4p-1f  /* ln 2 split in two for an exact reduction */
#define EXP_LN2_LO 0x1.7f7d1cp-20f
#define EXP_C1 0x1.ffffecp-1f
#define EXP_C2 0x1.fffdb6p-2f
#define EXP_C3 0x1.555e66p-3f
#define EXP_C4 0x1.573e2ep-5f
#define EXP_C5 0x1.0e4020p-7f

float kvt_eng_expf_approx(float x)
{
    float z = fmaf(x, EXP_LOG2E, EXP_SHIFT);
    float n = z - EXP_SHIFT;
    float b = fmaf(-n, EXP_LN2_LO, fmaf(-n, EXP_LN2_HI, x));
    uint32_t e = f32_bits(z) << 23;
    float k = bits_f32(e + f32_bits(1.0f)); /* 2^n while n stays in range */
    float u = b * b;
    float j = fmaf(fmaf(fmaf(EXP_C5, b, EXP_C4), u, fmaf(EXP_C3, b, EXP_C2)), u, EXP_C1 * b);
    if (!(fabsf(n) > 126.0f))
        return fmaf(j, k, k);
    /* Out of range for one scale: split 2^n in two factors (or saturate past 192). */
    uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    float s1 = bits_f32(g + 0x7f000000u);
    float s2 = bits_f32(e - g);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

static double softmax_exp_c(float *x, size_t n, float mx)
{
    double sum = 0.0;
    for (size_t b = 0; b < n; b += 8) {
        float e[8] = {0};
        for (size_t i = 0; i < 8 && b + i < n; i++)
            e[i] = x[b + i] = kvt_eng_expf_approx(x[b + i] - mx);
        sum += (double)hsum8_lanes(e);
    }
    return sum;
}

static void swiglu_c(const float *g, const float *u, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = g[i] / (1.0f + kvt_eng_expf_approx(0.0f - g[i])) * u[i];
}

static void scale_round_f16_c(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = h2f(kvt_eng_fp32_to_fp16(x[i] * s));
}

static void attn_scores_c(const float *q, const uint16_t *rows, size_t stride, size_t n, size_t hd,
                          float scale, float *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = dot_f32_f16_c(q, rows + i * stride, hd) * scale;
}

static void attn_values_c(const float *p, const uint16_t *rows, size_t stride, size_t n,
                          size_t pos0, size_t hd, float *lanes)
{
    for (size_t i = 0; i < n; i++)
        axpy_f16_c(p[i], rows + i * stride, lanes + ((pos0 + i) & 7) * hd, hd);
}

/* ---- AVX2 dot products ------------------------------------------------------------------------
 */

#if KVT_ENG_HAVE_AVX2
#define KVT_AVX2 __attribute__((target("avx2,fma,f16c")))

KVT_AVX2 static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehl_ps(lo, lo);
    lo = _mm_add_ps(lo, sh);
    sh = _mm_shuffle_ps(lo, lo, 0x1);
    lo = _mm_add_ss(lo, sh);
    return _mm_cvtss_f32(lo);
}

KVT_AVX2 static float dot_q4_1_q8_1_avx2(const void *w, const void *x, size_t nb)
{
    const struct kvt_eng_block_q4_1 *a = w;
    const struct kvt_eng_block_q8_1 *b = x;
    const __m128i low = _mm_set1_epi8(0xf);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (size_t i = 0; i < nb; i++) {
        float d = _cvtsh_ss(a[i].d) * _cvtsh_ss(b[i].d);
        summs += _cvtsh_ss(a[i].m) * _cvtsh_ss(b[i].s);
        __m128i q = _mm_loadu_si128((const __m128i *)a[i].qs);
        __m128i lo = _mm_and_si128(q, low);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        __m256i qa = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        __m256i qb = _mm256_loadu_si256((const __m256i *)b[i].qs);
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, qb), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum256(acc) + summs;
}

KVT_AVX2 static float dot_q8_0_q8_0_avx2(const void *w, const void *x, size_t nb)
{
    const struct kvt_eng_block_q8_0 *a = w;
    const struct kvt_eng_block_q8_0 *b = x;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < nb; i++) {
        float d = _cvtsh_ss(a[i].d) * _cvtsh_ss(b[i].d);
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i qb = _mm256_loadu_si256((const __m256i *)b[i].qs);
        /* maddubs wants one unsigned operand: move a's sign onto b. */
        __m256i ua = _mm256_sign_epi8(qa, qa);
        __m256i sb = _mm256_sign_epi8(qb, qa);
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum256(acc);
}

KVT_AVX2 static float dot_f32_f16_avx2(const float *x, const uint16_t *h, size_t n)
{
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256 hv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), hv, acc);
    }
    return hsum256(acc);
}

KVT_AVX2 static void axpy_f16_avx2(float a, const uint16_t *h, float *acc, size_t n)
{
    __m256 av = _mm256_set1_ps(a);
    for (size_t i = 0; i < n; i += 8) {
        __m256 hv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)));
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(av, hv, _mm256_loadu_ps(acc + i)));
    }
}
KVT_AVX2 static inline __m256 expf_avx2(__m256 x)
{
    const __m256 shift = _mm256_set1_ps(EXP_SHIFT);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), shift);
    __m256 n = _mm256_sub_ps(z, shift);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO),
                                _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(EXP_C5), b, _mm256_set1_ps(EXP_C4)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(EXP_C3), b, _mm256_set1_ps(EXP_C2))),
        u, _mm256_mul_ps(_mm256_set1_ps(EXP_C1), b));
    __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(big))
        return _mm256_fmadd_ps(j, k, k);
    /* Rare: some lane needs the two-factor scale; do those lanes one by one. */
    float xs[8], rs[8];
    _mm256_storeu_ps(xs, x);
    _mm256_storeu_ps(rs, _mm256_fmadd_ps(j, k, k));
    int mask = _mm256_movemask_ps(big);
    for (int i = 0; i < 8; i++)
        if (mask & (1 << i))
            rs[i] = kvt_eng_expf_approx(xs[i]);
    return _mm256_loadu_ps(rs);
}

KVT_AVX2 static double softmax_exp_avx2(float *x, size_t n, float mx)
{
    double sum = 0.0;
    __m256 m = _mm256_set1_ps(mx);
    size_t b = 0;
    for (; b + 8 <= n; b += 8) {
        __m256 v = expf_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + b), m));
        _mm256_storeu_ps(x + b, v);
        sum += (double)hsum256(v);
    }
    if (b < n) {
        float e[8] = {0};
        for (size_t i = 0; b + i < n; i++)
            e[i] = x[b + i] - mx;
        __m256 v = expf_avx2(_mm256_loadu_ps(e));
        _mm256_storeu_ps(e, v);
        for (size_t i = 0; i < 8; i++) {
            if (b + i < n)
                x[b + i] = e[i];
            else
                e[i] = 0.0f;
        }
        sum += (double)hsum256(_mm256_loadu_ps(e));
    }
    return sum;
}

KVT_AVX2 static void swiglu_avx2(const float *g, const float *u, float *out, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 ex = expf_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, ex));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
}
/* NT activation rows against one weight row; NT is a compile-time constant at each call. */
KVT_AVX2 static inline void dot_q4_1_q8_1_xn_avx2(const void *w, const void *const *x, size_t nb,
                                                  float *out, int NT)
{
    const struct kvt_eng_block_q4_1 *a = w;
    const __m128i low = _mm_set1_epi8(0xf);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    float summs[8];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        summs[t] = 0.0f;
    }
    for (size_t i = 0; i < nb; i++) {
        float da = _cvtsh_ss(a[i].d), ma = _cvtsh_ss(a[i].m);
        __m128i q = _mm_loadu_si128((const __m128i *)a[i].qs);
        __m128i lo = _mm_and_si128(q, low);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
        __m256i qa = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        for (int t = 0; t < NT; t++) {
            const struct kvt_eng_block_q8_1 *b = (const struct kvt_eng_block_q8_1 *)x[t] + i;
            float d = da * _cvtsh_ss(b->d);
            summs[t] += ma * _cvtsh_ss(b->s);
            __m256i qb = _mm256_loadu_si256((const __m256i *)b->qs);
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, qb), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++)
        out[t] = hsum256(acc[t]) + summs[t];
}

KVT_AVX2 static void dot_q4_1_q8_1_x4_avx2(const void *w, const void *const x[4], size_t nb,
                                           float out[4])
{
    dot_q4_1_q8_1_xn_avx2(w, x, nb, out, 4);
}

KVT_AVX2 static void dot_q4_1_q8_1_x8_avx2(const void *w, const void *const x[8], size_t nb,
                                           float out[8])
{
    dot_q4_1_q8_1_xn_avx2(w, x, nb, out, 8);
}

KVT_AVX2 static void dot_q8_0_q8_0_x4_avx2(const void *w, const void *const x[4], size_t nb,
                                           float out[4])
{
    const struct kvt_eng_block_q8_0 *a = w;
    const struct kvt_eng_block_q8_0 *b[4] = {x[0], x[1], x[2], x[3]};
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (size_t i = 0; i < nb; i++) {
        float da = _cvtsh_ss(a[i].d);
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i ua = _mm256_sign_epi8(qa, qa);
        for (int t = 0; t < 4; t++) {
            float d = da * _cvtsh_ss(b[t][i].d);
            __m256i qb = _mm256_loadu_si256((const __m256i *)b[t][i].qs);
            __m256i sb = _mm256_sign_epi8(qb, qa);
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++)
        out[t] = hsum256(acc[t]);
}

KVT_AVX2 static void scale_round_f16_avx2(float *x, size_t n, float s)
{
    __m256 sv = _mm256_set1_ps(s);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h =
            _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++)
        x[i] = _cvtsh_ss(_cvtss_sh(x[i] * s, _MM_FROUND_TO_NEAREST_INT));
}
KVT_AVX2 static void attn_scores_avx2(const float *q, const uint16_t *rows, size_t stride, size_t n,
                                      size_t hd, float scale, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const uint16_t *k = rows + i * stride;
        __m256 acc = _mm256_setzero_ps();
        for (size_t d = 0; d < hd; d += 8) {
            __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), kv, acc);
        }
        out[i] = hsum256(acc) * scale;
    }
}

KVT_AVX2 static void attn_values_avx2(const float *p, const uint16_t *rows, size_t stride, size_t n,
                                      size_t pos0, size_t hd, float *lanes)
{
    for (size_t i = 0; i < n; i++) {
        const uint16_t *v = rows + i * stride;
        float *acc = lanes + ((pos0 + i) & 7) * hd;
        __m256 pv = _mm256_set1_ps(p[i]);
        for (size_t d = 0; d < hd; d += 8) {
            __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d)));
            _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(acc + d)));
        }
    }
}
#endif

/* ---- dispatch ---------------------------------------------------------------------------------
 */

static float (*g_dot_q4_1)(const void *, const void *, size_t) = dot_q4_1_q8_1_c;
static float (*g_dot_q8_0)(const void *, const void *, size_t) = dot_q8_0_q8_0_c;
static float (*g_dot_f32_f16)(const float *, const uint16_t *, size_t) = dot_f32_f16_c;
static void (*g_axpy_f16)(float, const uint16_t *, float *, size_t) = axpy_f16_c;
static double (*g_softmax_exp)(float *, size_t, float) = softmax_exp_c;
static void (*g_swiglu)(const float *, const float *, float *, size_t) = swiglu_c;
static void (*g_dot_q4_1_x4)(const void *, const void *const[4], size_t, float[4]) = NULL;
static void (*g_dot_q8_0_x4)(const void *, const void *const[4], size_t, float[4]) = NULL;
static void (*g_dot_q4_1_x8)(const void *, const void *const[8], size_t, float[8]) = NULL;
static void (*g_scale_round_f16)(float *, size_t, float) = scale_round_f16_c;
static void (*g_attn_scores)(const float *, const uint16_t *, size_t, size_t, size_t, float,
                             float *) = attn_scores_c;
static void (*g_attn_values)(const float *, const uint16_t *, size_t, size_t, size_t, size_t,
                             float *) = attn_values_c;

const char *kvt_eng_quant_init(int force_generic)
{
    if (!g_f16_table_ready) {
        for (uint32_t i = 0; i < (1u << 16); i++)
            g_f16_table[i] = kvt_eng_fp16_to_fp32((uint16_t)i);
        g_f16_table_ready = 1;
    }
    g_dot_q4_1 = dot_q4_1_q8_1_c;
    g_dot_q8_0 = dot_q8_0_q8_0_c;
    g_dot_f32_f16 = dot_f32_f16_c;
    g_axpy_f16 = axpy_f16_c;
    g_softmax_exp = softmax_exp_c;
    g_swiglu = swiglu_c;
    g_dot_q4_1_x4 = NULL;
    g_dot_q8_0_x4 = NULL;
    g_dot_q4_1_x8 = NULL;
    g_scale_round_f16 = scale_round_f16_c;
    g_attn_scores = attn_scores_c;
    g_attn_values = attn_values_c;
#if KVT_ENG_HAVE_AVX2
    if (!force_generic && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        g_dot_q4_1 = dot_q4_1_q8_1_avx2;
        g_dot_q8_0 = dot_q8_0_q8_0_avx2;
        g_dot_f32_f16 = dot_f32_f16_avx2;
        g_axpy_f16 = axpy_f16_avx2;
        g_softmax_exp = softmax_exp_avx2;
        g_swiglu = swiglu_avx2;
        g_dot_q4_1_x4 = dot_q4_1_q8_1_x4_avx2;
        g_dot_q8_0_x4 = dot_q8_0_q8_0_x4_avx2;
        g_dot_q4_1_x8 = dot_q4_1_q8_1_x8_avx2;
        g_scale_round_f16 = scale_round_f16_avx2;
        g_attn_scores = attn_scores_avx2;
        g_attn_values = attn_values_avx2;
        return "avx2";
    }
#endif
    return "generic";
}

float kvt_eng_dot(enum kvt_eng_type t, const void *w_row, const void *x_act, size_t n)
{
    switch (t) {
    case KVT_ENG_TYPE_Q4_1:
        return g_dot_q4_1(w_row, x_act, n / KVT_ENG_QK);
    case KVT_ENG_TYPE_Q8_0:
        return g_dot_q8_0(w_row, x_act, n / KVT_ENG_QK);
    case KVT_ENG_TYPE_F32: {
        const float *a = w_row, *b = x_act;
        float s = 0.0f;
        for (size_t i = 0; i < n; i++)
            s += a[i] * b[i];
        return s;
    }
    case KVT_ENG_TYPE_F16: {
        const uint16_t *a = w_row;
        const float *b = x_act;
        float s = 0.0f;
        for (size_t i = 0; i < n; i++)
            s += kvt_eng_fp16_to_fp32(a[i]) * b[i];
        return s;
    }
    }
    return 0.0f;
}

float kvt_eng_dot_f32_f16(const float *x, const uint16_t *h, size_t n)
{
    return g_dot_f32_f16(x, h, n);
}

void kvt_eng_axpy_f16(float a, const uint16_t *h, float *acc, size_t n)
{
    g_axpy_f16(a, h, acc, n);
}

double kvt_eng_softmax_exp(float *x, size_t n, float mx)
{
    return g_softmax_exp(x, n, mx);
}

void kvt_eng_swiglu(const float *g, const float *u, float *out, size_t n)
{
    g_swiglu(g, u, out, n);
}

void kvt_eng_dot_x4(enum kvt_eng_type t, const void *w_row, const void *const x[4], size_t n,
                    float out[4])
{
    if (t == KVT_ENG_TYPE_Q4_1 && g_dot_q4_1_x4) {
        g_dot_q4_1_x4(w_row, x, n / KVT_ENG_QK, out);
        return;
    }
    if (t == KVT_ENG_TYPE_Q8_0 && g_dot_q8_0_x4) {
        g_dot_q8_0_x4(w_row, x, n / KVT_ENG_QK, out);
        return;
    }
    for (int i = 0; i < 4; i++)
        out[i] = kvt_eng_dot(t, w_row, x[i], n);
}

void kvt_eng_scale_round_f16(float *x, size_t n, float s)
{
    g_scale_round_f16(x, n, s);
}

int kvt_eng_dot_x8(enum kvt_eng_type t, const void *w_row, const void *const x[8], size_t n,
                   float out[8])
{
    if (t == KVT_ENG_TYPE_Q4_1 && g_dot_q4_1_x8) {
        g_dot_q4_1_x8(w_row, x, n / KVT_ENG_QK, out);
        return 0;
    }
    return -1;
}

void kvt_eng_attn_scores(const float *q, const uint16_t *rows, size_t stride, size_t n, size_t hd,
                         float scale, float *out)
{
    g_attn_scores(q, rows, stride, n, hd, scale, out);
}

void kvt_eng_attn_values(const float *p, const uint16_t *rows, size_t stride, size_t n, size_t pos0,
                         size_t hd, float *lanes)
{
    g_attn_values(p, rows, stride, n, pos0, hd, lanes);
}
