/*
 * One window's clustering (kernels/cluster.h): match, pick the pairs, merge. The kernels do the
 * arithmetic; this file only checks the arguments and builds the plan between them, so every
 * variant's result is the same bytes.
 */
#include "kernels/cluster.h"
#include "kvtier/errors.h"

size_t kvt_cluster_scratch_bytes(size_t c)
{
    /* best and sim of the A entries, the top-k indices, and the merge plan. */
    size_t n_a = (c + 1) / 2;
    return (3 * n_a + c) * sizeof(uint32_t);
}

int kvt_cluster_window_f16(const struct kvt_kernels *kt, const struct kvt_cluster_params *p,
                           const uint16_t *keys, const uint16_t *values, size_t stride,
                           size_t head_dim, size_t c, const uint32_t *counts_in, void *scratch,
                           size_t scratch_bytes, uint16_t *keys_out, uint16_t *values_out,
                           size_t out_stride, uint32_t *counts_out, uint32_t *pos_out,
                           size_t *n_out)
{
    if (!p || !n_out || c > KVT_CLUSTER_WINDOW_MAX || stride < head_dim || out_stride < head_dim ||
        scratch_bytes < kvt_cluster_scratch_bytes(c) ||
        (c && (!keys || !values || !keys_out || !values_out || !counts_out)) || (c && !scratch) ||
        (uintptr_t)scratch % sizeof(uint32_t))
        return KVT_E_INVAL;
    uint64_t sum = 0;
    for (size_t i = 0; counts_in && i < c; i++) {
        if (counts_in[i] == 0)
            return KVT_E_INVAL;
        sum += counts_in[i];
    }
    if (sum >= (1u << 24))
        return KVT_E_INVAL;
    if (!kt)
        kt = kvt_kernels();
    const size_t protect = (size_t)p->protect_head + p->protect_tail;
    const size_t lo = p->protect_head, hi = protect < c ? c - p->protect_tail : lo;
    size_t n_a, n_b;
    kvt_cluster_sides(lo, hi, &n_a, &n_b);
    uint32_t *best = scratch, *idx = best + (c + 1) / 2, *into = idx + (c + 1) / 2;
    float *sim = (float *)(into + c);
    for (size_t i = 0; i < c; i++)
        into[i] = (uint32_t)i;
    const size_t r = p->merge < n_a && n_b ? p->merge : n_b ? n_a : 0;
    if (r) {
        kt->cluster_match_f16(keys, stride, head_dim, c, lo, hi, best, sim);
        size_t k = kt->topk_f32(sim, n_a, r, idx);
        const size_t a0 = lo + lo % 2;
        for (size_t i = 0; i < k; i++)
            into[a0 + 2 * idx[i]] = best[idx[i]];
    }
    *n_out = kt->cluster_merge_f16(keys, values, stride, head_dim, c, counts_in, into, keys_out,
                                   values_out, out_stride, counts_out, pos_out);
    return 0;
}
