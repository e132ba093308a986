/*
 * Allocator for the client's transfer arena: first fit over a sorted table of free extents, all
 * sizes rounded to 4 KiB so buffers are aligned for O_DIRECT and DMA. Tables are fixed at init;
 * an arena holds at most KVT_ARENA_BLOCKS_MAX live buffers.
 */
#ifndef KVT_CLIENT_ARENA_H
#define KVT_CLIENT_ARENA_H

#include <stddef.h>
#include <stdint.h>

#define KVT_ARENA_BLOCKS_MAX 4096

struct kvt_arena_extent {
    uint64_t off, len;
};

struct kvt_arena_alloc {
    struct kvt_arena_extent *free_ext; /* sorted by offset, coalesced */
    uint32_t n_free;
    struct kvt_arena_extent *used; /* unsorted */
    uint32_t n_used;
};

int kvt_arena_alloc_init(struct kvt_arena_alloc *a, uint64_t bytes);
/* Hands out only [off, off + bytes) (off 4 KiB-aligned): the part of a caller's arena it lends. */
int kvt_arena_alloc_init_range(struct kvt_arena_alloc *a, uint64_t off, uint64_t bytes);
void kvt_arena_alloc_deinit(struct kvt_arena_alloc *a);
/* 0 and *off, or KVT_E_NOMEM when no extent fits or the tables are full. */
int kvt_arena_alloc_get(struct kvt_arena_alloc *a, uint64_t bytes, uint64_t *off);
/* Returns a buffer; unknown offsets are ignored. */
void kvt_arena_alloc_put(struct kvt_arena_alloc *a, uint64_t off);

#endif
