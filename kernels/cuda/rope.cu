/*
 * CUDA RoPE re-rotation (kcuda.h, kvt_kernels rope_shift_f16): one thread per (row, head, pair),
 * the pair rotated with __fmul_rn / __fsub_rn / __fadd_rn (never fused) and rounded to fp16 with
 * __float2half_rn, so the result is the reference's bit for bit. The cosines and sines come from
 * the host's kvt_rope_shift_table: the device never evaluates a transcendental.
 */
#include <cerrno>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/kcuda.h"
#include "kvtier/errors.h"

namespace
{

constexpr int kThreads = 256;

int rope_err(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return 0;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
        return -ENODEV;
    case cudaErrorMemoryAllocation:
        return KVT_E_NOMEM;
    default:
        return -EIO;
    }
}

__global__ void rope_shift(uint16_t *keys, size_t n, size_t stride, size_t n_heads, size_t head_dim,
                           size_t half, int gptj, const float *cs)
{
    size_t total = n * n_heads * half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t % half, rh = t / half;
        uint16_t *v = keys + (rh / n_heads) * stride + (rh % n_heads) * head_dim;
        size_t a = gptj ? 2 * i : i, b = gptj ? 2 * i + 1 : i + half;
        float x = __half2float(__ushort_as_half(v[a])), y = __half2float(__ushort_as_half(v[b]));
        float c = cs[i], s = cs[half + i];
        float xo = __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s));
        float yo = __fadd_rn(__fmul_rn(x, s), __fmul_rn(y, c));
        v[a] = __half_as_ushort(__float2half_rn(xo));
        v[b] = __half_as_ushort(__float2half_rn(yo));
    }
}

int rope_check(size_t n, size_t stride, size_t n_heads, size_t head_dim, size_t rotary_dims,
               int style)
{
    if ((rotary_dims & 1) || rotary_dims > head_dim || (style != 0 && style != 1) ||
        (n && n_heads * head_dim > stride))
        return KVT_E_INVAL;
    return 0;
}

} // namespace

extern "C" int kvt_kcuda_rope_shift_f16_dev(uint16_t *d_keys, size_t n, size_t stride,
                                            size_t n_heads, size_t head_dim, size_t rotary_dims,
                                            int style, const float *d_cs, void *stream)
{
    int rc = rope_check(n, stride, n_heads, head_dim, rotary_dims, style);
    if (rc || !n || !n_heads || !rotary_dims)
        return rc;
    size_t total = n * n_heads * (rotary_dims / 2);
    size_t blocks = (total + kThreads - 1) / kThreads;
    rope_shift<<<(unsigned)(blocks < 65535 ? blocks : 65535), kThreads, 0, (cudaStream_t)stream>>>(
        d_keys, n, stride, n_heads, head_dim, rotary_dims / 2, style == 1, d_cs);
    return rope_err(cudaGetLastError());
}

extern "C" int kvt_kcuda_rope_shift_f16(uint16_t *keys, size_t n, size_t stride, size_t n_heads,
                                        size_t head_dim, size_t rotary_dims, int style,
                                        const float *cs)
{
    int rc = rope_check(n, stride, n_heads, head_dim, rotary_dims, style);
    if (rc)
        return rc;
    if ((rc = kvt_kcuda_probe(NULL, 0)))
        return rc;
    if (!n || !n_heads || !rotary_dims)
        return 0;
    size_t elems = (n - 1) * stride + n_heads * head_dim;
    uint16_t *d_keys = NULL;
    float *d_cs = NULL;
    rc = rope_err(cudaMalloc(&d_keys, elems * sizeof(uint16_t)));
    if (!rc)
        rc = rope_err(cudaMalloc(&d_cs, rotary_dims * sizeof(float)));
    if (!rc)
        rc = rope_err(cudaMemcpy(d_keys, keys, elems * sizeof(uint16_t), cudaMemcpyHostToDevice));
    if (!rc)
        rc = rope_err(cudaMemcpy(d_cs, cs, rotary_dims * sizeof(float), cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_rope_shift_f16_dev(d_keys, n, stride, n_heads, head_dim, rotary_dims, style,
                                          d_cs, NULL);
    if (!rc)
        rc = rope_err(cudaMemcpy(keys, d_keys, elems * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    cudaFree(d_keys);
    cudaFree(d_cs);
    return rc;
}
