/*
 * First-fit extent allocator over a sorted array of free runs (see extent.h). The array is small
 * (one entry per free run, bounded by extents_max + 1), so linear scans and memmove are cheaper
 * than a tree at the sizes the disk tier uses and keep the metadata fixed at create.
 */
#include "common/alloc.h"
#include "tiers/disk/extent.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kvtier/errors.h"

struct run {
    uint64_t start;
    uint64_t blocks;
};

struct kvt_extent {
    uint64_t total_blocks;
    uint64_t free_blocks;
    uint32_t extents_max;
    uint32_t allocated;
    uint32_t n_runs;
    uint32_t runs_max; /* extents_max + 1 */
    struct run *runs;  /* sorted by start, never adjacent (always coalesced) */
};

int kvt_extent_create(const struct kvt_extent_config *cfg, struct kvt_extent **out)
{
    struct kvt_extent *a;

    if (!cfg || !out || cfg->blocks == 0 || cfg->extents_max == 0 || cfg->extents_max == UINT32_MAX)
        return KVT_E_INVAL;
    a = kvt_calloc(KVT_ALLOC_DISK, 1, sizeof(*a));
    if (!a)
        return KVT_E_NOMEM;
    a->runs_max = cfg->extents_max + 1;
    a->runs = kvt_calloc(KVT_ALLOC_DISK, a->runs_max, sizeof(*a->runs));
    if (!a->runs) {
        kvt_free(KVT_ALLOC_DISK, a);
        return KVT_E_NOMEM;
    }
    a->total_blocks = cfg->blocks;
    a->free_blocks = cfg->blocks;
    a->extents_max = cfg->extents_max;
    a->runs[0].start = 0;
    a->runs[0].blocks = cfg->blocks;
    a->n_runs = 1;
    *out = a;
    return 0;
}

void kvt_extent_destroy(struct kvt_extent *a)
{
    if (!a)
        return;
    kvt_free(KVT_ALLOC_DISK, a->runs);
    kvt_free(KVT_ALLOC_DISK, a);
}

static void remove_run(struct kvt_extent *a, uint32_t i)
{
    memmove(&a->runs[i], &a->runs[i + 1], (a->n_runs - i - 1) * sizeof(a->runs[0]));
    a->n_runs--;
}

/* Takes [start, start+blocks) out of run i, which must contain it. Splitting a run in two adds
 * one run; the bound holds because the allocated count grows by one at the same time. */
static void carve(struct kvt_extent *a, uint32_t i, uint64_t start, uint64_t blocks)
{
    struct run *r = &a->runs[i];
    uint64_t end = start + blocks, r_end = r->start + r->blocks;

    assert(start >= r->start && end <= r_end);
    if (start == r->start && end == r_end) {
        remove_run(a, i);
    } else if (start == r->start) {
        r->start = end;
        r->blocks = r_end - end;
    } else if (end == r_end) {
        r->blocks = start - r->start;
    } else {
        assert(a->n_runs < a->runs_max);
        memmove(&a->runs[i + 2], &a->runs[i + 1], (a->n_runs - i - 1) * sizeof(a->runs[0]));
        a->n_runs++;
        r->blocks = start - r->start;
        a->runs[i + 1].start = end;
        a->runs[i + 1].blocks = r_end - end;
    }
    a->free_blocks -= blocks;
    a->allocated++;
}

int kvt_extent_alloc(struct kvt_extent *a, uint64_t blocks, uint64_t *start_out)
{
    if (blocks == 0 || !start_out)
        return KVT_E_INVAL;
    if (a->allocated >= a->extents_max || blocks > a->free_blocks)
        return KVT_E_FULL;
    for (uint32_t i = 0; i < a->n_runs; i++) {
        if (a->runs[i].blocks >= blocks) {
            *start_out = a->runs[i].start;
            carve(a, i, a->runs[i].start, blocks);
            return 0;
        }
    }
    return KVT_E_FULL;
}

/* Index of the last run starting at or before block b, or n_runs when there is none. */
static uint32_t find_run(const struct kvt_extent *a, uint64_t b)
{
    uint32_t lo = 0, hi = a->n_runs;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a->runs[mid].start <= b)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? a->n_runs : lo - 1;
}

int kvt_extent_reserve(struct kvt_extent *a, uint64_t start, uint64_t blocks)
{
    uint32_t i;

    if (blocks == 0 || start >= a->total_blocks || blocks > a->total_blocks - start)
        return KVT_E_EXISTS;
    i = find_run(a, start);
    if (i == a->n_runs || start + blocks > a->runs[i].start + a->runs[i].blocks)
        return KVT_E_EXISTS;
    if (a->allocated >= a->extents_max)
        return KVT_E_FULL;
    carve(a, i, start, blocks);
    return 0;
}

void kvt_extent_free(struct kvt_extent *a, uint64_t start, uint64_t blocks)
{
    uint32_t prev = find_run(a, start), next;
    int merge_prev, merge_next;

    assert(blocks > 0 && start + blocks <= a->total_blocks && a->allocated > 0);
    next = prev == a->n_runs ? 0 : prev + 1;
    /* The freed range must not overlap a free run: that would be a double free. */
    assert(prev == a->n_runs || a->runs[prev].start + a->runs[prev].blocks <= start);
    assert(next >= a->n_runs || start + blocks <= a->runs[next].start);

    merge_prev = prev != a->n_runs && a->runs[prev].start + a->runs[prev].blocks == start;
    merge_next = next < a->n_runs && start + blocks == a->runs[next].start;
    if (merge_prev && merge_next) {
        a->runs[prev].blocks += blocks + a->runs[next].blocks;
        remove_run(a, next);
    } else if (merge_prev) {
        a->runs[prev].blocks += blocks;
    } else if (merge_next) {
        a->runs[next].start = start;
        a->runs[next].blocks += blocks;
    } else {
        assert(a->n_runs < a->runs_max);
        memmove(&a->runs[next + 1], &a->runs[next], (a->n_runs - next) * sizeof(a->runs[0]));
        a->runs[next].start = start;
        a->runs[next].blocks = blocks;
        a->n_runs++;
    }
    a->free_blocks += blocks;
    a->allocated--;
}

uint64_t kvt_extent_free_blocks(const struct kvt_extent *a)
{
    return a->free_blocks;
}

uint64_t kvt_extent_total_blocks(const struct kvt_extent *a)
{
    return a->total_blocks;
}

uint32_t kvt_extent_allocated(const struct kvt_extent *a)
{
    return a->allocated;
}

uint32_t kvt_extent_free_runs(const struct kvt_extent *a)
{
    return a->n_runs;
}

uint64_t kvt_extent_largest_free(const struct kvt_extent *a)
{
    uint64_t best = 0;

    for (uint32_t i = 0; i < a->n_runs; i++)
        if (a->runs[i].blocks > best)
            best = a->runs[i].blocks;
    return best;
}
