/*
 * Session: sequence history, stepping in batches, and the offload failure policy (see session.h).
 */
#include "engine/session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvtier/kvtier.h"

int kvt_eng_mode_parse(const char *s, enum kvt_eng_mode *out)
{
    if (s && strcmp(s, "resident") == 0) {
        *out = KVT_ENG_MODE_RESIDENT;
        return 0;
    }
    if (s && strcmp(s, "offload") == 0) {
        *out = KVT_ENG_MODE_OFFLOAD;
        return 0;
    }
    if (s && strcmp(s, "q8") == 0) {
        *out = KVT_ENG_MODE_Q8;
        return 0;
    }
    if (s && strcmp(s, "sparse") == 0) {
        *out = KVT_ENG_MODE_SPARSE;
        return 0;
    }
    if (s && strcmp(s, "quant") == 0) {
        *out = KVT_ENG_MODE_QUANT;
        return 0;
    }
    if (s && strcmp(s, "cluster") == 0) {
        *out = KVT_ENG_MODE_CLUSTER;
        return 0;
    }
    return -EINVAL;
}

const char *kvt_eng_mode_name(enum kvt_eng_mode m)
{
    switch (m) {
    case KVT_ENG_MODE_OFFLOAD:
        return "offload";
    case KVT_ENG_MODE_Q8:
        return "q8";
    case KVT_ENG_MODE_SPARSE:
        return "sparse";
    case KVT_ENG_MODE_QUANT:
        return "quant";
    case KVT_ENG_MODE_CLUSTER:
        return "cluster";
    case KVT_ENG_MODE_RESIDENT:
        break;
    }
    return "resident";
}

int kvt_eng_mode_selects(enum kvt_eng_mode m)
{
    return m == KVT_ENG_MODE_SPARSE || m == KVT_ENG_MODE_QUANT || m == KVT_ENG_MODE_CLUSTER;
}

static int select_config_ok(enum kvt_eng_mode mode, const struct kvt_eng_select_config *c)
{
    if (!kvt_eng_select_config_is_set(c))
        return mode != KVT_ENG_MODE_SPARSE; /* sparse needs a budget */
    if (!kvt_eng_mode_selects(mode))
        return 0;
    if (mode == KVT_ENG_MODE_SPARSE && (c->budget > 0.0) == (c->top_p > 0.0))
        return 0; /* exactly one of them */
    if ((mode == KVT_ENG_MODE_QUANT || mode == KVT_ENG_MODE_CLUSTER) &&
        (c->budget <= 0.0 || c->top_p != 0.0 || c->spans != KVT_ENG_SPANS_DEFAULT || c->prefetch ||
         c->estimates))
        return 0; /* lossy modes: a budget only (kv_lossy.h) */
    return c->budget >= 0.0 && c->budget <= 1.0 && c->top_p >= 0.0 && c->top_p <= 1.0 &&
           c->estimates <= KVT_ENG_ESTIMATES_MAX;
}

static int make_kv(struct kvt_eng_session *s, enum kvt_eng_mode mode, struct kvt_eng_kv **out)
{
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(s->model, s->cfg.ctx_max, s->cfg.batch_max);
    if (mode == KVT_ENG_MODE_RESIDENT)
        return kvt_eng_kv_resident_create(&g, out);
    if (mode == KVT_ENG_MODE_Q8)
        return kvt_eng_kv_q8_create(&g, out);
    if (mode == KVT_ENG_MODE_QUANT)
        return kvt_eng_kv_quant_create(&g, &s->cfg.lossy, &s->cfg.select, out);
    if (mode == KVT_ENG_MODE_CLUSTER)
        return kvt_eng_kv_cluster_create(&g, &s->cfg.lossy, &s->cfg.select, out);
    struct kvt_eng_offload_config oc = s->cfg.offload;
    if (!oc.model_id)
        oc.model_id = s->model->model_id;
    if (oc.rope_theta == 0.0f)
        oc.rope_theta = s->model->hp.rope_base;
    if (oc.rotary_dims == 0)
        oc.rotary_dims = s->model->hp.n_rot;
    oc.rope_style = 1; /* llama.cpp "normal" RoPE rotates adjacent pairs, like GPT-J */
    if (oc.tokens_per_chunk == 0)
        oc.tokens_per_chunk = 64;
    if (mode == KVT_ENG_MODE_SPARSE)
        return kvt_eng_kv_sparse_create(&g, &oc, &s->cfg.select, out);
    return kvt_eng_kv_offload_create(&g, &oc, out);
}

int kvt_eng_session_create(const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                           const struct kvt_eng_session_config *cfg, struct kvt_eng_session **out)
{
    int rc;
    if (cfg->ctx_max == 0 || cfg->batch_max == 0 || !select_config_ok(cfg->mode, &cfg->select))
        return -EINVAL;
    struct kvt_eng_session *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->model = m;
    s->cfg = *cfg;
    s->tokens = calloc(cfg->ctx_max, sizeof(*s->tokens));
    if (!s->tokens) {
        rc = -ENOMEM;
        goto err_free;
    }
    rc = kvt_eng_ctx_create(m, pool, cfg->batch_max, cfg->ctx_max, &s->ctx);
    if (rc)
        goto err_free;
    rc = make_kv(s, cfg->mode, &s->kv);
    if (rc)
        goto err_free;
    *out = s;
    return 0;

err_free:
    kvt_eng_session_destroy(s);
    return rc;
}

void kvt_eng_session_destroy(struct kvt_eng_session *s)
{
    if (!s)
        return;
    kvt_eng_kv_destroy(s->kv);
    kvt_eng_ctx_destroy(s->ctx);
    free(s->tokens);
    free(s);
}

static void add_stats(struct kvt_eng_kv_stats *a, const struct kvt_eng_kv_stats *b)
{
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        a->fetch_bytes[i] += b->fetch_bytes[i];
    a->fetch_chunks += b->fetch_chunks;
    a->store_bytes += b->store_bytes;
    a->store_chunks += b->store_chunks;
    a->reused_tokens += b->reused_tokens;
    a->fetch_ns += b->fetch_ns;
    a->store_ns += b->store_ns;
    a->prefetch_hit_bytes += b->prefetch_hit_bytes;
}

struct kvt_eng_kv_stats kvt_eng_session_kv_stats(const struct kvt_eng_session *s)
{
    struct kvt_eng_kv_stats st = s->offload_stats;
    add_stats(&st, &s->kv->stats);
    return st;
}

/* Recomputes the KV of the history [0, n_past) into a fresh resident cache. */
static int recompute_resident(struct kvt_eng_session *s)
{
    struct kvt_eng_kv *kv;
    size_t reused;
    int rc = make_kv(s, KVT_ENG_MODE_RESIDENT, &kv);
    if (rc)
        return rc;
    rc = kv->ops->begin(kv, s->tokens, s->n_past, 0, &reused);
    for (size_t p = 0; rc == 0 && p < s->n_past; p += s->cfg.batch_max) {
        size_t n = s->n_past - p < s->cfg.batch_max ? s->n_past - p : s->cfg.batch_max;
        rc = kvt_eng_forward(s->ctx, kv, s->tokens + p, n, p, NULL, 0);
        if (rc == 0)
            rc = kv->ops->commit(kv, s->tokens, p + n);
    }
    if (rc) {
        kvt_eng_kv_destroy(kv);
        return rc;
    }
    add_stats(&s->offload_stats, &s->kv->stats);
    kvt_eng_kv_destroy(s->kv);
    s->kv = kv;
    return 0;
}

/* Handles an error of the offload mode: 0 when the session recovered in resident mode (the caller
 * retries what failed), else the error to return. */
static int on_kv_error(struct kvt_eng_session *s, int err)
{
    if (strcmp(s->kv->ops->name, "offload") != 0)
        return err;
    if (s->cfg.log)
        fprintf(s->cfg.log, "kvtier-engine: kvtier offload failed at position %zu: %s (%s)%s\n",
                s->n_past, kvt_strerror(err), kvt_strerror_name(err),
                s->cfg.stop_on_error ? "; stopping" : "; continuing with resident KV");
    s->last_error = err;
    if (s->cfg.stop_on_error)
        return err;
    if (s->cfg.log)
        fprintf(s->cfg.log, "kvtier-engine: recomputing the KV of %zu tokens in resident mode\n",
                s->n_past);
    int rc = recompute_resident(s);
    if (rc)
        return rc;
    s->fell_back = 1;
    return 0;
}

/* One forward step over toks[0..n) at the end of the history, then commit. */
static int step(struct kvt_eng_session *s, const int32_t *toks, size_t n, float *logits, int all)
{
    if (s->n_past + n > s->cfg.ctx_max)
        return -ENOSPC;
    for (int attempt = 0;; attempt++) {
        int rc = kvt_eng_forward(s->ctx, s->kv, toks, n, s->n_past, logits, all);
        if (rc) {
            if (attempt > 0 || (rc = on_kv_error(s, rc)) != 0)
                return rc;
            continue; /* retry the step on the resident cache */
        }
        memmove(s->tokens + s->n_past, toks, n * sizeof(*toks));
        s->n_past += n;
        rc = s->kv->ops->commit(s->kv, s->tokens, s->n_past);
        if (rc)
            return on_kv_error(s, rc); /* logits are valid; the KV is rebuilt if we go on */
        return 0;
    }
}

int kvt_eng_session_start(struct kvt_eng_session *s, const int32_t *tokens, size_t n,
                          int allow_reuse, float *last_logits, kvt_eng_logits_fn all_fn, void *arg)
{
    size_t V = s->model->hp.n_vocab;
    int rc;
    if (n == 0 || n > s->cfg.ctx_max)
        return -EINVAL;
    s->n_past = 0;
    s->reused = 0;
    rc = s->kv->ops->begin(s->kv, tokens, n, allow_reuse, &s->reused);
    if (rc) {
        s->reused = 0;
        if ((rc = on_kv_error(s, rc)) != 0)
            return rc;
        if ((rc = s->kv->ops->begin(s->kv, tokens, n, 0, &s->reused)) != 0)
            return rc;
    }
    memcpy(s->tokens, tokens, s->reused * sizeof(*tokens));
    s->n_past = s->reused;

    float *buf = NULL;
    if (all_fn) {
        buf = malloc(s->cfg.batch_max * V * sizeof(float));
        if (!buf)
            return -ENOMEM;
    }
    for (size_t p = s->reused; p < n; p += s->cfg.batch_max) {
        size_t nb = n - p < s->cfg.batch_max ? n - p : s->cfg.batch_max;
        int last = p + nb == n;
        float *out = all_fn ? buf : (last ? last_logits : NULL);
        rc = step(s, tokens + p, nb, out, all_fn != NULL);
        if (rc)
            break;
        if (all_fn)
            all_fn(arg, p, nb, buf);
        if (last && all_fn && last_logits)
            memcpy(last_logits, buf + (nb - 1) * V, V * sizeof(float));
    }
    free(buf);
    return rc;
}

int kvt_eng_session_next(struct kvt_eng_session *s, int32_t token, float *logits)
{
    return step(s, &token, 1, logits, 0);
}
