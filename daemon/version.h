/*
 * Version info of chunk-cache reuse (docs/reuse.md): for a stored variant of a passage, where
 * and after what it was computed, and the attention statistics the engine reported for it.
 * One optional record per index entry (it leaves with the entry), counted against a byte limit
 * (reuse.bytes_max); a record that does not fit is refused (KVT_E_FULL), never half-kept.
 * Records live in DRAM and, for chunks with a disk copy, in the version log
 * (daemon/version_log.h), from which a restarted daemon reads them back (kvt_version_store_keep;
 * docs/reuse.md, "Across restarts").
 */
#ifndef KVT_DAEMON_VERSION_H
#define KVT_DAEMON_VERSION_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"

/* Bounds on what one record may hold (the request that passes one is refused). */
#define KVT_VERSION_PREFIX_MAX 256
#define KVT_VERSION_LAYERS_MAX 1024

struct kvt_version {
    uint64_t start_pos;
    uint64_t used; /* store clock of its creation or last plan: the least recently used goes */
    uint32_t n_prefix, layers, n_tokens;
    struct kvt_key *prefix; /* n_prefix, into the same allocation */
    float *layer_mass;      /* layers x (n_prefix + 1) */
    float *token_mass;      /* n_tokens */
    size_t bytes;
    /* The stamp of the disk copy this record was logged for (daemon/version_log.h), 0: none
     * yet. A copy that lands with another stamp logs the record again. */
    uint64_t logged_stamp;
};

struct kvt_version_store {
    struct kvt_version **v; /* by index entry id */
    uint32_t cap;
    uint64_t bytes, bytes_max;
    uint64_t n, clock;
    uint64_t set, evicted, refused;
};

int kvt_version_store_init(struct kvt_version_store *st, uint32_t cap, uint64_t bytes_max);
void kvt_version_store_deinit(struct kvt_version_store *st);

/* Gives entry id a record copied from the arguments (sizes as struct kvt_version says), replacing
 * one it had. KVT_E_FULL when reuse.bytes_max has no room (nothing changed), KVT_E_NOMEM. */
int kvt_version_store_set(struct kvt_version_store *st, uint32_t id, uint64_t start_pos,
                          const struct kvt_key *prefix, uint32_t n_prefix, uint32_t layers,
                          uint32_t n_tokens, const float *layer_mass, const float *token_mass);
/* A record of this geometry laid out in one allocation (KVT_ALLOC_INDEX; bytes set, the values
 * not), or NULL. */
struct kvt_version *kvt_version_alloc(uint32_t n_prefix, uint32_t layers, uint32_t n_tokens);
/* Gives entry id the record v (transferred: kept, or freed on failure), replacing one it had:
 * 0, KVT_E_FULL (reuse.bytes_max has no room; counted in refused), KVT_E_INVAL. */
int kvt_version_store_keep(struct kvt_version_store *st, uint32_t id, struct kvt_version *v);
/* The entry's record (borrowed), or NULL. */
static inline struct kvt_version *kvt_version_store_get(const struct kvt_version_store *st,
                                                        uint32_t id)
{
    return id < st->cap ? st->v[id] : NULL;
}
/* Marks a record used now (a plan chose it). */
void kvt_version_store_touch(struct kvt_version_store *st, struct kvt_version *v);
/* The entry left the index: its record goes. */
void kvt_version_store_drop(struct kvt_version_store *st, uint32_t id);

#endif
