/*
 * Extent allocator for one disk file: hands out runs of 4 KiB blocks and takes them back,
 * coalescing neighbours. Free space is a sorted array of (start, blocks) runs whose capacity is
 * fixed at create: with at most extents_max allocated extents there can be at most
 * extents_max + 1 free runs, so a free never needs memory and allocation refuses (KVT_E_FULL)
 * once extents_max extents are out. Allocation is first fit, which keeps data packed towards the
 * start of the file. Not thread-safe; the disk tier uses it from its owner thread only.
 */
#ifndef KVT_TIERS_DISK_EXTENT_H
#define KVT_TIERS_DISK_EXTENT_H

#include <stdint.h>

#define KVT_EXTENT_BLOCK_BYTES 4096u

struct kvt_extent_config {
    uint64_t blocks;      /* size of the managed space in blocks (>= 1) */
    uint32_t extents_max; /* most extents allocated at once (>= 1) */
};

struct kvt_extent;

/* Returns 0, KVT_E_INVAL or KVT_E_NOMEM. The whole space starts free. */
int kvt_extent_create(const struct kvt_extent_config *cfg, struct kvt_extent **out);
void kvt_extent_destroy(struct kvt_extent *a);

/* Allocates blocks contiguous blocks; *start_out gets the first. Returns 0, KVT_E_INVAL for 0
 * blocks, KVT_E_FULL when no free run is large enough or extents_max extents are allocated. */
int kvt_extent_alloc(struct kvt_extent *a, uint64_t blocks, uint64_t *start_out);

/* Marks a specific range allocated (used when rebuilding from an index at start). Returns 0,
 * KVT_E_EXISTS when any block of it is already allocated or outside the space, KVT_E_FULL when
 * extents_max extents are allocated. */
int kvt_extent_reserve(struct kvt_extent *a, uint64_t start, uint64_t blocks);

/* Returns an allocated range. The range must be exactly one that alloc or reserve returned and
 * not freed since: freeing anything else is a programmer error and asserts. */
void kvt_extent_free(struct kvt_extent *a, uint64_t start, uint64_t blocks);

uint64_t kvt_extent_free_blocks(const struct kvt_extent *a);
uint64_t kvt_extent_total_blocks(const struct kvt_extent *a);
uint32_t kvt_extent_allocated(const struct kvt_extent *a);
/* Number of free runs (fragmentation indicator). */
uint32_t kvt_extent_free_runs(const struct kvt_extent *a);
/* Largest free run in blocks. */
uint64_t kvt_extent_largest_free(const struct kvt_extent *a);

#endif
