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

/* ---- Lossy forms (kernels/quant.h, kernels/cluster.h; the reference is kernels/ref/lossy.c) */

struct kvt_quant_fmt;

/* A group's parameters from its fp16 order keys (the minimum and maximum, NaN-free) and whether
 * it held a NaN or an infinity: fp16 scale and minimum as stored, and the double reciprocal of
 * the scale that every variant multiplies by (0 when the scale is 0 or the group non-finite). */
struct kvt__quant_group {
    uint16_t scale, min;
    double inv;
};
void kvt__quant_group_params(int16_t lo_key, int16_t hi_key, int nonfinite, uint32_t bits,
                             struct kvt__quant_group *g);

/* A fp16 value is an infinity or a NaN. */
static inline int kvt__kernels_f16_nonfinite(uint16_t h)
{
    return (h & 0x7c00u) == 0x7c00u;
}

/* One element's code: nearest integer of (x - m) * inv in double (exact: see docs/kernels.md),
 * clamped to the levels. */
static inline uint32_t kvt__quant_code(uint16_t x, const struct kvt__quant_group *g, double levels)
{
    double t = ((double)kvt_f16_to_f32(x) - (double)kvt_f16_to_f32(g->min)) * g->inv;
    t = __builtin_nearbyint(t);
    t = t < 0.0 ? 0.0 : t > levels ? levels : t;
    return (uint32_t)t;
}

/* One element read back: fp16(clamp(m + q*s, -65504, 65504)) in fp32, or the NaN of a
 * non-finite group. */
static inline uint16_t kvt__quant_value(uint32_t q, uint16_t scale, uint16_t min)
{
    if (scale == 0x7e00u)
        return 0x7e00u;
    float v = kvt_f16_to_f32(min) + (float)q * kvt_f16_to_f32(scale);
    v = v < -65504.0f ? -65504.0f : v > 65504.0f ? 65504.0f : v;
    return kvt_f32_to_f16(v);
}

void kvt__kernels_quant_f16_ref(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                size_t stride, uint8_t *out);
void kvt__kernels_dequant_f16_ref(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                  uint16_t *x, size_t stride);
size_t kvt__kernels_cluster_match_f16_ref(const uint16_t *keys, size_t stride, size_t head_dim,
                                          size_t c, size_t lo, size_t hi, uint32_t *best_out,
                                          float *sim_out);
size_t kvt__kernels_cluster_merge_f16_ref(const uint16_t *keys, const uint16_t *values,
                                          size_t stride, size_t head_dim, size_t c,
                                          const uint32_t *counts, const uint32_t *into,
                                          uint16_t *keys_out, uint16_t *values_out,
                                          size_t out_stride, uint32_t *counts_out,
                                          uint32_t *pos_out);
/* The similarity of two keys from their dot product and norms (the kernels' formula). */
static inline float kvt__cluster_cos(float dot, float na, float nb)
{
    float nn = na * nb;
    return nn == 0.0f ? 0.0f : dot / nn;
}
/* The matching's choice among the B similarities of one A entry, in top-k's order. */
static inline void kvt__cluster_argmax(const float *sim, size_t n_b, size_t b0, uint32_t *best,
                                       float *best_sim)
{
    if (!n_b) {
        *best = UINT32_MAX;
        *best_sim = -__builtin_inff();
        return;
    }
    size_t at = 0;
    uint32_t rank = kvt__kernels_rank32(sim[0]);
    for (size_t b = 1; b < n_b; b++) {
        uint32_t rb = kvt__kernels_rank32(sim[b]);
        if (rb > rank) {
            rank = rb;
            at = b;
        }
    }
    *best = (uint32_t)(b0 + 2 * at);
    *best_sim = sim[at];
}

#if defined(__x86_64__)
void kvt__kernels_quant_f16_avx2(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                 size_t stride, uint8_t *out);
void kvt__kernels_dequant_f16_avx2(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                   uint16_t *x, size_t stride);
size_t kvt__kernels_cluster_match_f16_avx2(const uint16_t *keys, size_t stride, size_t head_dim,
                                           size_t c, size_t lo, size_t hi, uint32_t *best_out,
                                           float *sim_out);
size_t kvt__kernels_cluster_merge_f16_avx2(const uint16_t *keys, const uint16_t *values,
                                           size_t stride, size_t head_dim, size_t c,
                                           const uint32_t *counts, const uint32_t *into,
                                           uint16_t *keys_out, uint16_t *values_out,
                                           size_t out_stride, uint32_t *counts_out,
                                           uint32_t *pos_out);
#endif

extern const struct kvt_kernels kvt__kernels_ref;
#if defined(__x86_64__)
extern const struct kvt_kernels kvt__kernels_avx2;
extern const struct kvt_kernels kvt__kernels_avx512;
#endif

#endif
