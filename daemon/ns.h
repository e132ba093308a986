/*
 * Namespaces: a model's KV geometry plus the tenant that registered it. The table is sized at
 * start. A namespace's seed is a hash of its tenant and every geometry field, so the same model
 * registered by the same tenant gets the same seed (and chunk keys) across restarts and daemons,
 * while two tenants never share one.
 */
#ifndef KVT_DAEMON_NS_H
#define KVT_DAEMON_NS_H

#include <stdint.h>

#include "kvtier/kvtier.h"

struct kvt_ns {
    uint32_t id; /* 1-based; 0 = unused slot */
    uint64_t seed;
    char tenant[KVT_TENANT_MAX];
    char model_id[KVT_MODEL_ID_MAX];
    uint32_t layers, kv_heads, head_dim, dtype, tokens_per_chunk, rotary_dims, rope_style;
    float rope_theta;
    int allow_lossy;
    uint64_t bytes_per_token;
    uint64_t chunk_bytes;
};

/* The fields a client sends; model_id is borrowed during the call. */
struct kvt_ns_def {
    const char *model_id;
    uint32_t layers, kv_heads, head_dim, dtype, tokens_per_chunk, rotary_dims, rope_style;
    float rope_theta;
    int allow_lossy;
};

struct kvt_ns_table {
    struct kvt_ns *v;
    uint32_t cap;
    uint32_t n;
};

int kvt_ns_table_init(struct kvt_ns_table *t, uint32_t cap);
void kvt_ns_table_deinit(struct kvt_ns_table *t);

/* Registers (or finds) the namespace of def for tenant. KVT_E_INVAL with a reason in why when the
 * geometry is invalid; KVT_E_FULL when the table is full. */
int kvt_ns_register(struct kvt_ns_table *t, const char *tenant, const struct kvt_ns_def *def,
                    const struct kvt_ns **out, const char **why);

/* Resolves a namespace id for a tenant: KVT_E_NONS when unknown, KVT_E_ACCESS when it belongs
 * to another tenant. */
int kvt_ns_resolve(const struct kvt_ns_table *t, uint32_t id, const char *tenant,
                   const struct kvt_ns **out);

#endif
