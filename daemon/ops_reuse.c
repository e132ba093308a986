/*
 * Reuse handlers (docs/reuse.md): VersionSet (an engine's report on a stored version of a
 * passage: where and after what it was computed, with its attention statistics) and ChunkLookup
 * (for a request's passages in order, the best stored version of each and what to recompute).
 * Rotated Gets are in ops_data.c.
 *
 * The versions of a passage key are its variants 0 .. REUSE_VARIANTS - 1 that carry version info;
 * both handlers find them by probing those variants in the index.
 */
#include <math.h>
#include <stdio.h>

#include "common/alloc.h"
#include "daemon/ops.h"
#include "daemon/reuse.h"

#define REUSE_VARIANTS 32
#define CHUNK_LOOKUP_PASSAGES_MAX 256
#define RECOMPUTE_MAX 65536
#define PLAN_BYTES 96 /* one ReusePlan without its indices, at most */
#define INDEX_BYTES 5 /* one varint index */

size_t kvt__ops_chunk_lookup_reserve(const Kvtier__ChunkLookupReq *r)
{
    size_t k = r->recompute_max < RECOMPUTE_MAX ? r->recompute_max : RECOMPUTE_MAX;
    size_t n = r->n_passages < CHUNK_LOOKUP_PASSAGES_MAX ? r->n_passages : 0;
    return n * (PLAN_BYTES + k * INDEX_BYTES);
}

/* The readable entry of variant v of key, or KVT_INDEX_NIL; *exists says whether any entry (even
 * one being written) holds that variant. */
static uint32_t find_variant(struct kvt_server *s, const struct kvt_ns *ns,
                             const struct kvt_key *key, uint32_t v, int *exists)
{
    struct kvt_obj_id oid = {.ns_seed = ns->seed, .key = *key, .variant = v};
    uint32_t id = kvt_index_find(&s->idx, &oid);
    *exists = id != KVT_INDEX_NIL;
    if (id == KVT_INDEX_NIL || kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, id)) == KVT_TIER_NONE)
        return KVT_INDEX_NIL;
    return id;
}

/* A share of attention: finite and in [0, 1]. */
static int share_ok(float x)
{
    return isfinite(x) && x >= 0.0f && x <= 1.0f;
}

/* Keeps the key within reuse.versions_max: deletes the least recently used other versions. */
static uint32_t evict_versions(struct kvt_server *s, const struct kvt_ns *ns,
                               const struct kvt_key *key, uint32_t keep, uint32_t *left)
{
    uint32_t ids[REUSE_VARIANTS];
    uint64_t used[REUSE_VARIANTS];
    uint32_t n = 0, evicted = 0;
    for (uint32_t v = 0; v < REUSE_VARIANTS; v++) {
        int exists;
        uint32_t id = find_variant(s, ns, key, v, &exists);
        const struct kvt_version *ver =
            id == KVT_INDEX_NIL ? NULL : kvt_version_store_get(&s->versions, id);
        if (ver) {
            ids[n] = id;
            used[n++] = ver->used;
        }
    }
    uint32_t count = n;
    while (count > s->cfg->reuse_versions_max) {
        uint32_t worst = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++)
            if (ids[i] != keep && ids[i] != KVT_INDEX_NIL &&
                (worst == UINT32_MAX || used[i] < used[worst]))
                worst = i;
        if (worst == UINT32_MAX)
            break;
        /* In use (being read): kept this time, the next report tries again. */
        if (kvt_tm_delete(s->tm, ids[worst]) == 0) {
            evicted++;
            count--;
        }
        ids[worst] = KVT_INDEX_NIL;
    }
    s->st.versions_evicted += evicted;
    *left = count;
    return evicted;
}

void kvt__ops_version_set(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                          const Kvtier__VersionSetReq *r)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    char why[160];
    int rc = resolve_ns(s, c, r->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(r->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "VersionSet without a key");
        return;
    }
    if (r->key->variant >= REUSE_VARIANTS) {
        reply_error(s, c, op, KVT_E_INVAL, "versions are variants 0 .. 31");
        return;
    }
    if (r->n_prefix > KVT_VERSION_PREFIX_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "more than 256 passages before a version");
        return;
    }
    int exists;
    uint32_t id = find_variant(s, ns, &key, r->key->variant, &exists);
    if (id == KVT_INDEX_NIL) {
        reply_error(s, c, op, KVT_E_NOTFOUND, "the version's chunk is not stored: Put it first");
        return;
    }
    const struct kvt_entry *e = kvt_index_at(&s->idx, id);
    size_t masses = (size_t)ns->layers * (r->n_prefix + 1u);
    if (r->layers != ns->layers || r->n_tokens != e->n_tokens || r->n_layer_mass != masses ||
        r->n_token_mass != r->n_tokens) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why),
                 "version info of %u layers x %u tokens with %zu + %zu masses; the chunk has %u "
                 "layers x %u tokens: %zu + %u expected",
                 r->layers, r->n_tokens, r->n_layer_mass, r->n_token_mass, ns->layers, e->n_tokens,
                 masses, e->n_tokens);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    for (size_t i = 0; i < masses; i++) {
        if (!share_ok(r->layer_mass[i])) {
            reply_error(s, c, op, KVT_E_INVAL, "layer_mass values are shares in [0, 1]");
            return;
        }
    }
    for (uint32_t l = 0; l < r->layers; l++) {
        double row = 0;
        for (uint32_t j = 0; j <= r->n_prefix; j++)
            row += r->layer_mass[(size_t)l * (r->n_prefix + 1u) + j];
        if (row > 1.0 + 1e-3) {
            reply_error(s, c, op, KVT_E_INVAL, "a layer's attention shares add up to more than 1");
            return;
        }
    }
    for (size_t i = 0; i < r->n_token_mass; i++) {
        if (!share_ok(r->token_mass[i])) {
            reply_error(s, c, op, KVT_E_INVAL, "token_mass values are shares in [0, 1]");
            return;
        }
    }
    static struct kvt_key prefix[KVT_VERSION_PREFIX_MAX];
    for (size_t i = 0; i < r->n_prefix; i++) {
        if (key_of(r->prefix[i], &prefix[i])) {
            reply_error(s, c, op, KVT_E_INVAL, "a prefix key is missing");
            return;
        }
    }
    rc = kvt_version_store_set(&s->versions, id, r->start_pos, prefix, (uint32_t)r->n_prefix,
                               r->layers, r->n_tokens, r->layer_mass, r->token_mass);
    if (rc) {
        reply_error(s, c, op, rc,
                    rc == KVT_E_FULL ? "no room for more version info (reuse.bytes_max)" : NULL);
        return;
    }
    kvt__server_version_to_disk(s, id);
    double cci, passage_mass;
    if (kvt_reuse_observe(kvt_version_store_get(&s->versions, id), &cci, &passage_mass))
        kvt_ns_note_version(&s->ns, ns, cci, passage_mass);
    uint32_t left = 0;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__VersionSetResp vr = KVTIER__VERSION_SET_RESP__INIT;
    vr.evicted = evict_versions(s, ns, &key, id, &left);
    vr.versions = left;
    resp.result_case = KVTIER__RESPONSE__RESULT_VERSION_SET;
    resp.version_set = &vr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_chunk_lookup(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const Kvtier__ChunkLookupReq *r)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, r->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (r->n_passages > CHUNK_LOOKUP_PASSAGES_MAX || r->recompute_max > RECOMPUTE_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG,
                    "at most 256 passages and 65536 recompute indices per passage");
        return;
    }
    if (r->n_start_pos != r->n_passages) {
        reply_error(s, c, op, KVT_E_INVAL, "one start position per passage");
        return;
    }
    if (!isfinite(r->alpha) || r->alpha < 0) {
        reply_error(s, c, op, KVT_E_INVAL, "alpha must be a finite number >= 0");
        return;
    }
    float alpha = r->alpha > 0 ? r->alpha : (float)s->cfg->reuse_alpha;
    struct kvt_reuse_prior prior = {0};
    if (ns->seen_versions) {
        prior.n = ns->seen_versions;
        prior.cci = ns->seen_cci_sum / (double)ns->seen_versions;
        prior.passage_mass = ns->seen_passage_mass_sum / (double)ns->seen_versions;
    }
    static struct kvt_key keys[CHUNK_LOOKUP_PASSAGES_MAX];
    for (size_t i = 0; i < r->n_passages; i++) {
        if (key_of(r->passages[i], &keys[i])) {
            reply_error(s, c, op, KVT_E_INVAL, "a passage key is missing");
            return;
        }
    }
    /* Choose per passage, then lay the answer out: plans and their indices in one allocation. */
    static Kvtier__ReusePlan plans[CHUNK_LOOKUP_PASSAGES_MAX];
    static Kvtier__ReusePlan *plan_ptrs[CHUNK_LOOKUP_PASSAGES_MAX];
    static struct kvt_version *chosen[CHUNK_LOOKUP_PASSAGES_MAX];
    static struct kvt_reuse_score best_of[CHUNK_LOOKUP_PASSAGES_MAX];
    static uint32_t found_tokens[CHUNK_LOOKUP_PASSAGES_MAX];
    size_t n_idx = 0, n_found = 0;
    for (size_t i = 0; i < r->n_passages; i++) {
        Kvtier__ReusePlan *p = &plans[i];
        kvtier__reuse_plan__init(p);
        plan_ptrs[i] = p;
        chosen[i] = NULL;
        p->next_variant = UINT32_MAX;
        struct kvt_reuse_score best = {0};
        uint64_t best_start = 0;
        for (uint32_t v = 0; v < REUSE_VARIANTS; v++) {
            int exists;
            uint32_t id = find_variant(s, ns, &keys[i], v, &exists);
            if (!exists && p->next_variant == UINT32_MAX)
                p->next_variant = v;
            struct kvt_version *ver =
                id == KVT_INDEX_NIL ? NULL : kvt_version_store_get(&s->versions, id);
            if (!ver)
                continue;
            struct kvt_reuse_score sc;
            kvt_reuse_score(ver, keys, (uint32_t)i, alpha, &prior, &sc);
            if (chosen[i] && !kvt_reuse_better(&sc, ver->start_pos, ver->used, &best, best_start,
                                               chosen[i]->used, r->start_pos[i]))
                continue;
            chosen[i] = ver;
            best = sc;
            best_start = ver->start_pos;
            p->variant = v;
            p->tier = kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, id));
        }
        if (!chosen[i])
            continue;
        best_of[n_found] = best;
        found_tokens[n_found++] = chosen[i]->n_tokens;
    }
    /* A budget lowers alpha for the whole request until the plans fit it. */
    if (r->recompute_budget_per_passage && n_found) {
        float used = kvt_reuse_budget(best_of, found_tokens, n_found, alpha,
                                      (uint64_t)r->recompute_budget_per_passage * n_found);
        if (used < alpha)
            s->st.chunk_lookups_budgeted++;
    }
    for (size_t i = 0, f = 0; i < r->n_passages; i++) {
        Kvtier__ReusePlan *p = &plans[i];
        if (!chosen[i])
            continue;
        const struct kvt_reuse_score best = best_of[f++];
        p->found = 1;
        p->old_start = chosen[i]->start_pos;
        p->n_tokens = chosen[i]->n_tokens;
        p->beta = best.beta;
        p->gamma = best.gamma;
        p->beta_prime = best.beta_prime;
        p->cci = best.cci;
        p->cfo = best.cfo;
        p->tokens_recompute = best.n_recompute;
        p->n_recompute = best.n_recompute < r->recompute_max ? best.n_recompute : r->recompute_max;
        n_idx += p->n_recompute;
        kvt_version_store_touch(&s->versions, chosen[i]);
        s->st.chunk_lookup_found++;
        s->st.reuse_tokens_planned += p->n_tokens;
        s->st.reuse_tokens_recompute += p->n_recompute;
    }
    uint32_t *idx = kvt_malloc(KVT_ALLOC_PROTO, (n_idx ? n_idx : 1) * sizeof(uint32_t));
    if (!idx) {
        reply_error(s, c, op, KVT_E_NOMEM, NULL);
        return;
    }
    for (size_t i = 0, at = 0; i < r->n_passages; i++) {
        plans[i].recompute = idx + at;
        if (chosen[i])
            kvt_reuse_tokens(chosen[i], (uint32_t)plans[i].n_recompute, idx + at);
        at += plans[i].n_recompute;
    }
    s->st.chunk_lookups++;
    s->st.chunk_lookup_passages += r->n_passages;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__ChunkLookupResp cr = KVTIER__CHUNK_LOOKUP_RESP__INIT;
    cr.n_plans = r->n_passages;
    cr.plans = plan_ptrs;
    resp.result_case = KVTIER__RESPONSE__RESULT_CHUNK_LOOKUP;
    resp.chunk_lookup = &cr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
    kvt_free(KVT_ALLOC_PROTO, idx);
}
