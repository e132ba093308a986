/*
 * Retrieval-augmented prefill with chunk-cache reuse (see rag.h).
 */
#include "engine/rag.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RAG_PASSAGES_MAX 256

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

struct kvt_ns_spec kvt_eng_rag_ns_spec(const struct kvt_eng_model *m, const char *model_id,
                                       uint32_t tokens_per_chunk)
{
    struct kvt_ns_spec sp = {
        .model_id = model_id,
        .layers = m->hp.n_layer,
        .kv_heads = m->hp.n_head_kv,
        .head_dim = m->hp.head_dim,
        .dtype = KVT_DTYPE_FP16,
        .tokens_per_chunk = tokens_per_chunk,
        .rope_theta = m->hp.rope_base,
        .rotary_dims = m->hp.n_rot,
        .rope_style = 1, /* adjacent pairs, like the forward pass's rope_apply */
    };
    return sp;
}

void kvt_eng_rag_version_stats(const float *mass, uint32_t n_layer, size_t n_tok, size_t n_prefix,
                               float *layer_mass, float *token_mass)
{
    size_t n_seg = n_prefix + 2, cols = n_prefix + 1;
    for (size_t t = 0; t < n_tok; t++)
        token_mass[t] = 0.0f;
    for (uint32_t l = 0; l < n_layer; l++) {
        float *row = layer_mass + (size_t)l * cols;
        double acc[RAG_PASSAGES_MAX + 1] = {0};
        for (size_t t = 0; t < n_tok; t++) {
            const float *s = mass + ((size_t)l * n_tok + t) * n_seg;
            double before = 0.0, all = 0.0;
            for (size_t g = 0; g < n_seg; g++) {
                double v = s[g] < 0.0f ? 0.0 : s[g];
                all += v;
                if (g < n_seg - 1)
                    before += v;
            }
            double scale = all > 1.0 ? 1.0 / all : 1.0;
            for (size_t j = 0; j < cols; j++)
                acc[j] += (s[j + 1] < 0.0f ? 0.0 : s[j + 1]) * scale;
            token_mass[t] += (float)(before * scale);
        }
        double sum = 0.0;
        for (size_t j = 0; j < cols; j++) {
            double v = n_tok ? acc[j] / (double)n_tok : 0.0;
            row[j] = (float)(v > 1.0 ? 1.0 : v);
            sum += row[j];
        }
        /* float rounding of the averages may still land a hair above 1 */
        if (sum > 1.0)
            for (size_t j = 0; j < cols; j++)
                row[j] = (float)(row[j] / sum * (1.0 - 1e-6));
    }
    for (size_t t = 0; t < n_tok; t++) {
        float v = n_layer ? token_mass[t] / (float)n_layer : 0.0f;
        token_mass[t] = v > 1.0f ? 1.0f : v;
    }
}

/* Rows of positions [start, start + n) of every layer from a canonical chunk into the cache. */
static int load_rows(struct kvt_eng_kv *kv, size_t start, size_t n, const uint16_t *chunk)
{
    size_t rh = kvt_eng_kv_row_halfs(&kv->geom);
    for (uint32_t l = 0; l < kv->geom.n_layer; l++) {
        int rc = kv->ops->append(kv, l, start, n, chunk + (size_t)l * n * rh);
        if (rc)
            return rc;
    }
    return 0;
}

/* The cache's rows of [start, start + n) as a canonical chunk. */
static int gather_rows(struct kvt_eng_kv *kv, size_t start, size_t n, uint16_t *chunk)
{
    size_t rh = kvt_eng_kv_row_halfs(&kv->geom);
    struct kvt_eng_kv_span sp;
    for (uint32_t l = 0; l < kv->geom.n_layer; l++) {
        int rc = kv->ops->spans(kv, l, start + n, &sp, 1);
        if (rc != 1 || sp.pos != 0 || sp.n_tokens < start + n)
            return rc < 0 ? rc : -EINVAL;
        memcpy(chunk + (size_t)l * n * rh, sp.rows + start * rh, n * rh * sizeof(uint16_t));
    }
    return 0;
}

/* Computes tokens[0..n) at [pos, pos + n) in steps of batch_max. With mass (the passage's
 * [layer][token][n_seg] statistics), bounds gives the segments. logits: the last token's. */
static int compute(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv, const int32_t *tokens, size_t n,
                   size_t pos, float *logits, const size_t *bounds, size_t n_seg, float *mass)
{
    size_t bm = kv->geom.batch_max, L = kv->geom.n_layer;
    float *tmp = NULL;
    int rc = 0;
    if (mass && !(tmp = malloc(L * (bm < n ? bm : n) * n_seg * sizeof(float))))
        return -ENOMEM;
    for (size_t p = 0; rc == 0 && p < n; p += bm) {
        size_t nb = n - p < bm ? n - p : bm;
        float *out = p + nb == n ? logits : NULL;
        if (!mass) {
            rc = kvt_eng_forward(ctx, kv, tokens + p, nb, pos + p, out, 0);
            continue;
        }
        struct kvt_eng_attn_stats st = {.n_seg = n_seg, .bounds = bounds, .mass = tmp};
        rc = kvt_eng_forward_stats(ctx, kv, tokens + p, nb, pos + p, out, 0, &st);
        for (size_t l = 0; rc == 0 && l < L; l++)
            memcpy(mass + (l * n + p) * n_seg, tmp + l * nb * n_seg, nb * n_seg * sizeof(float));
    }
    free(tmp);
    return rc;
}

/* Tokens waiting for one selective step, in ascending position order. */
struct pending {
    int32_t *tok;
    size_t *pos;
    size_t n;
};

static int flush(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv, struct pending *pd, float *logits)
{
    size_t bm = kv->geom.batch_max;
    for (size_t i = 0; i < pd->n; i += bm) {
        size_t nb = pd->n - i < bm ? pd->n - i : bm;
        int rc = kvt_eng_forward_at(ctx, kv, pd->tok + i, pd->pos + i, nb,
                                    i + nb == pd->n ? logits : NULL, 0);
        if (rc)
            return rc;
    }
    pd->n = 0;
    return 0;
}

static void add_pending(struct pending *pd, int32_t tok, size_t pos)
{
    pd->tok[pd->n] = tok;
    pd->pos[pd->n] = pos;
    pd->n++;
}

/* A passage computed in full, to be stored once the logits are out. */
struct store {
    size_t idx;
    uint32_t variant;
    float *layer_mass;
    float *token_mass;
};

static int prefill_prefix(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv,
                          const struct kvt_eng_rag_config *cfg, const int32_t *all, size_t n,
                          float *logits, struct kvt_eng_rag_result *res)
{
    size_t C = cfg->ns->tokens_per_chunk, n_full = n / C, hits = 0;
    size_t rowb = (size_t)cfg->ns->bytes_per_token;
    struct kvt_key *keys = calloc(n_full + 1, sizeof(*keys));
    int rc = 0;
    if (!keys)
        return -ENOMEM;
    if (C * rowb > cfg->buf_bytes) {
        free(keys);
        return -EINVAL;
    }
    double t0 = now_ms();
    kvt_chunk_keys(cfg->ns, NULL, all, n, keys, n_full);
    if (n_full)
        kvt_lookup(cfg->client, cfg->ns->handle, keys, n_full, &hits, NULL);
    size_t use = hits < (n - 1) / C ? hits : (n - 1) / C; /* the last token is computed */
    for (size_t c = 0; rc == 0 && c < use; c++) {
        size_t len = 0;
        rc = kvt_get(cfg->client, cfg->ns->handle, &keys[c], cfg->buf, cfg->buf_bytes, &len, NULL);
        if (rc == 0 && len != C * rowb)
            rc = -EPROTO;
        if (rc == KVT_E_NOTFOUND) { /* evicted since the lookup: compute from here */
            use = c;
            rc = 0;
            break;
        }
        if (rc == 0)
            rc = load_rows(kv, c * C, C, cfg->buf);
    }
    size_t from = use * C;
    if (rc == 0)
        rc = compute(ctx, kv, all + from, n - from, from, logits, NULL, 0, NULL);
    res->prefill_ms = now_ms() - t0;
    res->reused = from;
    res->computed = n - from;
    t0 = now_ms();
    for (size_t c = use; rc == 0 && c < n_full; c++) {
        rc = gather_rows(kv, c * C, C, cfg->buf);
        if (rc == 0)
            rc = kvt_put(cfg->client, cfg->ns->handle, &keys[c], cfg->buf, C * rowb, (uint32_t)C);
    }
    res->store_ms = now_ms() - t0;
    free(keys);
    return rc;
}

static int fetch_passage(const struct kvt_eng_rag_config *cfg, const struct kvt_key *key,
                         const struct kvt_reuse_plan *pl, size_t start, size_t len)
{
    size_t got = 0, want = len * (size_t)cfg->ns->bytes_per_token;
    int rc;
    if (want > cfg->buf_bytes)
        return -EINVAL;
    if (pl->old_start == start)
        rc = kvt_get_v(cfg->client, cfg->ns->handle, key, pl->variant, cfg->buf, cfg->buf_bytes,
                       &got, NULL);
    else
        rc = kvt_get_rotated(cfg->client, cfg->ns->handle, key, pl->variant, start, cfg->buf,
                             cfg->buf_bytes, &got, NULL);
    if (rc == 0 && got != want)
        rc = -EPROTO;
    return rc;
}

/* The head starts every request at position 0 with nothing before it, so its KV depends on its
 * tokens alone: the reuse policies cache it as a passage with no prefix, at start 0 (what prefix
 * caching does for a shared system line). Looks it up and, when a version computed at 0 is
 * there, reads it into the cache: *found 1. Otherwise *found 0 and *variant is where to store it
 * (UINT32_MAX: nowhere). */
static int head_fetch(struct kvt_eng_kv *kv, const struct kvt_eng_rag_config *cfg,
                      const struct kvt_eng_rag_prompt *p, struct kvt_key *key, int *found,
                      uint32_t *variant)
{
    *found = 0;
    *variant = UINT32_MAX;
    if (p->n_head > cfg->ns->tokens_per_chunk ||
        p->n_head * (size_t)cfg->ns->bytes_per_token > cfg->buf_bytes)
        return 0; /* computed, never cached */
    int rc = kvt_passage_key(cfg->ns, p->head, p->n_head, key);
    uint64_t start = 0;
    struct kvt_reuse_plan pl = {0};
    if (rc == 0)
        rc = kvt_chunk_lookup(cfg->client, cfg->ns->handle, key, &start, 1, cfg->alpha, &pl);
    if (rc)
        return rc;
    *variant = pl.next_variant;
    /* Only the exact copy: computed at 0 (so cfo 0), never a passage of the same tokens moved. */
    if (!pl.found || pl.n_tokens != p->n_head || pl.old_start != 0 || pl.cfo != 0.0f)
        return 0;
    size_t got = 0;
    rc = kvt_get_v(cfg->client, cfg->ns->handle, key, pl.variant, cfg->buf, cfg->buf_bytes, &got,
                   NULL);
    if (rc == KVT_E_NOTFOUND) /* evicted since the lookup: computed, stored again */
        return 0;
    if (rc == 0 && got != p->n_head * (size_t)cfg->ns->bytes_per_token)
        rc = -EPROTO;
    if (rc == 0)
        rc = load_rows(kv, 0, p->n_head, cfg->buf);
    *found = rc == 0;
    return rc;
}

/* Stores a head just computed as variant `variant` of its key, a version at start 0 with no
 * prefix: all its attention within itself, none before it. */
static int head_store(struct kvt_eng_kv *kv, const struct kvt_eng_rag_config *cfg,
                      const struct kvt_eng_rag_prompt *p, const struct kvt_key *key,
                      uint32_t variant)
{
    uint32_t L = kv->geom.n_layer;
    float *layer_mass = malloc(L * sizeof(float));
    float *token_mass = calloc(p->n_head, sizeof(float));
    int rc = layer_mass && token_mass ? 0 : -ENOMEM;
    for (uint32_t l = 0; rc == 0 && l < L; l++)
        layer_mass[l] = 1.0f;
    if (rc == 0)
        rc = gather_rows(kv, 0, p->n_head, cfg->buf);
    if (rc == 0)
        rc = kvt_put_v(cfg->client, cfg->ns->handle, key, variant, cfg->buf,
                       p->n_head * (size_t)cfg->ns->bytes_per_token, (uint32_t)p->n_head);
    struct kvt_version_info vi = {.start_pos = 0,
                                  .prefix = NULL,
                                  .n_prefix = 0,
                                  .layers = L,
                                  .n_tokens = (uint32_t)p->n_head,
                                  .layer_mass = layer_mass,
                                  .token_mass = token_mass};
    if (rc == 0)
        rc = kvt_version_set(cfg->client, cfg->ns->handle, key, variant, &vi);
    free(layer_mass);
    free(token_mass);
    return rc;
}

static int prefill_reuse(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv,
                         const struct kvt_eng_model *m, const struct kvt_eng_rag_config *cfg,
                         const struct kvt_eng_rag_prompt *p, float *logits,
                         struct kvt_eng_rag_result *res)
{
    size_t k = p->n_passages, L = m->hp.n_layer, total_len = 0, max_len = 0;
    for (size_t i = 0; i < k; i++) {
        total_len += p->passage_len[i];
        max_len = p->passage_len[i] > max_len ? p->passage_len[i] : max_len;
    }
    /* + 1: a request without passages still allocates (calloc(0) may be NULL) */
    struct kvt_key *keys = calloc(k + 1, sizeof(*keys));
    uint64_t *starts = calloc(k + 1, sizeof(*starts));
    size_t *bounds = calloc(k + 2, sizeof(*bounds));
    struct kvt_reuse_plan *plans = calloc(k + 1, sizeof(*plans));
    uint32_t *rec = calloc(total_len + 1, sizeof(*rec));
    struct store *stores = calloc(k + 1, sizeof(*stores));
    struct pending pd = {.tok = calloc(total_len + p->n_tail, sizeof(int32_t)),
                         .pos = calloc(total_len + p->n_tail, sizeof(size_t))};
    float *mass = malloc((L * max_len * (k + 2) + 1) * sizeof(float));
    size_t n_stores = 0;
    int rc = 0;
    if (!keys || !starts || !bounds || !plans || !rec || !stores || !pd.tok || !pd.pos || !mass) {
        rc = -ENOMEM;
        goto out;
    }
    uint32_t st_tokens = cfg->static_tokens ? cfg->static_tokens : KVT_ENG_RAG_STATIC_TOKENS;
    float nv_cfo = cfg->new_version_cfo > 0.0f ? cfg->new_version_cfo : KVT_ENG_RAG_NEW_VERSION_CFO;
    size_t pos = p->n_head;
    for (size_t i = 0, off = 0; i < k; i++) {
        rc = kvt_passage_key(cfg->ns, p->passages[i], p->passage_len[i], &keys[i]);
        if (rc)
            goto out;
        starts[i] = pos;
        plans[i].recompute = rec + off;
        plans[i].recompute_cap = (uint32_t)p->passage_len[i];
        pos += p->passage_len[i];
        off += p->passage_len[i];
    }

    double t0 = now_ms();
    if (k)
        rc = kvt_chunk_lookup_budget(cfg->client, cfg->ns->handle, keys, starts, k, cfg->alpha,
                                     cfg->recompute_budget, plans);
    if (rc)
        goto out;
    struct kvt_key head_key;
    int head_found = 0;
    uint32_t head_variant = UINT32_MAX;
    if (rc == 0 && p->n_head)
        rc = head_fetch(kv, cfg, p, &head_key, &head_found, &head_variant);
    if (rc == 0 && p->n_head && !head_found)
        rc = compute(ctx, kv, p->head, p->n_head, 0, NULL, NULL, 0, NULL);
    if (head_found)
        res->head_reused = res->reused = p->n_head;
    else
        res->computed += p->n_head;
    bounds[0] = 0;
    bounds[1] = p->n_head;
    for (size_t i = 0; rc == 0 && i < k; i++) {
        const struct kvt_reuse_plan *pl = &plans[i];
        size_t len = p->passage_len[i], start = (size_t)starts[i];
        bounds[i + 2] = start + len;
        int found = pl->found && pl->n_tokens == len;
        int fresh = !found || (cfg->policy == KVT_ENG_RAG_PLAN && pl->cfo >= nv_cfo &&
                               pl->next_variant != UINT32_MAX);
        if (!fresh) {
            rc = fetch_passage(cfg, &keys[i], pl, start, len);
            if (rc == KVT_E_NOTFOUND) { /* evicted since the plan: compute it */
                fresh = 1;
                found = 0;
                rc = 0;
            } else if (rc == 0) {
                rc = load_rows(kv, start, len, cfg->buf);
            }
        }
        if (rc)
            break;
        if (!fresh) {
            size_t nr = 0;
            const uint32_t *idx = NULL;
            if (cfg->policy == KVT_ENG_RAG_STATIC) {
                nr = st_tokens < len ? st_tokens : len;
            } else if (cfg->policy == KVT_ENG_RAG_PLAN) {
                nr = pl->n_recompute < pl->recompute_cap ? pl->n_recompute : pl->recompute_cap;
                idx = pl->recompute;
            }
            for (size_t r = 0; r < nr; r++) {
                size_t t = idx ? idx[r] : r;
                if (t >= len || (r && idx && idx[r] <= idx[r - 1])) {
                    rc = -EPROTO; /* the plan breaks its contract */
                    break;
                }
                add_pending(&pd, p->passages[i][t], start + t);
            }
            res->passages_found++;
            res->reused += len;
            res->recomputed += nr;
            res->computed += nr;
            continue;
        }
        /* Computed in full, after final rows of everything before it. */
        rc = flush(ctx, kv, &pd, NULL);
        if (rc == 0)
            rc = compute(ctx, kv, p->passages[i], len, start, NULL, bounds, i + 2, mass);
        if (rc)
            break;
        res->passages_computed++;
        res->computed += len;
        uint32_t variant = pl->next_variant; /* the first variant no version of it uses */
        if (variant == UINT32_MAX)
            continue;
        struct store *s = &stores[n_stores];
        s->idx = i;
        s->variant = variant;
        s->layer_mass = malloc(L * (i + 1) * sizeof(float));
        s->token_mass = malloc(len * sizeof(float));
        if (!s->layer_mass || !s->token_mass) {
            free(s->layer_mass);
            free(s->token_mass);
            rc = -ENOMEM;
            break;
        }
        kvt_eng_rag_version_stats(mass, (uint32_t)L, len, i, s->layer_mass, s->token_mass);
        n_stores++;
    }
    for (size_t t = 0; rc == 0 && t < p->n_tail; t++)
        add_pending(&pd, p->tail[t], pos + t);
    res->computed += p->n_tail;
    if (rc == 0)
        rc = flush(ctx, kv, &pd, logits);
    res->prefill_ms = now_ms() - t0;

    t0 = now_ms();
    if (rc == 0 && p->n_head && !head_found && head_variant != UINT32_MAX)
        rc = head_store(kv, cfg, p, &head_key, head_variant);
    for (size_t s = 0; rc == 0 && s < n_stores; s++) {
        const struct store *st = &stores[s];
        size_t len = p->passage_len[st->idx];
        size_t bytes = len * (size_t)cfg->ns->bytes_per_token;
        rc = gather_rows(kv, (size_t)starts[st->idx], len, cfg->buf);
        if (rc == 0)
            rc = kvt_put_v(cfg->client, cfg->ns->handle, &keys[st->idx], st->variant, cfg->buf,
                           bytes, (uint32_t)len);
        struct kvt_version_info vi = {
            .start_pos = starts[st->idx],
            .prefix = keys,
            .n_prefix = (uint32_t)st->idx,
            .layers = (uint32_t)L,
            .n_tokens = (uint32_t)len,
            .layer_mass = st->layer_mass,
            .token_mass = st->token_mass,
        };
        if (rc == 0)
            rc = kvt_version_set(cfg->client, cfg->ns->handle, &keys[st->idx], st->variant, &vi);
        if (rc == 0)
            res->versions_stored++;
    }
    res->store_ms = now_ms() - t0;

out:
    for (size_t s = 0; stores && s < n_stores; s++) {
        free(stores[s].layer_mass);
        free(stores[s].token_mass);
    }
    free(keys);
    free(starts);
    free(bounds);
    free(plans);
    free(rec);
    free(stores);
    free(pd.tok);
    free(pd.pos);
    free(mass);
    return rc;
}

int kvt_eng_rag_prefill(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv,
                        const struct kvt_eng_model *m, const struct kvt_eng_rag_config *cfg,
                        const struct kvt_eng_rag_prompt *p, float *logits,
                        struct kvt_eng_rag_result *res)
{
    size_t n = p->n_head + p->n_tail, reused = 0;
    int rc;
    memset(res, 0, sizeof(*res));
    if (p->n_tail == 0 || p->n_passages > RAG_PASSAGES_MAX || !logits ||
        (cfg->policy != KVT_ENG_RAG_FULL && (!cfg->client || !cfg->ns || !cfg->buf)))
        return -EINVAL;
    for (size_t i = 0; i < p->n_passages; i++) {
        if (p->passage_len[i] == 0 ||
            (cfg->policy >= KVT_ENG_RAG_NAIVE && p->passage_len[i] > cfg->ns->tokens_per_chunk))
            return -EINVAL;
        n += p->passage_len[i];
    }
    if (n > kv->geom.ctx_max)
        return -ENOSPC;
    res->n_tokens = n;
    rc = kv->ops->begin(kv, NULL, n, 0, &reused);
    if (rc)
        return rc;
    if (cfg->policy >= KVT_ENG_RAG_NAIVE)
        return prefill_reuse(ctx, kv, m, cfg, p, logits, res);

    int32_t *all = malloc(n * sizeof(*all));
    if (!all)
        return -ENOMEM;
    size_t o = 0;
    memcpy(all, p->head, p->n_head * sizeof(*all));
    o += p->n_head;
    for (size_t i = 0; i < p->n_passages; i++) {
        memcpy(all + o, p->passages[i], p->passage_len[i] * sizeof(*all));
        o += p->passage_len[i];
    }
    memcpy(all + o, p->tail, p->n_tail * sizeof(*all));
    if (cfg->policy == KVT_ENG_RAG_PREFIX) {
        rc = prefill_prefix(ctx, kv, cfg, all, n, logits, res);
    } else {
        double t0 = now_ms();
        rc = compute(ctx, kv, all, n, 0, logits, NULL, 0, NULL);
        res->prefill_ms = now_ms() - t0;
        res->computed = n;
    }
    free(all);
    return rc;
}
