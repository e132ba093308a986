/*
 * The reference kernels: portable C, written for obviousness rather than speed. Every other
 * variant is tested to give the same bytes as these, and the SIMD versions call them for the
 * tails that do not fill a vector.
 */
#include <math.h>
#include <string.h>

#include "common/assert.h"
#include "kernels/internal.h"

void kvt__kernels_copy_ref(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

void kvt__kernels_shuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from, uint8_t *d)
{
    for (size_t i = from; i < n; i++)
        for (uint32_t b = 0; b < w; b++)
            d[b * n + i] = s[i * w + b];
}

void kvt__kernels_unshuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from,
                                     uint8_t *d)
{
    for (size_t i = from; i < n; i++)
        for (uint32_t b = 0; b < w; b++)
            d[i * w + b] = s[b * n + i];
}

static void shuffle_ref(const void *src, size_t len, uint32_t w, void *dst)
{
    size_t n = len / w;
    kvt__kernels_shuffle_ref_from(src, n, w, 0, dst);
    memcpy((uint8_t *)dst + n * w, (const uint8_t *)src + n * w, len - n * w);
}

static void unshuffle_ref(const void *src, size_t len, uint32_t w, void *dst)
{
    size_t n = len / w;
    kvt__kernels_unshuffle_ref_from(src, n, w, 0, dst);
    memcpy((uint8_t *)dst + n * w, (const uint8_t *)src + n * w, len - n * w);
}

void kvt__kernels_shuffle2_ref(const void *src, size_t len, void *dst)
{
    shuffle_ref(src, len, 2, dst);
}

void kvt__kernels_unshuffle2_ref(const void *src, size_t len, void *dst)
{
    unshuffle_ref(src, len, 2, dst);
}

void kvt__kernels_shuffle4_ref(const void *src, size_t len, void *dst)
{
    shuffle_ref(src, len, 4, dst);
}

void kvt__kernels_unshuffle4_ref(const void *src, size_t len, void *dst)
{
    unshuffle_ref(src, len, 4, dst);
}

/* The minimum and maximum are taken over order keys rather than floats: integer comparison is a
 * total order, so -0.0 against +0.0 and the NaN rule come out the same in every variant, where
 * float min/max instructions differ on both. */
void kvt__kernels_minmax_f16_ref_cols(const uint16_t *keys, size_t n, size_t stride, size_t c0,
                                      size_t c1, float *min_out, float *max_out)
{
    for (size_t c = c0; c < c1; c++) {
        int16_t lo = KVT__KERNELS_KEY_PINF, hi = KVT__KERNELS_KEY_NINF;
        for (size_t r = 0; r < n; r++) {
            uint16_t h = keys[r * stride + c];
            if (kvt__kernels_f16_isnan(h))
                continue;
            int16_t k = kvt__kernels_f16_key(h);
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
        }
        min_out[c] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)lo));
        max_out[c] = kvt_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)hi));
    }
}

void kvt__kernels_abstract_minmax_f16_ref(const uint16_t *keys, size_t n, size_t stride,
                                          size_t head_dim, float *min_out, float *max_out)
{
    kvt__kernels_minmax_f16_ref_cols(keys, n, stride, 0, head_dim, min_out, max_out);
}

void kvt__kernels_sum_f16_ref_cols(const uint16_t *x, size_t n, size_t stride, size_t c0, size_t c1,
                                   float *sum_out)
{
    for (size_t c = c0; c < c1; c++)
        sum_out[c] = 0.0f;
    /* Row by row, so that the reference reads memory in order; each channel still adds its
     * values in row order, which is all the result depends on. */
    for (size_t r = 0; r < n; r++)
        for (size_t c = c0; c < c1; c++)
            sum_out[c] += kvt_f16_to_f32(x[r * stride + c]);
}

void kvt__kernels_sum_f16_ref(const uint16_t *x, size_t n, size_t stride, size_t head_dim,
                              float *sum_out)
{
    kvt__kernels_sum_f16_ref_cols(x, n, stride, 0, head_dim, sum_out);
}

/* The bound of one span for one query, in the order kernels.h fixes: 16 partial sums, then the
 * tree. A single accumulator would be the obvious reference, but no vector version could
 * reproduce it at speed; 16 lanes match one AVX-512 vector (and two AVX2 vectors, or a CUDA
 * half-warp) exactly. */
static float bound_one(const float *q, const uint16_t *mn, const uint16_t *mx, size_t head_dim)
{
    float acc[16] = {0};
    for (size_t i = 0; i < head_dim; i++) {
        float lo = q[i] * kvt_f16_to_f32(mn[i]), hi = q[i] * kvt_f16_to_f32(mx[i]);
        acc[i % 16] += kvt__kernels_maxf(lo, hi);
    }
    return kvt__kernels_reduce16(acc);
}

void kvt__kernels_bound_f16_ref(const float *q, size_t n_q, const uint16_t *bounds, size_t n_spans,
                                size_t span_stride, size_t head_dim, float *out)
{
    for (size_t s = 0; s < n_spans; s++) {
        const uint16_t *mn = bounds + s * span_stride;
        float best = -INFINITY;
        if (!kvt__kernels_bound_empty(mn, head_dim)) {
            for (size_t j = 0; j < n_q; j++) {
                float b = bound_one(q + j * head_dim, mn, mn + head_dim, head_dim);
                best = j ? kvt__kernels_maxf(b, best) : b;
            }
        }
        out[s] = best;
    }
}

/* Restores the min-heap order (by rank key) of heap[0..size) below slot at. */
static void heap_sift_down(const float *score, uint32_t *heap, size_t size, size_t at)
{
    uint32_t item = heap[at];
    uint64_t key = kvt__kernels_rank_key(score, item);
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= size)
            break;
        uint64_t ck = kvt__kernels_rank_key(score, heap[child]);
        if (child + 1 < size) {
            uint64_t rk = kvt__kernels_rank_key(score, heap[child + 1]);
            if (rk < ck) {
                child++;
                ck = rk;
            }
        }
        if (ck >= key)
            break;
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = item;
}

/* A min-heap of the best k seen so far, kept in idx_out itself: its root is the weakest of
 * them, the only one a newcomer has to beat. Sorting the heap in place at the end (taking the
 * minimum off to the back each time) leaves the best first. */
size_t kvt__kernels_topk_f32_ref(const float *score, size_t n, size_t k, uint32_t *idx_out)
{
    KVT_ASSERT(n <= UINT32_MAX);
    if (k > n)
        k = n;
    if (!k)
        return 0;
    for (size_t i = 0; i < k; i++)
        idx_out[i] = (uint32_t)i;
    for (size_t at = k / 2; at-- > 0;)
        heap_sift_down(score, idx_out, k, at);
    uint64_t weakest = kvt__kernels_rank_key(score, idx_out[0]);
    for (size_t i = k; i < n; i++) {
        if (kvt__kernels_rank_key(score, (uint32_t)i) <= weakest)
            continue;
        idx_out[0] = (uint32_t)i;
        heap_sift_down(score, idx_out, k, 0);
        weakest = kvt__kernels_rank_key(score, idx_out[0]);
    }
    for (size_t size = k; size > 1; size--) {
        uint32_t min = idx_out[0];
        idx_out[0] = idx_out[size - 1];
        idx_out[size - 1] = min;
        heap_sift_down(score, idx_out, size - 1, 0);
    }
    return k;
}

const struct kvt_kernels kvt__kernels_ref = {
    .variant = KVT_KERNELS_REF,
    .name = "ref",
    .copy = kvt__kernels_copy_ref,
    .copy_stream = kvt__kernels_copy_ref,
    .shuffle2 = kvt__kernels_shuffle2_ref,
    .unshuffle2 = kvt__kernels_unshuffle2_ref,
    .shuffle4 = kvt__kernels_shuffle4_ref,
    .unshuffle4 = kvt__kernels_unshuffle4_ref,
    .abstract_minmax_f16 = kvt__kernels_abstract_minmax_f16_ref,
    .sum_f16 = kvt__kernels_sum_f16_ref,
    .bound_f16 = kvt__kernels_bound_f16_ref,
    .topk_f32 = kvt__kernels_topk_f32_ref,
    .rope_shift_f16 = kvt__kernels_rope_shift_f16_ref,
    .quant_f16 = kvt__kernels_quant_f16_ref,
    .dequant_f16 = kvt__kernels_dequant_f16_ref,
    .cluster_match_f16 = kvt__kernels_cluster_match_f16_ref,
    .cluster_merge_f16 = kvt__kernels_cluster_merge_f16_ref,
};
