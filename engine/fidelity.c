/*
 * Logit fidelity and the decode evaluation (see fidelity.h).
 */
#include "engine/fidelity.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/sampler.h"
#include "kvtier/kvtier.h"

const struct kvt_eng_fid_bucket kvt_eng_fid_buckets[KVT_ENG_FID_BUCKETS] = {
    {"0-1K", 0, 1024},    {"1-2K", 1024, 2048},    {"2-4K", 2048, 4096},
    {"4-8K", 4096, 8192}, {"8K-", 8192, SIZE_MAX},
};

double kvt_eng_logsumexp(const float *l, size_t n)
{
    double mx = -INFINITY, sum = 0.0;
    for (size_t i = 0; i < n; i++)
        mx = (double)l[i] > mx ? (double)l[i] : mx;
    for (size_t i = 0; i < n; i++)
        sum += exp((double)l[i] - mx);
    return mx + log(sum);
}

void kvt_eng_fid_compare(const float *ref, const float *cur, size_t V, int32_t next,
                         struct kvt_eng_fid_pos *out)
{
    double lse_ref = kvt_eng_logsumexp(ref, V), lse_cur = kvt_eng_logsumexp(cur, V);
    double kl = 0.0;
    for (size_t i = 0; i < V; i++) {
        double lp = (double)ref[i] - lse_ref, lq = (double)cur[i] - lse_cur;
        kl += exp(lp) * (lp - lq);
    }
    out->kl = kl;
    out->agree = kvt_eng_argmax(ref, V) == kvt_eng_argmax(cur, V);
    out->nll_ref = next >= 0 ? lse_ref - (double)ref[next] : 0.0;
    out->nll = next >= 0 ? lse_cur - (double)cur[next] : 0.0;
}

int kvt_eng_fid_init(struct kvt_eng_fid *f, size_t cap)
{
    memset(f, 0, sizeof(*f));
    f->pos = calloc(cap ? cap : 1, sizeof(*f->pos));
    f->r = calloc(cap ? cap : 1, sizeof(*f->r));
    if (!f->pos || !f->r) {
        kvt_eng_fid_deinit(f);
        return -ENOMEM;
    }
    f->cap = cap;
    return 0;
}

void kvt_eng_fid_deinit(struct kvt_eng_fid *f)
{
    free(f->pos);
    free(f->r);
    memset(f, 0, sizeof(*f));
}

int kvt_eng_fid_add(struct kvt_eng_fid *f, size_t pos, const struct kvt_eng_fid_pos *r)
{
    if (f->n >= f->cap)
        return -ENOSPC;
    f->pos[f->n] = pos;
    f->r[f->n] = *r;
    f->n++;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int kvt_eng_fid_summarize(const struct kvt_eng_fid *f, size_t lo, size_t hi,
                          struct kvt_eng_fid_summary *out)
{
    memset(out, 0, sizeof(*out));
    double *kl = malloc((f->n ? f->n : 1) * sizeof(double));
    if (!kl)
        return -ENOMEM;
    double kl_sum = 0.0, nll = 0.0, nll_ref = 0.0;
    size_t n = 0, agree = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (f->pos[i] < lo || f->pos[i] >= hi)
            continue;
        const struct kvt_eng_fid_pos *r = &f->r[i];
        kl[n++] = r->kl;
        kl_sum += r->kl;
        nll += r->nll;
        nll_ref += r->nll_ref;
        agree += r->agree != 0;
    }
    if (n) {
        qsort(kl, n, sizeof(double), cmp_double);
        size_t rank = (size_t)ceil(0.99 * (double)n); /* 1-based */
        out->n = n;
        out->kl_mean = kl_sum / (double)n;
        out->kl_p99 = kl[rank - 1];
        out->kl_max = kl[n - 1];
        out->top1 = (double)agree / (double)n;
        out->ppl = exp(nll / (double)n);
        out->ppl_ref = exp(nll_ref / (double)n);
    }
    free(kl);
    return 0;
}

/* ---- decode evaluation ------------------------------------------------------------------------
 */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void stats_sub(struct kvt_eng_kv_stats *a, const struct kvt_eng_kv_stats *b)
{
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        a->fetch_bytes[i] -= b->fetch_bytes[i];
    a->fetch_chunks -= b->fetch_chunks;
    a->store_bytes -= b->store_bytes;
    a->store_chunks -= b->store_chunks;
    a->reused_tokens -= b->reused_tokens;
    a->fetch_ns -= b->fetch_ns;
    a->store_ns -= b->store_ns;
    a->prefetch_hit_bytes -= b->prefetch_hit_bytes;
}

static int side_fail(const struct kvt_eng_session_config *cfg, const char *what, size_t pos, int rc)
{
    if (cfg->log)
        fprintf(cfg->log, "kvtier-engine: decode eval: %s failed at position %zu: %s\n", what, pos,
                kvt_strerror(rc));
    return rc;
}

int kvt_eng_decode_eval_run(const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                            const struct kvt_eng_session_config *ref_cfg,
                            const struct kvt_eng_session_config *cur_cfg, const int32_t *tokens,
                            size_t n, size_t decode_from, struct kvt_eng_decode_eval *out)
{
    size_t V = m->hp.n_vocab;
    struct kvt_eng_session *ses[2] = {NULL, NULL};
    const struct kvt_eng_session_config *cfg[2] = {ref_cfg, cur_cfg};
    struct kvt_eng_decode_side *side[2] = {&out->ref, &out->cur};
    static const char *const who[2] = {"the resident reference", "the method"};
    struct kvt_eng_kv_stats base[2];
    float *logits[2] = {NULL, NULL};
    int rc;

    memset(out, 0, sizeof(*out));
    out->decode_from = decode_from;
    if (decode_from < 1 || n < 2 || decode_from > n - 2)
        return -EINVAL;
    if ((rc = kvt_eng_fid_init(&out->fid, n - 1 - decode_from)))
        return rc;
    for (int i = 0; i < 2; i++) {
        logits[i] = malloc(V * sizeof(float));
        if (!logits[i]) {
            rc = -ENOMEM;
            goto out;
        }
        if ((rc = kvt_eng_session_create(m, pool, cfg[i], &ses[i]))) {
            side_fail(cur_cfg, who[i], 0, rc);
            goto out;
        }
        side[i]->token_bytes = ses[i]->kv->token_bytes;
    }
    for (int i = 0; i < 2; i++) {
        double t0 = now_s();
        rc = kvt_eng_session_start(ses[i], tokens, decode_from, 0, NULL, NULL, NULL);
        side[i]->prefill_s = now_s() - t0;
        if (rc) {
            side_fail(cur_cfg, who[i], 0, rc);
            goto out;
        }
        base[i] = kvt_eng_session_kv_stats(ses[i]);
    }
    for (size_t p = decode_from; p + 1 < n; p++) {
        for (int i = 0; i < 2; i++) {
            double t0 = now_s();
            rc = kvt_eng_session_next(ses[i], tokens[p], logits[i]);
            side[i]->decode_s += now_s() - t0;
            if (rc) {
                side_fail(cur_cfg, who[i], p, rc);
                goto out;
            }
        }
        struct kvt_eng_fid_pos r;
        kvt_eng_fid_compare(logits[0], logits[1], V, tokens[p + 1], &r);
        if ((rc = kvt_eng_fid_add(&out->fid, p, &r)))
            goto out;
        out->steps++;
    }
    for (int i = 0; i < 2; i++) {
        side[i]->kv_decode = kvt_eng_session_kv_stats(ses[i]);
        stats_sub(&side[i]->kv_decode, &base[i]);
        side[i]->fell_back = ses[i]->fell_back;
        side[i]->positions = ses[i]->n_past;
        side[i]->bytes_kept = ses[i]->kv->bytes_kept
                                  ? ses[i]->kv->bytes_kept
                                  : (uint64_t)ses[i]->kv->token_bytes * ses[i]->n_past;
    }
out:
    for (int i = 0; i < 2; i++) {
        kvt_eng_session_destroy(ses[i]);
        free(logits[i]);
    }
    return rc;
}
