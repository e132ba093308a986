/*
 * Version records. See version.h.
 */
#include <string.h>

#include "common/alloc.h"
#include "daemon/version.h"

int kvt_version_store_init(struct kvt_version_store *st, uint32_t cap, uint64_t bytes_max)
{
    memset(st, 0, sizeof(*st));
    st->v = kvt_calloc(KVT_ALLOC_INDEX, cap, sizeof(*st->v));
    if (!st->v)
        return KVT_E_NOMEM;
    st->cap = cap;
    st->bytes_max = bytes_max;
    return 0;
}

void kvt_version_store_deinit(struct kvt_version_store *st)
{
    for (uint32_t i = 0; st->v && i < st->cap; i++)
        kvt_free(KVT_ALLOC_INDEX, st->v[i]);
    kvt_free(KVT_ALLOC_INDEX, st->v);
    memset(st, 0, sizeof(*st));
}

void kvt_version_store_drop(struct kvt_version_store *st, uint32_t id)
{
    if (id >= st->cap || !st->v[id])
        return;
    st->bytes -= st->v[id]->bytes;
    st->n--;
    kvt_free(KVT_ALLOC_INDEX, st->v[id]);
    st->v[id] = NULL;
}

struct kvt_version *kvt_version_alloc(uint32_t n_prefix, uint32_t layers, uint32_t n_tokens)
{
    size_t masses = (size_t)layers * (n_prefix + 1u);
    size_t bytes = sizeof(struct kvt_version) + (size_t)n_prefix * sizeof(struct kvt_key) +
                   (masses + n_tokens) * sizeof(float);
    struct kvt_version *v = kvt_malloc(KVT_ALLOC_INDEX, bytes);
    if (!v)
        return NULL;
    memset(v, 0, sizeof(*v));
    v->n_prefix = n_prefix;
    v->layers = layers;
    v->n_tokens = n_tokens;
    v->bytes = bytes;
    v->prefix = (struct kvt_key *)(v + 1);
    v->layer_mass = (float *)(v->prefix + n_prefix);
    v->token_mass = v->layer_mass + masses;
    return v;
}

int kvt_version_store_keep(struct kvt_version_store *st, uint32_t id, struct kvt_version *v)
{
    if (id >= st->cap) {
        kvt_free(KVT_ALLOC_INDEX, v);
        return KVT_E_INVAL;
    }
    uint64_t old = st->v[id] ? st->v[id]->bytes : 0;
    if (st->bytes - old + v->bytes > st->bytes_max) {
        st->refused++;
        kvt_free(KVT_ALLOC_INDEX, v);
        return KVT_E_FULL;
    }
    kvt_version_store_drop(st, id);
    v->used = ++st->clock;
    st->v[id] = v;
    st->bytes += v->bytes;
    st->n++;
    return 0;
}

int kvt_version_store_set(struct kvt_version_store *st, uint32_t id, uint64_t start_pos,
                          const struct kvt_key *prefix, uint32_t n_prefix, uint32_t layers,
                          uint32_t n_tokens, const float *layer_mass, const float *token_mass)
{
    if (id >= st->cap)
        return KVT_E_INVAL;
    struct kvt_version *v = kvt_version_alloc(n_prefix, layers, n_tokens);
    if (!v)
        return KVT_E_NOMEM;
    v->start_pos = start_pos;
    if (n_prefix)
        memcpy(v->prefix, prefix, (size_t)n_prefix * sizeof(*prefix));
    memcpy(v->layer_mass, layer_mass, (size_t)layers * (n_prefix + 1u) * sizeof(float));
    if (n_tokens)
        memcpy(v->token_mass, token_mass, (size_t)n_tokens * sizeof(float));
    int rc = kvt_version_store_keep(st, id, v);
    if (rc == 0)
        st->set++;
    return rc;
}

void kvt_version_store_touch(struct kvt_version_store *st, struct kvt_version *v)
{
    v->used = ++st->clock;
}
