/*
 * CUDA versions of the kernels (the .cu files beside this header), built only when nvcc was
 * found (the build then defines HAVE_CUDA for the code that calls them) and kept in their own
 * archive, libkvtcuda.a, so that only binaries that use them link the CUDA runtime: the daemon
 * and the other tests neither need libcudart nor load it. docs/kernels.md has the build rules.
 *
 * Every function works without a device present: kvt_kcuda_probe says why none is usable, and
 * the others then return -ENODEV. Results are bit-identical to the reference kernels
 * (kernels/kernels.h describes each kernel's semantics).
 *
 * Errors: 0; -ENODEV when no device is usable; KVT_E_INVAL for bad arguments; KVT_E_NOMEM
 * when device memory is short; -EIO for any other CUDA error.
 */
#ifndef KVT_KERNELS_CUDA_KCUDA_H
#define KVT_KERNELS_CUDA_KCUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when at least one CUDA device is usable. Otherwise -ENODEV, with the reason (the runtime's
 * error text, or "no CUDA device") copied into why[why_cap] when why is not NULL. */
int kvt_kcuda_probe(char *why, size_t why_cap);

/* The abstract min/max on device memory: d_keys holds n vectors of head_dim fp16 values, vector
 * r at d_keys + r * stride; d_min and d_max are head_dim floats in device memory (used as
 * scratch while the kernels run). Queued on stream (a cudaStream_t; NULL for the default
 * stream): the results are ready once the stream is synchronised. */
int kvt_kcuda_abstract_minmax_f16_dev(const uint16_t *d_keys, size_t n, size_t stride,
                                      size_t head_dim, float *d_min, float *d_max, void *stream);

/* The same on host memory: copies the keys to the device, runs, copies the results back and
 * waits. For tests and for callers with no device copy of the keys. */
int kvt_kcuda_abstract_minmax_f16(const uint16_t *keys, size_t n, size_t stride, size_t head_dim,
                                  float *min_out, float *max_out);

/*
 * Abstracts of a batch of spans (the daemon's abstract construction): rows of head_dim fp16
 * values, row r at d_x + r * stride; span s covers rows [d_offsets[s], d_offsets[s + 1]) (n_spans
 * + 1 nondecreasing row offsets, in device memory; the _dev version trusts them, the host
 * version checks them). Outputs, each optional (NULL skips it):
 *  - d_bounds: span s at d_bounds + s * span_stride (span_stride >= 2 * head_dim fp16 elements),
 *    head_dim fp16 minimums then head_dim fp16 maximums: the layout bound_f16 reads, with the
 *    values abstract_minmax_f16 gives (NaNs ignored, -0 below +0, +inf/-inf for no value);
 *  - d_sums: span s at d_sums + s * head_dim, the fp32 sums of sum_f16 (row order from +0.0).
 * One thread per (span, channel) walks the span's rows in order, so both are the reference's
 * bit for bit (a NaN sum is a NaN; CUDA's NaN has its own payload). Queued on stream.
 */
int kvt_kcuda_abstract_spans_f16_dev(const uint16_t *d_x, size_t stride, size_t head_dim,
                                     const uint32_t *d_offsets, size_t n_spans, uint16_t *d_bounds,
                                     size_t span_stride, float *d_sums, void *stream);

/* The same on host memory (rows [0, offsets[n_spans]) are copied over); waits for the result. */
int kvt_kcuda_abstract_spans_f16(const uint16_t *x, size_t stride, size_t head_dim,
                                 const uint32_t *offsets, size_t n_spans, uint16_t *bounds_out,
                                 size_t span_stride, float *sums_out);

/* The Quest bound of kvt_kernels bound_f16 (same arguments, all arrays in device memory), bit
 * for bit: a half-warp per span, lane k holding the partial sum acc[k], reduced with the same
 * tree by shuffles; products and sums with __fmul_rn/__fadd_rn, never fused. Queued on stream. */
int kvt_kcuda_bound_f16_dev(const float *d_q, size_t n_q, const uint16_t *d_bounds, size_t n_spans,
                            size_t span_stride, size_t head_dim, float *d_out, void *stream);

/* The same on host memory; waits for the result. */
int kvt_kcuda_bound_f16(const float *q, size_t n_q, const uint16_t *bounds, size_t n_spans,
                        size_t span_stride, size_t head_dim, float *out);

/* Device scratch bytes kvt_kcuda_topk_f32_dev needs for n scores (n <= INT32_MAX). */
int kvt_kcuda_topk_scratch_bytes(size_t n, size_t *bytes_out);

/* Top-k of kvt_kernels topk_f32 on device memory: the indices of the min(k, n) largest of
 * d_score[0..n), largest first, into d_idx_out (same ranking: NaN lowest, -0 == +0, ties to the
 * lower index). Each score becomes one 64-bit key (rank, then the complement of its index), so
 * all keys differ and a radix sort of them (CUB) gives the reference's order exactly. d_scratch
 * holds kvt_kcuda_topk_scratch_bytes(n) bytes (256-byte aligned, as cudaMalloc gives). Queued
 * on stream. */
int kvt_kcuda_topk_f32_dev(const float *d_score, size_t n, size_t k, uint32_t *d_idx_out,
                           void *d_scratch, size_t scratch_bytes, void *stream);

/* The same on host memory: min(k, n) indices into idx_out; waits for the result. */
int kvt_kcuda_topk_f32(const float *score, size_t n, size_t k, uint32_t *idx_out);

/* Byte-plane shuffle and its inverse (w = 2 or 4; kvt_kernels shuffle2/shuffle4 semantics) of
 * len bytes of host memory, run on the device. */
int kvt_kcuda_shuffle(const void *src, size_t len, uint32_t w, void *dst);
int kvt_kcuda_unshuffle(const void *src, size_t len, uint32_t w, void *dst);

/* RoPE re-rotation of kvt_kernels rope_shift_f16 (same arguments; d_keys and d_cs in device
 * memory, cs from kvt_rope_shift_table), bit for bit, in place. Queued on stream. */
int kvt_kcuda_rope_shift_f16_dev(uint16_t *d_keys, size_t n, size_t stride, size_t n_heads,
                                 size_t head_dim, size_t rotary_dims, int style, const float *d_cs,
                                 void *stream);

/* The same on host memory (rows copied over and back); waits for the result. */
int kvt_kcuda_rope_shift_f16(uint16_t *keys, size_t n, size_t stride, size_t n_heads,
                             size_t head_dim, size_t rotary_dims, int style, const float *cs);
/*
 * The lossy forms (kernels/quant.h, kernels/cluster.h), bit-identical to the kernel table's
 * quant_f16, dequant_f16, cluster_match_f16 and cluster_merge_f16.
 *
 * Quantize: one thread per group (for 4-bit CHANNEL groups, per pair of channels, which share
 * bytes), computing the minimum/maximum keys, the scale (the same search as
 * kvt_quant_scale_f16) and the codes in double. Dequantize: one thread per element.
 * d_x/d_out/d_in are device memory; f is host memory (read at the call). Queued on stream.
 */
struct kvt_quant_fmt;
int kvt_kcuda_quant_f16_dev(const struct kvt_quant_fmt *f, const uint16_t *d_x, size_t n,
                            size_t stride, uint8_t *d_out, void *stream);
int kvt_kcuda_dequant_f16_dev(const struct kvt_quant_fmt *f, const uint8_t *d_in, size_t n,
                              uint16_t *d_x, size_t stride, void *stream);
/* The same on host memory (kvt_quant_bytes(f, n) packed bytes); wait for the result. */
int kvt_kcuda_quant_f16(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n, size_t stride,
                        uint8_t *out);
int kvt_kcuda_dequant_f16(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n, uint16_t *x,
                          size_t stride);

/*
 * Matching for n_win windows at once (the (layer, KV head) windows of a chunk): window w's c key
 * rows at d_keys + w*win_stride (row i at + i*stride); its |A| results at d_best/d_sim + w*|A|.
 * A thread per key for the norms, a half-warp per (A, B) pair for the dot products (lane t
 * holding partial sum t, the shuffles doing the reference's tree), a thread per A for the choice.
 * d_scratch: kvt_kcuda_cluster_match_scratch_bytes(c, n_win) bytes. Queued on stream.
 */
size_t kvt_kcuda_cluster_match_scratch_bytes(size_t c, size_t n_win);
int kvt_kcuda_cluster_match_f16_dev(const uint16_t *d_keys, size_t stride, size_t head_dim,
                                    size_t c, size_t lo, size_t hi, size_t n_win, size_t win_stride,
                                    uint32_t *d_best, float *d_sim, void *d_scratch, void *stream);
/* The same on host memory; waits for the result. */
int kvt_kcuda_cluster_match_f16(const uint16_t *keys, size_t stride, size_t head_dim, size_t c,
                                size_t lo, size_t hi, size_t n_win, size_t win_stride,
                                uint32_t *best_out, float *sim_out);

/* The merge of one window on host memory (into[] as for cluster_merge_f16, checked: KVT_E_INVAL
 * when an entry does not merge into one that stays, or a count is 0); a thread per (entry,
 * channel). *n_out is the number of entries written; pos_out may be NULL. Waits for the result. */
int kvt_kcuda_cluster_merge_f16(const uint16_t *keys, const uint16_t *values, size_t stride,
                                size_t head_dim, size_t c, const uint32_t *counts,
                                const uint32_t *into, uint16_t *keys_out, uint16_t *values_out,
                                size_t out_stride, uint32_t *counts_out, uint32_t *pos_out,
                                size_t *n_out);

#ifdef __cplusplus
}
#endif

#endif
