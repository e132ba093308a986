/*
 * Contexts and their leases. See context.h.
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/context.h"
#include "kvtier/errors.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static void lease_fired(void *arg);

/* Arms the lease timer at the earliest expiry among open contexts (or disarms it). */
static void lease_rearm(struct kvt_ctx_table *t)
{
    uint64_t first = UINT64_MAX;
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->v[i].id && t->v[i].expires_ms < first)
            first = t->v[i].expires_ms;
    if (first == UINT64_MAX) {
        kvt_loop_timer_stop(t->loop, &t->lease);
        return;
    }
    uint64_t now = kvt_loop_now_ms(t->loop);
    /* Timers are bounded in number; the table uses one, which exists while the loop does. */
    (void)kvt_loop_timer_start(t->loop, &t->lease, first > now ? first - now : 0, lease_fired, t);
}

static void lease_fired(void *arg)
{
    struct kvt_ctx_table *t = arg;
    uint64_t now = kvt_loop_now_ms(t->loop);
    for (uint32_t i = 0; i < t->cap; i++) {
        struct kvt_ctx *c = &t->v[i];
        if (c->id && c->expires_ms <= now) {
            t->expired++;
            kvt_ctx_close(t, c);
        }
    }
    lease_rearm(t);
}

int kvt_ctx_table_init(struct kvt_ctx_table *t, uint32_t cap, uint32_t chunks_max,
                       struct kvt_loop *loop)
{
    memset(t, 0, sizeof(*t));
    t->v = kvt_calloc(KVT_ALLOC_ABSTRACT, cap, sizeof(*t->v));
    if (!t->v)
        return KVT_E_NOMEM;
    t->cap = cap;
    t->chunks_max = chunks_max;
    t->loop = loop;
    return 0;
}

void kvt_ctx_table_deinit(struct kvt_ctx_table *t)
{
    for (uint32_t i = 0; t->v && i < t->cap; i++)
        if (t->v[i].id)
            kvt_ctx_close(t, &t->v[i]);
    if (t->loop)
        kvt_loop_timer_stop(t->loop, &t->lease);
    kvt_free(KVT_ALLOC_ABSTRACT, t->v);
    memset(t, 0, sizeof(*t));
}

int kvt_ctx_open(struct kvt_ctx_table *t, const char *tenant, uint32_t ns_id, uint64_t ns_seed,
                 uint32_t n_layers, uint32_t n_heads, uint32_t head_dim, uint32_t ttl_ms,
                 struct kvt_ctx **out)
{
    uint32_t slot = UINT32_MAX;
    for (uint32_t i = 0; i < t->cap && slot == UINT32_MAX; i++)
        if (!t->v[i].id)
            slot = i;
    if (slot == UINT32_MAX)
        return KVT_E_FULL;
    struct kvt_ctx *c = &t->v[slot];
    memset(c, 0, sizeof(*c));
    if (++t->gen == 0)
        t->gen = 1;
    c->id = (uint64_t)t->gen << 32 | (slot + 1u);
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    c->tenant_hash = hash_str(c->tenant);
    c->ns_id = ns_id;
    c->ns_seed = ns_seed;
    c->n_layers = n_layers;
    c->n_heads = n_heads;
    c->head_dim = head_dim;
    c->ttl_ms = ttl_ms;
    c->expires_ms = kvt_loop_now_ms(t->loop) + ttl_ms;
    t->n++;
    t->opened++;
    if (!kvt_loop_timer_armed(&t->lease) || t->lease.due_ms > c->expires_ms)
        lease_rearm(t);
    *out = c;
    return 0;
}

const struct kvt_ctx *kvt_ctx_peek(const struct kvt_ctx_table *t, uint64_t id)
{
    uint32_t slot = (uint32_t)id;
    return slot && slot <= t->cap && t->v[slot - 1].id == id ? &t->v[slot - 1] : NULL;
}

int kvt_ctx_find(struct kvt_ctx_table *t, uint64_t id, const char *tenant, struct kvt_ctx **out)
{
    if (!kvt_ctx_peek(t, id))
        return KVT_E_NOCTX;
    struct kvt_ctx *c = &t->v[(uint32_t)id - 1];
    if (c->tenant_hash != hash_str(tenant) || strcmp(c->tenant, tenant))
        return KVT_E_ACCESS;
    /* Renewing only moves the expiry later: the armed timer fires early at worst and re-arms. */
    c->expires_ms = kvt_loop_now_ms(t->loop) + c->ttl_ms;
    *out = c;
    return 0;
}

int kvt_ctx_reserve(struct kvt_ctx_table *t, struct kvt_ctx *c, uint32_t n)
{
    if (n > t->chunks_max || c->n_chunks > t->chunks_max - n)
        return KVT_E_FULL;
    uint32_t need = c->n_chunks + n;
    if (need <= c->cap_chunks)
        return 0;
    uint32_t cap = c->cap_chunks ? c->cap_chunks : 16;
    while (cap < need)
        cap = cap > t->chunks_max / 2 ? t->chunks_max : cap * 2;
    struct kvt_ctx_chunk *v = kvt_calloc(KVT_ALLOC_ABSTRACT, cap, sizeof(*v));
    if (!v)
        return KVT_E_NOMEM;
    if (c->n_chunks)
        memcpy(v, c->chunks, c->n_chunks * sizeof(*v));
    kvt_free(KVT_ALLOC_ABSTRACT, c->chunks);
    c->chunks = v;
    c->cap_chunks = cap;
    return 0;
}

void kvt_ctx_append(struct kvt_ctx *c, const struct kvt_obj_id *id, struct kvt_abs *abs,
                    uint64_t start_pos, uint32_t n_tokens)
{
    struct kvt_ctx_chunk *k = &c->chunks[c->n_chunks++];
    k->id = *id;
    k->abs = abs;
    if (abs)
        kvt_abs_ref(abs);
    k->start_pos = start_pos;
    k->n_tokens = n_tokens;
    c->tokens += n_tokens;
    c->end_pos = start_pos + n_tokens;
}

void kvt_ctx_close(struct kvt_ctx_table *t, struct kvt_ctx *c)
{
    for (uint32_t i = 0; i < c->n_chunks; i++)
        kvt_abs_unref(c->chunks[i].abs);
    kvt_free(KVT_ALLOC_ABSTRACT, c->chunks);
    memset(c, 0, sizeof(*c));
    t->n--;
    t->closed++;
}
