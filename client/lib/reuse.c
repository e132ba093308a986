/*
 * libkvtier: chunk-cache reuse at any position (docs/reuse.md): passage keys, version info,
 * ChunkLookup plans and rotated Gets. Requests go through client.c's session (session.h).
 */
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "client/lib/session.h"
#include "common/time.h"

int kvt_passage_key(const struct kvt_ns_info *ns, const int32_t *tokens, size_t n,
                    struct kvt_key *out)
{
    if (!ns || !tokens || !n || !out || (ns->tokens_per_chunk && n > ns->tokens_per_chunk))
        return KVT_E_INVAL;
    /* kvt_chunk_keys' hash with a zero parent, over the passage's own tokens: a passage of a
     * whole chunk at the start of a sequence has the same key both ways. */
    uint8_t zero[16] = {0};
    XXH3_state_t st;
    XXH3_128bits_reset_withSeed(&st, ns->seed);
    XXH3_128bits_update(&st, zero, sizeof(zero));
    XXH3_128bits_update(&st, tokens, n * sizeof(int32_t));
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    out->lo = h.low64;
    out->hi = h.high64;
    return 0;
}

int kvt_version_set(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
                    const struct kvt_version_info *vi)
{
    if (!c || !key || !vi || (vi->n_prefix && !vi->prefix) || !vi->layer_mass ||
        (vi->n_tokens && !vi->token_mass))
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    Kvtier__Key *store = NULL;
    Kvtier__Key **kp = kvt__cl_keys_to_proto(vi->prefix, NULL, vi->n_prefix, &store);
    if (!kp)
        return KVT_E_NOMEM;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key->lo;
    k.hi = key->hi;
    k.variant = variant;
    Kvtier__VersionSetReq vr = KVTIER__VERSION_SET_REQ__INIT;
    vr.ns = ns_id;
    vr.key = &k;
    vr.start_pos = vi->start_pos;
    vr.n_prefix = vi->n_prefix;
    vr.prefix = kp;
    vr.layers = vi->layers;
    vr.n_tokens = vi->n_tokens;
    vr.n_layer_mass = (size_t)vi->layers * (vi->n_prefix + 1u);
    vr.layer_mass = (float *)vi->layer_mass;
    vr.n_token_mass = vi->n_tokens;
    vr.token_mass = (float *)vi->token_mass;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.op_case = KVTIER__REQUEST__OP_VERSION_SET;
    req.version_set = &vr;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_call(c, &req, &r);
    free(kp);
    free(store);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case != KVTIER__RESPONSE__RESULT_VERSION_SET)
        rc = KVT_E_PROTO;
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_chunk_lookup(struct kvt_client *c, uint32_t ns, const struct kvt_key *passages,
                     const uint64_t *start_pos, size_t n, float alpha, struct kvt_reuse_plan *plans)
{
    return kvt_chunk_lookup_budget(c, ns, passages, start_pos, n, alpha, 0, plans);
}

int kvt_chunk_lookup_budget(struct kvt_client *c, uint32_t ns, const struct kvt_key *passages,
                            const uint64_t *start_pos, size_t n, float alpha,
                            uint32_t budget_per_passage, struct kvt_reuse_plan *plans)
{
    if (!c || (n && (!passages || !start_pos || !plans)))
        return KVT_E_INVAL;
    uint32_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        if (plans[i].recompute_cap && !plans[i].recompute)
            return KVT_E_INVAL;
        cap = plans[i].recompute_cap > cap ? plans[i].recompute_cap : cap;
    }
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    Kvtier__Key *store = NULL;
    Kvtier__Key **kp = kvt__cl_keys_to_proto(passages, NULL, n, &store);
    if (!kp)
        return KVT_E_NOMEM;
    Kvtier__ChunkLookupReq cr = KVTIER__CHUNK_LOOKUP_REQ__INIT;
    cr.ns = ns_id;
    cr.n_passages = n;
    cr.passages = kp;
    cr.n_start_pos = n;
    cr.start_pos = (uint64_t *)start_pos;
    cr.alpha = alpha;
    cr.recompute_max = cap;
    cr.recompute_budget_per_passage = budget_per_passage;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.op_case = KVTIER__REQUEST__OP_CHUNK_LOOKUP;
    req.chunk_lookup = &cr;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_call(c, &req, &r);
    free(kp);
    free(store);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc &&
        (r->result_case != KVTIER__RESPONSE__RESULT_CHUNK_LOOKUP || r->chunk_lookup->n_plans != n))
        rc = KVT_E_PROTO;
    for (size_t i = 0; !rc && i < n; i++) {
        const Kvtier__ReusePlan *p = r->chunk_lookup->plans[i];
        struct kvt_reuse_plan *o = &plans[i];
        if (p->n_recompute > p->tokens_recompute || p->tokens_recompute > p->n_tokens) {
            rc = KVT_E_PROTO;
            break;
        }
        o->found = p->found;
        o->variant = p->variant;
        o->tier = (enum kvt_tier_id)p->tier;
        o->old_start = p->old_start;
        o->n_tokens = p->n_tokens;
        o->beta = p->beta;
        o->gamma = p->gamma;
        o->beta_prime = p->beta_prime;
        o->cci = p->cci;
        o->cfo = p->cfo;
        o->n_recompute = p->tokens_recompute;
        o->next_variant = p->next_variant;
        size_t k = p->n_recompute < o->recompute_cap ? p->n_recompute : o->recompute_cap;
        if (k)
            memcpy(o->recompute, p->recompute, k * sizeof(uint32_t));
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_get_rotated(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
                    uint64_t new_start, void *buf, size_t cap, size_t *len_out,
                    enum kvt_tier_id *tier_out)
{
    if (len_out)
        *len_out = 0;
    if (tier_out)
        *tier_out = KVT_TIER_NONE;
    if (!c || !key || !buf || !cap)
        return KVT_E_INVAL;
    /* Never inline: the daemon rotates at the destination, the caller's arena buffer or a
     * staging buffer. */
    Kvtier__GetReq gr = KVTIER__GET_REQ__INIT;
    gr.rotate = 1;
    gr.rotate_to = new_start;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_get_placed(c, ns, key, variant, &gr, buf, cap, &r);
    if (!rc) {
        if (len_out)
            *len_out = r->get->length;
        if (tier_out)
            *tier_out = (enum kvt_tier_id)r->get->tier;
    }
    if (r)
        kvtier__response__free_unpacked(r, NULL);
    return rc;
}
