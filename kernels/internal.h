/*
 * What the kernel variants share inside kernels/: the reference functions (the SIMD versions
 * call them for tails and for kernels they have no version of) and each variant's table, which
 * kernels/kernels.c picks from. Not for use outside kernels/.
 */
#ifndef KVT_KERNELS_INTERNAL_H
#define KVT_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/half.h"
#include "kernels/kernels.h"

/* Sentinels of the fp16 order keys (see kvt__kernels_f16_key): +inf and -inf. */
#define KVT__KERNELS_KEY_PINF ((int16_t)0x7c00)
#define KVT__KERNELS_KEY_NINF ((int16_t)-31745) /* key of 0xfc00 */

/* Maps fp16 bits to a signed 16-bit key whose integer order is the value order, with -0.0
 * below +0.0 (negative values have their magnitude bits flipped). The map is its own inverse.
 * NaNs map beyond the infinities; the min/max kernels replace them by the sentinels first. */
static inline int16_t kvt__kernels_f16_key(uint16_t h)
{
    return (int16_t)(h ^ ((h & 0x8000u) ? 0x7fffu : 0u));
}

static inline int kvt__kernels_f16_isnan(uint16_t h)
{
    return (h & 0x7fffu) > 0x7c00u;
}

void kvt__kernels_copy_ref(void *dst, const void *src, size_t n);
void kvt__kernels_shuffle2_ref(const void *src, size_t len, void *dst);
void kvt__kernels_unshuffle2_ref(const void *src, size_t len, void *dst);
void kvt__kernels_shuffle4_ref(const void *src, size_t len, void *dst);
void kvt__kernels_unshuffle4_ref(const void *src, size_t len, void *dst);

/* Plane form of the shuffles for the SIMD tails: elements [from, n) of a buffer of n elements
 * (the planes are n bytes apart). The len % w trailing bytes are the caller's. */
void kvt__kernels_shuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from, uint8_t *d);
void kvt__kernels_unshuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from,
                                     uint8_t *d);

void kvt__kernels_abstract_minmax_f16_ref(const uint16_t *keys, size_t n, size_t stride,
                                          size_t head_dim, float *min_out, float *max_out);
/* Channels [c0, c1) only: the SIMD versions finish their tail channels with it. */
void kvt__kernels_minmax_f16_ref_cols(const uint16_t *keys, size_t n, size_t stride, size_t c0,
                                      size_t c1, float *min_out, float *max_out);

void kvt__kernels_sum_f16_ref(const uint16_t *x, size_t n, size_t stride, size_t head_dim,
                              float *sum_out);
/* Channels [c0, c1) only, for the SIMD tails. */
void kvt__kernels_sum_f16_ref_cols(const uint16_t *x, size_t n, size_t stride, size_t c0, size_t c1,
                                   float *sum_out);

void kvt__kernels_bound_f16_ref(const float *q, size_t n_q, const uint16_t *bounds, size_t n_spans,
                                size_t span_stride, size_t head_dim, float *out);

size_t kvt__kernels_topk_f32_ref(const float *score, size_t n, size_t k, uint32_t *idx_out);

void kvt__kernels_rope_shift_f16_ref(uint16_t *keys, size_t n, size_t stride, size_t n_heads,
                                     size_t head_dim, size_t rotary_dims, int style,
                                     const float *cs);
/* One vector's pairs [p0, rotary_dims / 2) (half = rotary_dims / 2), for the SIMD tails. */
void kvt__kernels_rope_pairs_ref(uint16_t *v, size_t p0, size_t half, int style, const float *cs);
void kvt__kernels_rope_shift_f16_avx2(uint16_t *keys, size_t n, size_t stride, size_t n_heads,
                                      size_t head_dim, size_t rotary_dims, int style,
                                      const float *cs);
/* The fast top-k of kernels/topk.c (same results), which the SIMD tables use. */
size_t kvt__kernels_topk_f32_select(const float *score, size_t n, size_t k, uint32_t *idx_out);

/* The ranking of top-k as an unsigned order on 32 bits: the score's bits mapped so that larger
 * means better, NaN lowest (0; -inf is 0x007fffff), -0.0 as +0.0, negatives below positives. */
static inline uint32_t kvt__kernels_rank32(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    b = b == 0x80000000u ? 0 : b;
    /* Written to compile without branches: the histogram passes of top-k run it on every score. */
    uint32_t r = b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
    return (b & 0x7fffffffu) > 0x7f800000u ? 0 : r;
}

/* The rank above the complement of the index: no two elements have the same key, and a lower
 * index wins a tie of ranks. */
static inline uint64_t kvt__kernels_rank_key(const float *score, uint32_t i)
{
    return (uint64_t)kvt__kernels_rank32(score[i]) << 32 | (uint32_t)~i;
}

/* Unrolls the loop it precedes four times: the SIMD bound keeps one accumulator per query of a
 * block of four, which must stay in registers (a rolled loop over an array of them keeps them
 * in memory and adds a store-to-load round trip to every step). */
#define KVT__KERNELS_UNROLL4 _Pragma("GCC unroll 4")

/* The SIMD bound kernels score a span in about the time memory takes to deliver the next
 * ones, so they ask for spans this far ahead (4 KiB at head_dim 128): measured from memory,
 * 6.4 -> 9.5 GB/s with AVX-512; 4 to 32 spans ahead all gave about the same. */
#define KVT__KERNELS_BOUND_PREFETCH_SPANS 8

#if defined(__x86_64__)
#include <xmmintrin.h>
/* Prefetches bytes from p into every cache level (a prefetch never faults). */
static inline void kvt__kernels_prefetch(const void *p, size_t bytes)
{
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}
#endif

/* The max of the bound kernel and of its combination over queries: a > b ? a : b, which is
 * what maxps computes (its second operand when either is NaN or both are zeros), so the C and
 * the SIMD versions agree on signed zeros and NaNs. */
static inline float kvt__kernels_maxf(float a, float b)
{
    return a > b ? a : b;
}

/* A span of the bound kernel with no keys: channel 0 holds min +inf and max -inf. */
static inline int kvt__kernels_bound_empty(const uint16_t *mn, size_t head_dim)
{
    return head_dim && mn[0] == 0x7c00u && mn[head_dim] == 0xfc00u;
}

/* The bound kernel's fixed reduction of its 16 partial sums (acc is overwritten). */
static inline float kvt__kernels_reduce16(float acc[16])
{
    for (int k = 0; k < 8; k++)
        acc[k] += acc[k + 8];
    for (int k = 0; k < 4; k++)
        acc[k] += acc[k + 4];
    for (int k = 0; k < 2; k++)
        acc[k] += acc[k + 2];
    return acc[0] + acc[1];
}

extern const struct kvt_kernels kvt__kernels_ref;
#if defined(__x86_64__)
extern const struct kvt_kernels kvt__kernels_avx2;
extern const struct kvt_kernels kvt__kernels_avx512;
#endif

#endif
