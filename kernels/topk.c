/*
 * The fast top-k every SIMD table uses (kernels.h topk_f32): a radix select of the k-th largest
 * rank, one pass to collect the k winners, and a sort of those k alone, O(n + k log k), with no
 * working memory beyond idx_out and a histogram on the stack. The reference (a min-heap of the
 * best k, kernels/ref/ref.c) does O(n log k) work through the heap's scattered indices: at 65536
 * scores and k = 13107 it takes about 5 ms, this about 1 ms (docs/kernels.md has the figures).
 * The ranking is one total order (kernels/internal.h, kvt__kernels_rank_key), so both give the
 * same indices in the same order.
 * There is no vector version: the histogram's increments are scattered, and the sort compares
 * keys it loads through the indices.
 */
#include <string.h>

#include "common/assert.h"
#include "kernels/internal.h"

/* Descending by rank key. Below this many elements a range is finished by insertion. */
enum { INSERTION_MAX = 16 };

static void insertion_sort(const float *score, uint32_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint32_t item = a[i];
        uint64_t key = kvt__kernels_rank_key(score, item);
        size_t j = i;
        for (; j > 0 && kvt__kernels_rank_key(score, a[j - 1]) < key; j--)
            a[j] = a[j - 1];
        a[j] = item;
    }
}

/* Min-heap order by rank key below slot at, for the heapsort that bounds the quicksort's worst
 * case. */
static void sift_down(const float *score, uint32_t *heap, size_t size, size_t at)
{
    uint32_t item = heap[at];
    uint64_t key = kvt__kernels_rank_key(score, item);
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= size)
            break;
        uint64_t ck = kvt__kernels_rank_key(score, heap[child]);
        if (child + 1 < size) {
            uint64_t rk = kvt__kernels_rank_key(score, heap[child + 1]);
            if (rk < ck) {
                child++;
                ck = rk;
            }
        }
        if (ck >= key)
            break;
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = item;
}

static void heap_sort(const float *score, uint32_t *a, size_t n)
{
    for (size_t at = n / 2; at-- > 0;)
        sift_down(score, a, n, at);
    for (size_t size = n; size > 1; size--) {
        uint32_t min = a[0];
        a[0] = a[size - 1];
        a[size - 1] = min;
        sift_down(score, a, size - 1, 0);
    }
}

/* Introsort, descending: quicksort with a median-of-three pivot, heapsort when the depth passes
 * 2 log2 n (so O(n log n) whatever the input), insertion for short ranges. Keys are unique. */
static void sort_desc(const float *score, uint32_t *a, size_t n, unsigned depth)
{
    while (n > INSERTION_MAX) {
        if (depth-- == 0) {
            heap_sort(score, a, n);
            return;
        }
        /* The median of the first, middle and last ranks goes first as the pivot, which keeps
         * both sides of Hoare's partition non-empty. */
        uint64_t x = kvt__kernels_rank_key(score, a[0]);
        uint64_t y = kvt__kernels_rank_key(score, a[n / 2]);
        uint64_t z = kvt__kernels_rank_key(score, a[n - 1]);
        size_t med = x < y ? (y < z   ? n / 2
                              : x < z ? n - 1
                                      : 0)
                           : (x < z   ? 0
                              : y < z ? n - 1
                                      : n / 2);
        uint32_t t = a[0];
        a[0] = a[med];
        a[med] = t;
        const uint64_t pivot = kvt__kernels_rank_key(score, a[0]);
        /* After it, [0, j] ranks at or above the pivot and (j, n) at or below, 0 <= j < n - 1. */
        size_t i = 0, j = n;
        for (;;) {
            while (kvt__kernels_rank_key(score, a[i]) > pivot)
                i++;
            do
                j--;
            while (kvt__kernels_rank_key(score, a[j]) < pivot);
            if (i >= j)
                break;
            t = a[i];
            a[i] = a[j];
            a[j] = t;
            i++;
        }
        /* Recurse into the smaller side, loop on the larger: stack depth stays O(log n). */
        size_t left = j + 1;
        if (left < n - left) {
            sort_desc(score, a, left, depth);
            a += left;
            n -= left;
        } else {
            sort_desc(score, a + left, n - left, depth);
            n = left;
        }
    }
    insertion_sort(score, a, n);
}

/* Sorts the winners, descending: an in-place distribution into BUCKETS ranges of key between
 * the lowest and the highest (American flag sort: every element moves straight to its bucket),
 * then each bucket the same way, until a bucket is small or LEVELS deep (introsort, i.e.
 * insertion for a few). The key is the 32-bit rank; a linear split of it is a roughly
 * logarithmic split of the score, so scores spread over many magnitudes (softmax masses) land
 * in few buckets at first and are spread by the next level. A bucket of one rank (ties) is
 * sorted on the complement of the index instead, which needs no load of its score. Winners of
 * one rank at the top level are already in order: they were collected by index. Stack: two
 * arrays of BUCKETS per level. */
enum { BUCKETS = 256, SMALL = 32, LEVELS = 4 };

static inline uint32_t bucket_key(const float *score, uint32_t idx, int by_index)
{
    return by_index ? ~idx : kvt__kernels_rank32(score[idx]);
}

static void bucket_sort_desc(const float *score, uint32_t *a, size_t k, unsigned level,
                             int by_index)
{
    if (k <= SMALL || level == LEVELS) {
        unsigned depth = 0;
        for (size_t x = k; x > 1; x >>= 1)
            depth += 2;
        sort_desc(score, a, k, depth);
        return;
    }
    uint32_t lo = UINT32_MAX, hi = 0;
    for (size_t i = 0; i < k; i++) {
        uint32_t r = bucket_key(score, a[i], by_index);
        lo = r < lo ? r : lo;
        hi = r > hi ? r : hi;
    }
    if (lo == hi) { /* one rank (indices differ, so never by index) */
        if (level)
            bucket_sort_desc(score, a, k, 0, 1);
        return;
    }
    unsigned shift = 0;
    while ((hi - lo) >> shift >= BUCKETS)
        shift++;
        /* Bucket 0 holds the highest keys. */
#define KVT_BUCKET(idx) (BUCKETS - 1 - ((bucket_key(score, idx, by_index) - lo) >> shift))
    uint32_t next[BUCKETS], end[BUCKETS];
    memset(end, 0, sizeof(end));
    for (size_t i = 0; i < k; i++)
        end[KVT_BUCKET(a[i])]++;
    uint32_t at = 0;
    for (size_t b = 0; b < BUCKETS; b++) {
        next[b] = at;
        at += end[b];
        end[b] = at;
    }
    for (size_t b = 0; b < BUCKETS; b++) {
        while (next[b] < end[b]) {
            uint32_t v = a[next[b]], vb = KVT_BUCKET(v);
            while (vb != b) {
                uint32_t t = a[next[vb]];
                a[next[vb]++] = v;
                v = t;
                vb = KVT_BUCKET(v);
            }
            a[next[b]++] = v;
        }
    }
#undef KVT_BUCKET
    uint32_t start = 0;
    for (size_t b = 0; b < BUCKETS; b++) {
        if (end[b] - start > 1)
            bucket_sort_desc(score, a + start, end[b] - start, level + 1, by_index);
        start = end[b];
    }
}

size_t kvt__kernels_topk_f32_select(const float *score, size_t n, size_t k, uint32_t *idx_out)
{
    KVT_ASSERT(n <= UINT32_MAX);
    if (k > n)
        k = n;
    if (!k)
        return 0;
    /* The radix select: narrow down the 32-bit rank of the k-th largest, 11, 11 and 10 bits at
     * a time, from a histogram of the ranks that share the bits known so far. need is how many
     * winners are still to come from the ranks with that prefix. When a whole bucket is needed
     * the search stops: every rank with the prefix wins. */
    static const unsigned widths[3] = {11, 11, 10};
    uint32_t hist[1u << 11];
    uint32_t prefix = 0;
    unsigned known = 0;
    size_t need = k;
    for (int level = 0; level < 3 && need; level++) {
        const unsigned w = widths[level], shift = 32 - known - w;
        const uint32_t buckets = 1u << w;
        memset(hist, 0, buckets * sizeof(hist[0]));
        /* Without a branch on the prefix: which ranks share it is unpredictable. */
        const unsigned above = 32 - known; /* 32 at the first level: every rank counts */
        for (size_t i = 0; i < n; i++) {
            uint32_t r = kvt__kernels_rank32(score[i]);
            uint32_t match = above == 32 || (uint32_t)(r >> (above & 31)) == prefix;
            hist[(r >> shift) & (buckets - 1)] += match;
        }
        uint32_t b = buckets - 1;
        while (hist[b] < need) {
            need -= hist[b];
            b--; /* the buckets hold at least need ranks in all, so b stays >= 0 */
        }
        prefix = prefix << w | b;
        known += w;
        if (hist[b] == need)
            break;
    }
    /* The winners, in index order: every rank whose prefix is above the k-th's, and of those
     * with its prefix the first need (all of them unless the ranks are tied in full, where the
     * lower indices win). */
    size_t out = 0, tied = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t r = kvt__kernels_rank32(score[i]), top = known == 32 ? r : r >> (32 - known);
        if (top > prefix || (top == prefix && tied++ < need))
            idx_out[out++] = (uint32_t)i;
    }
    KVT_ASSERT(out == k);
    bucket_sort_desc(score, idx_out, k, 0, 0);
    return k;
}
