/*
 * Namespace table: validation of geometry, deterministic seeds, tenant checks.
 */
#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "common/alloc.h"
#include "daemon/ns.h"

#define GEOMETRY_MAX 65536u

int kvt_ns_table_init(struct kvt_ns_table *t, uint32_t cap)
{
    t->v = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*t->v));
    if (!t->v)
        return KVT_E_NOMEM;
    t->cap = cap;
    t->n = 0;
    return 0;
}

void kvt_ns_table_deinit(struct kvt_ns_table *t)
{
    kvt_free(KVT_ALLOC_INDEX, t->v);
    t->v = NULL;
    t->cap = t->n = 0;
}

static uint64_t seed_of(const char *tenant, const struct kvt_ns_def *d)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, tenant, strlen(tenant) + 1);
    XXH3_64bits_update(&st, d->model_id, strlen(d->model_id) + 1);
    uint32_t f[7] = {d->layers,           d->kv_heads,    d->head_dim,  d->dtype,
                     d->tokens_per_chunk, d->rotary_dims, d->rope_style};
    XXH3_64bits_update(&st, f, sizeof(f));
    XXH3_64bits_update(&st, &d->rope_theta, sizeof(d->rope_theta));
    uint8_t lossy = d->allow_lossy ? 1 : 0;
    XXH3_64bits_update(&st, &lossy, 1);
    return XXH3_64bits_digest(&st);
}

static const char *validate(const struct kvt_ns_def *d, uint64_t *bpt)
{
    if (!d->model_id || !*d->model_id)
        return "model_id is empty";
    if (strlen(d->model_id) >= KVT_MODEL_ID_MAX)
        return "model_id is too long";
    if (!d->layers || !d->kv_heads || !d->head_dim || !d->tokens_per_chunk)
        return "layers, kv_heads, head_dim and tokens_per_chunk must be at least 1";
    if (d->layers > GEOMETRY_MAX || d->kv_heads > GEOMETRY_MAX || d->head_dim > GEOMETRY_MAX ||
        d->tokens_per_chunk > GEOMETRY_MAX)
        return "geometry field larger than 65536";
    size_t es = kvt_dtype_size((enum kvt_dtype)d->dtype);
    if (!es || d->dtype > KVT_DTYPE_FP8)
        return "unknown dtype";
    if (d->rotary_dims > d->head_dim || d->rope_style > 1)
        return "rotary_dims larger than head_dim or unknown rope_style";
    /* Each factor is at most 2^16, so the products below cannot overflow 64 bits. */
    *bpt = (uint64_t)d->layers * 2u * d->kv_heads * d->head_dim * es;
    if (*bpt * d->tokens_per_chunk > (1ull << 40))
        return "chunk larger than 1 TiB";
    return NULL;
}

int kvt_ns_register(struct kvt_ns_table *t, const char *tenant, const struct kvt_ns_def *def,
                    const struct kvt_ns **out, const char **why)
{
    uint64_t bpt = 0;
    const char *bad = validate(def, &bpt);
    if (bad) {
        *why = bad;
        return KVT_E_INVAL;
    }
    uint64_t seed = seed_of(tenant, def);
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->v[i].seed == seed && strcmp(t->v[i].tenant, tenant) == 0) {
            *out = &t->v[i];
            return 0;
        }
    }
    if (t->n == t->cap) {
        *why = "namespace table full (max_namespaces)";
        return KVT_E_FULL;
    }
    struct kvt_ns *ns = &t->v[t->n];
    memset(ns, 0, sizeof(*ns));
    ns->id = ++t->n;
    ns->seed = seed;
    snprintf(ns->tenant, sizeof(ns->tenant), "%s", tenant);
    snprintf(ns->model_id, sizeof(ns->model_id), "%s", def->model_id);
    ns->layers = def->layers;
    ns->kv_heads = def->kv_heads;
    ns->head_dim = def->head_dim;
    ns->dtype = def->dtype;
    ns->tokens_per_chunk = def->tokens_per_chunk;
    ns->rotary_dims = def->rotary_dims ? def->rotary_dims : def->head_dim;
    ns->rope_style = def->rope_style;
    ns->rope_theta = def->rope_theta;
    ns->allow_lossy = def->allow_lossy;
    ns->bytes_per_token = bpt;
    ns->chunk_bytes = bpt * def->tokens_per_chunk;
    *out = ns;
    return 0;
}

int kvt_ns_resolve(const struct kvt_ns_table *t, uint32_t id, const char *tenant,
                   const struct kvt_ns **out)
{
    if (id == 0 || id > t->n)
        return KVT_E_NONS;
    const struct kvt_ns *ns = &t->v[id - 1];
    if (strcmp(ns->tenant, tenant) != 0)
        return KVT_E_ACCESS;
    *out = ns;
    return 0;
}
