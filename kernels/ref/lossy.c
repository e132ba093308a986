/*
 * The reference kernels of the lossy forms: group quantization (kernels/quant.h) and the
 * matching and merge steps of clustering (kernels/cluster.h). Written for obviousness; the SIMD
 * and CUDA versions are tested to give the same bytes.
 */
#include <math.h>
#include <string.h>

#include "common/assert.h"
#include "kernels/cluster.h"
#include "kernels/internal.h"
#include "kernels/quant.h"

void kvt__quant_group_params(int16_t lo_key, int16_t hi_key, int nonfinite, uint32_t bits,
                             struct kvt__quant_group *g)
{
    if (nonfinite) {
        g->scale = g->min = KVT_QUANT_NONFINITE;
        g->inv = 0.0;
        return;
    }
    g->min = (uint16_t)kvt__kernels_f16_key((uint16_t)lo_key);
    g->scale = kvt_quant_scale_f16(g->min, (uint16_t)kvt__kernels_f16_key((uint16_t)hi_key), bits);
    g->inv = g->scale ? 1.0 / (double)kvt_f16_to_f32(g->scale) : 0.0;
}

static void put_code(uint8_t *codes, uint32_t bits, size_t e, uint32_t q)
{
    if (bits == 8) {
        codes[e] = (uint8_t)q;
        return;
    }
    uint8_t *b = codes + e / 2;
    *b = e % 2 ? (uint8_t)((*b & 0x0fu) | q << 4) : (uint8_t)((*b & 0xf0u) | q);
}

static uint32_t get_code(const uint8_t *codes, uint32_t bits, size_t e)
{
    if (bits == 8)
        return codes[e];
    return e % 2 ? codes[e / 2] >> 4 : codes[e / 2] & 0x0fu;
}

static void put_param(uint8_t *params, size_t idx, const struct kvt__quant_group *g)
{
    uint8_t *p = params + idx * KVT_QUANT_PARAM_BYTES;
    p[0] = (uint8_t)g->scale;
    p[1] = (uint8_t)(g->scale >> 8);
    p[2] = (uint8_t)g->min;
    p[3] = (uint8_t)(g->min >> 8);
}

static void get_param(const uint8_t *params, size_t idx, uint16_t *scale, uint16_t *min)
{
    const uint8_t *p = params + idx * KVT_QUANT_PARAM_BYTES;
    *scale = (uint16_t)(p[0] | p[1] << 8);
    *min = (uint16_t)(p[2] | p[3] << 8);
}

/* Quantizes the count elements at x[0], x[step], ... (one group) as elements e0, e0 + estep,
 * ... of the codes, and stores its parameters at index idx. */
static void quant_group(const uint16_t *x, size_t count, size_t step, uint32_t bits, uint8_t *codes,
                        size_t e0, size_t estep, uint8_t *params, size_t idx)
{
    int16_t lo = KVT__KERNELS_KEY_PINF, hi = KVT__KERNELS_KEY_NINF;
    int nonfinite = 0;
    for (size_t i = 0; i < count; i++) {
        uint16_t h = x[i * step];
        nonfinite |= kvt__kernels_f16_nonfinite(h);
        int16_t k = kvt__kernels_f16_key(h);
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    struct kvt__quant_group g;
    kvt__quant_group_params(lo, hi, nonfinite, bits, &g);
    const double levels = (double)((1u << bits) - 1u);
    for (size_t i = 0; i < count; i++)
        put_code(codes, bits, e0 + i * estep,
                 g.inv != 0.0 ? kvt__quant_code(x[i * step], &g, levels) : 0);
    put_param(params, idx, &g);
}

void kvt__kernels_quant_f16_ref(const struct kvt_quant_fmt *f, const uint16_t *x, size_t n,
                                size_t stride, uint8_t *out)
{
    KVT_ASSERT(kvt_quant_fmt_check(f) == 0 && stride >= f->head_dim);
    const size_t d = f->head_dim, gsize = f->group;
    uint8_t *params = out + kvt_quant_code_bytes(f, n);
    if (f->axis == KVT_QUANT_AXIS_TOKEN) {
        const size_t per_row = d / gsize;
        for (size_t r = 0; r < n; r++)
            for (size_t g = 0; g < per_row; g++)
                quant_group(x + r * stride + g * gsize, gsize, 1, f->bits, out, r * d + g * gsize,
                            1, params, r * per_row + g);
        return;
    }
    for (size_t r0 = 0, g = 0; r0 < n; r0 += gsize, g++) {
        const size_t rows = n - r0 < gsize ? n - r0 : gsize;
        for (size_t c = 0; c < d; c++)
            quant_group(x + r0 * stride + c, rows, stride, f->bits, out, r0 * d + c, d, params,
                        g * d + c);
    }
}

void kvt__kernels_dequant_f16_ref(const struct kvt_quant_fmt *f, const uint8_t *in, size_t n,
                                  uint16_t *x, size_t stride)
{
    KVT_ASSERT(kvt_quant_fmt_check(f) == 0 && stride >= f->head_dim);
    const size_t d = f->head_dim, gsize = f->group;
    const uint8_t *params = in + kvt_quant_code_bytes(f, n);
    for (size_t r = 0; r < n; r++) {
        for (size_t c = 0; c < d; c++) {
            size_t idx =
                f->axis == KVT_QUANT_AXIS_TOKEN ? r * (d / gsize) + c / gsize : r / gsize * d + c;
            uint16_t scale, min;
            get_param(params, idx, &scale, &min);
            x[r * stride + c] = kvt__quant_value(get_code(in, f->bits, r * d + c), scale, min);
        }
    }
}

/* A dot product of two fp16 vectors in the bound kernel's order (kernels.h). */
static float dot16(const uint16_t *a, const uint16_t *b, size_t d)
{
    float acc[16] = {0};
    for (size_t i = 0; i < d; i++)
        acc[i % 16] += kvt_f16_to_f32(a[i]) * kvt_f16_to_f32(b[i]);
    return kvt__kernels_reduce16(acc);
}

size_t kvt__kernels_cluster_match_f16_ref(const uint16_t *keys, size_t stride, size_t head_dim,
                                          size_t c, size_t lo, size_t hi, uint32_t *best_out,
                                          float *sim_out)
{
    KVT_ASSERT(lo <= hi && hi <= c && c <= KVT_CLUSTER_WINDOW_MAX && stride >= head_dim);
    size_t n_a, n_b;
    kvt_cluster_sides(lo, hi, &n_a, &n_b);
    const size_t a0 = lo + lo % 2, b0 = lo + 1 - lo % 2;
    float norm_b[KVT_CLUSTER_WINDOW_MAX / 2], sim[KVT_CLUSTER_WINDOW_MAX / 2];
    for (size_t b = 0; b < n_b; b++) {
        const uint16_t *kb = keys + (b0 + 2 * b) * stride;
        norm_b[b] = sqrtf(dot16(kb, kb, head_dim));
    }
    for (size_t a = 0; a < n_a; a++) {
        const uint16_t *ka = keys + (a0 + 2 * a) * stride;
        const float na = sqrtf(dot16(ka, ka, head_dim));
        for (size_t b = 0; b < n_b; b++)
            sim[b] =
                kvt__cluster_cos(dot16(ka, keys + (b0 + 2 * b) * stride, head_dim), na, norm_b[b]);
        kvt__cluster_argmax(sim, n_b, b0, &best_out[a], &sim_out[a]);
    }
    return n_a;
}

size_t kvt__kernels_cluster_merge_f16_ref(const uint16_t *keys, const uint16_t *values,
                                          size_t stride, size_t head_dim, size_t c,
                                          const uint32_t *counts, const uint32_t *into,
                                          uint16_t *keys_out, uint16_t *values_out,
                                          size_t out_stride, uint32_t *counts_out,
                                          uint32_t *pos_out)
{
    size_t e = 0;
    for (size_t t = 0; t < c; t++) {
        if (into[t] != t)
            continue;
        uint32_t total = 0, members = 0;
        for (size_t j = 0; j < c; j++) {
            if (into[j] == t) {
                total += counts ? counts[j] : 1;
                members++;
            }
        }
        uint16_t *ko = keys_out + e * out_stride, *vo = values_out + e * out_stride;
        if (members == 1) {
            memcpy(ko, keys + t * stride, head_dim * sizeof(uint16_t));
            memcpy(vo, values + t * stride, head_dim * sizeof(uint16_t));
        } else {
            for (size_t ch = 0; ch < head_dim; ch++) {
                float ak = 0.0f, av = 0.0f;
                for (size_t j = 0; j < c; j++) {
                    if (into[j] != t)
                        continue;
                    const float w = (float)(counts ? counts[j] : 1);
                    ak += w * kvt_f16_to_f32(keys[j * stride + ch]);
                    av += w * kvt_f16_to_f32(values[j * stride + ch]);
                }
                ko[ch] = kvt_f32_to_f16(ak / (float)total);
                vo[ch] = kvt_f32_to_f16(av / (float)total);
            }
        }
        counts_out[e] = total;
        if (pos_out)
            pos_out[e] = (uint32_t)t;
        e++;
    }
    return e;
}
