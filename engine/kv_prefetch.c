/*
 * Layer-ahead prefetch for the sparse mode. See kv_prefetch.h.
 */
#include "engine/kv_prefetch.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PF_TIERS 8

struct kvt_eng_prefetch {
    struct kvt_client *client;
    struct kvt_ns_info ns;
    uint32_t n_layers;
    size_t max_tokens, row_bytes, C;
    uint8_t *region;  /* arena: [layer][position][row] */
    uint64_t *gen_of; /* [layer][position]: the step whose prefetch read the row, 0: none */
    struct kvt_span_sel *runs;
    size_t max_runs;
    struct kvt_item *items;
    float *query;
    size_t query_cap;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started; /* the thread exists */
    int stop;
    int pending; /* a job is posted or running */
    uint64_t ctx, gen;
    struct kvt_select_req req;
    int result;
    uint64_t bytes[PF_TIERS];
};

/* One job: Select, then the rows of every run by position (runs of other chunks never overlap). */
static int run_job(struct kvt_eng_prefetch *p)
{
    struct kvt_select_info info;
    int rc = kvt_select(p->client, p->ctx, &p->req, p->runs, p->max_runs, &info);
    if (rc)
        return rc;
    uint32_t l = p->req.layer;
    uint8_t *base = p->region + (size_t)l * p->max_tokens * p->row_bytes;
    for (size_t i = 0; i < info.n_spans; i++) {
        const struct kvt_span_sel *r = &p->runs[i];
        size_t pos = (size_t)r->chunk * p->C + r->token_first;
        p->items[i] = (struct kvt_item){.key = r->key,
                                        .buf = base + pos * p->row_bytes,
                                        .len = (size_t)r->n_tokens * p->row_bytes,
                                        .n_tokens = r->n_tokens,
                                        .variant = r->variant,
                                        .layer = l,
                                        .token_first = r->token_first};
    }
    rc = kvt_get_range_batch(p->client, p->ns.handle, p->items, info.n_spans);
    for (size_t i = 0; i < info.n_spans; i++) {
        if (p->items[i].status)
            continue;
        const struct kvt_span_sel *r = &p->runs[i];
        size_t pos = (size_t)r->chunk * p->C + r->token_first;
        uint64_t *g = p->gen_of + (size_t)l * p->max_tokens + pos;
        for (uint32_t t = 0; t < r->n_tokens; t++)
            g[t] = p->gen;
        size_t tier = p->items[i].tier < PF_TIERS ? (size_t)p->items[i].tier : 0;
        p->bytes[tier] += p->items[i].len;
    }
    return rc;
}

static void *thread_main(void *arg)
{
    struct kvt_eng_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->pending)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        pthread_mutex_unlock(&p->mu);
        int rc = run_job(p);
        pthread_mutex_lock(&p->mu);
        p->result = rc;
        p->pending = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int kvt_eng_prefetch_create(const struct kvt_eng_prefetch_config *cfg,
                            struct kvt_eng_prefetch **out)
{
    struct kvt_eng_prefetch *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->n_layers = cfg->n_layers;
    p->max_tokens = cfg->max_tokens;
    p->row_bytes = cfg->row_bytes;
    p->C = cfg->tokens_per_chunk;
    p->max_runs = cfg->max_tokens / 2 + 2;
    p->runs = calloc(p->max_runs, sizeof(*p->runs));
    p->items = calloc(p->max_runs, sizeof(*p->items));
    p->gen_of = calloc((size_t)cfg->n_layers * cfg->max_tokens, sizeof(*p->gen_of));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int rc = -ENOMEM;
    if (!p->runs || !p->items || !p->gen_of)
        goto err;
    size_t region = (size_t)cfg->n_layers * cfg->max_tokens * cfg->row_bytes;
    struct kvt_connect_opts co = *cfg->connect;
    co.arena_bytes = region + (1u << 20);
    if ((rc = kvt_connect(&co, &p->client)) ||
        (rc = kvt_register_spans(p->client, cfg->spec, cfg->spans, &p->ns)))
        goto err;
    p->region = kvt_arena_alloc(p->client, region);
    if (!p->region) {
        rc = KVT_E_NOMEM;
        goto err;
    }
    if (pthread_create(&p->thread, NULL, thread_main, p)) {
        rc = -EAGAIN;
        goto err;
    }
    p->started = 1;
    *out = p;
    return 0;
err:
    kvt_eng_prefetch_destroy(p);
    return rc;
}

void kvt_eng_prefetch_destroy(struct kvt_eng_prefetch *p)
{
    if (!p)
        return;
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    if (p->client) {
        kvt_arena_free(p->client, p->region);
        kvt_close(p->client);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->runs);
    free(p->items);
    free(p->gen_of);
    free(p->query);
    free(p);
}

int kvt_eng_prefetch_wait(struct kvt_eng_prefetch *p, uint64_t *fetch_bytes, size_t n_tiers)
{
    pthread_mutex_lock(&p->mu);
    while (p->pending)
        pthread_cond_wait(&p->cv, &p->mu);
    int rc = p->result;
    p->result = 0;
    for (size_t i = 0; i < PF_TIERS; i++) {
        if (i < n_tiers)
            fetch_bytes[i] += p->bytes[i];
        p->bytes[i] = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int kvt_eng_prefetch_start(struct kvt_eng_prefetch *p, uint64_t ctx,
                           const struct kvt_select_req *req, uint64_t gen)
{
    pthread_mutex_lock(&p->mu);
    while (p->pending) /* a job nobody waited for: its bytes stay counted for the next wait */
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    size_t qn = (size_t)req->n_query_heads * req->head_dim;
    if (qn > p->query_cap) {
        float *q = realloc(p->query, qn * sizeof(float));
        if (!q)
            return -ENOMEM;
        p->query = q;
        p->query_cap = qn;
    }
    memcpy(p->query, req->query, qn * sizeof(float));
    pthread_mutex_lock(&p->mu);
    p->ctx = ctx;
    p->gen = gen;
    p->req = *req;
    p->req.query = p->query;
    p->req.n_estimates = 0;
    p->pending = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

const uint16_t *kvt_eng_prefetch_rows(const struct kvt_eng_prefetch *p, uint32_t layer, size_t pos,
                                      size_t n, uint64_t gen)
{
    if (layer >= p->n_layers || pos + n > p->max_tokens)
        return NULL;
    const uint64_t *g = p->gen_of + (size_t)layer * p->max_tokens + pos;
    for (size_t t = 0; t < n; t++)
        if (g[t] != gen)
            return NULL;
    return (const uint16_t *)(p->region + ((size_t)layer * p->max_tokens + pos) * p->row_bytes);
}
