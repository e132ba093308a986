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

enum kvt_kernels_variant {
    KVT_KERNELS_AUTO = 0, /* for kvt_kernels_force: what start-up would pick (env, then CPU) */
    KVT_KERNELS_REF,      /* portable C, every platform */
    KVT_KERNELS_AVX2,     /* x86-64 with AVX2 */
    KVT_KERNELS_AVX512,   /* x86-64 with AVX-512 F and BW */
    KVT_KERNELS_VARIANT_COUNT
};

/*
 * One table per variant. All pointers are non-NULL. Buffers are borrowed for the call; source
 * and destination must not overlap; any alignment and size are accepted.
 *
 * New kernels are added as new members, each with a reference and a test against it; the ones
 * planned are span scoring, quantize/dequantize, RoPE shift and gather.
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
