/*
 * Chunk index implementation: power-of-two bucket array (twice the pool size, so chains stay
 * short) and an entry pool with an intrusive free list.
 */
#include <string.h>

#include "common/alloc.h"
#include "daemon/index.h"

/* The variant is left out, so that every variant of one chunk shares a chain (a reuse lookup can
 * walk them); a chunk has a handful of variants at most. */
static uint32_t bucket_of(const struct kvt_index *idx, const struct kvt_obj_id *id)
{
    /* Keys are XXH3 output, already uniform: mix in the namespace and fold. */
    uint64_t h =
        id->key.lo ^ (id->key.hi * 0x9e3779b97f4a7c15ull) ^ (id->ns_seed * 0xff51afd7ed558ccdull);
    h ^= h >> 29;
    return (uint32_t)h & idx->mask;
}

int kvt_index_init(struct kvt_index *idx, uint32_t cap)
{
    uint32_t nb = 1;
    while (nb < cap * 2u && nb < (1u << 31))
        nb <<= 1;
    memset(idx, 0, sizeof(*idx));
    idx->e = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*idx->e));
    idx->buckets = kvt_malloc(KVT_ALLOC_INDEX, (size_t)nb * sizeof(uint32_t));
    if (!idx->e || !idx->buckets) {
        kvt_index_deinit(idx);
        return KVT_E_NOMEM;
    }
    memset(idx->buckets, 0xff, (size_t)nb * sizeof(uint32_t));
    idx->cap = cap;
    idx->mask = nb - 1;
    for (uint32_t i = 0; i < cap; i++)
        idx->e[i].hnext = i + 1 < cap ? i + 1 : KVT_INDEX_NIL;
    idx->free_head = 0;
    return 0;
}

void kvt_index_deinit(struct kvt_index *idx)
{
    kvt_free(KVT_ALLOC_INDEX, idx->e);
    kvt_free(KVT_ALLOC_INDEX, idx->buckets);
    memset(idx, 0, sizeof(*idx));
}

uint32_t kvt_index_find(const struct kvt_index *idx, const struct kvt_obj_id *oid)
{
    uint32_t id = idx->buckets[bucket_of(idx, oid)];
    for (uint32_t hops = 0; id != KVT_INDEX_NIL && hops <= idx->cap; hops++) {
        const struct kvt_entry *e = &idx->e[id];
        if (kvt_obj_id_eq(&e->id, oid))
            return id;
        id = e->hnext;
    }
    return KVT_INDEX_NIL;
}

int kvt_index_insert(struct kvt_index *idx, const struct kvt_obj_id *oid, uint32_t *id_out)
{
    if (idx->free_head == KVT_INDEX_NIL)
        return KVT_E_INDEXFULL;
    uint32_t id = idx->free_head;
    struct kvt_entry *e = &idx->e[id];
    idx->free_head = e->hnext;
    memset(e, 0, sizeof(*e));
    e->id = *oid;
    e->gen = ++idx->gen;
    e->state = KVT_ENTRY_PENDING;
    uint32_t b = bucket_of(idx, oid);
    e->hnext = idx->buckets[b];
    idx->buckets[b] = id;
    idx->n++;
    *id_out = id;
    return 0;
}

void kvt_index_remove(struct kvt_index *idx, uint32_t id)
{
    struct kvt_entry *e = &idx->e[id];
    if (idx->on_remove)
        idx->on_remove(idx->on_remove_arg, id);
    uint32_t *link = &idx->buckets[bucket_of(idx, &e->id)];
    for (uint32_t hops = 0; *link != KVT_INDEX_NIL && hops <= idx->cap; hops++) {
        if (*link == id) {
            *link = e->hnext;
            break;
        }
        link = &idx->e[*link].hnext;
    }
    kvt_index_set_owner(idx, id, 0);
    e->state = KVT_ENTRY_FREE;
    e->gen = ++idx->gen;
    e->hnext = idx->free_head;
    idx->free_head = id;
    idx->n--;
}

void kvt_index_set_owner(struct kvt_index *idx, uint32_t id, uint16_t owner)
{
    struct kvt_entry *e = &idx->e[id];
    if (!idx->owner_objects)
        return;
    if (e->owner && e->owner <= idx->n_owners)
        idx->owner_objects[e->owner - 1]--;
    e->owner = owner <= idx->n_owners ? owner : 0;
    if (e->owner)
        idx->owner_objects[e->owner - 1]++;
}
