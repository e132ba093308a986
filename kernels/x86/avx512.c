/*
 * AVX-512 (F + BW) kernels, 64 bytes per vector. Like avx2.c, each function has its own target
 * attribute and runs only when kernels.c found both features on the CPU. The min/max finishes
 * its tail channels with masked loads instead of the reference.
 */
#if defined(__x86_64__)
#include <immintrin.h>
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
    .sum_f16 = kvt__kernels_sum_f16_ref,
    .bound_f16 = kvt__kernels_bound_f16_ref,
    .topk_f32 = kvt__kernels_topk_f32_ref,
};
#endif
