/*
 * The chunk index: object identity (namespace seed, key, variant) -> entry, owned by the event loop
 * (no locks). Entries come from a pool sized at start and are found through a chained hash table of
 * 32-bit entry ids, so inserting and removing never allocate. An entry records where the chunk's
 * bytes are (per tier position, not per kind of tier: a third and a fourth tier change nothing
 * here), its state and how many readers hold it.
 */
#ifndef KVT_DAEMON_INDEX_H
#define KVT_DAEMON_INDEX_H

#include <stdint.h>

#include "kvtier/kvtier.h"
#include "tiers/tier.h"

#define KVT_INDEX_NIL UINT32_MAX

enum kvt_entry_state {
    KVT_ENTRY_FREE = 0,
    KVT_ENTRY_PENDING = 1, /* bytes being written; invisible to readers */
    KVT_ENTRY_READY = 2,
};

/* Where a chunk stands in one tier. */
enum kvt_entry_at {
    KVT_AT_NONE = 0,
    KVT_AT_WRITING = 1, /* being filled or written; not readable there yet */
    KVT_AT_READY = 2,   /* readable there (durable, for a persistent tier) */
};

/* Tiers an entry can be in, by position in the tier manager's list (fastest first). */
#define KVT_ENTRY_TIERS_MAX 4

struct kvt_entry {
    struct kvt_obj_id id; /* namespace seed (stable across restarts, unlike its id), key, variant */
    uint64_t loc[KVT_ENTRY_TIERS_MAX]; /* each tier's handle for its copy, while at[] says so */
    uint64_t length;
    uint32_t hnext; /* hash chain, or free list when FREE */
    uint32_t n_tokens;
    uint32_t refs; /* readers and writers holding the bytes: never evicted while > 0 */
    uint32_t gen;  /* changes every time the slot is reused: async callbacks check it */
    uint16_t hits; /* reads since stored (saturating), for disk admission */
    uint8_t state;
    uint8_t at[KVT_ENTRY_TIERS_MAX]; /* enum kvt_entry_at, per tier position */
    uint8_t elem_bytes; /* element size of the namespace's dtype, the codec's shuffle width */
    uint8_t promoting;  /* a read from a lower tier into a new DRAM slot is in flight */
    uint8_t referenced; /* read or written since the disk eviction's clock hand last passed */
    uint16_t owner;     /* 1 + namespace slot that stored it (per-tenant quotas); 0 = none */
    /* Lossy forms (docs/lossy.md): the form (enum kvt_form) of the copy at each tier position,
     * what a Put asked its lower copies to be kept in (0: the tiers' policy), and whether the DRAM
     * copy was dequantized from a lossy one (its bytes are not the Put's: replies carry their own
     * checksum). */
    uint8_t form[KVT_ENTRY_TIERS_MAX];
    uint8_t form_want; /* KVT_FORM_CLUSTER: a clustered variant, its bytes kept as given */
    uint8_t lossy;
    /* Importance (Select): bit i of sel_hist tells whether the i-th most recent Select that
     * scored this chunk returned any of its tokens; sel_seen counts those Selects (saturating). */
    uint8_t sel_hist;
    uint8_t sel_seen;
    /* Learning from selections (the tier manager's kvt_tm_note_rows): bytes of rows Selects chose
     * and GetRanges read in window heat_epoch (saturating), and whether the chunk is queued for a
     * selection promotion. */
    uint8_t sel_queued;
    uint32_t heat_sel_bytes;
    uint32_t heat_read_bytes;
    uint32_t heat_epoch;
};

struct kvt_index {
    struct kvt_entry *e;
    uint32_t *buckets;
    uint32_t cap;
    uint32_t mask;
    uint32_t free_head;
    uint32_t n;
    uint32_t gen;
    /* Objects per owner (kvt_index_set_owner), borrowed from the namespace table: entry owner o
     * counts in owner_objects[o - 1] until it is removed. NULL: not counted. */
    uint32_t *owner_objects;
    uint32_t n_owners;
    /* Called by kvt_index_remove before an entry is freed, so that what is kept beside the index
     * by entry id (its span abstract) goes with it. NULL: nothing to tell. */
    void (*on_remove)(void *arg, uint32_t id);
    void *on_remove_arg;
};

int kvt_index_init(struct kvt_index *idx, uint32_t cap);
void kvt_index_deinit(struct kvt_index *idx);

/* Entry id for object id, or KVT_INDEX_NIL. */
uint32_t kvt_index_find(const struct kvt_index *idx, const struct kvt_obj_id *id);
/* Inserts a new PENDING entry (the key must not be present). KVT_E_INDEXFULL when the pool is
 * empty (the tier manager's kvt_tm_index_insert evicts and retries). */
int kvt_index_insert(struct kvt_index *idx, const struct kvt_obj_id *id, uint32_t *id_out);
void kvt_index_remove(struct kvt_index *idx, uint32_t id);
/* Records which namespace slot (1-based; 0 = none) stored entry id, for per-tenant counts. */
void kvt_index_set_owner(struct kvt_index *idx, uint32_t id, uint16_t owner);

static inline struct kvt_entry *kvt_index_at(const struct kvt_index *idx, uint32_t id)
{
    return &idx->e[id];
}

#endif
