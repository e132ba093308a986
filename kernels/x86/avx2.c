/*
 * AVX2 (+F16C) kernels. Each function carries its own target attribute, so this file builds with
 * the project's ordinary flags and nothing here runs unless kernels.c found AVX2 and F16C. What
 * does not fill a vector (the head up to alignment, tails) goes to memcpy or the reference.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/internal.h"

#define KVT_AVX2 __attribute__((target("avx2,f16c")))
#define KVT_AVX2_INLINE __attribute__((target("avx2,f16c"), always_inline)) static inline

enum { STREAM_MIN_BYTES = 4096 };

KVT_AVX2 static void copy_stream_avx2(void *dst, const void *src, size_t n)
{
    if (n < STREAM_MIN_BYTES) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (32 - ((uintptr_t)d & 31)) & 31;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t body = n & ~(size_t)127;
    for (size_t i = 0; i < body; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
        _mm256_stream_si256((__m256i *)(d + i), a);
        _mm256_stream_si256((__m256i *)(d + i + 32), b);
        _mm256_stream_si256((__m256i *)(d + i + 64), c);
        _mm256_stream_si256((__m256i *)(d + i + 96), e);
    }
    /* Streaming stores are weakly ordered: fence so the bytes are visible before the caller
     * publishes them to other threads. */
    _mm_sfence();
    memcpy(d + body, s + body, n - body);
}

/* 32 elements of 2 bytes per step. The in-lane packs leave the 8-byte groups in the order
 * a0 b0 a1 b1; the permute puts them back to a0 a1 b0 b1. */
KVT_AVX2 static void shuffle2_avx2(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 2, i = 0;
    const __m256i m8 = _mm256_set1_epi16(0x00ff);
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + 2 * i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 2 * i + 32));
        __m256i lo = _mm256_packus_epi16(_mm256_and_si256(a, m8), _mm256_and_si256(b, m8));
        __m256i hi = _mm256_packus_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_permute4x64_epi64(lo, 0xd8));
        _mm256_storeu_si256((__m256i *)(d + n + i), _mm256_permute4x64_epi64(hi, 0xd8));
    }
    kvt__kernels_shuffle_ref_from(s, n, 2, i, d);
    memcpy(d + 2 * n, s + 2 * n, len - 2 * n);
}

KVT_AVX2 static void unshuffle2_avx2(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 2, i = 0;
    for (; i + 32 <= n; i += 32) {
        /* Lane 0 gets elements 0-7 and 16-23, lane 1 8-15 and 24-31, so that the in-lane
         * unpacks produce elements 0-15 and 16-31 in order. */
        __m256i lo = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(s + i)), 0xd8);
        __m256i hi =
            _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(s + n + i)), 0xd8);
        _mm256_storeu_si256((__m256i *)(d + 2 * i), _mm256_unpacklo_epi8(lo, hi));
        _mm256_storeu_si256((__m256i *)(d + 2 * i + 32), _mm256_unpackhi_epi8(lo, hi));
    }
    kvt__kernels_unshuffle_ref_from(s, n, 2, i, d);
    memcpy(d + 2 * n, s + 2 * n, len - 2 * n);
}

/* 32 elements of 4 bytes per step: for each byte plane, mask the byte out of every element and
 * pack 32 -> 16 -> 8 bits; the in-lane packs leave 4-element groups in the order
 * 0 2 4 6 1 3 5 7 (of eight), which the cross-lane permute undoes. */
KVT_AVX2 static void shuffle4_avx2(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 4, i = 0;
    const __m256i m32 = _mm256_set1_epi32(0xff);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(s + 4 * i));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(s + 4 * i + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(s + 4 * i + 64));
        __m256i v3 = _mm256_loadu_si256((const __m256i *)(s + 4 * i + 96));
        for (int b = 0; b < 4; b++) {
            __m128i sh = _mm_cvtsi32_si128(8 * b);
            __m256i x0 = _mm256_and_si256(_mm256_srl_epi32(v0, sh), m32);
            __m256i x1 = _mm256_and_si256(_mm256_srl_epi32(v1, sh), m32);
            __m256i x2 = _mm256_and_si256(_mm256_srl_epi32(v2, sh), m32);
            __m256i x3 = _mm256_and_si256(_mm256_srl_epi32(v3, sh), m32);
            __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(x0, x1), _mm256_packs_epi32(x2, x3));
            _mm256_storeu_si256((__m256i *)(d + (size_t)b * n + i),
                                _mm256_permutevar8x32_epi32(p, order));
        }
    }
    kvt__kernels_shuffle_ref_from(s, n, 4, i, d);
    memcpy(d + 4 * n, s + 4 * n, len - 4 * n);
}

KVT_AVX2 static void unshuffle4_avx2(const void *src, size_t len, void *dst)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t n = len / 4, i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i p0 = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i p1 = _mm256_loadu_si256((const __m256i *)(s + n + i));
        __m256i p2 = _mm256_loadu_si256((const __m256i *)(s + 2 * n + i));
        __m256i p3 = _mm256_loadu_si256((const __m256i *)(s + 3 * n + i));
        __m256i a = _mm256_unpacklo_epi8(p0, p1), b = _mm256_unpackhi_epi8(p0, p1);
        __m256i c = _mm256_unpacklo_epi8(p2, p3), e = _mm256_unpackhi_epi8(p2, p3);
        /* In lane 0 these hold elements 0-3, 4-7, 8-11, 12-15; in lane 1 the same plus 16. */
        __m256i o0 = _mm256_unpacklo_epi16(a, c), o1 = _mm256_unpackhi_epi16(a, c);
        __m256i o2 = _mm256_unpacklo_epi16(b, e), o3 = _mm256_unpackhi_epi16(b, e);
        uint8_t *o = d + 4 * i;
        _mm256_storeu_si256((__m256i *)o, _mm256_permute2x128_si256(o0, o1, 0x20));
        _mm256_storeu_si256((__m256i *)(o + 32), _mm256_permute2x128_si256(o2, o3, 0x20));
        _mm256_storeu_si256((__m256i *)(o + 64), _mm256_permute2x128_si256(o0, o1, 0x31));
        _mm256_storeu_si256((__m256i *)(o + 96), _mm256_permute2x128_si256(o2, o3, 0x31));
    }
    kvt__kernels_unshuffle_ref_from(s, n, 4, i, d);
    memcpy(d + 4 * n, s + 4 * n, len - 4 * n);
}

/* One vector of 16 fp16 values into the running minimum and maximum keys: NaNs become the
 * sentinel that cannot win (+inf for the minimum, -inf for the maximum). */
KVT_AVX2_INLINE void minmax_step(__m256i v, __m256i *lo, __m256i *hi)
{
    const __m256i abs = _mm256_set1_epi16(0x7fff), inf = _mm256_set1_epi16(0x7c00);
    const __m256i pinf = _mm256_set1_epi16(KVT__KERNELS_KEY_PINF);
    const __m256i ninf = _mm256_set1_epi16(KVT__KERNELS_KEY_NINF);
    __m256i nan = _mm256_cmpgt_epi16(_mm256_and_si256(v, abs), inf);
    __m256i key = _mm256_xor_si256(v, _mm256_and_si256(_mm256_srai_epi16(v, 15), abs));
    *lo = _mm256_min_epi16(*lo, _mm256_blendv_epi8(key, pinf, nan));
    *hi = _mm256_max_epi16(*hi, _mm256_blendv_epi8(key, ninf, nan));
}

KVT_AVX2_INLINE void minmax_store(__m256i lo, __m256i hi, float *min_out, float *max_out)
{
    int16_t l[16], h[16];
    _mm256_storeu_si256((__m256i *)l, lo);
    _mm256_storeu_si256((__m256i *)h, hi);
    for (int j = 0; j < 16; j++) {
        min_out[j] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)l[j]));
        max_out[j] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)h[j]));
    }
}

/* Channels in groups of 64 (four vectors of minimum and four of maximum in registers), then
 * single vectors of 16, then the reference for the last head_dim % 16. Rows go in blocks of 32:
 * every group of a window of up to 512 channels runs over one block before the next block, so
 * the groups after the first find the block in L1 instead of reading the span from memory once
 * per group. The running keys of the window live in two small arrays between blocks. */
KVT_AVX2 static void abstract_minmax_f16_avx2(const uint16_t *keys, size_t n, size_t stride,
                                              size_t head_dim, float *min_out, float *max_out)
{
    enum { WINDOW = 512, ROW_BLOCK = 32 };
    const size_t vec_dim = head_dim - head_dim % 16;
    _Alignas(32) int16_t lo[WINDOW], hi[WINDOW];
    for (size_t w0 = 0; w0 < vec_dim; w0 += WINDOW) {
        const size_t wn = vec_dim - w0 < WINDOW ? vec_dim - w0 : WINDOW;
        for (size_t c = 0; c < wn; c++) {
            lo[c] = KVT__KERNELS_KEY_PINF;
            hi[c] = KVT__KERNELS_KEY_NINF;
        }
        for (size_t r0 = 0; r0 < n; r0 += ROW_BLOCK) {
            const size_t r1 = n - r0 < ROW_BLOCK ? n : r0 + ROW_BLOCK;
            const uint16_t *blk = keys + r0 * stride + w0;
            size_t c = 0;
            for (; c + 64 <= wn; c += 64) {
                __m256i *pl = (__m256i *)(lo + c), *ph = (__m256i *)(hi + c);
                __m256i l0 = pl[0], l1 = pl[1], l2 = pl[2], l3 = pl[3];
                __m256i h0 = ph[0], h1 = ph[1], h2 = ph[2], h3 = ph[3];
                for (size_t r = r0; r < r1; r++) {
                    const uint16_t *p = blk + (r - r0) * stride + c;
                    minmax_step(_mm256_loadu_si256((const __m256i *)p), &l0, &h0);
                    minmax_step(_mm256_loadu_si256((const __m256i *)(p + 16)), &l1, &h1);
                    minmax_step(_mm256_loadu_si256((const __m256i *)(p + 32)), &l2, &h2);
                    minmax_step(_mm256_loadu_si256((const __m256i *)(p + 48)), &l3, &h3);
                }
                pl[0] = l0, pl[1] = l1, pl[2] = l2, pl[3] = l3;
                ph[0] = h0, ph[1] = h1, ph[2] = h2, ph[3] = h3;
            }
            for (; c < wn; c += 16) {
                __m256i *pl = (__m256i *)(lo + c), *ph = (__m256i *)(hi + c);
                __m256i l0 = *pl, h0 = *ph;
                for (size_t r = r0; r < r1; r++)
                    minmax_step(_mm256_loadu_si256((const __m256i *)(blk + (r - r0) * stride + c)),
                                &l0, &h0);
                *pl = l0;
                *ph = h0;
            }
        }
        for (size_t c = 0; c < wn; c += 16)
            minmax_store(*(const __m256i *)(lo + c), *(const __m256i *)(hi + c), min_out + w0 + c,
                         max_out + w0 + c);
    }
    kvt__kernels_minmax_f16_ref_cols(keys, n, stride, vec_dim, head_dim, min_out, max_out);
}

/* Eight channels a vector, each lane one channel adding its rows in order, which is the
 * reference's order exactly. Channels go in groups of 64 (eight accumulators) over blocks of 32
 * rows, so that the later groups of a block find its rows in L1; the running sums wait in
 * sum_out between blocks. The last head_dim % 8 channels are the reference's. */
KVT_AVX2 static void sum_f16_avx2(const uint16_t *x, size_t n, size_t stride, size_t head_dim,
                                  float *sum_out)
{
    enum { ROW_BLOCK = 32 };
    const size_t vec_dim = head_dim - head_dim % 8;
    for (size_t c = 0; c < vec_dim; c++)
        sum_out[c] = 0.0f;
    for (size_t r0 = 0; r0 < n; r0 += ROW_BLOCK) {
        const size_t r1 = n - r0 < ROW_BLOCK ? n : r0 + ROW_BLOCK;
        size_t c = 0;
        for (; c + 64 <= vec_dim; c += 64) {
            __m256 a[8];
            for (int k = 0; k < 8; k++)
                a[k] = _mm256_loadu_ps(sum_out + c + 8 * k);
            for (size_t r = r0; r < r1; r++) {
                const uint16_t *p = x + r * stride + c;
                for (int k = 0; k < 8; k++)
                    a[k] = _mm256_add_ps(
                        a[k], _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8 * k))));
            }
            for (int k = 0; k < 8; k++)
                _mm256_storeu_ps(sum_out + c + 8 * k, a[k]);
        }
        for (; c < vec_dim; c += 8) {
            __m256 a = _mm256_loadu_ps(sum_out + c);
            for (size_t r = r0; r < r1; r++)
                a = _mm256_add_ps(
                    a, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + r * stride + c))));
            _mm256_storeu_ps(sum_out + c, a);
        }
    }
    kvt__kernels_sum_f16_ref_cols(x, n, stride, vec_dim, head_dim, sum_out);
}

/* The reduction of kernels.h on the 16 partial sums held as lanes 0-7 (a) and 8-15 (b). */
KVT_AVX2_INLINE float reduce16(__m256 a, __m256 b)
{
    __m256 s8 = _mm256_add_ps(a, b); /* acc[k] += acc[k + 8] */
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* The bounds of one span for nq (1 to 4, a constant after inlining) queries into res[]. The
 * partial sums acc[i % 16] of each query are two vectors: channels c..c+7 of every 16-channel
 * step go to lanes 0-7, c+8..c+15 to lanes 8-15, in increasing c, as in the reference. maxps
 * computes a > b ? a : b, the reference's max. The last head_dim % 16 channels continue the
 * same partial sums in scalar code. */
KVT_AVX2_INLINE void bound_span(const float *q, size_t nq, const uint16_t *mn, size_t head_dim,
                                float *res)
{
    const uint16_t *mx = mn + head_dim;
    __m256 a[4], b[4];
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++) a[j] = b[j] = _mm256_setzero_ps();
    size_t c = 0;
    for (; c + 16 <= head_dim; c += 16) {
        __m256 lo_a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + c)));
        __m256 lo_b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + c + 8)));
        __m256 hi_a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mx + c)));
        __m256 hi_b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mx + c + 8)));
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++)
        {
            __m256 qa = _mm256_loadu_ps(q + j * head_dim + c);
            __m256 qb = _mm256_loadu_ps(q + j * head_dim + c + 8);
            a[j] = _mm256_add_ps(a[j],
                                 _mm256_max_ps(_mm256_mul_ps(qa, lo_a), _mm256_mul_ps(qa, hi_a)));
            b[j] = _mm256_add_ps(b[j],
                                 _mm256_max_ps(_mm256_mul_ps(qb, lo_b), _mm256_mul_ps(qb, hi_b)));
        }
    }
    if (c < head_dim) {
        KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++)
        {
            float acc[16];
            const float *qj = q + j * head_dim;
            _mm256_storeu_ps(acc, a[j]);
            _mm256_storeu_ps(acc + 8, b[j]);
            for (size_t i = c; i < head_dim; i++)
                acc[i - c] +=
                    kvt__kernels_maxf(qj[i] * kvt_f16_to_f32(mn[i]), qj[i] * kvt_f16_to_f32(mx[i]));
            a[j] = _mm256_loadu_ps(acc);
            b[j] = _mm256_loadu_ps(acc + 8);
        }
    }
    KVT__KERNELS_UNROLL4 for (size_t j = 0; j < nq; j++) res[j] = reduce16(a[j], b[j]);
}

/* Queries in blocks of up to four share each conversion of a span's bounds; the group's bound
 * combines the queries' in increasing j, as the reference does. */
KVT_AVX2 static void bound_f16_avx2(const float *q, size_t n_q, const uint16_t *bounds,
                                    size_t n_spans, size_t span_stride, size_t head_dim, float *out)
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

const struct kvt_kernels kvt__kernels_avx2 = {
    .variant = KVT_KERNELS_AVX2,
    .name = "avx2",
    .copy = kvt__kernels_copy_ref, /* glibc's memcpy dispatches on the CPU already */
    .copy_stream = copy_stream_avx2,
    .shuffle2 = shuffle2_avx2,
    .unshuffle2 = unshuffle2_avx2,
    .shuffle4 = shuffle4_avx2,
    .unshuffle4 = unshuffle4_avx2,
    .abstract_minmax_f16 = abstract_minmax_f16_avx2,
    .sum_f16 = sum_f16_avx2,
    .bound_f16 = bound_f16_avx2,
    .topk_f32 = kvt__kernels_topk_f32_select,
    .rope_shift_f16 = kvt__kernels_rope_shift_f16_avx2,
    .quant_f16 = kvt__kernels_quant_f16_avx2,
    .dequant_f16 = kvt__kernels_dequant_f16_avx2,
    .cluster_match_f16 = kvt__kernels_cluster_match_f16_avx2,
    .cluster_merge_f16 = kvt__kernels_cluster_merge_f16_avx2,
};
#endif
