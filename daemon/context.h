/*
 * Contexts: the ordered chunks of one running sequence, which Select scores (docs/sparse.md).
 *
 * A context belongs to the tenant that opened it, in one namespace; it names each chunk by object
 * id and start position and pins the chunk's abstract (a reference), never its bytes, so eviction
 * stays free to move or drop the data. It lives under a lease: every request that names it
 * renews it for ttl_ms, and a context nobody renews is closed by the table's timer on the loop
 * (whose clock tests inject), so a crashed client cannot pin abstracts for ever.
 *
 * Ids carry a generation (like namespaces): the id of a closed context is unknown, never another
 * context. The table is sized at start; chunk lists grow by doubling up to chunks_max.
 */
#ifndef KVT_DAEMON_CONTEXT_H
#define KVT_DAEMON_CONTEXT_H

#include <stdint.h>

#include "common/loop.h"
#include "daemon/abstract.h"
#include "kvtier/kvtier.h"
#include "tiers/tier.h" /* struct kvt_obj_id */

struct kvt_ctx_chunk {
    struct kvt_obj_id id;
    struct kvt_abs *abs; /* a reference, or NULL: no abstract (Select keeps the chunk whole) */
    uint64_t start_pos;
    uint32_t n_tokens;
};

struct kvt_ctx {
    uint64_t id; /* generation << 32 | (slot + 1); 0 = free slot */
    uint64_t tenant_hash;
    char tenant[KVT_TENANT_MAX];
    uint32_t ns_id; /* the namespace it was opened in (ids are never reused for another) */
    uint64_t ns_seed;
    uint32_t n_layers, n_heads, head_dim; /* the namespace's geometry */
    struct kvt_ctx_chunk *chunks;
    uint32_t n_chunks, cap_chunks;
    uint64_t tokens;  /* covered by its chunks */
    uint64_t end_pos; /* one past the last chunk's last token */
    uint32_t ttl_ms;
    uint64_t expires_ms;
};

struct kvt_ctx_table {
    struct kvt_ctx *v;
    uint32_t cap;
    uint32_t n; /* open */
    uint32_t gen;
    uint32_t chunks_max;
    struct kvt_loop *loop;
    struct kvt_timer lease; /* armed at the earliest expiry while any context is open */
    uint64_t opened, closed, expired;
};

int kvt_ctx_table_init(struct kvt_ctx_table *t, uint32_t cap, uint32_t chunks_max,
                       struct kvt_loop *loop);
/* Closes every context (dropping their references). */
void kvt_ctx_table_deinit(struct kvt_ctx_table *t);

/* Opens a context for tenant in a namespace (id, seed, geometry copied). KVT_E_FULL when the
 * table is full. */
int kvt_ctx_open(struct kvt_ctx_table *t, const char *tenant, uint32_t ns_id, uint64_t ns_seed,
                 uint32_t n_layers, uint32_t n_heads, uint32_t head_dim, uint32_t ttl_ms,
                 struct kvt_ctx **out);

/* Finds an open context for tenant and renews its lease. KVT_E_NOCTX when the id is unknown (or
 * closed), KVT_E_ACCESS when another tenant opened it. */
int kvt_ctx_find(struct kvt_ctx_table *t, uint64_t id, const char *tenant, struct kvt_ctx **out);

/* The open context with that id, whoever opened it, without renewing it (sizing an answer), or
 * NULL. */
const struct kvt_ctx *kvt_ctx_peek(const struct kvt_ctx_table *t, uint64_t id);

/* Makes room for n more chunks (so that appending them cannot fail half-way). KVT_E_FULL past
 * chunks_max, KVT_E_NOMEM. */
int kvt_ctx_reserve(struct kvt_ctx_table *t, struct kvt_ctx *c, uint32_t n);
/* Appends one chunk (room reserved; start_pos >= end_pos checked by the caller); takes a new
 * reference on abs when not NULL. */
void kvt_ctx_append(struct kvt_ctx *c, const struct kvt_obj_id *id, struct kvt_abs *abs,
                    uint64_t start_pos, uint32_t n_tokens);

void kvt_ctx_close(struct kvt_ctx_table *t, struct kvt_ctx *c);

#endif
