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

/* Byte-plane shuffle and its inverse (w = 2 or 4; kvt_kernels shuffle2/shuffle4 semantics) of
 * len bytes of host memory, run on the device. */
int kvt_kcuda_shuffle(const void *src, size_t len, uint32_t w, void *dst);
int kvt_kcuda_unshuffle(const void *src, size_t len, uint32_t w, void *dst);

#ifdef __cplusplus
}
#endif

#endif
