/*
 * AVX2 (+F16C) versions of the lossy kernels (kernels/ref/lossy.c is the reference): group
 * quantize and dequantize, and the matching and merge steps of clustering. Same arithmetic as the
 * reference, in vectors: every lane runs the reference's operations on one element (quantize,
 * dequantize, merge) or one of the 16 partial sums of a dot product (matching), so the results
 * are the same bits. Shapes the vectors do not cover (a group of quantize that is not a multiple
 * of 16, head_dim not a multiple of 8) go to the reference whole. The AVX-512 table uses these
 * too: every CPU with AVX-512 has AVX2 and F16C.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common/assert.h"
#include "kernels/cluster.h"
#include "kernels/internal.h"
#include "kernels/quant.h"

#define KVT_AVX2 __attribute__((target("avx2,f16c")))
#define KVT_AVX2_INLINE __attribute__((target("avx2,f16c"), always_inline)) static inline
/* A macro, not a variable: clang wants the rounding mode as a literal constant. */
#define KVT_ROUND_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

KVT_AVX2_INLINE __m256i f16_keys(__m256i v)
{
    return _mm256_xor_si256(v,
                            _mm256_and_si256(_mm256_srai_epi16(v, 15), _mm256_set1_epi16(0x7fff)));
}

KVT_AVX2_INLINE __m128i f16_keys128(__m128i v)
{
    return _mm_xor_si128(v, _mm_and_si128(_mm_srai_epi16(v, 15), _mm_set1_epi16(0x7fff)));
}

KVT_AVX2_INLINE __m128i nonfinite128(__m128i v)
{
    const __m128i e = _mm_set1_epi16(0x7c00);
    return _mm_cmpeq_epi16(_mm_and_si128(v, e), e);
}

KVT_AVX2_INLINE int16_t hmin16(__m256i v)
{
    __m128i m = _mm_min_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_min_epi16(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_min_epi16(m, _mm_shuffle_epi32(m, 0xb1));
    m = _mm_min_epi16(m, _mm_srli_epi32(m, 16));
    return (int16_t)_mm_cvtsi128_si32(m);
}

KVT_AVX2_INLINE int16_t hmax16(__m256i v)
{
    __m128i m = _mm_max_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi16(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_max_epi16(m, _mm_shuffle_epi32(m, 0xb1));
    m = _mm_max_epi16(m, _mm_srli_epi32(m, 16));
    return (int16_t)_mm_cvtsi128_si32(m);
}

/* Codes of 8 fp16 values as 8 int16 lanes: nearest of (x - m) * inv in double, clamped to
 * [0, levels] (max_pd gives its second operand, 0, for a NaN lane). */
KVT_AVX2_INLINE __m128i codes8(__m128i h, __m256d m_lo, __m256d m_hi, __m256d inv_lo,
                               __m256d inv_hi, __m256d levels)
{
    const __m256d zero = _mm256_setzero_pd();
    __m256 f = _mm256_cvtph_ps(h);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
    lo = _mm256_round_pd(_mm256_mul_pd(_mm256_sub_pd(lo, m_lo), inv_lo), KVT_ROUND_NEAREST);
    hi = _mm256_round_pd(_mm256_mul_pd(_mm256_sub_pd(hi, m_hi), inv_hi), KVT_ROUND_NEAREST);
    lo = _mm256_min_pd(_mm256_max_pd(lo, zero), levels);
    hi = _mm256_min_pd(_mm256_max_pd(hi, zero), levels);
    return _mm_packs_epi32(_mm256_cvtpd_epi32(lo), _mm256_cvtpd_epi32(hi));
}

/* Stores 8 codes (int16 lanes) as element e of the codes: 8 bytes, or 4 of two nibbles. */
KVT_AVX2_INLINE void store_codes8(uint8_t *codes, uint32_t bits, size_t e, __m128i q)
{
    if (bits == 8) {
        _mm_storel_epi64((__m128i *)(codes + e), _mm_packus_epi16(q, q));
        return;
    }
    __m128i n = _mm_or_si128(_mm_and_si128(q, _mm_set1_epi32(0xffff)), _mm_srli_epi32(q, 12));
    n = _mm_packus_epi16(_mm_packs_epi32(n, n), n);
    int32_t b = _mm_cvtsi128_si32(n);
    memcpy(codes + e / 2, &b, 4);
}

/* 8 codes of element e as int32 lanes. */
KVT_AVX2_INLINE __m256i load_codes8(const uint8_t *codes, uint32_t bits, size_t e)
{
    if (bits == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + e)));
    int32_t b;
    memcpy(&b, codes + e / 2, 4);
    __m128i dup = _mm_shuffle_epi8(_mm_cvtsi32_si128(b), _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1,
                                                                       -1, -1, -1, -1, -1, -1, -1));
    __m256i w =
        _mm256_srlv_epi32(_mm256_cvtepu8_epi32(dup), _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
    return _mm256_and_si256(w, _mm256_set1_epi32(0xf));
}

/* fp16(clamp(m + q*s)) of 8 codes. */
KVT_AVX2_INLINE __m128i values8(__m256i q, __m256 s, __m256 m)
{
    __m256 v = _mm256_add_ps(m, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-65504.0f)), _mm256_set1_ps(65504.0f));
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* kvt__quant_group_params with the F16C scalar conversions: the scale search ends at the one
 * smallest fp16 covering the range from any start, so the result is the reference's exactly
 * (measured: the reference's branchy conversions made the parameters half the cost of a group). */
KVT_AVX2_INLINE void group_params(int16_t lo_key, int16_t hi_key, int nonfinite, uint32_t bits,
                                  struct kvt__quant_group *g)
{
    if (nonfinite) {
        g->scale = g->min = KVT_QUANT_NONFINITE;
        g->inv = 0.0;
        return;
    }
    const uint16_t lo = (uint16_t)kvt__kernels_f16_key((uint16_t)lo_key);
    const uint16_t hi = (uint16_t)kvt__kernels_f16_key((uint16_t)hi_key);
    const double range = (double)_cvtsh_ss(hi) - (double)_cvtsh_ss(lo);
    const double levels = (double)((1u << bits) - 1u);
    g->min = lo;
    if (!(range > 0.0)) {
        g->scale = 0;
        g->inv = 0.0;
        return;
    }
    /* The rounded quotient is within a step of the answer: one step up or down without a branch
     * (the steps are data-dependent, so branches mispredict), then the loops of the reference,
     * which find nothing left to do. */
    uint16_t s = _cvtss_sh((float)(range / levels), _MM_FROUND_TO_NEAREST_INT);
    s = (uint16_t)(s + ((double)_cvtsh_ss(s) * levels < range));
    s = (uint16_t)(s - ((s > 0) & ((double)_cvtsh_ss((uint16_t)(s - 1)) * levels >= range)));
    while (__builtin_expect((double)_cvtsh_ss(s) * levels < range, 0))
        s++;
    while (__builtin_expect(s > 0 && (double)_cvtsh_ss((uint16_t)(s - 1)) * levels >= range, 0))
        s--;
    g->scale = s;
    g->inv = 1.0 / (double)_cvtsh_ss(s);
}

/* The parameters of 8 groups at once from their minimum and maximum order keys and non-finite
 * flags (16-bit lanes): the same steps as group_params in vectors, lane by lane, so the same
 * results; a lane where the one-step correction was not enough (never seen, but not excluded by
 * the vector code alone) is redone by group_params. */
KVT_AVX2_INLINE void params8(__m128i lo_key, __m128i hi_key, __m128i nonfinite, uint32_t bits,
                             struct kvt__quant_group g[8])
{
    const __m128i abs = _mm_set1_epi16(0x7fff);
    const __m128i lo = _mm_xor_si128(lo_key, _mm_and_si128(_mm_srai_epi16(lo_key, 15), abs));
    const __m128i hi = _mm_xor_si128(hi_key, _mm_and_si128(_mm_srai_epi16(hi_key, 15), abs));
    const __m256 lo_f = _mm256_cvtph_ps(lo), hi_f = _mm256_cvtph_ps(hi);
    const __m256d levels = _mm256_set1_pd((double)((1u << bits) - 1u));
    __m256d range[2], s_d[2], inv[2];
    range[0] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi_f)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(lo_f)));
    range[1] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi_f, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(lo_f, 1)));
    /* A non-finite lane has a meaningless range: make it 0 (its results are replaced below). */
    const __m256 nf_f = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(nonfinite));
    const __m256d nf_lo = _mm256_castsi256_pd(
        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(_mm256_castps_si256(nf_f))));
    const __m256d nf_hi = _mm256_castsi256_pd(
        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(_mm256_castps_si256(nf_f), 1)));
    range[0] = _mm256_andnot_pd(nf_lo, range[0]);
    range[1] = _mm256_andnot_pd(nf_hi, range[1]);
    __m256 q = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_div_pd(range[1], levels)),
                               _mm256_cvtpd_ps(_mm256_div_pd(range[0], levels)));
    __m128i s = _mm256_cvtps_ph(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    for (int step = 0; step < 2; step++) {
        /* step 0: up where s * L < range; step 1: down where s > 0 and (s - 1) * L >= range. */
        __m128i cand = step ? _mm_sub_epi16(s, _mm_set1_epi16(1)) : s;
        __m256 cf = _mm256_cvtph_ps(cand);
        __m256d c0 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(cf)), levels);
        __m256d c1 = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(cf, 1)), levels);
        __m256d m0 = step ? _mm256_cmp_pd(c0, range[0], _CMP_GE_OQ)
                          : _mm256_cmp_pd(c0, range[0], _CMP_LT_OQ);
        __m256d m1 = step ? _mm256_cmp_pd(c1, range[1], _CMP_GE_OQ)
                          : _mm256_cmp_pd(c1, range[1], _CMP_LT_OQ);
        /* 4 + 4 64-bit masks to 8 16-bit ones. */
        __m128i k0 = _mm256_cvtpd_epi32(_mm256_and_pd(m0, _mm256_set1_pd(1.0)));
        __m128i k1 = _mm256_cvtpd_epi32(_mm256_and_pd(m1, _mm256_set1_pd(1.0)));
        __m128i k = _mm_packs_epi32(k0, k1); /* 1 where the step applies */
        if (step)
            k = _mm_and_si128(k, _mm_cmpgt_epi16(s, _mm_setzero_si128()));
        s = step ? _mm_sub_epi16(s, k) : _mm_add_epi16(s, k);
    }
    const __m256 sf = _mm256_cvtph_ps(s);
    s_d[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(sf));
    s_d[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(sf, 1));
    for (int h = 0; h < 2; h++) {
        __m256d zero = _mm256_cmp_pd(s_d[h], _mm256_setzero_pd(), _CMP_EQ_OQ);
        inv[h] = _mm256_andnot_pd(zero, _mm256_div_pd(_mm256_set1_pd(1.0), s_d[h]));
    }
    _Alignas(16) uint16_t sv[8], mv[8], nfv[8];
    _Alignas(32) double iv[8];
    _mm_store_si128((__m128i *)sv, s);
    _mm_store_si128((__m128i *)mv, lo);
    _mm_store_si128((__m128i *)nfv, nonfinite);
    _mm256_store_pd(iv, inv[0]);
    _mm256_store_pd(iv + 4, inv[1]);
    _Alignas(16) int16_t lk[8], hk[8];
    _mm_store_si128((__m128i *)lk, lo_key);
    _mm_store_si128((__m128i *)hk, hi_key);
    for (int j = 0; j < 8; j++) {
        if (nfv[j]) {
            g[j].scale = g[j].min = KVT_QUANT_NONFINITE;
            g[j].inv = 0.0;
            continue;
        }
        g[j].scale = sv[j];
        g[j].min = mv[j];
        g[j].inv = iv[j];
        /* The vector steps give the smallest covering scale unless the first guess was more
         * than a step off; check it exactly, as group_params would. */
        const double r =
            (double)_cvtsh_ss(hk[j] ^ ((hk[j] >> 15) & 0x7fff)) - (double)_cvtsh_ss(mv[j]);
        const double L = (double)((1u << bits) - 1u);
        if (__builtin_expect((double)_cvtsh_ss(sv[j]) * L < r ||
                                 (sv[j] > 0 && (double)_cvtsh_ss((uint16_t)(sv[j] - 1)) * L >= r),
                             0))
            group_params(lk[j], hk[j], 0, bits, &g[j]);
    }
}

static void put_param(uint8_t *params, size_t idx, uint16_t scale, uint16_t min)
{
    uint16_t pair[2] = {scale, min}; /* little-endian, as the layout says */
    memcpy(params + idx * KVT_QUANT_PARAM_BYTES, pair, sizeof(pair));
}

static void get_param(const uint8_t *params, size_t idx, uint16_t *scale, uint16_t *min)
{
    uint16_t pair[2];
    memcpy(pair, params + idx * KVT_QUANT_PARAM_BYTES, sizeof(pair));
    *scale = pair[0];
    *min = pair[1];
}

KVT_AVX2 static void quant_token(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                 size_t stride, uint8_t *out)
{
    const size_t d = f->head_dim, G = f->group, per_row = d / G, groups = n * per_row;
    const __m256d levels = _mm256_set1_pd((double)((1u << f->bits) - 1u));
    const __m256i e = _mm256_set1_epi16(0x7c00);
    uint8_t *params = out + kvt_quant_code_bytes(f, n);
    /* Batches of 8 groups: their minimum and maximum keys, then their parameters in one vector
     * pass (a group's parameters alone are a long chain of dependent scalar steps), then the
     * codes of each. */
    for (size_t g0 = 0; g0 < groups; g0 += 8) {
        const size_t nb = groups - g0 < 8 ? groups - g0 : 8;
        _Alignas(16) int16_t lk[8] = {0}, hk[8] = {0}, nfk[8] = {0};
        for (size_t j = 0; j < nb; j++) {
            const size_t gi = g0 + j;
            const uint16_t *p = x + gi / per_row * stride + gi % per_row * G;
            __m256i lo = _mm256_set1_epi16(KVT__KERNELS_KEY_PINF);
            __m256i hi = _mm256_set1_epi16(KVT__KERNELS_KEY_NINF), nf = _mm256_setzero_si256();
            for (size_t i = 0; i < G; i += 16) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
                __m256i k = f16_keys(v);
                lo = _mm256_min_epi16(lo, k);
                hi = _mm256_max_epi16(hi, k);
                nf = _mm256_or_si256(nf, _mm256_cmpeq_epi16(_mm256_and_si256(v, e), e));
            }
            lk[j] = hmin16(lo);
            hk[j] = hmax16(hi);
            nfk[j] = (int16_t) - !_mm256_testz_si256(nf, nf);
        }
        struct kvt__quant_group gp[8];
        params8(_mm_load_si128((const __m128i *)lk), _mm_load_si128((const __m128i *)hk),
                _mm_load_si128((const __m128i *)nfk), f->bits, gp);
        for (size_t j = 0; j < nb; j++) {
            const size_t gi = g0 + j, r = gi / per_row, c0 = gi % per_row * G;
            const uint16_t *p = x + r * stride + c0;
            const size_t e0 = r * d + c0;
            if (gp[j].inv == 0.0) {
                memset(out + e0 * f->bits / 8, 0, G * f->bits / 8);
            } else {
                const __m256d m = _mm256_set1_pd((double)_cvtsh_ss(gp[j].min));
                const __m256d inv = _mm256_set1_pd(gp[j].inv);
                for (size_t i = 0; i < G; i += 8)
                    store_codes8(
                        out, f->bits, e0 + i,
                        codes8(_mm_loadu_si128((const __m128i *)(p + i)), m, m, inv, inv, levels));
            }
            put_param(params, gi, gp[j].scale, gp[j].min);
        }
    }
}

KVT_AVX2 static void quant_channel(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                   size_t stride, uint8_t *out)
{
    const size_t d = f->head_dim, G = f->group;
    const __m256d levels = _mm256_set1_pd((double)((1u << f->bits) - 1u));
    uint8_t *params = out + kvt_quant_code_bytes(f, n);
    for (size_t r0 = 0, g = 0; r0 < n; r0 += G, g++) {
        const size_t r1 = n - r0 < G ? n : r0 + G;
        for (size_t c = 0; c < d; c += 8) {
            __m128i lo = _mm_set1_epi16(KVT__KERNELS_KEY_PINF);
            __m128i hi = _mm_set1_epi16(KVT__KERNELS_KEY_NINF), nf = _mm_setzero_si128();
            for (size_t r = r0; r < r1; r++) {
                __m128i v = _mm_loadu_si128((const __m128i *)(x + r * stride + c));
                __m128i k = f16_keys128(v);
                lo = _mm_min_epi16(lo, k);
                hi = _mm_max_epi16(hi, k);
                nf = _mm_or_si128(nf, nonfinite128(v));
            }
            struct kvt__quant_group gp[8];
            params8(lo, hi, nf, f->bits, gp);
            double m[8], inv[8];
            for (int j = 0; j < 8; j++) {
                put_param(params, g * d + c + (size_t)j, gp[j].scale, gp[j].min);
                /* A lane with no scale gets codes 0: (x - 0) * 0 is 0 or NaN, both clamp to 0. */
                m[j] = gp[j].inv != 0.0 ? (double)_cvtsh_ss(gp[j].min) : 0.0;
                inv[j] = gp[j].inv;
            }
            const __m256d m_lo = _mm256_loadu_pd(m), m_hi = _mm256_loadu_pd(m + 4);
            const __m256d i_lo = _mm256_loadu_pd(inv), i_hi = _mm256_loadu_pd(inv + 4);
            for (size_t r = r0; r < r1; r++)
                store_codes8(out, f->bits, r * d + c,
                             codes8(_mm_loadu_si128((const __m128i *)(x + r * stride + c)), m_lo,
                                    m_hi, i_lo, i_hi, levels));
        }
    }
}

KVT_AVX2 void kvt__kernels_quant_f16_avx2(const struct kvt_quant_fmt *f, const uint16_t *x,
                                          size_t n, size_t stride, uint8_t *out)
{
    KVT_ASSERT(kvt_quant_fmt_check(f) == 0 && stride >= f->head_dim);
    if (f->axis == KVT_QUANT_AXIS_TOKEN && f->group % 16 == 0)
        quant_token(f, x, n, stride, out);
    else if (f->axis == KVT_QUANT_AXIS_CHANNEL && f->head_dim % 8 == 0)
        quant_channel(f, x, n, stride, out);
    else
        kvt__kernels_quant_f16_ref(f, x, n, stride, out);
}

KVT_AVX2 static void dequant_token(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                   uint16_t *x, size_t stride)
{
    const size_t d = f->head_dim, G = f->group, per_row = d / G;
    const uint8_t *params = in + kvt_quant_code_bytes(f, n);
    for (size_t r = 0; r < n; r++) {
        for (size_t g = 0; g < per_row; g++) {
            uint16_t scale, min, *o = x + r * stride + g * G;
            get_param(params, r * per_row + g, &scale, &min);
            if (scale == KVT_QUANT_NONFINITE) {
                for (size_t i = 0; i < G; i++)
                    o[i] = KVT_QUANT_NONFINITE;
                continue;
            }
            const __m256 s = _mm256_set1_ps(kvt_f16_to_f32(scale));
            const __m256 m = _mm256_set1_ps(kvt_f16_to_f32(min));
            const size_t e0 = r * d + g * G;
            for (size_t i = 0; i < G; i += 8)
                _mm_storeu_si128((__m128i *)(o + i),
                                 values8(load_codes8(in, f->bits, e0 + i), s, m));
        }
    }
}

KVT_AVX2 static void dequant_channel(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                     uint16_t *x, size_t stride)
{
    const size_t d = f->head_dim, G = f->group;
    const uint8_t *params = in + kvt_quant_code_bytes(f, n);
    /* The current row group's scales and minimums as floats, and which channels are NaN. */
    _Alignas(32) float sv[KVT_QUANT_HEAD_DIM_MAX], mv[KVT_QUANT_HEAD_DIM_MAX];
    _Alignas(16) uint16_t nanm[KVT_QUANT_HEAD_DIM_MAX];
    const __m128i qnan = _mm_set1_epi16((short)KVT_QUANT_NONFINITE);
    for (size_t r = 0; r < n; r++) {
        if (r % G == 0) {
            for (size_t c = 0; c < d; c++) {
                uint16_t scale, min;
                get_param(params, r / G * d + c, &scale, &min);
                nanm[c] = scale == KVT_QUANT_NONFINITE ? 0xffffu : 0;
                sv[c] = nanm[c] ? 0.0f : kvt_f16_to_f32(scale);
                mv[c] = nanm[c] ? 0.0f : kvt_f16_to_f32(min);
            }
        }
        for (size_t c = 0; c < d; c += 8) {
            __m128i h = values8(load_codes8(in, f->bits, r * d + c), _mm256_load_ps(sv + c),
                                _mm256_load_ps(mv + c));
            h = _mm_blendv_epi8(h, qnan, _mm_load_si128((const __m128i *)(nanm + c)));
            _mm_storeu_si128((__m128i *)(x + r * stride + c), h);
        }
    }
}

KVT_AVX2 void kvt__kernels_dequant_f16_avx2(const struct kvt_quant_fmt *f, const uint8_t *in,
                                            size_t n, uint16_t *x, size_t stride)
{
    KVT_ASSERT(kvt_quant_fmt_check(f) == 0 && stride >= f->head_dim);
    if (f->axis == KVT_QUANT_AXIS_TOKEN && f->group % 8 == 0)
        dequant_token(f, in, n, x, stride);
    else if (f->axis == KVT_QUANT_AXIS_CHANNEL && f->head_dim % 8 == 0)
        dequant_channel(f, in, n, x, stride);
    else
        kvt__kernels_dequant_f16_ref(f, in, n, x, stride);
}

/* The reduction of kernels.h on the 16 partial sums held as lanes 0-7 (a) and 8-15 (b). */
KVT_AVX2_INLINE float reduce16(__m256 a, __m256 b)
{
    __m256 s8 = _mm256_add_ps(a, b);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

KVT_AVX2 static void to_f32(const uint16_t *h, size_t n, float *out)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        out[i] = kvt_f16_to_f32(h[i]);
}

/* Dot products of the fp32 vector q (head_dim values, an A key converted once) with nb (1 to 4,
 * a constant after inlining) keys in fp32, in the reference's 16-lane order: channels c..c+7 of
 * each 16-channel step in lanes 0-7, c+8..c+15 in lanes 8-15, the head_dim % 16 last channels
 * continuing the same partial sums in scalar code. */
KVT_AVX2_INLINE void dots_f32(const float *q, const float *const *kb, size_t nb, size_t head_dim,
                              float *res)
{
    __m256 a[4], b[4];
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nb; j++) a[j] = b[j] = _mm256_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= head_dim; c += 16) {
        const __m256 qa = _mm256_loadu_ps(q + c), qb = _mm256_loadu_ps(q + c + 8);
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nb; j++)
        {
            a[j] = _mm256_add_ps(a[j], _mm256_mul_ps(qa, _mm256_loadu_ps(kb[j] + c)));
            b[j] = _mm256_add_ps(b[j], _mm256_mul_ps(qb, _mm256_loadu_ps(kb[j] + c + 8)));
        }
    }
    if (c < head_dim) {
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nb; j++)
        {
            float acc[16];
            _mm256_storeu_ps(acc, a[j]);
            _mm256_storeu_ps(acc + 8, b[j]);
            for (size_t i = c; i < head_dim; i++)
                acc[i - c] += q[i] * kb[j][i];
            a[j] = _mm256_loadu_ps(acc);
            b[j] = _mm256_loadu_ps(acc + 8);
        }
    }
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nb; j++) res[j] = reduce16(a[j], b[j]);
}

/* B keys go in blocks converted to fp32 once (KB_FLOATS of them, 32 KiB: 64 keys of head_dim
 * 128), every A key scored against a block before the next, so the inner loop is loads,
 * multiplies and adds only (the conversions took a vector port the arithmetic needs). Each A
 * keeps its best across blocks; the blocks come in increasing position and a later one replaces
 * the best only when strictly better, which is the reference's choice over the whole row. */
KVT_AVX2 size_t kvt__kernels_cluster_match_f16_avx2(const uint16_t *keys, size_t stride,
                                                    size_t head_dim, size_t c, size_t lo, size_t hi,
                                                    uint32_t *best_out, float *sim_out)
{
    enum { KB_FLOATS = 8192 };
    KVT_ASSERT(lo <= hi && hi <= c && c <= KVT_CLUSTER_WINDOW_MAX && stride >= head_dim);
    if (head_dim > KVT_QUANT_HEAD_DIM_MAX || head_dim == 0)
        return kvt__kernels_cluster_match_f16_ref(keys, stride, head_dim, c, lo, hi, best_out,
                                                  sim_out);
    size_t n_a, n_b;
    kvt_cluster_sides(lo, hi, &n_a, &n_b);
    const size_t a0 = lo + lo % 2, b0 = lo + 1 - lo % 2;
    if (!n_b) {
        for (size_t a = 0; a < n_a; a++)
            kvt__cluster_argmax(NULL, 0, b0, &best_out[a], &sim_out[a]);
        return n_a;
    }
    _Alignas(32) float kb32[KB_FLOATS], qa[KVT_QUANT_HEAD_DIM_MAX];
    float norm_a[KVT_CLUSTER_WINDOW_MAX / 2], norm_b[KVT_CLUSTER_WINDOW_MAX / 2];
    uint32_t rank[KVT_CLUSTER_WINDOW_MAX / 2];
    const size_t blk = KB_FLOATS / head_dim < 64 ? KB_FLOATS / head_dim : 64;
    for (size_t a = 0; a < n_a; a++) {
        const uint16_t *ka = keys + (a0 + 2 * a) * stride;
        to_f32(ka, head_dim, qa);
        const float *p = qa;
        dots_f32(qa, &p, 1, head_dim, &norm_a[a]);
        norm_a[a] = sqrtf(norm_a[a]);
    }
    for (size_t bb = 0; bb < n_b; bb += blk) {
        const size_t nb = n_b - bb < blk ? n_b - bb : blk;
        for (size_t j = 0; j < nb; j++) {
            float *kj = kb32 + j * head_dim;
            to_f32(keys + (b0 + 2 * (bb + j)) * stride, head_dim, kj);
            const float *p = kj;
            dots_f32(kj, &p, 1, head_dim, &norm_b[bb + j]);
            norm_b[bb + j] = sqrtf(norm_b[bb + j]);
        }
        for (size_t a = 0; a < n_a; a++) {
            to_f32(keys + (a0 + 2 * a) * stride, head_dim, qa);
            float sim[64];
            size_t j = 0;
            for (; j + 4 <= nb; j += 4) {
                const float *kb[4] = {kb32 + j * head_dim, kb32 + (j + 1) * head_dim,
                                      kb32 + (j + 2) * head_dim, kb32 + (j + 3) * head_dim};
                float dp[4];
                dots_f32(qa, kb, 4, head_dim, dp);
                for (int t = 0; t < 4; t++)
                    sim[j + (size_t)t] =
                        kvt__cluster_cos(dp[t], norm_a[a], norm_b[bb + j + (size_t)t]);
            }
            for (; j < nb; j++) {
                const float *kb = kb32 + j * head_dim;
                float dp;
                dots_f32(qa, &kb, 1, head_dim, &dp);
                sim[j] = kvt__cluster_cos(dp, norm_a[a], norm_b[bb + j]);
            }
            uint32_t at;
            float best;
            kvt__cluster_argmax(sim, nb, b0 + 2 * bb, &at, &best);
            const uint32_t r = kvt__kernels_rank32(best);
            if (bb == 0 || r > rank[a]) {
                rank[a] = r;
                best_out[a] = at;
                sim_out[a] = best;
            }
        }
    }
    return n_a;
}

/* The count-weighted mean of the members of one merged entry, 8 channels a vector (each lane one
 * channel adding its members in position order, as the reference). */
KVT_AVX2 static void merge_rows(const uint16_t *rows, size_t stride, size_t head_dim,
                                const uint32_t *members, const float *w, size_t nm, float total,
                                uint16_t *out)
{
    const __m256 t = _mm256_set1_ps(total);
    size_t c = 0;
    for (; c + 8 <= head_dim; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t j = 0; j < nm; j++) {
            __m256 v =
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rows + members[j] * stride + c)));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(w[j]), v));
        }
        _mm_storeu_si128(
            (__m128i *)(out + c),
            _mm256_cvtps_ph(_mm256_div_ps(acc, t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; c < head_dim; c++) {
        float acc = 0.0f;
        for (size_t j = 0; j < nm; j++)
            acc += w[j] * kvt_f16_to_f32(rows[members[j] * stride + c]);
        out[c] = kvt_f32_to_f16(acc / total);
    }
}

KVT_AVX2 size_t kvt__kernels_cluster_merge_f16_avx2(const uint16_t *keys, const uint16_t *values,
                                                    size_t stride, size_t head_dim, size_t c,
                                                    const uint32_t *counts, const uint32_t *into,
                                                    uint16_t *keys_out, uint16_t *values_out,
                                                    size_t out_stride, uint32_t *counts_out,
                                                    uint32_t *pos_out)
{
    KVT_ASSERT(c <= KVT_CLUSTER_WINDOW_MAX);
    /* Every entry's members in position order, in one pass (the reference scans the window once
     * per entry): first[t] is where entry t's members start in members[], filled in increasing
     * j, so each list is in position order. */
    uint32_t first[KVT_CLUSTER_WINDOW_MAX + 1], fill[KVT_CLUSTER_WINDOW_MAX];
    uint32_t members[KVT_CLUSTER_WINDOW_MAX];
    float w[KVT_CLUSTER_WINDOW_MAX];
    for (size_t t = 0; t <= c; t++)
        first[t] = 0;
    for (size_t j = 0; j < c; j++)
        first[into[j] + 1]++;
    for (size_t t = 0; t < c; t++) {
        first[t + 1] += first[t];
        fill[t] = first[t];
    }
    for (size_t j = 0; j < c; j++) {
        const uint32_t at = fill[into[j]]++;
        members[at] = (uint32_t)j;
        w[at] = (float)(counts ? counts[j] : 1);
    }
    size_t e = 0;
    for (size_t t = 0; t < c; t++) {
        if (into[t] != t)
            continue;
        const size_t nm = first[t + 1] - first[t];
        uint32_t total = 0;
        for (size_t i = first[t]; i < first[t + 1]; i++)
            total += counts ? counts[members[i]] : 1;
        uint16_t *ko = keys_out + e * out_stride, *vo = values_out + e * out_stride;
        if (nm == 1) {
            memcpy(ko, keys + t * stride, head_dim * sizeof(uint16_t));
            memcpy(vo, values + t * stride, head_dim * sizeof(uint16_t));
        } else {
            merge_rows(keys, stride, head_dim, members + first[t], w + first[t], nm, (float)total,
                       ko);
            merge_rows(values, stride, head_dim, members + first[t], w + first[t], nm, (float)total,
                       vo);
        }
        counts_out[e] = total;
        if (pos_out)
            pos_out[e] = (uint32_t)t;
        e++;
    }
    return e;
}
#endif
