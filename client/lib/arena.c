/*
 * Transfer-arena allocator. Linear scans are fine: engines allocate a few staging buffers at
 * start and reuse them; the table bounds keep every operation O(KVT_ARENA_BLOCKS_MAX).
 */
#include <stdlib.h>
#include <string.h>

#include "client/lib/arena.h"
#include "kvtier/errors.h"

#define ALIGN 4096ull

int kvt_arena_alloc_init(struct kvt_arena_alloc *a, uint64_t bytes)
{
    return kvt_arena_alloc_init_range(a, 0, bytes);
}

int kvt_arena_alloc_init_range(struct kvt_arena_alloc *a, uint64_t off, uint64_t bytes)
{
    memset(a, 0, sizeof(*a));
    a->free_ext = calloc(KVT_ARENA_BLOCKS_MAX + 1, sizeof(*a->free_ext));
    a->used = calloc(KVT_ARENA_BLOCKS_MAX, sizeof(*a->used));
    if (!a->free_ext || !a->used) {
        kvt_arena_alloc_deinit(a);
        return KVT_E_NOMEM;
    }
    a->free_ext[0] = (struct kvt_arena_extent){off, bytes & ~(ALIGN - 1)};
    a->n_free = a->free_ext[0].len ? 1 : 0;
    return 0;
}

void kvt_arena_alloc_deinit(struct kvt_arena_alloc *a)
{
    free(a->free_ext);
    free(a->used);
    memset(a, 0, sizeof(*a));
}

int kvt_arena_alloc_get(struct kvt_arena_alloc *a, uint64_t bytes, uint64_t *off)
{
    if (bytes == 0 || bytes > UINT64_MAX - ALIGN || a->n_used == KVT_ARENA_BLOCKS_MAX)
        return KVT_E_NOMEM;
    uint64_t len = (bytes + ALIGN - 1) & ~(ALIGN - 1);
    for (uint32_t i = 0; i < a->n_free; i++) {
        struct kvt_arena_extent *e = &a->free_ext[i];
        if (e->len < len)
            continue;
        *off = e->off;
        e->off += len;
        e->len -= len;
        if (e->len == 0) {
            memmove(e, e + 1, (a->n_free - i - 1) * sizeof(*e));
            a->n_free--;
        }
        a->used[a->n_used++] = (struct kvt_arena_extent){*off, len};
        return 0;
    }
    return KVT_E_NOMEM;
}

void kvt_arena_alloc_put(struct kvt_arena_alloc *a, uint64_t off)
{
    uint32_t u = 0;
    while (u < a->n_used && a->used[u].off != off)
        u++;
    if (u == a->n_used)
        return;
    struct kvt_arena_extent x = a->used[u];
    a->used[u] = a->used[--a->n_used];
    /* Insert in offset order, then merge with the neighbours. */
    uint32_t i = 0;
    while (i < a->n_free && a->free_ext[i].off < x.off)
        i++;
    memmove(&a->free_ext[i + 1], &a->free_ext[i], (a->n_free - i) * sizeof(x));
    a->free_ext[i] = x;
    a->n_free++;
    if (i + 1 < a->n_free && a->free_ext[i].off + a->free_ext[i].len == a->free_ext[i + 1].off) {
        a->free_ext[i].len += a->free_ext[i + 1].len;
        memmove(&a->free_ext[i + 1], &a->free_ext[i + 2], (a->n_free - i - 2) * sizeof(x));
        a->n_free--;
    }
    if (i > 0 && a->free_ext[i - 1].off + a->free_ext[i - 1].len == a->free_ext[i].off) {
        a->free_ext[i - 1].len += a->free_ext[i].len;
        memmove(&a->free_ext[i], &a->free_ext[i + 1], (a->n_free - i - 1) * sizeof(x));
        a->n_free--;
    }
}
