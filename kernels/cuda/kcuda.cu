/*
 * CUDA kernels (kcuda.h): the abstract min/max and the shuffles, and for sparse retrieval the
 * abstracts of a batch of spans, the Quest bound and top-k, each bit-identical to the reference.
 *
 * The min/max uses the same fp16 order keys as the reference (kernels/internal.h): one thread
 * per channel and slice of rows takes the minimum and maximum key of its slice and merges it
 * with an integer atomicMin/atomicMax, so the result does not depend on thread order and is the
 * reference's exactly. The float outputs hold the 32-bit keys while the kernels run; a last pass
 * turns them into floats in place. The batch abstracts cannot split a span's rows that way: its
 * sums are specified in row order, so one thread walks all rows of its (span, channel).
 */
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include <cub/device/device_radix_sort.cuh>
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

/* One thread per (span, channel), channels fastest so that a warp reads consecutive fp16
 * values of one row; grid-stride over all n_spans * head_dim items. */
__global__ void abstract_spans(const uint16_t *x, size_t stride, size_t head_dim,
                               const uint32_t *offsets, size_t n_spans, uint16_t *bounds,
                               size_t span_stride, float *sums)
{
    const size_t items = n_spans * head_dim;
    for (size_t it = blockIdx.x * (size_t)blockDim.x + threadIdx.x; it < items;
         it += (size_t)gridDim.x * blockDim.x) {
        size_t s = it / head_dim, c = it % head_dim;
        int lo = kKeyPinf, hi = kKeyNinf;
        float sum = 0.0f;
        for (size_t r = offsets[s]; r < offsets[s + 1]; r++) {
            unsigned v = x[r * stride + c];
            sum = __fadd_rn(sum, __half2float(__ushort_as_half((unsigned short)v)));
            if ((v & 0x7fffu) > 0x7c00u)
                continue; /* NaN: ignored by the min/max */
            int k = f16_key(v);
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
        }
        if (bounds) {
            bounds[s * span_stride + c] = (uint16_t)f16_key((unsigned)lo & 0xffffu);
            bounds[s * span_stride + head_dim + c] = (uint16_t)f16_key((unsigned)hi & 0xffffu);
        }
        if (sums)
            sums[s * head_dim + c] = sum;
    }
}

constexpr int kHalfWarp = 16;

/* A half-warp per span: lane k accumulates the reference's partial sum acc[k] (channels k,
 * k + 16, ... in order), then the shuffles add acc[k + 8], acc[k + 4], acc[k + 2], acc[k + 1]
 * into acc[k]: the reference's tree. The shuffles name only the half-warp's lanes, which always
 * agree on their span, so the other half may have left the loop. */
__global__ void bound_spans(const float *q, size_t n_q, const uint16_t *bounds, size_t n_spans,
                            size_t span_stride, size_t head_dim, float *out)
{
    const unsigned lane = threadIdx.x % kHalfWarp;
    const unsigned mask = 0xffffu << (threadIdx.x % 32 / kHalfWarp * kHalfWarp);
    const size_t groups = (size_t)gridDim.x * (blockDim.x / kHalfWarp);
    for (size_t s = blockIdx.x * (size_t)(blockDim.x / kHalfWarp) + threadIdx.x / kHalfWarp;
         s < n_spans; s += groups) {
        const uint16_t *mn = bounds + s * span_stride, *mx = mn + head_dim;
        float best = -INFINITY;
        if (!(head_dim && mn[0] == 0x7c00u && mx[0] == 0xfc00u)) {
            for (size_t j = 0; j < n_q; j++) {
                const float *qj = q + j * head_dim;
                float acc = 0.0f;
                for (size_t i = lane; i < head_dim; i += kHalfWarp) {
                    float a = __fmul_rn(qj[i], __half2float(__ushort_as_half(mn[i])));
                    float b = __fmul_rn(qj[i], __half2float(__ushort_as_half(mx[i])));
                    acc = __fadd_rn(acc, a > b ? a : b);
                }
                for (int d = kHalfWarp / 2; d >= 1; d /= 2)
                    acc = __fadd_rn(acc, __shfl_down_sync(mask, acc, d, kHalfWarp));
                best = j == 0 ? acc : acc > best ? acc : best;
            }
        }
        if (lane == 0)
            out[s] = best;
    }
}

/* The top-k rank key of the reference (kernels/ref/ref.c): rank bits above the complement of
 * the index, so that all keys differ and a lower index wins a tie. */
__device__ __forceinline__ unsigned long long rank_key(float f, uint32_t i)
{
    uint32_t b = __float_as_uint(f), k;
    if ((b & 0x7fffffffu) > 0x7f800000u)
        k = 0;
    else if (b == 0x80000000u)
        k = 0x80000000u;
    else
        k = (b & 0x80000000u) ? ~b : b | 0x80000000u;
    return (unsigned long long)k << 32 | (uint32_t)~i;
}

__global__ void topk_keys(const float *score, size_t n, unsigned long long *keys)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        keys[i] = rank_key(score[i], (uint32_t)i);
}

__global__ void topk_indices(const unsigned long long *sorted, size_t k, uint32_t *idx)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < k;
         i += (size_t)gridDim.x * blockDim.x)
        idx[i] = ~(uint32_t)sorted[i];
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

/* Blocks for a grid-stride kernel over count items: enough to fill any device, no more. */
constexpr size_t kGridMax = 65535;
unsigned grid_for(size_t count, size_t per_block = kThreads)
{
    size_t b = (count + per_block - 1) / per_block;
    return (unsigned)(b < 1 ? 1 : b > kGridMax ? kGridMax : b);
}

size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* Bytes of the 64-bit key arrays (in, sorted) that come before CUB's temporary storage. */
size_t topk_key_bytes(size_t n)
{
    return align_up(n * sizeof(unsigned long long), 256);
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
        rc =
            map_err(cudaMemcpy(d_keys, keys, key_elems * sizeof(uint16_t), cudaMemcpyHostToDevice));
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

extern "C" int kvt_kcuda_abstract_spans_f16_dev(const uint16_t *d_x, size_t stride, size_t head_dim,
                                                const uint32_t *d_offsets, size_t n_spans,
                                                uint16_t *d_bounds, size_t span_stride,
                                                float *d_sums, void *stream)
{
    if (stride < head_dim || (n_spans && !d_offsets) || (d_bounds && span_stride < 2 * head_dim))
        return KVT_E_INVAL;
    if (!n_spans || !head_dim || (!d_bounds && !d_sums))
        return 0;
    if (n_spans > SIZE_MAX / head_dim)
        return KVT_E_INVAL;
    abstract_spans<<<grid_for(n_spans * head_dim), kThreads, 0, (cudaStream_t)stream>>>(
        d_x, stride, head_dim, d_offsets, n_spans, d_bounds, span_stride, d_sums);
    return last_err();
}

extern "C" int kvt_kcuda_abstract_spans_f16(const uint16_t *x, size_t stride, size_t head_dim,
                                            const uint32_t *offsets, size_t n_spans,
                                            uint16_t *bounds_out, size_t span_stride,
                                            float *sums_out)
{
    if (stride < head_dim || (n_spans && !offsets) || (bounds_out && span_stride < 2 * head_dim))
        return KVT_E_INVAL;
    for (size_t s = 0; s < n_spans; s++)
        if (offsets[s] > offsets[s + 1])
            return KVT_E_INVAL;
    const size_t rows = n_spans ? offsets[n_spans] : 0;
    if (rows && !x)
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc || !n_spans || !head_dim || (!bounds_out && !sums_out))
        return rc;
    const size_t x_elems = rows ? (rows - 1) * stride + head_dim : 0;
    const size_t off_bytes = align_up((n_spans + 1) * sizeof(uint32_t), 256);
    /* The last span needs only its 2 * head_dim elements, not a whole stride. */
    const size_t bnd_elems = (n_spans - 1) * span_stride + 2 * head_dim;
    const size_t bnd_bytes = bounds_out ? align_up(bnd_elems * sizeof(uint16_t), 256) : 0;
    const size_t sum_bytes = sums_out ? n_spans * head_dim * sizeof(float) : 0;
    const size_t x_bytes = align_up(x_elems * sizeof(uint16_t), 256);
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, off_bytes + bnd_bytes + sum_bytes + x_bytes + 256));
    if (rc)
        return rc;
    uint32_t *d_off = (uint32_t *)dev;
    uint16_t *d_bnd = bounds_out ? (uint16_t *)(dev + off_bytes) : NULL;
    float *d_sum = sums_out ? (float *)(dev + off_bytes + bnd_bytes) : NULL;
    uint16_t *d_x = (uint16_t *)(dev + off_bytes + bnd_bytes + align_up(sum_bytes, 256));
    rc = map_err(
        cudaMemcpy(d_off, offsets, (n_spans + 1) * sizeof(uint32_t), cudaMemcpyHostToDevice));
    if (!rc && x_elems)
        rc = map_err(cudaMemcpy(d_x, x, x_elems * sizeof(uint16_t), cudaMemcpyHostToDevice));
    /* Padding between spans of the bounds is the caller's: copy it over so it comes back. */
    if (!rc && d_bnd)
        rc = map_err(
            cudaMemcpy(d_bnd, bounds_out, bnd_elems * sizeof(uint16_t), cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_abstract_spans_f16_dev(d_x, stride, head_dim, d_off, n_spans, d_bnd,
                                              span_stride, d_sum, NULL);
    if (!rc && d_bnd)
        rc = map_err(
            cudaMemcpy(bounds_out, d_bnd, bnd_elems * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    if (!rc && d_sum)
        rc = map_err(cudaMemcpy(sums_out, d_sum, sum_bytes, cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}

extern "C" int kvt_kcuda_bound_f16_dev(const float *d_q, size_t n_q, const uint16_t *d_bounds,
                                       size_t n_spans, size_t span_stride, size_t head_dim,
                                       float *d_out, void *stream)
{
    if (span_stride < 2 * head_dim || (n_spans && (!d_bounds || !d_out)) ||
        (n_q && head_dim && !d_q))
        return KVT_E_INVAL;
    if (!n_spans)
        return 0;
    bound_spans<<<grid_for(n_spans, kThreads / kHalfWarp), kThreads, 0, (cudaStream_t)stream>>>(
        d_q, n_q, d_bounds, n_spans, span_stride, head_dim, d_out);
    return last_err();
}

extern "C" int kvt_kcuda_bound_f16(const float *q, size_t n_q, const uint16_t *bounds,
                                   size_t n_spans, size_t span_stride, size_t head_dim, float *out)
{
    if (span_stride < 2 * head_dim || (n_spans && (!bounds || !out)) || (n_q && head_dim && !q))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc || !n_spans)
        return rc;
    /* The last span needs only its 2 * head_dim elements, not a whole stride. */
    const size_t bnd_elems = (n_spans - 1) * span_stride + 2 * head_dim;
    const size_t q_bytes = align_up(n_q * head_dim * sizeof(float), 256);
    const size_t out_bytes = align_up(n_spans * sizeof(float), 256);
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, q_bytes + out_bytes + bnd_elems * sizeof(uint16_t)));
    if (rc)
        return rc;
    float *d_q = (float *)dev, *d_out = (float *)(dev + q_bytes);
    uint16_t *d_bnd = (uint16_t *)(dev + q_bytes + out_bytes);
    rc = map_err(cudaMemcpy(d_q, q, n_q * head_dim * sizeof(float), cudaMemcpyHostToDevice));
    if (!rc)
        rc = map_err(
            cudaMemcpy(d_bnd, bounds, bnd_elems * sizeof(uint16_t), cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_bound_f16_dev(d_q, n_q, d_bnd, n_spans, span_stride, head_dim, d_out, NULL);
    if (!rc)
        rc = map_err(cudaMemcpy(out, d_out, n_spans * sizeof(float), cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}

extern "C" int kvt_kcuda_topk_scratch_bytes(size_t n, size_t *bytes_out)
{
    if (!bytes_out || n > INT_MAX)
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc)
        return rc;
    size_t temp = 0;
    unsigned long long *none = NULL;
    rc = map_err(cub::DeviceRadixSort::SortKeysDescending(NULL, temp, none, none, (int)n));
    if (rc)
        return rc;
    *bytes_out = 2 * topk_key_bytes(n) + temp;
    return 0;
}

extern "C" int kvt_kcuda_topk_f32_dev(const float *d_score, size_t n, size_t k, uint32_t *d_idx_out,
                                      void *d_scratch, size_t scratch_bytes, void *stream)
{
    if (n > INT_MAX || (n && k && (!d_score || !d_idx_out || !d_scratch)))
        return KVT_E_INVAL;
    if (k > n)
        k = n;
    if (!k)
        return 0;
    cudaStream_t st = (cudaStream_t)stream;
    const size_t key_bytes = topk_key_bytes(n);
    if (scratch_bytes < 2 * key_bytes)
        return KVT_E_INVAL;
    unsigned long long *keys = (unsigned long long *)d_scratch;
    unsigned long long *sorted = (unsigned long long *)((uint8_t *)d_scratch + key_bytes);
    void *temp = (uint8_t *)d_scratch + 2 * key_bytes;
    size_t temp_bytes = 0;
    int rc = map_err(cub::DeviceRadixSort::SortKeysDescending(NULL, temp_bytes, keys, sorted,
                                                              (int)n, 0, 64, st));
    if (rc)
        return rc;
    if (scratch_bytes - 2 * key_bytes < temp_bytes)
        return KVT_E_INVAL;
    topk_keys<<<grid_for(n), kThreads, 0, st>>>(d_score, n, keys);
    rc = last_err();
    if (rc)
        return rc;
    rc = map_err(cub::DeviceRadixSort::SortKeysDescending(temp, temp_bytes, keys, sorted, (int)n, 0,
                                                          64, st));
    if (rc)
        return rc;
    topk_indices<<<grid_for(k), kThreads, 0, st>>>(sorted, k, d_idx_out);
    return last_err();
}

extern "C" int kvt_kcuda_topk_f32(const float *score, size_t n, size_t k, uint32_t *idx_out)
{
    if (n > INT_MAX || (n && k && (!score || !idx_out)))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (k > n)
        k = n;
    if (rc || !k)
        return rc;
    size_t scratch = 0;
    rc = kvt_kcuda_topk_scratch_bytes(n, &scratch);
    if (rc)
        return rc;
    const size_t score_bytes = align_up(n * sizeof(float), 256);
    const size_t idx_bytes = align_up(k * sizeof(uint32_t), 256);
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, score_bytes + idx_bytes + scratch));
    if (rc)
        return rc;
    float *d_score = (float *)dev;
    uint32_t *d_idx = (uint32_t *)(dev + score_bytes);
    rc = map_err(cudaMemcpy(d_score, score, n * sizeof(float), cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_topk_f32_dev(d_score, n, k, d_idx, dev + score_bytes + idx_bytes, scratch,
                                    NULL);
    if (!rc)
        rc = map_err(cudaMemcpy(idx_out, d_idx, k * sizeof(uint32_t), cudaMemcpyDeviceToHost));
    cudaFree(dev);
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
