/*
 * AVX2 kernels. Each function carries its own target attribute, so this file builds with the
 * project's ordinary flags and nothing here runs unless kernels.c found AVX2 on the CPU. What
 * does not fill a vector (the head up to alignment, tails) goes to memcpy or the reference.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels/internal.h"

#define KVT_AVX2 __attribute__((target("avx2")))
#define KVT_AVX2_INLINE __attribute__((target("avx2"), always_inline)) static inline

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
    .sum_f16 = kvt__kernels_sum_f16_ref,
    .bound_f16 = kvt__kernels_bound_f16_ref,
    .topk_f32 = kvt__kernels_topk_f32_ref,
};
#endif
