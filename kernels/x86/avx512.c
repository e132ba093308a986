/*
 * AVX-512 (F + BW) kernels, 64 bytes per vector. Like avx2.c, each function has its own target
 * attribute and runs only when kernels.c found both features on the CPU. The min/max finishes
 * its tail channels with masked loads instead of the reference.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/internal.h"

#define KVT_AVX512 __attribute__((target("avx512f,avx512bw")))
#define KVT_AVX512_INLINE __attribute__((target("avx512f,avx512bw"), always_inline)) static inline

enum { STREAM_MIN_BYTES = 4096 };

KVT_AVX512 static void copy_stream_avx512(void *dst, const void *src, size_t n)
{
    if (n < STREAM_MIN_BYTES) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t body = n & ~(size_t)255;
    for (size_t i = 0; i < body; i += 256) {
        __m512i a = _mm512_loadu_si512((const void *)(s + i));
        __m512i b = _mm512_loadu_si512((const void *)(s + i + 64));
        __m512i c = _mm512_loadu_si512((const void *)(s + i + 128));
        __m512i e = _mm512_loadu_si512((const void *)(s + i + 192));
        _mm512_stream_si512((void *)(d + i), a);
        _mm512_stream_si512((void *)(d + i + 64), b);
        _mm512_stream_si512((void *)(d + i + 128), c);
        _mm512_stream_si512((void *)(d + i + 192), e);
    }
    /* Weakly ordered stores: fence before the caller publishes the bytes. */
    _mm_sfence();
    memcpy(d + body, s + body, n - body);
}

/* 64 elements of 2 bytes per step; the in-lane packs leave 8-byte groups as a0 b0 a1 b1 a2 b2
 * a3 b3, which the qword permute reorders. */
KVT_AVX512 static void shuffle2_avx512(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 2, i = 0;
    const __m512i m8 = _mm512_set1_epi16(0x00ff);
    const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    for (; i + 64 <= n; i += 64) {
        __m512i a = _mm512_loadu_si512((const void *)(s + 2 * i));
        __m512i b = _mm512_loadu_si512((const void *)(s + 2 * i + 64));
        __m512i lo = _mm512_packus_epi16(_mm512_and_si512(a, m8), _mm512_and_si512(b, m8));
        __m512i hi = _mm512_packus_epi16(_mm512_srli_epi16(a, 8), _mm512_srli_epi16(b, 8));
        _mm512_storeu_si512((void *)(d + i), _mm512_permutexvar_epi64(order, lo));
        _mm512_storeu_si512((void *)(d + n + i), _mm512_permutexvar_epi64(order, hi));
    }
    kvt__kernels_shuffle_ref_from(s, n, 2, i, d);
    memcpy(d + 2 * n, s + 2 * n, len - 2 * n);
}

KVT_AVX512 static void unshuffle2_avx512(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 2, i = 0;
    /* Lane k gets 8-byte groups k and k + 4, so the in-lane unpacks give elements in order. */
    const __m512i order = _mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 64 <= n; i += 64) {
        __m512i lo = _mm512_permutexvar_epi64(order, _mm512_loadu_si512((const void *)(s + i)));
        __m512i hi = _mm512_permutexvar_epi64(order, _mm512_loadu_si512((const void *)(s + n + i)));
        _mm512_storeu_si512((void *)(d + 2 * i), _mm512_unpacklo_epi8(lo, hi));
        _mm512_storeu_si512((void *)(d + 2 * i + 64), _mm512_unpackhi_epi8(lo, hi));
    }
    kvt__kernels_unshuffle_ref_from(s, n, 2, i, d);
    memcpy(d + 2 * n, s + 2 * n, len - 2 * n);
}

/* 64 elements of 4 bytes per step. After the packs, 4-byte group 4*lane + k holds elements
 * 16k + 4*lane .. +3; the dword permute transposes that back to element order. */
KVT_AVX512 static void shuffle4_avx512(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 4, i = 0;
    const __m512i m32 = _mm512_set1_epi32(0xff);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (; i + 64 <= n; i += 64) {
        __m512i v0 = _mm512_loadu_si512((const void *)(s + 4 * i));
        __m512i v1 = _mm512_loadu_si512((const void *)(s + 4 * i + 64));
        __m512i v2 = _mm512_loadu_si512((const void *)(s + 4 * i + 128));
        __m512i v3 = _mm512_loadu_si512((const void *)(s + 4 * i + 192));
        for (int b = 0; b < 4; b++) {
            __m128i sh = _mm_cvtsi32_si128(8 * b);
            __m512i x0 = _mm512_and_si512(_mm512_srl_epi32(v0, sh), m32);
            __m512i x1 = _mm512_and_si512(_mm512_srl_epi32(v1, sh), m32);
            __m512i x2 = _mm512_and_si512(_mm512_srl_epi32(v2, sh), m32);
            __m512i x3 = _mm512_and_si512(_mm512_srl_epi32(v3, sh), m32);
            __m512i p = _mm512_packus_epi16(_mm512_packs_epi32(x0, x1), _mm512_packs_epi32(x2, x3));
            _mm512_storeu_si512((void *)(d + (size_t)b * n + i),
                                _mm512_permutexvar_epi32(order, p));
        }
    }
    kvt__kernels_shuffle_ref_from(s, n, 4, i, d);
    memcpy(d + 4 * n, s + 4 * n, len - 4 * n);
}

KVT_AVX512 static void unshuffle4_avx512(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 4, i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i p0 = _mm512_loadu_si512((const void *)(s + i));
        __m512i p1 = _mm512_loadu_si512((const void *)(s + n + i));
        __m512i p2 = _mm512_loadu_si512((const void *)(s + 2 * n + i));
        __m512i p3 = _mm512_loadu_si512((const void *)(s + 3 * n + i));
        __m512i a = _mm512_unpacklo_epi8(p0, p1), b = _mm512_unpackhi_epi8(p0, p1);
        __m512i c = _mm512_unpacklo_epi8(p2, p3), e = _mm512_unpackhi_epi8(p2, p3);
        /* Lane L of o_j holds elements 16L + 4j .. +3: a 4x4 transpose of 16-byte lanes
         * gives the output in element order. */
        __m512i o0 = _mm512_unpacklo_epi16(a, c), o1 = _mm512_unpackhi_epi16(a, c);
        __m512i o2 = _mm512_unpacklo_epi16(b, e), o3 = _mm512_unpackhi_epi16(b, e);
        __m512i t0 = _mm512_shuffle_i64x2(o0, o1, 0x44), t1 = _mm512_shuffle_i64x2(o2, o3, 0x44);
        __m512i t2 = _mm512_shuffle_i64x2(o0, o1, 0xee), t3 = _mm512_shuffle_i64x2(o2, o3, 0xee);
        uint8_t *o = d + 4 * i;
        _mm512_storeu_si512((void *)o, _mm512_shuffle_i64x2(t0, t1, 0x88));
        _mm512_storeu_si512((void *)(o + 64), _mm512_shuffle_i64x2(t0, t1, 0xdd));
        _mm512_storeu_si512((void *)(o + 128), _mm512_shuffle_i64x2(t2, t3, 0x88));
        _mm512_storeu_si512((void *)(o + 192), _mm512_shuffle_i64x2(t2, t3, 0xdd));
    }
    kvt__kernels_unshuffle_ref_from(s, n, 4, i, d);
    memcpy(d + 4 * n, s + 4 * n, len - 4 * n);
}

KVT_AVX512_INLINE void minmax_step(__m512i v, __m512i *lo, __m512i *hi)
{
    const __m512i abs = _mm512_set1_epi16(0x7fff), inf = _mm512_set1_epi16(0x7c00);
    const __m512i pinf = _mm512_set1_epi16(KVT__KERNELS_KEY_PINF);
    const __m512i ninf = _mm512_set1_epi16(KVT__KERNELS_KEY_NINF);
    __mmask32 nan = _mm512_cmpgt_epi16_mask(_mm512_and_si512(v, abs), inf);
    __m512i key = _mm512_xor_si512(v, _mm512_and_si512(_mm512_srai_epi16(v, 15), abs));
    *lo = _mm512_min_epi16(*lo, _mm512_mask_blend_epi16(nan, key, pinf));
    *hi = _mm512_max_epi16(*hi, _mm512_mask_blend_epi16(nan, key, ninf));
}

KVT_AVX512_INLINE void minmax_store(__m512i lo, __m512i hi, size_t count, float *min_out,
                                    float *max_out)
{
    int16_t l[32], h[32];
    _mm512_storeu_si512((void *)l, lo);
    _mm512_storeu_si512((void *)h, hi);
    for (size_t j = 0; j < count; j++) {
        min_out[j] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)l[j]));
        max_out[j] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)h[j]));
    }
}

/* Channels in groups of 128 (four vectors each of minimum and maximum), then vectors of 32,
 * then one masked vector for the last head_dim % 32. */
KVT_AVX512 static void abstract_minmax_f16_avx512(const uint16_t *keys, size_t n, size_t stride,
                                                  size_t head_dim, float *min_out, float *max_out)
{
    const __m512i pinf = _mm512_set1_epi16(KVT__KERNELS_KEY_PINF);
    const __m512i ninf = _mm512_set1_epi16(KVT__KERNELS_KEY_NINF);
    size_t c = 0;
    for (; c + 128 <= head_dim; c += 128) {
        __m512i l0 = pinf, l1 = pinf, l2 = pinf, l3 = pinf;
        __m512i h0 = ninf, h1 = ninf, h2 = ninf, h3 = ninf;
        for (size_t r = 0; r < n; r++) {
            const uint16_t *p = keys + r * stride + c;
            minmax_step(_mm512_loadu_si512((const void *)p), &l0, &h0);
            minmax_step(_mm512_loadu_si512((const void *)(p + 32)), &l1, &h1);
            minmax_step(_mm512_loadu_si512((const void *)(p + 64)), &l2, &h2);
            minmax_step(_mm512_loadu_si512((const void *)(p + 96)), &l3, &h3);
        }
        minmax_store(l0, h0, 32, min_out + c, max_out + c);
        minmax_store(l1, h1, 32, min_out + c + 32, max_out + c + 32);
        minmax_store(l2, h2, 32, min_out + c + 64, max_out + c + 64);
        minmax_store(l3, h3, 32, min_out + c + 96, max_out + c + 96);
    }
    for (; c + 32 <= head_dim; c += 32) {
        __m512i l0 = pinf, h0 = ninf;
        for (size_t r = 0; r < n; r++)
            minmax_step(_mm512_loadu_si512((const void *)(keys + r * stride + c)), &l0, &h0);
        minmax_store(l0, h0, 32, min_out + c, max_out + c);
    }
    if (c < head_dim) {
        /* The masked load reads only the tail channels, so it never touches memory past the
         * last vector; the unused lanes hold zeros and are not stored. */
        __mmask32 m = (__mmask32)((1u << (head_dim - c)) - 1u);
        __m512i l0 = pinf, h0 = ninf;
        for (size_t r = 0; r < n; r++)
            minmax_step(_mm512_maskz_loadu_epi16(m, keys + r * stride + c), &l0, &h0);
        minmax_store(l0, h0, head_dim - c, min_out + c, max_out + c);
    }
}

/* Sixteen channels a vector, each lane one channel adding its rows in order (the reference's
 * order). Groups of 128 channels (eight accumulators) over blocks of 32 rows, the running sums
 * in sum_out between blocks; the last head_dim % 16 channels in one masked vector. */
KVT_AVX512 static void sum_f16_avx512(const uint16_t *x, size_t n, size_t stride, size_t head_dim,
                                      float *sum_out)
{
    enum { ROW_BLOCK = 32 };
    for (size_t c = 0; c < head_dim; c++)
        sum_out[c] = 0.0f;
    const size_t vec_dim = head_dim - head_dim % 16;
    const __mmask16 tail = (__mmask16)((1u << (head_dim - vec_dim)) - 1u);
    for (size_t r0 = 0; r0 < n; r0 += ROW_BLOCK) {
        const size_t r1 = n - r0 < ROW_BLOCK ? n : r0 + ROW_BLOCK;
        size_t c = 0;
        for (; c + 128 <= vec_dim; c += 128) {
            __m512 a[8];
            for (int k = 0; k < 8; k++)
                a[k] = _mm512_loadu_ps(sum_out + c + 16 * k);
            for (size_t r = r0; r < r1; r++) {
                const uint16_t *p = x + r * stride + c;
                for (int k = 0; k < 8; k++)
                    a[k] = _mm512_add_ps(
                        a[k], _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16 * k))));
            }
            for (int k = 0; k < 8; k++)
                _mm512_storeu_ps(sum_out + c + 16 * k, a[k]);
        }
        for (; c < vec_dim; c += 16) {
            __m512 a = _mm512_loadu_ps(sum_out + c);
            for (size_t r = r0; r < r1; r++)
                a = _mm512_add_ps(
                    a, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + r * stride + c))));
            _mm512_storeu_ps(sum_out + c, a);
        }
        if (tail) {
            /* The masked load reads only the tail channels of each row. */
            __m512 a = _mm512_maskz_loadu_ps(tail, sum_out + c);
            for (size_t r = r0; r < r1; r++) {
                __m512i h = _mm512_maskz_loadu_epi16((__mmask32)tail, x + r * stride + c);
                a = _mm512_mask_add_ps(a, tail, a, _mm512_cvtph_ps(_mm512_castsi512_si256(h)));
            }
            _mm512_mask_storeu_ps(sum_out + c, tail, a);
        }
    }
}

/* The reduction of kernels.h on 16 partial sums, lane k holding acc[k]. */
KVT_AVX512_INLINE float reduce16(__m512 acc)
{
    __m256 lo = _mm512_castps512_ps256(acc);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
    __m256 s8 = _mm256_add_ps(lo, hi); /* acc[k] += acc[k + 8] */
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* reduce16 of four queries' partial sums at once, the same additions in the same order: after
 * the first step (acc[k] + acc[k + 8], per query), the four 8-lane halves are regrouped so that
 * each 128-bit lane holds one query, and the last three steps run on all four together. */
KVT_AVX512_INLINE void reduce16x4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, float *res)
{
#define KVT_HALVES(a)                                                                              \
    _mm256_add_ps(_mm512_castps512_ps256(a),                                                       \
                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
#define KVT_PAIR(x, y)                                                                             \
    _mm512_castpd_ps(                                                                              \
        _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(x)), _mm256_castps_pd(y), 1))
    __m512 p01 = KVT_PAIR(KVT_HALVES(a0), KVT_HALVES(a1));
    __m512 p23 = KVT_PAIR(KVT_HALVES(a2), KVT_HALVES(a3));
#undef KVT_HALVES
#undef KVT_PAIR
    /* Lanes of 128 bits: x holds acc[0..3] of queries 0-3, y their acc[4..7]. */
    __m512 x = _mm512_shuffle_f32x4(p01, p23, _MM_SHUFFLE(2, 0, 2, 0));
    __m512 y = _mm512_shuffle_f32x4(p01, p23, _MM_SHUFFLE(3, 1, 3, 1));
    __m512 s4 = _mm512_add_ps(x, y);
    __m512 s2 = _mm512_add_ps(s4, _mm512_shuffle_ps(s4, s4, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 s1 = _mm512_add_ps(s2, _mm512_shuffle_ps(s2, s2, _MM_SHUFFLE(1, 1, 1, 1)));
    __m512 first = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s1);
    _mm_storeu_ps(res, _mm512_castps512_ps128(first));
}

/* The bounds of one span for nq (1 to 4, a constant after inlining) queries into res[]: one
 * vector of 16 partial sums per query, lane k taking channels k, k + 16, ... in order (the
 * reference's acc[i % 16]); maxps is the reference's a > b ? a : b. The last head_dim % 16
 * channels go through masked loads and a masked add, which leaves the other lanes as they are. */
KVT_AVX512_INLINE void bound_span(const float *q, size_t nq, const uint16_t *mn, size_t head_dim,
                                  float *res)
{
    const uint16_t *mx = mn + head_dim;
    __m512 acc[4];
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++) acc[j] = _mm512_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= head_dim; c += 16) {
        __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mn + c)));
        __m512 hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mx + c)));
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++)
        {
            __m512 qv = _mm512_loadu_ps(q + j * head_dim + c);
            acc[j] =
                _mm512_add_ps(acc[j], _mm512_max_ps(_mm512_mul_ps(qv, lo), _mm512_mul_ps(qv, hi)));
        }
    }
    if (c < head_dim) {
        const __mmask16 m = (__mmask16)((1u << (head_dim - c)) - 1u);
        __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_maskz_loadu_epi16(m, mn + c)));
        __m512 hi = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_maskz_loadu_epi16(m, mx + c)));
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++)
        {
            __m512 qv = _mm512_maskz_loadu_ps(m, q + j * head_dim + c);
            acc[j] = _mm512_mask_add_ps(
                acc[j], m, acc[j], _mm512_max_ps(_mm512_mul_ps(qv, lo), _mm512_mul_ps(qv, hi)));
        }
    }
    if (nq == 4) {
        reduce16x4(acc[0], acc[1], acc[2], acc[3], res);
        return;
    }
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++) res[j] = reduce16(acc[j]);
}

/* As the AVX2 version: queries in blocks of up to four share each conversion of a span's
 * bounds, and the group's bound combines them in increasing j. */
KVT_AVX512 static void bound_f16_avx512(const float *q, size_t n_q, const uint16_t *bounds,
                                        size_t n_spans, size_t span_stride, size_t head_dim,
                                        float *out)
{
    for (size_t s = 0; s < n_spans; s++) {
        const uint16_t *mn = bounds + s * span_stride;
        float best = -INFINITY;
        if (s + KVT__KERNELS_BOUND_PREFETCH_SPANS < n_spans)
            kvt__kernels_prefetch(mn + KVT__KERNELS_BOUND_PREFETCH_SPANS * span_stride,
                                  2 * head_dim * sizeof(uint16_t));
        if (n_q && !kvt__kernels_bound_empty(mn, head_dim)) {
            for (size_t j0 = 0; j0 < n_q; j0 += 4) {
                float res[4];
                const float *qb = q + j0 * head_dim;
                switch (n_q - j0 < 4 ? n_q - j0 : 4) {
                case 1:
                    bound_span(qb, 1, mn, head_dim, res);
                    break;
                case 2:
                    bound_span(qb, 2, mn, head_dim, res);
                    break;
                case 3:
                    bound_span(qb, 3, mn, head_dim, res);
                    break;
                default:
                    bound_span(qb, 4, mn, head_dim, res);
                    break;
                }
                for (size_t j = j0; j < n_q && j < j0 + 4; j++)
                    best = j ? kvt__kernels_maxf(res[j - j0], best) : res[0];
            }
        }
        out[s] = best;
    }
}

const struct kvt_kernels kvt__kernels_avx512 = {
    .variant = KVT_KERNELS_AVX512,
    .name = "avx512",
    .copy = kvt__kernels_copy_ref, /* glibc's memcpy dispatches on the CPU already */
    .copy_stream = copy_stream_avx512,
    .shuffle2 = shuffle2_avx512,
    .unshuffle2 = unshuffle2_avx512,
    .shuffle4 = shuffle4_avx512,
    .unshuffle4 = unshuffle4_avx512,
    .abstract_minmax_f16 = abstract_minmax_f16_avx512,
    .sum_f16 = sum_f16_avx512,
    .bound_f16 = bound_f16_avx512,
    .topk_f32 = kvt__kernels_topk_f32_select,
    .rope_shift_f16 = kvt__kernels_rope_shift_f16_avx2, /* AVX-512 adds nothing at 8 pairs */
    .quant_f16 = kvt__kernels_quant_f16_avx2,
    .dequant_f16 = kvt__kernels_dequant_f16_avx2,
    .cluster_match_f16 = kvt__kernels_cluster_match_f16_avx2,
    .cluster_merge_f16 = kvt__kernels_cluster_merge_f16_avx2,
};
#endif
