/*
 * CUDA versions of the lossy kernels (kcuda.h): group quantize and dequantize, and the matching
 * and merge steps of clustering, each bit-identical to the reference (kernels/ref/lossy.c): the
 * same fp16 order keys for a group's minimum and maximum, the same exact search for its scale,
 * the codes in double (rint of (x - m) * (1/s)), the values and the merged means in fp32 with
 * __fmul_rn/__fadd_rn/__fdiv_rn (never fused; the file is also built with --fmad=false), and the
 * dot products of the matching in the reference's 16-lane order (a half-warp per pair, as the
 * bound kernel of kcuda.cu). The format helpers are repeated here rather than called from the
 * core archive, which this archive must not depend on (it is linked after it).
 */
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/kcuda.h"
#include "kvtier/errors.h"
extern "C" {
#include "kernels/cluster.h"
#include "kernels/quant.h"
}

namespace {

constexpr int kThreads = 128;
constexpr size_t kGridMax = 65535;
constexpr int kHalfWarp = 16;

unsigned grid_for(size_t count, size_t per_block = kThreads)
{
    size_t b = (count + per_block - 1) / per_block;
    return (unsigned)(b < 1 ? 1 : b > kGridMax ? kGridMax : b);
}

size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
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

/* kvt_quant_fmt_check and the sizes of kernels/quant.c. */
bool fmt_ok(const kvt_quant_fmt *f)
{
    return f && (f->bits == 8 || f->bits == 4) &&
           (f->axis == KVT_QUANT_AXIS_TOKEN || f->axis == KVT_QUANT_AXIS_CHANNEL) &&
           f->head_dim >= 2 && f->head_dim <= KVT_QUANT_HEAD_DIM_MAX && f->head_dim % 2 == 0 &&
           f->group >= 2 && f->group <= KVT_QUANT_GROUP_MAX && f->group % 2 == 0 &&
           (f->axis != KVT_QUANT_AXIS_TOKEN || f->head_dim % f->group == 0);
}

size_t fmt_groups(const kvt_quant_fmt *f, size_t n)
{
    return f->axis == KVT_QUANT_AXIS_TOKEN ? n * (f->head_dim / f->group)
                                           : (n + f->group - 1) / f->group * f->head_dim;
}

size_t fmt_code_bytes(const kvt_quant_fmt *f, size_t n)
{
    return n * f->head_dim * f->bits / 8;
}

__device__ __forceinline__ int f16_key(unsigned h)
{
    return (int)(short)(unsigned short)(h ^ ((h & 0x8000u) ? 0x7fffu : 0u));
}

__device__ __forceinline__ float h2f(unsigned short h)
{
    return __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ unsigned short f2h(float f)
{
    return __half_as_ushort(__float2half_rn(f));
}

/* kvt_quant_scale_f16: the search ends at the same fp16 from any start. */
__device__ unsigned short scale_f16(unsigned short lo, unsigned short hi, unsigned bits)
{
    const double range = (double)h2f(hi) - (double)h2f(lo), levels = (double)((1u << bits) - 1u);
    if (!(range > 0.0))
        return 0;
    unsigned short s = f2h((float)(range / levels));
    while ((double)h2f(s) * levels < range)
        s++;
    while (s > 0 && (double)h2f((unsigned short)(s - 1)) * levels >= range)
        s--;
    return s;
}

struct group_params {
    unsigned short scale, min;
    double inv;
};

/* The parameters of the count elements x[0], x[step], ... (kvt__quant_group_params). */
__device__ group_params params_of(const uint16_t *x, size_t count, size_t step, unsigned bits)
{
    int lo = 0x7c00, hi = -31745, nonfinite = 0;
    for (size_t i = 0; i < count; i++) {
        unsigned h = x[i * step];
        nonfinite |= (h & 0x7c00u) == 0x7c00u;
        int k = f16_key(h);
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    group_params g;
    if (nonfinite) {
        g.scale = g.min = KVT_QUANT_NONFINITE;
        g.inv = 0.0;
        return g;
    }
    g.min = (unsigned short)f16_key((unsigned)lo & 0xffffu);
    g.scale = scale_f16(g.min, (unsigned short)f16_key((unsigned)hi & 0xffffu), bits);
    g.inv = g.scale ? 1.0 / (double)h2f(g.scale) : 0.0;
    return g;
}

__device__ __forceinline__ unsigned code_of(unsigned short x, const group_params &g, double levels)
{
    if (g.inv == 0.0)
        return 0;
    double t = rint(((double)h2f(x) - (double)h2f(g.min)) * g.inv);
    t = t < 0.0 ? 0.0 : t > levels ? levels : t;
    return (unsigned)t;
}

__device__ __forceinline__ void put_params(uint8_t *params, size_t idx, const group_params &g)
{
    uint8_t *p = params + idx * KVT_QUANT_PARAM_BYTES;
    p[0] = (uint8_t)g.scale;
    p[1] = (uint8_t)(g.scale >> 8);
    p[2] = (uint8_t)g.min;
    p[3] = (uint8_t)(g.min >> 8);
}

/* One thread per group of consecutive channels of a row; G is even, so its 4-bit codes fill
 * whole bytes. */
__global__ void quant_token(const uint16_t *x, size_t n, size_t stride, unsigned bits, size_t d,
                            size_t G, uint8_t *out, uint8_t *params)
{
    const size_t per_row = d / G, groups = n * per_row;
    const double levels = (double)((1u << bits) - 1u);
    for (size_t gi = blockIdx.x * (size_t)blockDim.x + threadIdx.x; gi < groups;
         gi += (size_t)gridDim.x * blockDim.x) {
        const size_t r = gi / per_row, c0 = gi % per_row * G;
        const uint16_t *p = x + r * stride + c0;
        group_params g = params_of(p, G, 1, bits);
        const size_t e0 = r * d + c0;
        if (bits == 8) {
            for (size_t i = 0; i < G; i++)
                out[e0 + i] = (uint8_t)code_of(p[i], g, levels);
        } else {
            for (size_t i = 0; i < G; i += 2)
                out[(e0 + i) / 2] =
                    (uint8_t)(code_of(p[i], g, levels) | code_of(p[i + 1], g, levels) << 4);
        }
        put_params(params, gi, g);
    }
}

/* One thread per (row group, channel), or per (row group, channel pair) for 4 bits: the two
 * channels of a pair share each row's byte. */
__global__ void quant_channel(const uint16_t *x, size_t n, size_t stride, unsigned bits, size_t d,
                              size_t G, uint8_t *out, uint8_t *params)
{
    const size_t lanes = bits == 8 ? d : d / 2, n_groups = (n + G - 1) / G;
    const double levels = (double)((1u << bits) - 1u);
    for (size_t it = blockIdx.x * (size_t)blockDim.x + threadIdx.x; it < n_groups * lanes;
         it += (size_t)gridDim.x * blockDim.x) {
        const size_t g = it / lanes, c = bits == 8 ? it % lanes : it % lanes * 2;
        const size_t r0 = g * G, rows = n - r0 < G ? n - r0 : G;
        const uint16_t *p = x + r0 * stride + c;
        group_params g0 = params_of(p, rows, stride, bits);
        put_params(params, g * d + c, g0);
        if (bits == 8) {
            for (size_t r = 0; r < rows; r++)
                out[(r0 + r) * d + c] = (uint8_t)code_of(p[r * stride], g0, levels);
            continue;
        }
        group_params g1 = params_of(p + 1, rows, stride, bits);
        put_params(params, g * d + c + 1, g1);
        for (size_t r = 0; r < rows; r++)
            out[((r0 + r) * d + c) / 2] = (uint8_t)(code_of(p[r * stride], g0, levels) |
                                                    code_of(p[r * stride + 1], g1, levels) << 4);
    }
}

__global__ void dequant(const uint8_t *in, size_t n, unsigned bits, unsigned axis, size_t d,
                        size_t G, const uint8_t *params, uint16_t *x, size_t stride)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n * d;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t r = e / d, c = e % d;
        const size_t idx = axis == KVT_QUANT_AXIS_TOKEN ? r * (d / G) + c / G : r / G * d + c;
        const uint8_t *p = params + idx * KVT_QUANT_PARAM_BYTES;
        const unsigned short scale = (unsigned short)(p[0] | p[1] << 8);
        const unsigned short min = (unsigned short)(p[2] | p[3] << 8);
        unsigned short out = KVT_QUANT_NONFINITE;
        if (scale != KVT_QUANT_NONFINITE) {
            unsigned q = bits == 8 ? in[e] : e % 2 ? in[e / 2] >> 4 : in[e / 2] & 15u;
            float v = __fadd_rn(h2f(min), __fmul_rn((float)q, h2f(scale)));
            v = v < -65504.0f ? -65504.0f : v > 65504.0f ? 65504.0f : v;
            out = f2h(v);
        }
        x[r * stride + c] = out;
    }
}

/* The reference's dot product order for one thread: partial sums t % 16, then the tree. */
__device__ float dot16_serial(const uint16_t *a, const uint16_t *b, size_t d)
{
    float acc[16];
#pragma unroll
    for (int k = 0; k < 16; k++)
        acc[k] = 0.0f;
    for (size_t i0 = 0; i0 < d; i0 += 16) {
#pragma unroll
        for (int k = 0; k < 16; k++)
            if (i0 + k < d)
                acc[k] = __fadd_rn(acc[k], __fmul_rn(h2f(a[i0 + k]), h2f(b[i0 + k])));
    }
#pragma unroll
    for (int s = 8; s >= 1; s /= 2)
#pragma unroll
        for (int k = 0; k < s; k++)
            acc[k] = __fadd_rn(acc[k], acc[k + s]);
    return acc[0];
}

__global__ void key_norms(const uint16_t *keys, size_t stride, size_t d, size_t c, size_t n_win,
                          size_t win_stride, float *norms)
{
    for (size_t it = blockIdx.x * (size_t)blockDim.x + threadIdx.x; it < n_win * c;
         it += (size_t)gridDim.x * blockDim.x) {
        const uint16_t *k = keys + it / c * win_stride + it % c * stride;
        norms[it] = __fsqrt_rn(dot16_serial(k, k, d));
    }
}

/* A half-warp per (window, A, B): lane t accumulates partial sum t, the shuffles add the tree. */
__global__ void pair_sims(const uint16_t *keys, size_t stride, size_t d, size_t c, size_t n_win,
                          size_t win_stride, size_t a0, size_t n_a, size_t b0, size_t n_b,
                          const float *norms, float *sims)
{
    const unsigned lane = threadIdx.x % kHalfWarp;
    const unsigned mask = 0xffffu << (threadIdx.x % 32 / kHalfWarp * kHalfWarp);
    const size_t per_win = n_a * n_b, items = n_win * per_win;
    const size_t groups = (size_t)gridDim.x * (blockDim.x / kHalfWarp);
    for (size_t it = blockIdx.x * (size_t)(blockDim.x / kHalfWarp) + threadIdx.x / kHalfWarp;
         it < items; it += groups) {
        const size_t w = it / per_win, a = it % per_win / n_b, b = it % n_b;
        const size_t ia = a0 + 2 * a, ib = b0 + 2 * b;
        const uint16_t *ka = keys + w * win_stride + ia * stride;
        const uint16_t *kb = keys + w * win_stride + ib * stride;
        float acc = 0.0f;
        for (size_t i = lane; i < d; i += kHalfWarp)
            acc = __fadd_rn(acc, __fmul_rn(h2f(ka[i]), h2f(kb[i])));
        for (int s = kHalfWarp / 2; s >= 1; s /= 2)
            acc = __fadd_rn(acc, __shfl_down_sync(mask, acc, s, kHalfWarp));
        if (lane == 0) {
            const float nn = __fmul_rn(norms[w * c + ia], norms[w * c + ib]);
            sims[it] = nn == 0.0f ? 0.0f : __fdiv_rn(acc, nn);
        }
    }
}

/* kvt__kernels_rank32: the top-k order of a float. */
__device__ __forceinline__ uint32_t rank32(float f)
{
    uint32_t b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return 0;
    if (b == 0x80000000u)
        b = 0;
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

__global__ void choose_best(const float *sims, size_t n_win, size_t n_a, size_t b0, size_t n_b,
                            uint32_t *best, float *best_sim)
{
    for (size_t it = blockIdx.x * (size_t)blockDim.x + threadIdx.x; it < n_win * n_a;
         it += (size_t)gridDim.x * blockDim.x) {
        if (!n_b) {
            best[it] = UINT32_MAX;
            best_sim[it] = -INFINITY;
            continue;
        }
        const float *s = sims + it * n_b;
        size_t at = 0;
        uint32_t rank = rank32(s[0]);
        for (size_t b = 1; b < n_b; b++) {
            uint32_t rb = rank32(s[b]);
            if (rb > rank) {
                rank = rb;
                at = b;
            }
        }
        best[it] = (uint32_t)(b0 + 2 * at);
        best_sim[it] = s[at];
    }
}

/* A thread per (entry, channel) of the entries that stay, out[] their output indices. */
__global__ void merge_rows(const uint16_t *keys, const uint16_t *values, size_t stride, size_t d,
                           size_t c, const uint32_t *counts, const uint32_t *into,
                           const uint32_t *out_idx, uint16_t *keys_out, uint16_t *values_out,
                           size_t out_stride, uint32_t *counts_out, uint32_t *pos_out)
{
    for (size_t it = blockIdx.x * (size_t)blockDim.x + threadIdx.x; it < c * d;
         it += (size_t)gridDim.x * blockDim.x) {
        const size_t t = it / d, ch = it % d;
        if (into[t] != t)
            continue;
        const size_t e = out_idx[t];
        uint32_t total = 0, members = 0;
        for (size_t j = 0; j < c; j++) {
            if (into[j] == t) {
                total += counts ? counts[j] : 1;
                members++;
            }
        }
        uint16_t *ko = keys_out + e * out_stride, *vo = values_out + e * out_stride;
        if (members == 1) {
            ko[ch] = keys[t * stride + ch];
            vo[ch] = values[t * stride + ch];
        } else {
            float ak = 0.0f, av = 0.0f;
            for (size_t j = 0; j < c; j++) {
                if (into[j] != t)
                    continue;
                const float w = (float)(counts ? counts[j] : 1);
                ak = __fadd_rn(ak, __fmul_rn(w, h2f(keys[j * stride + ch])));
                av = __fadd_rn(av, __fmul_rn(w, h2f(values[j * stride + ch])));
            }
            ko[ch] = f2h(__fdiv_rn(ak, (float)total));
            vo[ch] = f2h(__fdiv_rn(av, (float)total));
        }
        if (ch == 0) {
            counts_out[e] = total;
            pos_out[e] = (uint32_t)t;
        }
    }
}

int last_err()
{
    return map_err(cudaGetLastError());
}

/* Device bytes of n rows at stride whose last row has head_dim elements. */
size_t rows_bytes(size_t n, size_t stride, size_t d)
{
    return n ? ((n - 1) * stride + d) * sizeof(uint16_t) : 0;
}

} // namespace

extern "C" int kvt_kcuda_quant_f16_dev(const kvt_quant_fmt *f, const uint16_t *d_x, size_t n,
                                       size_t stride, uint8_t *d_out, void *stream)
{
    if (!fmt_ok(f) || stride < f->head_dim || (n && (!d_x || !d_out)))
        return KVT_E_INVAL;
    if (!n)
        return 0;
    cudaStream_t st = (cudaStream_t)stream;
    uint8_t *params = d_out + fmt_code_bytes(f, n);
    if (f->axis == KVT_QUANT_AXIS_TOKEN)
        quant_token<<<grid_for(fmt_groups(f, n)), kThreads, 0, st>>>(d_x, n, stride, f->bits,
                                                                     f->head_dim, f->group, d_out,
                                                                     params);
    else
        quant_channel<<<grid_for(fmt_groups(f, n)), kThreads, 0, st>>>(
            d_x, n, stride, f->bits, f->head_dim, f->group, d_out, params);
    return last_err();
}

extern "C" int kvt_kcuda_dequant_f16_dev(const kvt_quant_fmt *f, const uint8_t *d_in, size_t n,
                                         uint16_t *d_x, size_t stride, void *stream)
{
    if (!fmt_ok(f) || stride < f->head_dim || (n && (!d_x || !d_in)))
        return KVT_E_INVAL;
    if (!n)
        return 0;
    dequant<<<grid_for(n * f->head_dim), kThreads, 0, (cudaStream_t)stream>>>(
        d_in, n, f->bits, f->axis, f->head_dim, f->group, d_in + fmt_code_bytes(f, n), d_x,
        stride);
    return last_err();
}

extern "C" int kvt_kcuda_quant_f16(const kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                   size_t stride, uint8_t *out)
{
    if (!fmt_ok(f) || stride < f->head_dim || (n && (!x || !out)))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc || !n)
        return rc;
    const size_t xb = align_up(rows_bytes(n, stride, f->head_dim), 256);
    const size_t ob = fmt_code_bytes(f, n) + fmt_groups(f, n) * KVT_QUANT_PARAM_BYTES;
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, xb + ob));
    if (rc)
        return rc;
    rc = map_err(cudaMemcpy(dev, x, rows_bytes(n, stride, f->head_dim), cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_quant_f16_dev(f, (const uint16_t *)dev, n, stride, dev + xb, NULL);
    if (!rc)
        rc = map_err(cudaMemcpy(out, dev + xb, ob, cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}

extern "C" int kvt_kcuda_dequant_f16(const kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                     uint16_t *x, size_t stride)
{
    if (!fmt_ok(f) || stride < f->head_dim || (n && (!x || !in)))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc || !n)
        return rc;
    const size_t xbytes = rows_bytes(n, stride, f->head_dim), xb = align_up(xbytes, 256);
    const size_t ib = fmt_code_bytes(f, n) + fmt_groups(f, n) * KVT_QUANT_PARAM_BYTES;
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, xb + ib));
    if (rc)
        return rc;
    /* The padding between rows is the caller's: copied over so that it comes back unchanged. */
    rc = map_err(cudaMemcpy(dev, x, xbytes, cudaMemcpyHostToDevice));
    if (!rc)
        rc = map_err(cudaMemcpy(dev + xb, in, ib, cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_dequant_f16_dev(f, dev + xb, n, (uint16_t *)dev, stride, NULL);
    if (!rc)
        rc = map_err(cudaMemcpy(x, dev, xbytes, cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}

extern "C" size_t kvt_kcuda_cluster_match_scratch_bytes(size_t c, size_t n_win)
{
    const size_t n_a = (c + 1) / 2, n_b = c / 2 + 1;
    return align_up(n_win * c * sizeof(float), 256) + n_win * n_a * n_b * sizeof(float);
}

extern "C" int kvt_kcuda_cluster_match_f16_dev(const uint16_t *d_keys, size_t stride,
                                               size_t head_dim, size_t c, size_t lo, size_t hi,
                                               size_t n_win, size_t win_stride, uint32_t *d_best,
                                               float *d_sim, void *d_scratch, void *stream)
{
    if (lo > hi || hi > c || c > KVT_CLUSTER_WINDOW_MAX || stride < head_dim ||
        (n_win > 1 && win_stride < (c ? (c - 1) * stride + head_dim : 0)))
        return KVT_E_INVAL;
    size_t n_a, n_b;
    kvt_cluster_sides(lo, hi, &n_a, &n_b);
    if (!n_win || !n_a)
        return 0;
    cudaStream_t st = (cudaStream_t)stream;
    float *norms = (float *)d_scratch;
    float *sims = (float *)((uint8_t *)d_scratch + align_up(n_win * c * sizeof(float), 256));
    const size_t a0 = lo + lo % 2, b0 = lo + 1 - lo % 2;
    if (n_b) {
        key_norms<<<grid_for(n_win * c), kThreads, 0, st>>>(d_keys, stride, head_dim, c, n_win,
                                                            win_stride, norms);
        pair_sims<<<grid_for(n_win * n_a * n_b, kThreads / kHalfWarp), kThreads, 0, st>>>(
            d_keys, stride, head_dim, c, n_win, win_stride, a0, n_a, b0, n_b, norms, sims);
    }
    choose_best<<<grid_for(n_win * n_a), kThreads, 0, st>>>(sims, n_win, n_a, b0, n_b, d_best,
                                                            d_sim);
    return last_err();
}

extern "C" int kvt_kcuda_cluster_match_f16(const uint16_t *keys, size_t stride, size_t head_dim,
                                           size_t c, size_t lo, size_t hi, size_t n_win,
                                           size_t win_stride, uint32_t *best_out, float *sim_out)
{
    if (lo > hi || hi > c || c > KVT_CLUSTER_WINDOW_MAX || stride < head_dim ||
        (n_win > 1 && win_stride < (c ? (c - 1) * stride + head_dim : 0)) ||
        (n_win && c && (!keys || !best_out || !sim_out)))
        return KVT_E_INVAL;
    int rc = kvt_kcuda_probe(NULL, 0);
    size_t n_a, n_b;
    kvt_cluster_sides(lo, hi, &n_a, &n_b);
    if (rc || !n_win || !n_a)
        return rc;
    const size_t kbytes = (n_win - 1) * win_stride * sizeof(uint16_t) + rows_bytes(c, stride, head_dim);
    const size_t kb = align_up(kbytes, 256), rb = align_up(n_win * n_a * 4, 256);
    const size_t scratch = kvt_kcuda_cluster_match_scratch_bytes(c, n_win);
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, kb + 2 * rb + scratch));
    if (rc)
        return rc;
    uint32_t *d_best = (uint32_t *)(dev + kb);
    float *d_sim = (float *)(dev + kb + rb);
    rc = map_err(cudaMemcpy(dev, keys, kbytes, cudaMemcpyHostToDevice));
    if (!rc)
        rc = kvt_kcuda_cluster_match_f16_dev((const uint16_t *)dev, stride, head_dim, c, lo, hi,
                                             n_win, win_stride, d_best, d_sim, dev + kb + 2 * rb,
                                             NULL);
    if (!rc)
        rc = map_err(cudaMemcpy(best_out, d_best, n_win * n_a * 4, cudaMemcpyDeviceToHost));
    if (!rc)
        rc = map_err(cudaMemcpy(sim_out, d_sim, n_win * n_a * 4, cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}

extern "C" int kvt_kcuda_cluster_merge_f16(const uint16_t *keys, const uint16_t *values,
                                           size_t stride, size_t head_dim, size_t c,
                                           const uint32_t *counts, const uint32_t *into,
                                           uint16_t *keys_out, uint16_t *values_out,
                                           size_t out_stride, uint32_t *counts_out,
                                           uint32_t *pos_out, size_t *n_out)
{
    if (c > KVT_CLUSTER_WINDOW_MAX || stride < head_dim || out_stride < head_dim || !n_out ||
        (c && (!keys || !values || !into || !keys_out || !values_out || !counts_out)))
        return KVT_E_INVAL;
    /* The plan, checked, and the output index of each entry that stays. */
    uint32_t out_idx[KVT_CLUSTER_WINDOW_MAX];
    size_t n = 0;
    for (size_t i = 0; i < c; i++) {
        if (into[i] >= c || into[into[i]] != into[i] || (counts && counts[i] == 0))
            return KVT_E_INVAL;
        if (into[i] == i)
            out_idx[i] = (uint32_t)n++;
    }
    int rc = kvt_kcuda_probe(NULL, 0);
    if (rc)
        return rc;
    *n_out = n;
    if (!c || !head_dim)
        return 0;
    const size_t rbytes = rows_bytes(c, stride, head_dim), rb = align_up(rbytes, 256);
    const size_t ib = align_up(c * 4, 256), ob = align_up(n * out_stride * 2, 256);
    uint8_t *dev = NULL;
    rc = map_err(cudaMalloc(&dev, 2 * rb + 5 * ib + 2 * ob));
    if (rc)
        return rc;
    uint16_t *d_k = (uint16_t *)dev, *d_v = (uint16_t *)(dev + rb);
    uint32_t *d_cnt = (uint32_t *)(dev + 2 * rb), *d_into = d_cnt + ib / 4,
             *d_idx = d_into + ib / 4, *d_cout = d_idx + ib / 4, *d_pos = d_cout + ib / 4;
    uint16_t *d_ko = (uint16_t *)(dev + 2 * rb + 5 * ib), *d_vo = d_ko + ob / 2;
    rc = map_err(cudaMemcpy(d_k, keys, rbytes, cudaMemcpyHostToDevice));
    if (!rc)
        rc = map_err(cudaMemcpy(d_v, values, rbytes, cudaMemcpyHostToDevice));
    if (!rc && counts)
        rc = map_err(cudaMemcpy(d_cnt, counts, c * 4, cudaMemcpyHostToDevice));
    if (!rc)
        rc = map_err(cudaMemcpy(d_into, into, c * 4, cudaMemcpyHostToDevice));
    if (!rc)
        rc = map_err(cudaMemcpy(d_idx, out_idx, c * 4, cudaMemcpyHostToDevice));
    if (!rc) {
        merge_rows<<<grid_for(c * head_dim), kThreads>>>(d_k, d_v, stride, head_dim, c,
                                                         counts ? d_cnt : NULL, d_into, d_idx,
                                                         d_ko, d_vo, out_stride, d_cout, d_pos);
        rc = last_err();
    }
    /* Only the entries' head_dim elements come back: the padding of each output row stays. */
    for (size_t e = 0; !rc && e < n; e++) {
        rc = map_err(cudaMemcpy(keys_out + e * out_stride, d_ko + e * out_stride, head_dim * 2,
                                cudaMemcpyDeviceToHost));
        if (!rc)
            rc = map_err(cudaMemcpy(values_out + e * out_stride, d_vo + e * out_stride,
                                    head_dim * 2, cudaMemcpyDeviceToHost));
    }
    if (!rc && n)
        rc = map_err(cudaMemcpy(counts_out, d_cout, n * 4, cudaMemcpyDeviceToHost));
    if (!rc && n && pos_out)
        rc = map_err(cudaMemcpy(pos_out, d_pos, n * 4, cudaMemcpyDeviceToHost));
    cudaFree(dev);
    return rc;
}
