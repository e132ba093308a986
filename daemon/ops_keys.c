/*
 * Key handlers: Lookup (how many leading keys of a list are stored, and in which tier, pinning
 * them under a hold when asked), Release (of a hold) and Delete (answered once its tombstones are
 * durable). Lookup and Delete bound the number of keys one request may name.
 */
#include "daemon/ops.h"

/* ---- Lookup and Delete -------------------------------------------------------------------- */

void kvt__ops_lookup(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__LookupReq *l)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, l->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    /* Static buffers are safe: the loop is single-threaded and packs the response before the
     * handler returns. */
    enum { LOOKUP_KEYS_MAX = 65536 };
    if (l->n_keys > LOOKUP_KEYS_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "more than 65536 keys in one Lookup");
        return;
    }
    static uint32_t tiers[LOOKUP_KEYS_MAX], ids[LOOKUP_KEYS_MAX], gens[LOOKUP_KEYS_MAX];
    size_t hits = 0;
    for (size_t i = 0; i < l->n_keys; i++) {
        struct kvt_key key;
        if (key_of(l->keys[i], &key))
            break;
        /* Each key of the chain names its own variant. */
        struct kvt_obj_id oid = {.ns_seed = ns->seed, .key = key, .variant = l->keys[i]->variant};
        uint32_t id = kvt_index_find(&s->idx, &oid);
        enum kvt_tier_id t =
            id == KVT_INDEX_NIL ? KVT_TIER_NONE : kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, id));
        if (t == KVT_TIER_NONE)
            break;
        ids[hits] = id;
        gens[hits] = kvt_index_at(&s->idx, id)->gen;
        tiers[hits++] = t;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__LookupResp lr = KVTIER__LOOKUP_RESP__INIT;
    if (l->hold_ms && hits) {
        /* Pinned until released or the lease ends; a hold that cannot be made is an error, so
         * the engine never believes hits are safe that are not. */
        uint32_t ttl =
            l->hold_ms < s->cfg->hold_ttl_ms ? l->hold_ms : (uint32_t)s->cfg->hold_ttl_ms;
        rc = kvt_hold_make(&s->holds, c->tenant, ids, gens, (uint32_t)hits, ttl, &lr.hold);
        if (rc) {
            reply_error(s, c, op, rc,
                        rc == KVT_E_FULL ? "no room for another hold (hold.max, hold.pins_max)"
                                         : NULL);
            return;
        }
    }
    s->st.lookups++;
    s->st.lookup_keys += l->n_keys;
    s->st.lookup_hits += hits;
    lr.hits = (uint32_t)hits;
    lr.n_tiers = hits;
    lr.tiers = tiers;
    resp.result_case = KVTIER__RESPONSE__RESULT_LOOKUP;
    resp.lookup = &lr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_delete(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__DeleteReq *d)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, d->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    enum { DELETE_KEYS_MAX = 65536 };
    if (d->n_keys > DELETE_KEYS_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "more than 65536 keys in one Delete");
        return;
    }
    /* The statuses live with the tier manager: the answer may wait for the tombstones. */
    int32_t *status = kvt_tm_delete_begin(s->tm, (uint32_t)d->n_keys);
    if (!status) {
        reply_error(s, c, op, KVT_E_BUSY, "too many Deletes waiting for the disk: retry");
        return;
    }
    for (size_t i = 0; i < d->n_keys; i++) {
        struct kvt_obj_id oid = {.ns_seed = ns->seed};
        uint32_t id = KVT_INDEX_NIL;
        if (!key_of(d->keys[i], &oid.key)) {
            oid.variant = d->keys[i]->variant; /* only that variant goes */
            id = kvt_index_find(&s->idx, &oid);
        }
        struct kvt_entry *e = id == KVT_INDEX_NIL ? NULL : kvt_index_at(&s->idx, id);
        if (!e || e->state != KVT_ENTRY_READY) {
            status[i] = e ? KVT_E_INUSE : KVT_E_NOTFOUND; /* being written: retry */
        } else {
            /* In use (being read or written): KVT_E_INUSE, the caller may retry. */
            status[i] = kvt_tm_delete(s->tm, id);
            s->st.deletes += status[i] == 0;
        }
    }
    /* Answered once every tombstone it staged is durable, so a crash cannot undo it. */
    if (kvt_tm_delete_end(s->tm, op, status, (uint32_t)d->n_keys))
        return;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__DeleteResp dr = KVTIER__DELETE_RESP__INIT;
    dr.n_status = d->n_keys;
    dr.status = status;
    resp.result_case = KVTIER__RESPONSE__RESULT_DEL;
    resp.del = &dr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_release(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__ReleaseReq *r)
{
    uint32_t n = 0;
    int rc = kvt_hold_end(&s->holds, r->hold, c->tenant, &n);
    if (rc) {
        if (rc == KVT_E_ACCESS)
            s->st.access_denied++;
        reply_error(s, c, op, rc,
                    rc == KVT_E_ACCESS ? "hold belongs to another tenant"
                                       : "unknown hold: released, expired (hold.ttl_ms) or made "
                                         "before the daemon restarted");
        return;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__ReleaseResp rr = KVTIER__RELEASE_RESP__INIT;
    rr.released = n;
    resp.result_case = KVTIER__RESPONSE__RESULT_RELEASE;
    resp.release = &rr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}
