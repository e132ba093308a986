/*
 * The disk tier's operation slots and their staging pages. Every operation owns a run of 4 KiB
 * pages of the registered staging buffer for its whole life, taken first-fit (the extent
 * allocator over the buffer), so the data path never allocates; lists of operations (ready for a
 * commit, done with a callback pending) are threaded through the slots.
 */

#include "tiers/disk/disk_internal.h"

#include <string.h>

#include "tiers/disk/extent.h"

/* ---- op lists and slots --------------------------------------------------------------------- */

void kvt__disk_olist_push(struct kvt_disk *d, struct olist *l, uint32_t i)
{
    d->ops[i].next = OP_NONE;
    if (l->n == 0)
        l->head = i;
    else
        d->ops[l->tail].next = i;
    l->tail = i;
    l->n++;
}

uint32_t kvt__disk_olist_pop(struct kvt_disk *d, struct olist *l)
{
    uint32_t i = l->head;

    if (l->n == 0)
        return OP_NONE;
    l->head = d->ops[i].next;
    l->n--;
    return i;
}

void kvt__disk_olist_splice(struct kvt_disk *d, struct olist *dst, struct olist *src)
{
    uint32_t i;
    while ((i = kvt__disk_olist_pop(d, src)) != OP_NONE)
        kvt__disk_olist_push(d, dst, i);
}

unsigned char *kvt__disk_slot_of(struct kvt_disk *d, uint32_t i)
{
    return d->staging + (size_t)d->ops[i].sp_start * BLOCK;
}

/* Takes an op and bytes of staging (rounded up to pages); OP_NONE when either is exhausted. */
uint32_t kvt__disk_op_get(struct kvt_disk *d, uint64_t bytes)
{
    uint64_t pages = kvt__disk_blocks_for(bytes ? bytes : 1), start = 0;
    uint32_t i;

    if (d->n_free_ops == 0 || kvt_extent_alloc(d->sp, pages, &start) != 0)
        return OP_NONE;
    i = d->free_ops[--d->n_free_ops];
    memset(&d->ops[i], 0, sizeof(d->ops[i]));
    d->ops[i].next = OP_NONE;
    d->ops[i].sp_start = (uint32_t)start;
    d->ops[i].sp_pages = (uint32_t)pages;
    d->inflight++;
    return i;
}

void kvt__disk_op_put(struct kvt_disk *d, uint32_t i)
{
    kvt_extent_free(d->sp, d->ops[i].sp_start, d->ops[i].sp_pages);
    d->ops[i].state = ST_FREE;
    d->free_ops[d->n_free_ops++] = i;
    d->inflight--;
}

void kvt__disk_op_finish(struct kvt_disk *d, uint32_t i, int res)
{
    d->ops[i].res = res;
    d->ops[i].state = ST_DONE;
    kvt__disk_olist_push(d, &d->done, i);
}
