/*
 * Clustering of one window of KV entries (Chelsea's chunked soft matching, DESIGN §5): the
 * whole step for one (layer, KV head) window of c entries, built from the kernel table's
 * cluster_match_f16 (the similarity matrix and each A entry's best B entry) and
 * cluster_merge_f16 (the count-weighted means), plus top-k to pick the pairs.
 *
 * Window positions 0..c-1; positions [protect_head, c - protect_tail) are mergeable, the rest
 * (sinks at the head, the recent window at the tail) are kept as they are. The mergeable even
 * positions form set A, the odd ones set B. Each A entry is matched to the B entry whose key
 * has the highest cosine similarity with its own (ties: the lowest position); the `merge` A
 * entries with the most similar matches (ties: the lowest position; top-k's order, NaN lowest)
 * are merged into their B entries. Several A entries may merge into the same B entry: the entry
 * becomes the count-weighted mean of all its members' keys and values, with their counts
 * summed. The output is the c - min(merge, |A|) remaining entries in position order, each with
 * its count and its window position (a merged entry sits at its B entry's position). The counts
 * of the output sum to those of the input. merge == 0 gives the input back bit for bit.
 *
 * At most |A| = ceil(mergeable / 2) pairs merge per pass (half the entries); the input counts
 * let a second pass merge merged entries further (for 75% fewer entries).
 */
#ifndef KVT_KERNELS_CLUSTER_H
#define KVT_KERNELS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* Most entries of a window. */
#define KVT_CLUSTER_WINDOW_MAX 4096u

struct kvt_cluster_params {
    uint32_t merge;        /* r: pairs to merge, clipped to |A| */
    uint32_t protect_head; /* first positions of the window never merged (attention sinks) */
    uint32_t protect_tail; /* last positions never merged (the recent window) */
};

/* The A and B sets of a window: mergeable positions [lo, hi), A = even ones, B = odd ones. */
static inline void kvt_cluster_sides(size_t lo, size_t hi, size_t *n_a, size_t *n_b)
{
    size_t n = hi > lo ? hi - lo : 0, first_even = lo % 2 == 0;
    *n_a = first_even ? (n + 1) / 2 : n / 2;
    *n_b = n - *n_a;
}

/* Bytes of scratch kvt_cluster_window_f16 needs for a window of c entries. */
size_t kvt_cluster_scratch_bytes(size_t c);

/*
 * Clusters one window with the kernels of table kt (NULL: the active one). keys and values: c
 * rows of head_dim fp16, row i at keys + i*stride (stride >= head_dim elements); counts_in: c
 * counts (NULL: all 1), each >= 1, their sum below 2^24 (so that counts are exact in fp32).
 * Outputs: *n_out entries, entry e's key and value rows at keys_out/values_out + e*out_stride
 * (out_stride >= head_dim), counts_out[e], and pos_out[e] its window position (pos_out may be
 * NULL). Output rows must not overlap the input. scratch: kvt_cluster_scratch_bytes(c) bytes,
 * any alignment of 4. 0, or KVT_E_INVAL for arguments out of range (nothing written).
 */
int kvt_cluster_window_f16(const struct kvt_kernels *kt, const struct kvt_cluster_params *p,
                           const uint16_t *keys, const uint16_t *values, size_t stride,
                           size_t head_dim, size_t c, const uint32_t *counts_in, void *scratch,
                           size_t scratch_bytes, uint16_t *keys_out, uint16_t *values_out,
                           size_t out_stride, uint32_t *counts_out, uint32_t *pos_out,
                           size_t *n_out);

#endif
