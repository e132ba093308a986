/*
 * CUDA kernels (kcuda.h). The min/max uses the same fp16 order keys as the reference
 * (kernels/internal.h): one thread per channel and slice of rows takes the minimum and maximum
 * key of its slice and merges it with an integer atomicMin/atomicMax, so the result does not
 * depend on thread order and is the reference's exactly. The float outputs hold the 32-bit keys
 * while the kernels run; a last pass turns them into floats in place.
 */
#include <cerrno>
#include <cstdio>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/kcuda.h"
#include "kvtier/errors.h"

namespace {

constexpr int kThreads = 128;         /* channels per block */
constexpr size_t kRowsPerSlice = 64;  /* rows one thread reads before its atomic merge */
constexpr unsigned kSlicesMax = 4096; /* grid.y limit is 65535; more slices gain nothing */
constexpr int kKeyPinf = 0x7c00, kKeyNinf = -31745;

__device__ __forceinline__ int f16_key(unsigned h)
{
    return (int)(short)(unsigned short)(h ^ ((h & 0x8000u) ? 0x7fffu : 0u));
}

__global__ void minmax_init(int *lo, int *hi, size_t head_dim)
{
    size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (c < head_dim) {
        lo[c] = kKeyPinf;
        hi[c] = kKeyNinf;
    }
}

__global__ void minmax_slices(const uint16_t *keys, size_t n, size_t stride, size_t head_dim,
                              size_t rows_per_slice, int *lo, int *hi)
{
    size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t r0 = blockIdx.y * rows_per_slice;
    if (c >= head_dim || r0 >= n)
        return;
    size_t r1 = r0 + rows_per_slice < n ? r0 + rows_per_slice : n;
    int l = kKeyPinf, h = kKeyNinf;
    for (size_t r = r0; r < r1; r++) {
        unsigned v = keys[r * stride + c];
        if ((v & 0x7fffu) > 0x7c00u)
            continue; /* NaN: ignored */
        int k = f16_key(v);
        l = k < l ? k : l;
        h = k > h ? k : h;
    }
    atomicMin(&lo[c], l);
    atomicMax(&hi[c], h);
}

__global__ void minmax_finish(float *min_out, float *max_out, size_t head_dim)
{
    size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (c >= head_dim)
        return;
    int l = __float_as_int(min_out[c]), h = __float_as_int(max_out[c]);
    min_out[c] = __half2float(__ushort_as_half((unsigned short)f16_key((unsigned)l & 0xffffu)));
    max_out[c] = __half2float(__ushort_as_half((unsigned short)f16_key((unsigned)h & 0xffffu)));
}

__global__ void shuffle_kernel(const uint8_t *s, size_t n, uint32_t w, uint8_t *d)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        for (uint32_t b = 0; b < w; b++)
            d[b * n + i] = s[i * w + b];
}

__global__ void unshuffle_kernel(const uint8_t *s, size_t n, uint32_t w, uint8_t *d)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        for (uint32_t b = 0; b < w; b++)
            d[i * w + b] = s[b * n + i];
}

int map_err(cudaError_t e)
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

/* The error of the last launch or call, cleared. */
int last_err()
{
    return map_err(cudaGetLastError());
}

unsigned blocks_for(size_t count)
{
    return (unsigned)((count + kThreads - 1) / kThreads);
}

} // namespace

extern "C" int kvt_kcuda_probe(char *why, size_t why_cap)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        if (why && why_cap)
            snprintf(why, why_cap, "%s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
        (void)cudaGetLastError(); /* the failed probe must not fail the next call */
        return -ENODEV;
    }
    return 0;
}

extern "C" int kvt_kcuda_abstract_minmax_f16_dev(const uint16_t *d_keys, size_t n, size_t stride,
                                                 size_t head_dim, float *d_min, float *d_max,
                                                 void *stream)
{
    if (stride < head_dim || (!d_keys && n) || ((!d_min || !d_max) && head_dim))
        return KVT_E_INVAL;
    if (!head_dim)
        return 0;
    if (blocks_for(head_dim) > 0x7fffffffu)
        return KVT_E_INVAL;
    cudaStream_t st = (cudaStream_t)stream;
    int *lo = reinterpret_cast<int *>(d_min), *hi = reinterpret_cast<int *>(d_max);
    minmax_init<<<blocks_for(head_dim), kThreads, 0, st>>>(lo, hi, head_dim);
    if (n) {
        /* Enough rows per slice that the grid stays within kSlicesMax slices. */
        size_t rows = kRowsPerSlice;
        if ((n + rows - 1) / rows > kSlicesMax)
            rows = (n + kSlicesMax - 1) / kSlicesMax;
        dim3 grid(blocks_for(head_dim), (unsigned)((n + rows - 1) / rows));
        minmax_slices<<<grid, kThreads, 0, st>>>(d_keys, n, stride, head_dim, rows, lo, hi);
    }
    minmax_finish<<<blocks_for(head_dim), kThreads, 0, st>>>(d_min, d_max, head_dim);
    return last_err();
}

extern "C" int kvt_kcuda_abstract_minmax_f16(const uint16_t *keys, size_t n, size_t stride,
                                             size_t head_dim, float *min_out, float *max_out)
{
    if (stride < head_dim || (!keys && n) || ((!min_out || !max_out) && head_dim))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc)
        return rc;
    if (!head_dim)
        return 0;
    /* The last vector needs only head_dim elements, not a whole stride. */
    size_t key_elems = n ? (n - 1) * stride + head_dim : 0;
    uint16_t *d_keys = NULL;
    float *d_out = NULL;
    rc = map_err(cudaMalloc(&d_out, 2 * head_dim * sizeof(float)));
    if (rc)
        return rc;
    if (key_elems) {
        rc = map_err(cudaMalloc(&d_keys, key_elems * sizeof(uint16_t)));
        if (rc)
            goto err_free_out;
        rc = map_err(cudaMemcpy(d_keys, keys, key_elems * sizeof(uint16_t),
                                cudaMemcpyHostToDevice));
        if (rc)
            goto err_free_keys;
    }
    rc = kvt_kcuda_abstract_minmax_f16_dev(d_keys, n, stride, head_dim, d_out, d_out + head_dim,
                                           NULL);
    if (rc)
        goto err_free_keys;
    rc = map_err(cudaMemcpy(min_out, d_out, head_dim * sizeof(float), cudaMemcpyDeviceToHost));
    if (!rc)
        rc = map_err(cudaMemcpy(max_out, d_out + head_dim, head_dim * sizeof(float),
                                cudaMemcpyDeviceToHost));
err_free_keys:
    cudaFree(d_keys);
err_free_out:
    cudaFree(d_out);
    return rc;
}

namespace {

int shuffle_host(const void *src, size_t len, uint32_t w, void *dst, bool inverse)
{
    if ((w != 2 && w != 4) || ((!src || !dst) && len))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc || !len)
        return rc;
    size_t n = len / w;
    uint8_t *d_src = NULL, *d_dst = NULL;
    rc = map_err(cudaMalloc(&d_src, 2 * len));
    if (rc)
        return rc;
    d_dst = d_src + len;
    rc = map_err(cudaMemcpy(d_src, src, len, cudaMemcpyHostToDevice));
    if (rc)
        goto err_free;
    if (n) {
        if (inverse)
            unshuffle_kernel<<<blocks_for(n), kThreads>>>(d_src, n, w, d_dst);
        else
            shuffle_kernel<<<blocks_for(n), kThreads>>>(d_src, n, w, d_dst);
        rc = last_err();
        if (rc)
            goto err_free;
    }
    /* The trailing len % w bytes are copied unchanged. */
    rc = map_err(cudaMemcpy(d_dst + n * w, d_src + n * w, len - n * w, cudaMemcpyDeviceToDevice));
    if (!rc)
        rc = map_err(cudaMemcpy(dst, d_dst, len, cudaMemcpyDeviceToHost));
err_free:
    cudaFree(d_src);
    return rc;
}

} // namespace

extern "C" int kvt_kcuda_shuffle(const void *src, size_t len, uint32_t w, void *dst)
{
    return shuffle_host(src, len, w, dst, false);
}

extern "C" int kvt_kcuda_unshuffle(const void *src, size_t len, uint32_t w, void *dst)
{
    return shuffle_host(src, len, w, dst, true);
}
