/*
 * Namespaces: a model's KV geometry plus the tenant that registered it. The table is sized at
 * start; a namespace that no connection holds and that stores no chunk may be reclaimed for
 * another, so clients that come and go cannot fill it for good. Ids carry a generation: an id of
 * a reclaimed namespace is unknown, never someone else's namespace. Each tenant may hold at most
 * a quota of namespaces. A namespace's seed is a hash of its tenant and every geometry field, so
 * the same model registered by the same tenant gets the same seed (and chunk keys) across restarts
 * and daemons, while two tenants never share one.
 */
#ifndef KVT_DAEMON_NS_H
#define KVT_DAEMON_NS_H

#include <stdint.h>

#include "daemon/abstract.h"
#include "kvtier/kvtier.h"

#define KVT_NS_SLOT_BITS 17 /* id = generation << 17 | (slot + 1) */

struct kvt_ns {
    uint32_t id;    /* see KVT_NS_SLOT_BITS; 0 = unused slot */
    uint32_t conns; /* connections that registered it and are still open */
    uint64_t seed;
    uint64_t tenant_hash;
    char tenant[KVT_TENANT_MAX];
    char model_id[KVT_MODEL_ID_MAX];
    uint32_t layers, kv_heads, head_dim, dtype, tokens_per_chunk, rotary_dims, rope_style;
    float rope_theta;
    int allow_lossy;
    /* How Puts cut spans, as the last registration asked (DEFAULT fields follow the daemon's
     * abstract.* keys at each Put). Not part of the seed: the chunks are the same bytes. */
    struct kvt_span_policy spans;
    uint64_t bytes_per_token;
    uint64_t chunk_bytes;
    /* What reuse versions computed after other passages showed (daemon/reuse.h's prior): sums
     * of their CCI and of their mean attention mass per prefix passage, and their number. */
    double seen_cci_sum, seen_passage_mass_sum;
    uint64_t seen_versions;
};

/* The fields a client sends; model_id is borrowed during the call. */
struct kvt_ns_def {
    const char *model_id;
    uint32_t layers, kv_heads, head_dim, dtype, tokens_per_chunk, rotary_dims, rope_style;
    float rope_theta;
    int allow_lossy;
    struct kvt_span_policy spans; /* fine_layers UINT32_MAX: the default */
};

struct kvt_ns_table {
    struct kvt_ns *v;
    uint32_t *objects;    /* chunks stored through each slot (the index counts them) */
    uint64_t *dram_bytes; /* CPU-tier bytes of those chunks (the CPU tier counts them) */
    uint32_t cap;
    uint32_t n;    /* live namespaces */
    uint32_t used; /* slots ever used (live ones are below it) */
    uint32_t gen;
    uint64_t reclaimed;
};

int kvt_ns_table_init(struct kvt_ns_table *t, uint32_t cap);
void kvt_ns_table_deinit(struct kvt_ns_table *t);

/* Registers (or finds) the namespace of def for tenant. KVT_E_INVAL with a reason in why when the
 * geometry is invalid; KVT_E_QUOTA when the tenant holds quota namespaces and none of them is
 * idle; KVT_E_FULL when the table is full of namespaces in use. */
int kvt_ns_register(struct kvt_ns_table *t, const char *tenant, const struct kvt_ns_def *def,
                    uint32_t quota, const struct kvt_ns **out, const char **why);

/* Resolves a namespace id for a tenant: KVT_E_NONS when unknown, KVT_E_ACCESS when it belongs
 * to another tenant. */
int kvt_ns_resolve(const struct kvt_ns_table *t, uint32_t id, const char *tenant,
                   const struct kvt_ns **out);

/* Slot of a namespace (0-based), for kvt_ns_hold/release and the index's owner counts. */
static inline uint32_t kvt_ns_slot(const struct kvt_ns *ns)
{
    return (ns->id & ((1u << KVT_NS_SLOT_BITS) - 1)) - 1;
}

/* Adds what one version showed (kvt_reuse_observe) to ns's sums. */
void kvt_ns_note_version(struct kvt_ns_table *t, const struct kvt_ns *ns, double cci,
                         double passage_mass);

/* Adds the sums of n versions' observations (versions restored at start) to ns's. */
void kvt_ns_add_seen(struct kvt_ns_table *t, const struct kvt_ns *ns, double cci_sum,
                     double passage_mass_sum, uint64_t n);

/* A connection registered (hold) or let go of (release) the namespace in slot. */
void kvt_ns_hold(struct kvt_ns_table *t, uint32_t slot);
void kvt_ns_release(struct kvt_ns_table *t, uint32_t slot);

/* Chunks stored by all namespaces of ns's tenant, and the CPU-tier bytes they hold. */
uint64_t kvt_ns_tenant_objects(const struct kvt_ns_table *t, const struct kvt_ns *ns);
uint64_t kvt_ns_tenant_dram_bytes(const struct kvt_ns_table *t, const struct kvt_ns *ns);
/* Whether namespace slot `slot` (0-based) is live and belongs to ns's tenant. */
int kvt_ns_same_tenant(const struct kvt_ns_table *t, uint32_t slot, const struct kvt_ns *ns);

#endif
