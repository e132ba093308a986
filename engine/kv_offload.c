/*
 * Offload KV mode: every full chunk of KV goes to kvtier as soon as it is complete and is read back
 * through libkvtier for every step that needs it; only the partial tail chunk stays in the
 * engine's memory. Chunks use the canonical layout [layer][token][k|v][kv_head][head_dim] in fp16,
 * and their keys are kvtier's chained chunk keys over the token ids, so any engine (or a later run
 * of this one) finds the same prefix under the same keys.
 *
 * Buffers: one arena region big enough for every chunk of a full context (the fetch area, where
 * kvt_get_batch lands chunks with no client-side copy) and one chunk of put staging, both from
 * kvt_arena_alloc. Before prefill, kvt_lookup says how many leading chunks of the prompt are
 * cached; those are fetched instead of computed (prefix reuse).
 *
 * Errors from libkvtier (daemon gone, timeout, a chunk evicted) are returned unchanged; the caller
 * decides between stopping and recomputing (session.c).
 *
 * Sparse (kvt_eng_kv_sparse_create) is offload with importance-aware retrieval (docs/sparse.md):
 * the stored chunks also make up a kvtier context, and in a decode step each layer asks kvtier
 * which spans its query needs (Select, with the sink and a recent window always kept) and reads
 * only those rows (kvt_select_fetch: DRAM where resident, range reads from disk otherwise) into
 * that layer's region of the fetch area; the query attends to them and to the local tail.
 * Batches (prefill) decline the selection and attend to everything, fetched as in offload.
 *
 * With estimates (kvt_eng_select_config.estimates, RetroInfer), the Select also returns the best
 * unselected spans with their abstract's mean key and mean value per KV head; each becomes one
 * entry of the layer's attention, placed at its span's first position (which no selected run
 * covers), with the bias log(n_tokens): it weighs as much as n_tokens keys equal to the mean,
 * so the query's attention mass to that span is estimated from its centroid instead of dropped.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/kv.h"
#include "engine/kv_prefetch.h"
#include "kvtier/kvtier.h"

#define OFFLOAD_ARENA_SLACK (1u << 20)
/* Chunks requested at once: the daemon bounds requests in flight per connection and answers
 * E_BUSY past its limit. */
#define OFFLOAD_FETCH_WINDOW 8
/* E_BUSY and E_DIRTYFULL are transient: retry with a growing pause, at most about 2 s in all. */
#define OFFLOAD_BUSY_RETRIES 20
#define OFFLOAD_BUSY_PAUSE_US 10000

struct kv_offload {
    struct kvt_eng_kv base;
    struct kvt_client *client;
    struct kvt_ns_info ns;
    size_t C;         /* tokens per chunk */
    size_t row_halfs; /* fp16 values of one token of one layer */
    size_t chunk_bytes;
    size_t max_chunks;
    struct kvt_key *keys; /* keys of the chunks [0, n_chunks) that are in kvtier */
    size_t n_chunks;
    struct kvt_item *items;
    uint8_t *fetch; /* arena: max_chunks * chunk_bytes */
    size_t fetched; /* chunks readable in fetch since the last prepare */
    uint8_t *stage; /* arena: one chunk being stored */
    uint16_t *tail; /* local: [layer][tail_cap][row] for positions [tail_start, +tail_len) */
    size_t tail_cap, tail_start, tail_len;
    /* Sparse only. */
    struct kvt_eng_select_config sel;
    uint64_t ctx;  /* kvtier context of the stored chunks; 0: none open */
    size_t in_ctx; /* stored chunks appended to it */
    uint64_t *starts;
    struct kvt_span_sel *runs; /* Select's answer, max_runs entries */
    size_t max_runs;
    struct kvt_item *run_items;  /* the runs the prefetch did not bring */
    struct kvt_eng_prefetch *pf; /* NULL: every run read when its layer asks */
    uint64_t step;               /* decode steps so far: the prefetch's generation */
    /* Estimates (sel.estimates of them): Select's answer, their means, and the entries built
     * from them for one layer's step (est_rows: rows; est_bias: log n per KV head). */
    struct kvt_span_est *est;
    uint16_t *est_means;
    size_t est_means_cap;
    uint16_t *est_rows;
    float *est_bias;
    struct kvt_eng_kv_span *est_spans;
};

/* Tokens of the stored context a sparse step always keeps besides the local tail: with the tail
 * they make up at least this recent window. */
#define SPARSE_RECENT_TOKENS 64
/* Layers that always attend to everything: the first ones spread their attention thin (Quest
 * keeps its first two layers dense too). Measured on GPL-3, 2K context, 20% budget: KL 0.092
 * with none dense, 0.083 with two (docs/sparse.md). */
#define SPARSE_DENSE_LAYERS 2

/* Answers after which the same request may succeed: a daemon slot or staging buffer was taken
 * (E_BUSY), or DRAM is full of chunks the disk has not taken yet (E_DIRTYFULL, with
 * tier.dirty_full = reject). */
static int is_transient(int rc)
{
    return rc == KVT_E_BUSY || rc == KVT_E_DIRTYFULL;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint16_t *tail_rows(struct kv_offload *o, uint32_t layer, size_t pos)
{
    return o->tail + ((size_t)layer * o->tail_cap + (pos - o->tail_start)) * o->row_halfs;
}

/* Appends the stored chunks not yet in the sparse context. */
static int ctx_sync(struct kv_offload *o)
{
    if (!o->ctx || o->in_ctx == o->n_chunks)
        return 0;
    for (size_t i = o->in_ctx; i < o->n_chunks; i++)
        o->starts[i] = (uint64_t)i * o->C;
    int rc = kvt_context_append(o->client, o->ctx, o->keys + o->in_ctx, NULL, o->starts + o->in_ctx,
                                o->n_chunks - o->in_ctx, NULL);
    if (!rc)
        o->in_ctx = o->n_chunks;
    return rc;
}

static int off_begin(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n, int allow_reuse,
                     size_t *reused_out)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    if (o->runs) {
        /* A new sequence: a new context (the old one's lease would expire anyway). */
        if (o->ctx)
            (void)kvt_context_close(o->client, o->ctx);
        o->ctx = 0;
        o->in_ctx = 0;
        int rc = kvt_context_open(o->client, o->ns.handle, 0, &o->ctx);
        if (rc)
            return rc;
    }
    o->n_chunks = 0;
    o->fetched = 0;
    o->tail_start = 0;
    o->tail_len = 0;
    *reused_out = 0;
    if (!allow_reuse || n <= o->C)
        return 0;
    size_t nk = kvt_chunk_keys(&o->ns, NULL, tokens, n, o->keys, o->max_chunks);
    size_t hits = 0;
    int rc = kvt_lookup(o->client, o->ns.handle, o->keys, nk, &hits, NULL);
    if (rc)
        return rc;
    /* Keep the last prompt token to compute: its logits start generation. */
    size_t usable = (n - 1) / o->C;
    if (hits < usable)
        usable = hits;
    o->n_chunks = usable;
    o->tail_start = usable * o->C;
    kv->stats.reused_tokens += o->tail_start;
    *reused_out = o->tail_start;
    return ctx_sync(o);
}

/* Gets items[0..n), asking again (after a pause) for those the daemon answered with a transient
 * error. Items may be reordered (each keeps its own buffer). Returns 0 when every item arrived,
 * else the session error or an item's error (the last transient one once retries run out). */
static int get_with_retry(struct kv_offload *o, struct kvt_item *items, size_t n)
{
    for (int attempt = 0;; attempt++) {
        int rc = kvt_get_batch(o->client, o->ns.handle, items, n);
        if (rc)
            return rc;
        /* Move the busy items to the front; anything else that failed ends the fetch. */
        size_t busy = 0;
        int last = 0;
        for (size_t i = 0; i < n; i++) {
            if (!is_transient(items[i].status)) {
                if (items[i].status)
                    return items[i].status;
                continue;
            }
            last = items[i].status;
            struct kvt_item tmp = items[busy];
            items[busy] = items[i];
            items[i] = tmp;
            items[busy].len = o->chunk_bytes; /* capacity again, for the retry */
            busy++;
        }
        if (busy == 0)
            return 0;
        if (attempt == OFFLOAD_BUSY_RETRIES)
            return last;
        usleep((useconds_t)(OFFLOAD_BUSY_PAUSE_US * (attempt + 1) / 4));
        n = busy;
    }
}

static int off_prepare(struct kvt_eng_kv *kv, size_t pos, size_t n)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    if (pos != o->tail_start + o->tail_len || n > kv->geom.batch_max ||
        pos + n > kv->geom.ctx_max || o->tail_len + n > o->tail_cap)
        return -EINVAL;
    o->fetched = 0;
    if (o->n_chunks == 0)
        return 0;
    /* A sparse decode step reads per layer what its query selects (sparse_select). */
    if (o->runs && n == 1) {
        o->step++;
        return 0;
    }
    for (size_t i = 0; i < o->n_chunks; i++) {
        struct kvt_item *it = &o->items[i];
        memset(it, 0, sizeof(*it));
        it->key = o->keys[i];
        it->buf = o->fetch + i * o->chunk_bytes;
        it->len = o->chunk_bytes;
    }
    uint64_t t0 = now_ns();
    int rc = 0;
    for (size_t first = 0; first < o->n_chunks && rc == 0; first += OFFLOAD_FETCH_WINDOW) {
        size_t n_win =
            o->n_chunks - first < OFFLOAD_FETCH_WINDOW ? o->n_chunks - first : OFFLOAD_FETCH_WINDOW;
        rc = get_with_retry(o, o->items + first, n_win);
    }
    kv->stats.fetch_ns += now_ns() - t0;
    if (rc)
        return rc;
    for (size_t i = 0; i < o->n_chunks; i++) {
        const struct kvt_item *it = &o->items[i];
        if (it->len != o->chunk_bytes)
            return KVT_E_GEOMETRY;
        size_t tier = it->tier < KVT_ENG_KV_TIERS ? (size_t)it->tier : 0;
        kv->stats.fetch_bytes[tier] += it->len;
        kv->stats.fetch_chunks++;
    }
    o->fetched = o->n_chunks;
    return 0;
}

static int off_append(struct kvt_eng_kv *kv, uint32_t layer, size_t pos, size_t n,
                      const uint16_t *rows)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    if (layer >= kv->geom.n_layer || pos < o->tail_start || pos + n - o->tail_start > o->tail_cap)
        return -EINVAL;
    memcpy(tail_rows(o, layer, pos), rows, n * o->row_halfs * sizeof(uint16_t));
    if (pos + n - o->tail_start > o->tail_len)
        o->tail_len = pos + n - o->tail_start;
    return 0;
}

static int off_spans(struct kvt_eng_kv *kv, uint32_t layer, size_t end, struct kvt_eng_kv_span *out,
                     size_t max)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    size_t ns = 0;
    if (layer >= kv->geom.n_layer || end > o->tail_start + o->tail_len ||
        (o->tail_start > 0 && o->fetched * o->C < o->tail_start && end > o->fetched * o->C))
        return -EINVAL;
    size_t layer_bytes = o->C * o->row_halfs * sizeof(uint16_t);
    for (size_t c = 0; c < o->fetched && c * o->C < end; c++) {
        if (ns >= max)
            return -ENOSPC;
        out[ns].rows = (const uint16_t *)(o->fetch + c * o->chunk_bytes + layer * layer_bytes);
        out[ns].pos = c * o->C;
        out[ns].n_tokens = end - c * o->C < o->C ? end - c * o->C : o->C;
        ns++;
    }
    if (end > o->tail_start) {
        if (ns >= max)
            return -ENOSPC;
        out[ns].rows = tail_rows(o, layer, o->tail_start);
        out[ns].pos = o->tail_start;
        out[ns].n_tokens = end - o->tail_start;
        ns++;
    }
    return (int)ns;
}

static int off_commit(struct kvt_eng_kv *kv, const int32_t *tokens, size_t n)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    if (n != o->tail_start + o->tail_len)
        return -EINVAL;
    size_t layer_bytes = o->C * o->row_halfs * sizeof(uint16_t);
    while (o->tail_len >= o->C) {
        if (o->n_chunks >= o->max_chunks)
            return -ENOSPC;
        for (uint32_t l = 0; l < kv->geom.n_layer; l++)
            memcpy(o->stage + l * layer_bytes, tail_rows(o, l, o->tail_start), layer_bytes);
        struct kvt_key key;
        const struct kvt_key *parent = o->n_chunks ? &o->keys[o->n_chunks - 1] : NULL;
        if (kvt_chunk_keys(&o->ns, parent, tokens + o->tail_start, o->C, &key, 1) != 1)
            return -EINVAL;
        uint64_t t0 = now_ns();
        int rc;
        for (int attempt = 0;; attempt++) {
            rc = kvt_put(o->client, o->ns.handle, &key, o->stage, o->chunk_bytes, (uint32_t)o->C);
            if (!is_transient(rc) || attempt == OFFLOAD_BUSY_RETRIES)
                break;
            usleep((useconds_t)(OFFLOAD_BUSY_PAUSE_US * (attempt + 1) / 4));
        }
        kv->stats.store_ns += now_ns() - t0;
        if (rc)
            return rc;
        kv->stats.store_bytes += o->chunk_bytes;
        kv->stats.store_chunks++;
        o->keys[o->n_chunks++] = key;
        o->tail_start += o->C;
        o->tail_len -= o->C;
        /* The rest of the tail moves to the front of each layer's tail area. */
        for (uint32_t l = 0; l < kv->geom.n_layer && o->tail_len; l++) {
            uint16_t *dst = o->tail + (size_t)l * o->tail_cap * o->row_halfs;
            memmove(dst, dst + o->C * o->row_halfs, o->tail_len * o->row_halfs * sizeof(uint16_t));
        }
    }
    return ctx_sync(o);
}

/* The Select of layer for a decode step at position pos: its budget (the whole causal past,
 * local tail included) and the spans always kept. */
static struct kvt_select_req sparse_req(const struct kv_offload *o, uint32_t layer,
                                        const struct kvt_eng_kv_query *q)
{
    size_t total = q->pos + 1, tail = o->tail_len;
    struct kvt_select_req req = {
        .layer = layer,
        .n_query_heads = q->n_head,
        .head_dim = q->head_dim,
        .query = q->q,
        .recent_tokens = tail < SPARSE_RECENT_TOKENS ? (uint32_t)(SPARSE_RECENT_TOKENS - tail) : 0,
    };
    if (layer < SPARSE_DENSE_LAYERS) {
        req.budget_fraction = 1.0f;
    } else if (o->sel.top_p > 0) {
        req.top_p = (float)o->sel.top_p;
    } else {
        double want = ceil(o->sel.budget * (double)total);
        req.budget_tokens = want > (double)tail ? (uint32_t)(want - (double)tail) : 1;
    }
    if (layer >= SPARSE_DENSE_LAYERS && o->sel.estimates) {
        req.n_estimates = o->sel.estimates;
        req.est = o->est;
        req.est_means = o->est_means;
        req.est_means_cap = o->est_means_cap;
    }
    return req;
}

static int est_by_pos(const void *a, const void *b)
{
    const struct kvt_eng_kv_span *x = a, *y = b;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Turns Select's n estimates into one-entry spans (o->est_spans, in position order), dropping any
 * whose position a selected run covers (a span the recent window cut into); then merges them into
 * the runs' spans out[0..*ns) (position order, capacity max). */
static int add_estimates(struct kv_offload *o, size_t n, struct kvt_eng_kv_span *out, size_t *ns,
                         size_t max)
{
    const struct kvt_eng_kv_geom *g = &o->base.geom;
    size_t hd = g->head_dim, kvh = g->n_head_kv, kept = 0;
    for (size_t i = 0; i < n; i++) {
        const struct kvt_span_est *e = &o->est[i];
        size_t pos = (size_t)e->chunk * o->C + e->token_first;
        int covered = e->n_tokens == 0 || pos >= o->tail_start;
        for (size_t s = 0; s < *ns && !covered; s++)
            covered = out[s].pos <= pos && pos < out[s].pos + out[s].n_tokens;
        if (covered)
            continue;
        uint16_t *row = o->est_rows + kept * o->row_halfs;
        for (size_t h = 0; h < kvh; h++) {
            memcpy(row + h * hd, e->means + h * 2 * hd, hd * sizeof(uint16_t));
            memcpy(row + (kvh + h) * hd, e->means + h * 2 * hd + hd, hd * sizeof(uint16_t));
            o->est_bias[kept * kvh + h] = logf((float)e->n_tokens);
        }
        o->est_spans[kept] = (struct kvt_eng_kv_span){
            .rows = row, .pos = pos, .n_tokens = 1, .bias = o->est_bias + kept * kvh};
        kept++;
    }
    if (!kept)
        return 0;
    if (*ns + kept > max)
        return -ENOSPC;
    qsort(o->est_spans, kept, sizeof(*o->est_spans), est_by_pos);
    /* Merge from the back, in place. */
    size_t a = *ns, b = kept, w = *ns + kept;
    while (b > 0) {
        if (a > 0 && out[a - 1].pos > o->est_spans[b - 1].pos)
            out[--w] = out[--a];
        else
            out[--w] = o->est_spans[--b];
    }
    *ns += kept;
    return 0;
}

/* The selection of a sparse decode step: Select for this layer's query, then its rows — from the
 * prefetch that layer l - 1 started with its own query where every row of a run arrived, the rest
 * read now — laid out by position in the layer's region; then the local tail. Before reading, the
 * prefetch of layer l + 1 (with this query) starts, so it runs while this layer computes. */
static int sparse_select(struct kvt_eng_kv *kv, uint32_t layer, const struct kvt_eng_kv_query *q,
                         struct kvt_eng_kv_span *out, size_t max, size_t *counts)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    if (q->n_tokens != 1)
        return KVT_ENG_KV_DECLINE;
    if (layer >= kv->geom.n_layer || q->pos != o->tail_start + o->tail_len - 1 ||
        o->in_ctx != o->n_chunks)
        return -EINVAL;
    size_t ns = 0;
    if (o->n_chunks) {
        uint64_t t0 = now_ns();
        if (o->pf)
            (void)kvt_eng_prefetch_wait(o->pf, kv->stats.fetch_bytes, KVT_ENG_KV_TIERS);
        struct kvt_select_req req = sparse_req(o, layer, q);
        struct kvt_select_info info;
        int rc = kvt_select(o->client, o->ctx, &req, o->runs, o->max_runs, &info);
        if (rc)
            return rc;
        if (o->pf && layer + 1 < kv->geom.n_layer) {
            struct kvt_select_req next = sparse_req(o, layer + 1, q);
            (void)kvt_eng_prefetch_start(o->pf, o->ctx, &next, o->step);
        }
        size_t row = o->row_halfs * sizeof(uint16_t);
        uint8_t *region = o->fetch + (size_t)layer * o->max_chunks * o->C * row;
        size_t n_missing = 0;
        for (size_t i = 0; i < info.n_spans; i++) {
            const struct kvt_span_sel *r = &o->runs[i];
            size_t pos = (size_t)r->chunk * o->C + r->token_first;
            if (ns >= max)
                return -ENOSPC;
            const uint16_t *got =
                o->pf ? kvt_eng_prefetch_rows(o->pf, layer, pos, r->n_tokens, o->step) : NULL;
            if (got)
                kv->stats.prefetch_hit_bytes += (uint64_t)r->n_tokens * row;
            if (!got) {
                got = (const uint16_t *)(region + pos * row);
                o->run_items[n_missing++] = (struct kvt_item){.key = r->key,
                                                              .buf = region + pos * row,
                                                              .len = (size_t)r->n_tokens * row,
                                                              .n_tokens = r->n_tokens,
                                                              .variant = r->variant,
                                                              .layer = layer,
                                                              .token_first = r->token_first};
            }
            out[ns].rows = got;
            out[ns].pos = pos;
            out[ns].n_tokens = r->n_tokens;
            ns++;
        }
        rc = n_missing ? kvt_get_range_batch(o->client, o->ns.handle, o->run_items, n_missing) : 0;
        for (size_t i = 0; i < n_missing && !rc; i++) {
            const struct kvt_item *it = &o->run_items[i];
            if (it->status)
                rc = it->status;
            size_t tier = it->tier < KVT_ENG_KV_TIERS ? (size_t)it->tier : 0;
            kv->stats.fetch_bytes[tier] += it->len;
            kv->stats.fetch_chunks++;
        }
        kv->stats.fetch_ns += now_ns() - t0;
        if (rc)
            return rc;
        if (info.n_estimates && (rc = add_estimates(o, info.n_estimates, out, &ns, max)))
            return rc;
    }
    if (ns >= max)
        return -ENOSPC;
    out[ns].rows = tail_rows(o, layer, o->tail_start);
    out[ns].pos = o->tail_start;
    out[ns].n_tokens = o->tail_len;
    counts[0] = ns + 1;
    return 0;
}

static void off_destroy(struct kvt_eng_kv *kv)
{
    struct kv_offload *o = (struct kv_offload *)kv;
    kvt_eng_prefetch_destroy(o->pf); /* before the context it reads goes */
    if (o->client) {
        if (o->ctx)
            (void)kvt_context_close(o->client, o->ctx);
        kvt_arena_free(o->client, o->fetch);
        kvt_arena_free(o->client, o->stage);
        kvt_close(o->client);
    }
    free(o->keys);
    free(o->items);
    free(o->tail);
    free(o->starts);
    free(o->runs);
    free(o->run_items);
    free(o->est);
    free(o->est_means);
    free(o->est_rows);
    free(o->est_bias);
    free(o->est_spans);
    free(o);
}

static const struct kvt_eng_kv_ops sparse_ops = {
    .name = "sparse",
    .begin = off_begin,
    .prepare = off_prepare,
    .append = off_append,
    .spans = off_spans,
    .select = sparse_select,
    .commit = off_commit,
    .destroy = off_destroy,
};

static const struct kvt_eng_kv_ops offload_ops = {
    .name = "offload",
    .begin = off_begin,
    .prepare = off_prepare,
    .append = off_append,
    .spans = off_spans,
    .commit = off_commit,
    .destroy = off_destroy,
};

static int create(const struct kvt_eng_kv_geom *geom, const struct kvt_eng_offload_config *cfg,
                  const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out)
{
    int rc;
    if (!cfg->tokens_per_chunk || !cfg->model_id || !geom->batch_max)
        return -EINVAL;
    if (sel && !((sel->budget > 0 && sel->budget <= 1) || (sel->top_p > 0 && sel->top_p <= 1)))
        return -EINVAL;
    struct kv_offload *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->base.ops = sel ? &sparse_ops : &offload_ops;
    o->base.geom = *geom;
    o->C = cfg->tokens_per_chunk;
    o->row_halfs = kvt_eng_kv_row_halfs(geom);
    o->max_chunks = geom->ctx_max / o->C + 1;
    o->base.spans_max = o->max_chunks + 1;
    o->base.token_bytes = (size_t)geom->n_layer * o->row_halfs * sizeof(uint16_t);
    o->tail_cap = o->C + geom->batch_max;
    o->keys = calloc(o->max_chunks, sizeof(*o->keys));
    o->items = calloc(o->max_chunks, sizeof(*o->items));
    o->tail = calloc((size_t)geom->n_layer * o->tail_cap * o->row_halfs, sizeof(uint16_t));
    if (sel) {
        /* Runs of one layer's answer: at most one per two spans, spans of at least one token. */
        o->sel = *sel;
        o->max_runs = o->max_chunks * ((o->C + 1) / 2) + 1;
        o->base.spans_max = o->max_runs + 1;
        o->starts = calloc(o->max_chunks, sizeof(*o->starts));
        o->runs = calloc(o->max_runs, sizeof(*o->runs));
        o->run_items = calloc(o->max_runs, sizeof(*o->run_items));
        if (sel->estimates) {
            size_t ne = sel->estimates;
            o->base.spans_max += ne;
            o->est_means_cap = ne * o->row_halfs;
            o->est = calloc(ne, sizeof(*o->est));
            o->est_means = calloc(o->est_means_cap, sizeof(*o->est_means));
            o->est_rows = calloc(ne * o->row_halfs, sizeof(*o->est_rows));
            o->est_bias = calloc(ne * geom->n_head_kv, sizeof(*o->est_bias));
            o->est_spans = calloc(ne, sizeof(*o->est_spans));
            if (!o->est || !o->est_means || !o->est_rows || !o->est_bias || !o->est_spans) {
                rc = -ENOMEM;
                goto err_free;
            }
        }
    }
    if (!o->keys || !o->items || !o->tail || (sel && (!o->starts || !o->runs || !o->run_items))) {
        rc = -ENOMEM;
        goto err_free;
    }

    size_t bytes_per_token = (size_t)geom->n_layer * o->row_halfs * sizeof(uint16_t);
    struct kvt_connect_opts co = {
        .socket_path = cfg->socket_path,
        .tenant = cfg->tenant,
        .arena_bytes = (uint64_t)(o->max_chunks + 1) * o->C * bytes_per_token + OFFLOAD_ARENA_SLACK,
        .timeout_ms = cfg->timeout_ms,
    };
    rc = kvt_connect(&co, &o->client);
    if (rc)
        goto err_free;
    struct kvt_ns_spec spec = {
        .model_id = cfg->model_id,
        .layers = geom->n_layer,
        .kv_heads = geom->n_head_kv,
        .head_dim = geom->head_dim,
        .dtype = KVT_DTYPE_FP16,
        .tokens_per_chunk = cfg->tokens_per_chunk,
        .rope_theta = cfg->rope_theta,
        .rotary_dims = cfg->rotary_dims,
        .rope_style = cfg->rope_style,
        .allow_lossy = 0,
    };
    struct kvt_span_policy spans = {.kind = KVT_SPANS_DEFAULT,
                                    .fine_layers = KVT_SPANS_FINE_DEFAULT};
    if (sel && sel->spans != KVT_ENG_SPANS_DEFAULT)
        spans.kind = sel->spans == KVT_ENG_SPANS_FIXED ? KVT_SPANS_FIXED : KVT_SPANS_VARIABLE;
    rc = kvt_register_spans(o->client, &spec, sel ? &spans : NULL, &o->ns);
    if (rc)
        goto err_close;
    if (o->ns.bytes_per_token != bytes_per_token || o->ns.tokens_per_chunk != o->C) {
        rc = KVT_E_GEOMETRY;
        goto err_close;
    }
    o->chunk_bytes = (size_t)o->ns.chunk_bytes;
    o->fetch = kvt_arena_alloc(o->client, o->max_chunks * o->chunk_bytes);
    o->stage = kvt_arena_alloc(o->client, o->chunk_bytes);
    if (!o->fetch || !o->stage) {
        rc = KVT_E_NOMEM;
        goto err_close;
    }
    if (sel && sel->prefetch) {
        struct kvt_eng_prefetch_config pc = {
            .connect = &co,
            .spec = &spec,
            .spans = &spans,
            .n_layers = geom->n_layer,
            .max_tokens = o->max_chunks * o->C,
            .row_bytes = o->row_halfs * sizeof(uint16_t),
            .tokens_per_chunk = (uint32_t)o->C,
        };
        if ((rc = kvt_eng_prefetch_create(&pc, &o->pf)))
            goto err_close;
    }
    *out = &o->base;
    return 0;

err_close:
    kvt_arena_free(o->client, o->fetch);
    kvt_arena_free(o->client, o->stage);
    kvt_close(o->client);
    o->client = NULL;
err_free:
    free(o->keys);
    free(o->items);
    free(o->tail);
    free(o->starts);
    free(o->runs);
    free(o->run_items);
    free(o->est);
    free(o->est_means);
    free(o->est_rows);
    free(o->est_bias);
    free(o->est_spans);
    free(o);
    return rc;
}

int kvt_eng_kv_offload_create(const struct kvt_eng_kv_geom *geom,
                              const struct kvt_eng_offload_config *cfg, struct kvt_eng_kv **out)
{
    return create(geom, cfg, NULL, out);
}

int kvt_eng_kv_sparse_create(const struct kvt_eng_kv_geom *geom,
                             const struct kvt_eng_offload_config *cfg,
                             const struct kvt_eng_select_config *sel, struct kvt_eng_kv **out)
{
    return create(geom, cfg, sel, out);
}
