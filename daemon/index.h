/*
 * The chunk index: (namespace, key) -> entry, owned by the event loop (no locks). Entries come
 * from a pool sized at start and are found through a chained hash table of 32-bit entry ids, so
 * inserting and removing never allocate. An entry records where the chunk's bytes are (per tier),
 * its state and how many readers hold it.
 */
#ifndef KVT_DAEMON_INDEX_H
#define KVT_DAEMON_INDEX_H

#include <stdint.h>

#include "kvtier/kvtier.h"

#define KVT_INDEX_NIL UINT32_MAX

enum kvt_entry_state {
    KVT_ENTRY_FREE = 0,
    KVT_ENTRY_PENDING = 1, /* bytes being written; invisible to readers */
    KVT_ENTRY_READY = 2,
};

struct kvt_entry {
    struct kvt_key key;
    uint64_t host_off; /* valid when in_host */
    uint64_t length;
    uint32_t ns_id;
    uint32_t hnext; /* hash chain, or free list when FREE */
    uint32_t n_tokens;
    uint32_t refs; /* readers and writers holding the bytes: never evicted while > 0 */
    uint8_t state;
    uint8_t in_host;
};

struct kvt_index {
    struct kvt_entry *e;
    uint32_t *buckets;
    uint32_t cap;
    uint32_t mask;
    uint32_t free_head;
    uint32_t n;
};

int kvt_index_init(struct kvt_index *idx, uint32_t cap);
void kvt_index_deinit(struct kvt_index *idx);

/* Entry id for (ns_id, key), or KVT_INDEX_NIL. */
uint32_t kvt_index_find(const struct kvt_index *idx, uint32_t ns_id, const struct kvt_key *key);
/* Inserts a new PENDING entry (the key must not be present). KVT_E_FULL when the pool is empty. */
int kvt_index_insert(struct kvt_index *idx, uint32_t ns_id, const struct kvt_key *key,
                     uint32_t *id_out);
void kvt_index_remove(struct kvt_index *idx, uint32_t id);

static inline struct kvt_entry *kvt_index_at(const struct kvt_index *idx, uint32_t id)
{
    return &idx->e[id];
}

#endif
