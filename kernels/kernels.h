/*
 * The kernel table: every data-path kernel of kvtier behind one set of function pointers, with a
 * portable C reference (kernels/ref/) and SIMD versions (kernels/x86/) chosen once at start from
 * the CPU's features. A variant's table is complete: where a variant has no version of its own
 * for a kernel it points at the best lower one, so every entry of every table can be called.
 *
 * Selection: the first kvt_kernels() call picks the variant named by the environment variable
 * KVT_KERNELS (ref, avx2 or avx512) when it is set and the CPU supports it, else the best the CPU
 * supports. kvt_kernels_force() switches later (tests use it to run everything on the
 * reference). Every kernel of every variant gives bit-identical results, so a switch never
 * changes what is stored; tests/unit/test_kernels.c checks each against the reference.
 *
 * The CUDA versions (kernels/cuda/kcuda.h) operate on device memory and live in their own
 * archive; they are not in this table. docs/kernels.md describes both.
 */
#ifndef KVT_KERNELS_KERNELS_H
#define KVT_KERNELS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

struct kvt_quant_fmt; /* kernels/quant.h */

enum kvt_kernels_variant {
    KVT_KERNELS_AUTO = 0, /* for kvt_kernels_force: what start-up would pick (env, then CPU) */
    KVT_KERNELS_REF,      /* portable C, every platform */
    KVT_KERNELS_AVX2,     /* x86-64 with AVX2 and F16C */
    KVT_KERNELS_AVX512,   /* x86-64 with AVX-512 F and BW */
    KVT_KERNELS_VARIANT_COUNT
};

/*
 * One table per variant. All pointers are non-NULL. Buffers are borrowed for the call; source
 * and destination must not overlap; any alignment and size are accepted.
 *
 * New kernels are added as new members, each with a reference and a test against it; the one
 * planned is gather. kernels/half.h has the scalar fp16 conversions the kernels use.
 */
struct kvt_kernels {
    enum kvt_kernels_variant variant;
    const char *name; /* "ref", "avx2", "avx512" */

    /* memcpy. */
    void (*copy)(void *dst, const void *src, size_t n);
    /* memcpy with non-temporal stores from 4 KiB on (a store into memory cold in every cache
     * skips the read-for-ownership); ends with a store fence, so the bytes are visible to other
     * threads once it returns. */
    void (*copy_stream)(void *dst, const void *src, size_t n);

    /* Byte-plane shuffle of len bytes as elements of 2 (4) bytes: with n = len / w, dst[b*n + i]
     * = src[i*w + b]; the trailing len % w bytes are copied unchanged. unshuffle inverts it. */
    void (*shuffle2)(const void *src, size_t len, void *dst);
    void (*unshuffle2)(const void *src, size_t len, void *dst);
    void (*shuffle4)(const void *src, size_t len, void *dst);
    void (*unshuffle4)(const void *src, size_t len, void *dst);

    /* The abstract of a span of keys: for n vectors of head_dim IEEE fp16 values, vector r at
     * keys + r * stride (stride >= head_dim, in elements), the per-channel minimum and maximum as
     * fp32 in min_out[head_dim] and max_out[head_dim]. NaNs are ignored; -0.0 orders below +0.0;
     * a channel with no non-NaN value (or n == 0) gets min +inf and max -inf. Exact: fp16 values
     * convert to fp32 without rounding. */
    void (*abstract_minmax_f16)(const uint16_t *keys, size_t n, size_t stride, size_t head_dim,
                                float *min_out, float *max_out);

    /* Per-channel fp32 sums of n fp16 vectors (vector r at x + r*stride, stride >= head_dim, in
     * elements) into sum_out[head_dim]; each channel summed in row order r = 0..n-1 starting
     * from +0.0f (so every variant gives the same bits). NaN/inf propagate as IEEE addition
     * does (a NaN result is a NaN in every variant; its payload is not specified). For the mean
     * key and the value sum of a span's abstract. */
    void (*sum_f16)(const uint16_t *x, size_t n, size_t stride, size_t head_dim, float *sum_out);

    /* Quest upper bound of q.k for n_spans spans against n_q query vectors of one GQA group.
     * q: n_q vectors of head_dim fp32, vector j at q + j*head_dim.
     * bounds: span s at bounds + s*span_stride (in fp16 elements, >= 2*head_dim): head_dim fp16
     * minimums then head_dim fp16 maximums (the per-channel min/max of the span's keys).
     * out[s] = max over j of  sum_i max(q[j][i]*min[s][i], q[j][i]*max[s][i]).
     * Summation order is fixed so every variant is bit-identical: 16 partial sums acc[i % 16]
     * (from +0.0f) accumulated in increasing i (products and max in fp32, no FMA contraction),
     * then reduced acc[k] += acc[k+8] (k<8), acc[k] += acc[k+4] (k<4), acc[k] += acc[k+2]
     * (k<2), acc[0] += acc[1]. max(a, b) is a > b ? a : b, both inside the sum and over j (j in
     * increasing order, a later query replacing the best only when strictly greater).
     * A span whose min is +inf/max is -inf (no keys; tested on channel 0, which is what
     * abstract_minmax_f16 gives for n == 0) gets -inf, and so does every span when n_q == 0.
     * A NaN result is a NaN in every variant (payload not specified). */
    void (*bound_f16)(const float *q, size_t n_q, const uint16_t *bounds, size_t n_spans,
                      size_t span_stride, size_t head_dim, float *out);

    /* Indices of the k largest of score[0..n) into idx_out, largest first; ties go to the
     * lower index; NaN ranks below every number; -0.0 and +0.0 are equal (a tie). Returns
     * min(k, n). Any n up to UINT32_MAX, O(n log k) in the reference and O(n + k log k) in the
     * others; idx_out (min(k, n) entries) is its only working memory besides the stack: it
     * allocates nothing. */
    size_t (*topk_f32)(const float *score, size_t n, size_t k, uint32_t *idx_out);

    /* RoPE re-rotation of fp16 keys in place (kernels/rope.h): n rows, row r at keys + r *
     * stride (elements), each n_heads vectors of head_dim (vector h at row + h * head_dim); in
     * each vector the pairs of the first rotary_dims channels (style KVT_ROPE_NEOX: (i, i +
     * rotary_dims / 2); KVT_ROPE_GPTJ: (2i, 2i + 1)) are rotated by the angles whose cosines
     * and sines cs holds (kvt_rope_shift_table): with c = cs[i], s = cs[rotary_dims / 2 + i],
     * x' = x*c - y*s and y' = x*s + y*c in fp32 (each product rounded, then the one addition;
     * no fused multiply-add), rounded to fp16 to nearest even. Channels past rotary_dims are
     * untouched. rotary_dims is even and <= head_dim. */
    void (*rope_shift_f16)(uint16_t *keys, size_t n, size_t stride, size_t n_heads, size_t head_dim,
                           size_t rotary_dims, int style, const float *cs);
    /* Group quantization (kernels/quant.h has the format and the packed layout). quant_f16
     * packs n rows of f->head_dim fp16 values, row r at x + r*stride (stride >= head_dim, in
     * elements), into out[kvt_quant_bytes(f, n)]; dequant_f16 unpacks such a block into n rows
     * at x + r*stride. f must pass kvt_quant_fmt_check (asserted). Per group: m = the minimum
     * (an fp16 value, kept exactly; -0 below +0), s = kvt_quant_scale_f16(min, max, bits),
     * q = nearest integer to (x - m) / s, evaluated in double as rint((x - m) * (1/s)), which
     * decides the nearest integer exactly (docs/kernels.md; at an exact tie either neighbour,
     * the same one in every variant), 0 when s == 0; the value
     * read back is fp16(clamp(m + q*s in fp32, -65504, 65504)). So |x - (m + q*s)| <= s/2
     * exactly, and the fp16 output adds only its own rounding. A group holding a NaN or an
     * infinity is stored with scale and minimum KVT_QUANT_NONFINITE and codes 0 and reads back
     * as 0x7e00 (NaN) in every element. */
    void (*quant_f16)(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n, size_t stride,
                      uint8_t *out);
    void (*dequant_f16)(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n, uint16_t *x,
                        size_t stride);

    /* The matching step of clustering (kernels/cluster.h) over window positions [lo, hi) of c
     * key rows (row i at keys + i*stride, stride >= head_dim; hi <= c <= KVT_CLUSTER_WINDOW_MAX):
     * for the a-th even position i of [lo, hi) (set A, in increasing order), best_out[a] is the
     * odd position j of [lo, hi) (set B) whose key is most similar to key i, sim_out[a] that
     * similarity; returns |A|. Similarity: cos = dot(ki, kj) / (|ki| * |kj|), 0 when either norm
     * is 0; dot and squared norms each in bound_f16's fixed order (16 partial sums acc[t % 16]
     * from +0.0f in increasing t, then the same tree; products of fp16 values, exact in fp32),
     * |k| = sqrtf(squared norm), then one fp32 multiply and one divide. The best is the highest
     * in top-k's order (NaN lowest, -0 == +0), ties to the lowest j. With B empty, best_out is
     * UINT32_MAX and sim_out -inf. */
    size_t (*cluster_match_f16)(const uint16_t *keys, size_t stride, size_t head_dim, size_t c,
                                size_t lo, size_t hi, uint32_t *best_out, float *sim_out);

    /* The merge step: into[i] is i for an entry that stays (an output entry) or the position of
     * the entry it merges into (which stays: into[into[i]] == into[i]). Writes the entries that
     * stay in position order, entry e at keys_out/values_out + e*out_stride, counts_out[e] =
     * sum of its members' counts (counts NULL: all 1), pos_out[e] its position (pos_out may be
     * NULL); returns their number. An entry with no other member is copied bit for bit; a merged
     * one is fp16(acc / (float)count) per channel, acc = sum over its members in increasing
     * position of (float)count_j * key_j (from +0.0f, fp32), for keys and values alike. */
    size_t (*cluster_merge_f16)(const uint16_t *keys, const uint16_t *values, size_t stride,
                                size_t head_dim, size_t c, const uint32_t *counts,
                                const uint32_t *into, uint16_t *keys_out, uint16_t *values_out,
                                size_t out_stride, uint32_t *counts_out, uint32_t *pos_out);
};

/* The active table (selected on the first call). The pointer stays valid for the process. */
const struct kvt_kernels *kvt_kernels(void);

/* The table of one variant, or NULL when this build or this CPU does not have it (AUTO gives
 * what start-up would pick). For tests and benchmarks that run every variant. */
const struct kvt_kernels *kvt_kernels_variant(enum kvt_kernels_variant v);

/* Makes v the active table. 0; -ENOTSUP when the CPU or the build lacks it; KVT_E_INVAL for a
 * value out of range, or for AUTO when KVT_KERNELS names no variant (the best the CPU supports
 * is then active). Meant for start-up and tests: a call made while other threads run kernels
 * is safe (each call uses one table or the other, and all give the same results). */
int kvt_kernels_force(enum kvt_kernels_variant v);

/* "ref", "avx2", "avx512" to a variant: 0, or KVT_E_INVAL. */
int kvt_kernels_parse(const char *name, enum kvt_kernels_variant *out);

/* Static name of a variant ("auto" for AUTO, "unknown" out of range). */
const char *kvt_kernels_variant_name(enum kvt_kernels_variant v);

#endif
