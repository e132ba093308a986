/*
 * Context handlers: OpenContext, AppendChunks, CloseContext and Select (docs/sparse.md). A
 * context is found by id for the connection's tenant (another tenant's is E_ACCESS, a closed or
 * expired one E_NOCTX); every request that finds it renews its lease. Each validates everything
 * before it changes anything: an AppendChunks with one bad key appends none.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/ops.h"

static int find_ctx(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, uint64_t id,
                    struct kvt_ctx **out)
{
    int rc = kvt_ctx_find(&s->ctx, id, c->tenant, out);
    if (rc) {
        if (rc == KVT_E_ACCESS)
            s->st.access_denied++;
        reply_error(s, c, op, rc,
                    rc == KVT_E_ACCESS ? "context belongs to another tenant"
                                       : "unknown context: closed, expired (context.ttl_ms) or "
                                         "opened before the daemon restarted");
    }
    return rc;
}

void kvt__ops_open_context(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const Kvtier__OpenContextReq *r)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, r->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    uint32_t ttl = r->ttl_ms ? r->ttl_ms : (uint32_t)s->cfg->context_ttl_ms;
    if (ttl < 10 || ttl > 86400000u) {
        reply_error(s, c, op, KVT_E_INVAL, "context ttl_ms must be within 10..86400000");
        return;
    }
    struct kvt_ctx *x;
    rc = kvt_ctx_open(&s->ctx, c->tenant, ns->id, ns->seed, ns->layers, ns->kv_heads, ns->head_dim,
                      ttl, &x);
    if (rc) {
        reply_error(s, c, op, rc, "context.max contexts are open: close some or raise it");
        return;
    }
    s->st.contexts_opened++;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__OpenContextResp o = KVTIER__OPEN_CONTEXT_RESP__INIT;
    o.ctx = x->id;
    o.ttl_ms = ttl;
    resp.result_case = KVTIER__RESPONSE__RESULT_OPEN_CONTEXT;
    resp.open_context = &o;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_append_chunks(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                            const Kvtier__AppendChunksReq *r)
{
    struct kvt_ctx *x;
    if (find_ctx(s, c, op, r->ctx, &x))
        return;
    char why[160];
    if (r->n_keys != r->n_start_pos) {
        reply_error(s, c, op, KVT_E_INVAL, "AppendChunks needs one start_pos per key");
        return;
    }
    if (r->n_keys > UINT32_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "too many keys in one AppendChunks");
        return;
    }
    /* Everything is checked before anything is appended. */
    uint64_t end = x->end_pos;
    for (size_t i = 0; i < r->n_keys; i++) {
        struct kvt_key key;
        if (key_of(r->keys[i], &key)) {
            reply_error(s, c, op, KVT_E_INVAL, "AppendChunks with an empty key");
            return;
        }
        if (r->start_pos[i] < end) {
            snprintf(why, sizeof(why),
                     "chunk %zu starts at %" PRIu64 ", before the end of the one before (%" PRIu64
                     "): chunks are appended in sequence order",
                     i, r->start_pos[i], end);
            reply_error(s, c, op, KVT_E_INVAL, why);
            return;
        }
        struct kvt_obj_id oid = {x->ns_seed, key, r->keys[i]->variant};
        uint32_t id = kvt_index_find(&s->idx, &oid);
        const struct kvt_entry *e = id == KVT_INDEX_NIL ? NULL : kvt_index_at(&s->idx, id);
        if (!e || e->state != KVT_ENTRY_READY) {
            snprintf(why, sizeof(why), "chunk %zu of the AppendChunks is not stored", i);
            reply_error(s, c, op, KVT_E_NOTFOUND, why);
            return;
        }
        if (UINT64_MAX - r->start_pos[i] < e->n_tokens) {
            reply_error(s, c, op, KVT_E_INVAL, "start_pos too large");
            return;
        }
        end = r->start_pos[i] + e->n_tokens;
    }
    int rc = kvt_ctx_reserve(&s->ctx, x, (uint32_t)r->n_keys);
    if (rc) {
        reply_error(s, c, op, rc,
                    rc == KVT_E_FULL ? "context would exceed context.chunks_max chunks" : NULL);
        return;
    }
    uint32_t without = 0;
    for (size_t i = 0; i < r->n_keys; i++) {
        struct kvt_obj_id oid = {x->ns_seed, {r->keys[i]->lo, r->keys[i]->hi}, r->keys[i]->variant};
        uint32_t id = kvt_index_find(&s->idx, &oid);
        struct kvt_abs *a = kvt_abs_store_get(&s->abs, id);
        /* An abstract read back from disk was checked against its chunk's size only: one of
         * another shape than the namespace's is never scored. */
        if (a && (a->g.n_layers != x->n_layers || a->g.n_heads != x->n_heads ||
                  a->g.head_dim != x->head_dim))
            a = NULL;
        without += a == NULL;
        kvt_ctx_append(x, &oid, a, r->start_pos[i], kvt_index_at(&s->idx, id)->n_tokens);
    }
    s->st.context_chunks_appended += r->n_keys;
    s->st.context_chunks_without_abstract += without;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__AppendChunksResp a = KVTIER__APPEND_CHUNKS_RESP__INIT;
    a.chunks = x->n_chunks;
    a.tokens = x->tokens;
    a.without_abstract = without;
    resp.result_case = KVTIER__RESPONSE__RESULT_APPEND_CHUNKS;
    resp.append_chunks = &a;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_close_context(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                            const Kvtier__CloseContextReq *r)
{
    struct kvt_ctx *x;
    if (find_ctx(s, c, op, r->ctx, &x))
        return;
    kvt_ctx_close(&s->ctx, x);
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__CloseContextResp cr = KVTIER__CLOSE_CONTEXT_RESP__INIT;
    resp.result_case = KVTIER__RESPONSE__RESULT_CLOSE_CONTEXT;
    resp.close_context = &cr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

/* Bytes one SelectedSpan takes in an answer, at most (five fields and a Key, tags and lengths);
 * one SpanEstimate besides its means. */
#define SELECTED_SPAN_BYTES 64
#define SPAN_ESTIMATE_BYTES 48
#define SELECT_ESTIMATES_MAX 4096

size_t kvt__ops_select_reserve(const struct kvt_server *s, const Kvtier__SelectReq *r)
{
    const struct kvt_ctx *x = kvt_ctx_peek(&s->ctx, r->ctx);
    if (!x)
        return 0;
    size_t spans = kvt_sel_spans(x, r->layer);
    size_t est = r->n_estimates < spans ? r->n_estimates : spans;
    if (est > SELECT_ESTIMATES_MAX)
        est = 0; /* refused with an error */
    return spans * SELECTED_SPAN_BYTES +
           est * (SPAN_ESTIMATE_BYTES + (size_t)x->n_heads * 2u * x->head_dim * sizeof(uint16_t));
}

void kvt__ops_select(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__SelectReq *r)
{
    struct kvt_ctx *x;
    if (find_ctx(s, c, op, r->ctx, &x))
        return;
    char why[200];
    if (r->layer >= x->n_layers) {
        snprintf(why, sizeof(why), "layer %u out of range: the namespace has %u layers", r->layer,
                 x->n_layers);
        reply_error(s, c, op, KVT_E_INVAL, why);
        return;
    }
    if (!r->n_query_heads || r->n_query_heads % x->n_heads || r->n_query_heads > 65536) {
        snprintf(why, sizeof(why),
                 "n_query_heads %u must be a positive multiple of the namespace's %u KV heads",
                 r->n_query_heads, x->n_heads);
        reply_error(s, c, op, KVT_E_INVAL, why);
        return;
    }
    size_t want = (size_t)r->n_query_heads * x->head_dim * sizeof(float);
    if (r->query.len != want) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why), "query of %zu bytes; %u heads of %u fp32 values are %zu bytes",
                 r->query.len, r->n_query_heads, x->head_dim, want);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    int budgets = (r->budget_tokens != 0) + (r->budget_fraction != 0.0f) + (r->top_p != 0.0f);
    if (budgets != 1) {
        reply_error(s, c, op, KVT_E_INVAL,
                    "Select needs exactly one budget: budget_tokens, budget_fraction or top_p");
        return;
    }
    if (r->budget_fraction != 0.0f && !(r->budget_fraction > 0.0f && r->budget_fraction <= 1.0f)) {
        reply_error(s, c, op, KVT_E_INVAL, "budget_fraction must be within (0, 1]");
        return;
    }
    if (r->top_p != 0.0f && !(r->top_p > 0.0f && r->top_p <= 1.0f)) {
        reply_error(s, c, op, KVT_E_INVAL, "top_p must be within (0, 1]");
        return;
    }
    if (r->n_estimates > SELECT_ESTIMATES_MAX) {
        reply_error(s, c, op, KVT_E_INVAL, "n_estimates must be at most 4096");
        return;
    }
    /* One allocation for the runs, the estimates, their protobuf forms and the query (copied out
     * of the frame: protobuf bytes carry no alignment). Every element type is 8-byte aligned. */
    size_t m = kvt_sel_spans(x, r->layer);
    m = m ? m : 1;
    size_t n_est = r->n_estimates < m ? r->n_estimates : m;
    size_t per = sizeof(struct kvt_sel_span) + sizeof(Kvtier__SelectedSpan) +
                 sizeof(Kvtier__SelectedSpan *) + sizeof(Kvtier__Key);
    size_t per_est =
        sizeof(struct kvt_sel_est) + sizeof(Kvtier__SpanEstimate) + sizeof(Kvtier__SpanEstimate *);
    uint8_t *mem = kvt_malloc(KVT_ALLOC_ABSTRACT, m * per + n_est * per_est + want);
    if (!mem) {
        reply_error(s, c, op, KVT_E_NOMEM, NULL);
        return;
    }
    Kvtier__SelectedSpan *pb = (Kvtier__SelectedSpan *)mem;
    Kvtier__Key *pk = (Kvtier__Key *)(pb + m);
    Kvtier__SelectedSpan **pp = (Kvtier__SelectedSpan **)(pk + m);
    Kvtier__SpanEstimate *pe = (Kvtier__SpanEstimate *)(pp + m);
    Kvtier__SpanEstimate **pep = (Kvtier__SpanEstimate **)(pe + n_est);
    struct kvt_sel_span *out = (struct kvt_sel_span *)(pep + n_est);
    struct kvt_sel_est *est = (struct kvt_sel_est *)(out + m);
    float *q = (float *)(est + n_est);
    memcpy(q, r->query.data, want);
    for (size_t i = 0; i < (size_t)r->n_query_heads * x->head_dim; i++)
        if (!isfinite(q[i])) {
            reply_error(s, c, op, KVT_E_INVAL, "query holds a NaN or an infinity");
            goto done;
        }
    struct kvt_sel_params p = {
        .layer = r->layer,
        .n_query_heads = r->n_query_heads,
        .query = q,
        .budget_tokens = r->budget_tokens ? r->budget_tokens
                         : r->budget_fraction != 0.0f
                             ? (uint64_t)ceil((double)r->budget_fraction * (double)x->tokens)
                             : 0,
        .top_p = r->top_p,
        .sink_tokens = r->sink_tokens,
        .recent_tokens = r->recent_tokens,
        .n_estimates = (uint32_t)n_est,
    };
    struct kvt_sel_result res;
    int rc = kvt_sel_run(x, &p, &s->sel, out, m, est, &res);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        goto done;
    }
    /* How much of the context is on disk, and how much of that Select chose: the rest is what
     * ranking every span from DRAM abstracts left unread (LeoAM's rule, docs/sparse.md). */
    uint32_t run = 0;
    for (uint32_t i = 0; i < x->n_chunks; i++) {
        uint32_t id = kvt_index_find(&s->idx, &x->chunks[i].id);
        while (run < res.n_out && out[run].chunk < i)
            run++;
        if (id == KVT_INDEX_NIL)
            continue;
        if (kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, id)) == KVT_TIER_DISK)
            s->st.select_disk_tokens_considered += x->chunks[i].n_tokens;
        /* The chunk's importance for lossy forms: whether this Select returned any of it (runs
         * come in position order, chunk by chunk). */
        kvt__ops_sel_note(s, id, run < res.n_out && out[run].chunk == i);
    }
    for (uint32_t i = 0; i < res.n_out; i++) {
        const struct kvt_ctx_chunk *ch = &x->chunks[out[i].chunk];
        uint32_t id = kvt_index_find(&s->idx, &ch->id);
        enum kvt_tier_id t =
            id == KVT_INDEX_NIL ? KVT_TIER_NONE : kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, id));
        kvtier__selected_span__init(&pb[i]);
        pb[i].chunk = out[i].chunk;
        pb[i].token_first = out[i].token_first;
        pb[i].n_tokens = out[i].n_tokens;
        pb[i].tier = t;
        pb[i].mass = out[i].mass;
        if (t == KVT_TIER_DISK)
            s->st.select_disk_tokens_selected += out[i].n_tokens;
        if (t == KVT_TIER_DISK)
            s->st.select_runs_disk++;
        else if (t == KVT_TIER_CPU)
            s->st.select_runs_dram++;
        /* The selection is evidence for the tier manager (tier.select_promote): the bytes of the
         * rows it chose, one layer of n_tokens tokens. */
        if (id != KVT_INDEX_NIL) {
            const struct kvt_entry *e = kvt_index_at(&s->idx, id);
            if (e->n_tokens && x->n_layers)
                kvt_tm_note_rows(
                    s->tm, id, e->length / ((uint64_t)e->n_tokens * x->n_layers) * out[i].n_tokens,
                    1);
        }
        kvtier__key__init(&pk[i]);
        pk[i].lo = ch->id.key.lo;
        pk[i].hi = ch->id.key.hi;
        pk[i].variant = ch->id.variant;
        pb[i].key = &pk[i];
        pp[i] = &pb[i];
    }
    /* The means are sent straight from the abstract, which the context keeps alive. */
    size_t means_bytes = (size_t)x->n_heads * 2u * x->head_dim * sizeof(uint16_t);
    for (uint32_t i = 0; i < res.n_est; i++) {
        const struct kvt_abs *a = x->chunks[est[i].chunk].abs;
        kvtier__span_estimate__init(&pe[i]);
        pe[i].chunk = est[i].chunk;
        pe[i].token_first = est[i].token_first;
        pe[i].n_tokens = est[i].n_tokens;
        pe[i].mass = est[i].mass;
        pe[i].means.data =
            (uint8_t *)(a->means + (size_t)est[i].span * x->n_heads * 2u * x->head_dim);
        pe[i].means.len = means_bytes;
        pep[i] = &pe[i];
    }
    s->st.selects++;
    s->st.select_spans_scored += res.spans_scored;
    s->st.select_tokens_considered += res.context_tokens;
    s->st.select_tokens_selected += res.tokens_selected;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__SelectResp sr = KVTIER__SELECT_RESP__INIT;
    sr.n_spans = res.n_out;
    sr.spans = pp;
    sr.spans_scored = res.spans_scored;
    sr.tokens_selected = res.tokens_selected;
    sr.context_tokens = res.context_tokens;
    sr.mass_selected = res.mass_selected;
    sr.n_estimates = res.n_est;
    sr.estimates = pep;
    resp.result_case = KVTIER__RESPONSE__RESULT_SELECT;
    resp.select = &sr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
done:
    kvt_free(KVT_ALLOC_ABSTRACT, mem);
}
