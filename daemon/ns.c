/*
 * Namespace table: validation of geometry, deterministic seeds, tenant checks.
 */
#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "common/alloc.h"
#include "common/assert.h"
#include "daemon/ns.h"

#define GEOMETRY_MAX 65536u

int kvt_ns_table_init(struct kvt_ns_table *t, uint32_t cap)
{
    memset(t, 0, sizeof(*t));
    if (cap == 0 || cap >= (1u << KVT_NS_SLOT_BITS))
        return KVT_E_INVAL;
    t->v = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*t->v));
    t->objects = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*t->objects));
    t->dram_bytes = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*t->dram_bytes));
    if (!t->v || !t->objects || !t->dram_bytes) {
        kvt_ns_table_deinit(t);
        return KVT_E_NOMEM;
    }
    t->cap = cap;
    return 0;
}

void kvt_ns_table_deinit(struct kvt_ns_table *t)
{
    kvt_free(KVT_ALLOC_INDEX, t->v);
    kvt_free(KVT_ALLOC_INDEX, t->objects);
    kvt_free(KVT_ALLOC_INDEX, t->dram_bytes);
    memset(t, 0, sizeof(*t));
}

static uint64_t tenant_hash(const char *tenant)
{
    return XXH3_64bits(tenant, strlen(tenant));
}

static int idle(const struct kvt_ns_table *t, uint32_t slot)
{
    return t->v[slot].id && t->v[slot].conns == 0 && t->objects[slot] == 0 &&
           t->dram_bytes[slot] == 0;
}

static void reclaim(struct kvt_ns_table *t, uint32_t slot)
{
    t->v[slot].id = 0;
    t->n--;
    t->reclaimed++;
}

void kvt_ns_hold(struct kvt_ns_table *t, uint32_t slot)
{
    t->v[slot].conns++;
}

void kvt_ns_release(struct kvt_ns_table *t, uint32_t slot)
{
    if (t->v[slot].conns)
        t->v[slot].conns--;
}

int kvt_ns_same_tenant(const struct kvt_ns_table *t, uint32_t slot, const struct kvt_ns *ns)
{
    return slot < t->used && t->v[slot].id && t->v[slot].tenant_hash == ns->tenant_hash &&
           !strcmp(t->v[slot].tenant, ns->tenant);
}

uint64_t kvt_ns_tenant_objects(const struct kvt_ns_table *t, const struct kvt_ns *ns)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->used; i++)
        if (kvt_ns_same_tenant(t, i, ns))
            n += t->objects[i];
    return n;
}

uint64_t kvt_ns_tenant_dram_bytes(const struct kvt_ns_table *t, const struct kvt_ns *ns)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->used; i++)
        if (kvt_ns_same_tenant(t, i, ns))
            n += t->dram_bytes[i];
    return n;
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
    /* Each factor is at most 2^16, so bytes per token fits (2^51); the chunk size may not. */
    *bpt = (uint64_t)d->layers * 2u * d->kv_heads * d->head_dim * es;
    uint64_t chunk;
    if (__builtin_mul_overflow(*bpt, (uint64_t)d->tokens_per_chunk, &chunk) || chunk > (1ull << 40))
        return "chunk larger than 1 TiB";
    return NULL;
}

int kvt_ns_register(struct kvt_ns_table *t, const char *tenant, const struct kvt_ns_def *def,
                    uint32_t quota, const struct kvt_ns **out, const char **why)
{
    uint64_t bpt = 0;
    const char *bad = validate(def, &bpt);
    if (bad) {
        *why = bad;
        return KVT_E_INVAL;
    }
    uint64_t seed = seed_of(tenant, def), th = tenant_hash(tenant);
    uint32_t held = 0, own_idle = UINT32_MAX, any_idle = UINT32_MAX, free_slot = UINT32_MAX;
    for (uint32_t i = 0; i < t->used; i++) {
        struct kvt_ns *x = &t->v[i];
        if (!x->id) {
            if (free_slot == UINT32_MAX)
                free_slot = i;
            continue;
        }
        int mine = x->tenant_hash == th && strcmp(x->tenant, tenant) == 0;
        if (mine && x->seed == seed) {
            x->spans = def->spans; /* the latest registration's policy applies to new Puts */
            *out = x;
            return 0;
        }
        held += mine;
        if (idle(t, i)) {
            if (mine && own_idle == UINT32_MAX)
                own_idle = i;
            if (any_idle == UINT32_MAX)
                any_idle = i;
        }
    }
    if (held >= quota) {
        if (own_idle == UINT32_MAX) {
            *why = "tenant holds quota.namespaces_per_tenant namespaces, all in use";
            return KVT_E_QUOTA;
        }
        reclaim(t, own_idle);
        free_slot = own_idle;
    }
    if (free_slot == UINT32_MAX && t->used < t->cap)
        free_slot = t->used++;
    if (free_slot == UINT32_MAX && any_idle != UINT32_MAX) {
        reclaim(t, any_idle);
        free_slot = any_idle;
    }
    if (free_slot == UINT32_MAX) {
        *why = "namespace table full of namespaces in use (max_namespaces)";
        return KVT_E_FULL;
    }
    struct kvt_ns *ns = &t->v[free_slot];
    memset(ns, 0, sizeof(*ns));
    t->objects[free_slot] = 0;
    t->gen = (t->gen + 1) & ((1u << (32 - KVT_NS_SLOT_BITS)) - 1);
    ns->id = t->gen << KVT_NS_SLOT_BITS | (free_slot + 1);
    t->n++;
    ns->seed = seed;
    ns->tenant_hash = th;
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
    ns->spans = def->spans;
    ns->bytes_per_token = bpt;
    ns->chunk_bytes = bpt * def->tokens_per_chunk;
    *out = ns;
    return 0;
}

int kvt_ns_resolve(const struct kvt_ns_table *t, uint32_t id, const char *tenant,
                   const struct kvt_ns **out)
{
    uint32_t slot = (id & ((1u << KVT_NS_SLOT_BITS) - 1)) - 1;
    if (slot >= t->used || t->v[slot].id != id || id == 0)
        return KVT_E_NONS;
    const struct kvt_ns *ns = &t->v[slot];
    if (strcmp(ns->tenant, tenant) != 0)
        return KVT_E_ACCESS;
    *out = ns;
    return 0;
}

void kvt_ns_note_version(struct kvt_ns_table *t, const struct kvt_ns *ns, double cci,
                         double passage_mass)
{
    struct kvt_ns *w = &t->v[kvt_ns_slot(ns)];
    KVT_ASSERT(w == ns);
    w->seen_cci_sum += cci;
    w->seen_passage_mass_sum += passage_mass;
    w->seen_versions++;
}

void kvt_ns_add_seen(struct kvt_ns_table *t, const struct kvt_ns *ns, double cci_sum,
                     double passage_mass_sum, uint64_t n)
{
    struct kvt_ns *w = &t->v[kvt_ns_slot(ns)];
    KVT_ASSERT(w == ns);
    w->seen_cci_sum += cci_sum;
    w->seen_passage_mass_sum += passage_mass_sum;
    w->seen_versions += n;
}
