/*
 * evict benchmark: LRU against cost-aware eviction (tier.eviction) under a DRAM limit, on a
 * passage trace (bench/evict.h). `kvtier-bench evict` runs it on a synthetic RAG trace: passages
 * of 100-400 tokens, requests of 3-6 of them drawn with Zipf popularity in varying order;
 * `kvtier-bench reuse` runs it on the passages of its own trace.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/evict.h"
#include "bench/util.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

static size_t passage_bytes(const struct kvt_bench_evict_trace *t, uint32_t id)
{
    return (size_t)t->layers * t->passage_tokens[id] * 2u * t->kv_heads * t->head_dim * 2u;
}

/* The key of passage id: the passage key of stand-in tokens that no other passage has. */
static int key_of(const struct kvt_ns_info *ns, uint32_t id, uint32_t n, struct kvt_key *k)
{
    static int32_t toks[65536];
    if (n > 65536)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        toks[i] = (int32_t)((id * 7919u + i) % 49152u);
    toks[0] = (int32_t)id; /* distinct even where the pattern repeats */
    return kvt_passage_key(ns, toks, n, k);
}

static int replay(const struct kvt_bench_opts *opts, const struct kvt_bench_evict_trace *t,
                  uint64_t dram_bytes, struct kvt_bench_evict_arm *a)
{
    char arena_opt[64], page_opt[64], eviction[64];
    uint32_t max_tokens = 0;
    size_t max_bytes = 0;
    for (size_t i = 0; i < t->n_passages; i++) {
        max_tokens = t->passage_tokens[i] > max_tokens ? t->passage_tokens[i] : max_tokens;
        max_bytes =
            passage_bytes(t, (uint32_t)i) > max_bytes ? passage_bytes(t, (uint32_t)i) : max_bytes;
    }
    snprintf(arena_opt, sizeof(arena_opt), "--cpu.arena_bytes=%llu",
             (unsigned long long)dram_bytes);
    /* Pages of the CPU tier hold whole chunks: the smallest power of two the longest fits in. */
    uint64_t page = 1u << 20;
    while (page < max_bytes)
        page <<= 1;
    snprintf(page_opt, sizeof(page_opt), "--cpu.page_bytes=%llu", (unsigned long long)page);
    snprintf(eviction, sizeof(eviction), "--tier.eviction=%s", a->policy);
    const char *args[] = {arena_opt, page_opt,           "--cpu.hugepages=false",
                          eviction,  "--log_level=warn", NULL};
    struct kvt_test_daemon d = {0};
    (void)opts;
    if (kvt_test_daemon_start(&d, args)) {
        fprintf(stderr, "evict: cannot start kvtierd (%s)\n", a->policy);
        return 1;
    }
    int rc = 1;
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = max_bytes + (1u << 20), .timeout_ms = 30000};
    struct kvt_client *c = NULL;
    struct kvt_ns_spec spec = {.model_id = "bench-evict",
                               .layers = t->layers,
                               .kv_heads = t->kv_heads,
                               .head_dim = t->head_dim,
                               .dtype = KVT_DTYPE_FP16,
                               .tokens_per_chunk = max_tokens,
                               .rope_theta = 10000.0f};
    struct kvt_ns_info ns;
    uint8_t *buf = NULL;
    struct kvt_key *keys = calloc(t->n_passages, sizeof(*keys));
    uint8_t *stored = calloc(t->n_passages, 1);
    if (!keys || !stored || kvt_connect(&o, &c) || kvt_register(c, &spec, &ns) ||
        !(buf = kvt_arena_alloc(c, max_bytes)))
        goto out;
    for (size_t i = 0; i < t->n_passages; i++)
        if (key_of(&ns, (uint32_t)i, t->passage_tokens[i], &keys[i]))
            goto out;
    kvt_bench_fill(buf, max_bytes, 7);
    uint64_t t0 = kvt_bench_now_ns();
    size_t at = 0;
    for (size_t q = 0; q < t->n_requests; q++) {
        for (uint32_t j = 0; j < t->request_len[q]; j++, at++) {
            uint32_t id = t->order[at];
            size_t bytes = passage_bytes(t, id), len = 0;
            a->fetches++;
            a->tokens += t->passage_tokens[id];
            int g = kvt_get_v(c, ns.handle, &keys[id], 0, buf, max_bytes, &len, NULL);
            if (g == 0 && len == bytes) {
                a->hits++;
                a->tokens_saved += t->passage_tokens[id];
                continue;
            }
            if (g != KVT_E_NOTFOUND) {
                fprintf(stderr, "evict: Get: %s\n", kvt_strerror(g));
                goto out;
            }
            /* Missed: recomputed (counted above), stored again. */
            a->evictions += stored[id];
            stored[id] = 1;
            int p = kvt_put_v(c, ns.handle, &keys[id], 0, buf, bytes, t->passage_tokens[id]);
            if (p) {
                fprintf(stderr, "evict: Put: %s\n", kvt_strerror(p));
                goto out;
            }
        }
        if ((q + 1) % 100 == 0)
            kvt_bench_progress("evict %s: %zu of %zu requests, hit ratio %.2f", a->policy, q + 1,
                               t->n_requests, (double)a->hits / (double)a->fetches);
    }
    a->replay_ms = (double)(kvt_bench_now_ns() - t0) / 1e6;
    rc = 0;
out:
    if (buf)
        kvt_arena_free(c, buf);
    kvt_close(c);
    free(keys);
    free(stored);
    if (kvt_test_daemon_stop(&d) != 0)
        rc = 1;
    kvt_test_daemon_cleanup(&d);
    return rc;
}

int kvt_bench_evict_run(const struct kvt_bench_opts *opts, const struct kvt_bench_evict_trace *t,
                        double dram_fraction, struct kvt_bench_report *r,
                        struct kvt_bench_evict_arm arms[2])
{
    uint64_t distinct = 0;
    for (size_t i = 0; i < t->n_passages; i++)
        distinct += passage_bytes(t, (uint32_t)i);
    uint64_t dram = (uint64_t)((double)distinct * dram_fraction);
    dram = (dram + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        memset(&arms[i], 0, sizeof(arms[i]));
        arms[i].policy = i ? "cost" : "lru";
        if (replay(opts, t, dram, &arms[i])) {
            rc = 1;
            continue;
        }
        char label[64];
        snprintf(label, sizeof(label), "eviction %s", arms[i].policy);
        kvt_bench_row(r, label);
        kvt_bench_num(r, "dram_bytes", (double)dram);
        kvt_bench_num(r, "distinct_passage_bytes", (double)distinct);
        kvt_bench_num(r, "fetches", (double)arms[i].fetches);
        kvt_bench_num(r, "hit_ratio", (double)arms[i].hits / (double)arms[i].fetches);
        kvt_bench_num(r, "tokens_recomputed", (double)(arms[i].tokens - arms[i].tokens_saved));
        kvt_bench_num(r, "recompute_saved_ratio",
                      (double)arms[i].tokens_saved / (double)arms[i].tokens);
        kvt_bench_num(r, "passages_stored_again", (double)arms[i].evictions);
        kvt_bench_num(r, "replay_ms", arms[i].replay_ms);
    }
    if (!rc && arms[0].hits && arms[0].tokens > arms[0].tokens_saved) {
        kvt_bench_ratio(r, "cost_vs_lru_hit_ratio", (double)arms[1].hits / (double)arms[0].hits);
        kvt_bench_ratio(r, "cost_vs_lru_recompute_ratio",
                        (double)(arms[1].tokens - arms[1].tokens_saved) /
                            (double)(arms[0].tokens - arms[0].tokens_saved));
    }
    return rc;
}

/* ---- kvtier-bench evict: a synthetic RAG trace ---------------------------------------------- */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

int kvt_bench_evict(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    const size_t n_passages = opts->quick ? 80 : 300, n_requests = opts->quick ? 300 : 1500;
    const double zipf_s = 1.0, fraction = 0.25;
    uint32_t *len = calloc(n_passages, sizeof(*len));
    uint32_t *req_len = calloc(n_requests, sizeof(*req_len));
    uint32_t *order = calloc(n_requests * 6, sizeof(*order));
    double *cdf = calloc(n_passages, sizeof(*cdf));
    int rc = 1;
    if (!len || !req_len || !order || !cdf)
        goto out;
    uint64_t x = 0x2545f4914f6cdd1dull;
    double sum = 0;
    for (size_t i = 0; i < n_passages; i++) {
        len[i] = 100 + (uint32_t)(rng_next(&x) % 301);
        sum += 1.0 / pow((double)(i + 1), zipf_s);
        cdf[i] = sum;
    }
    size_t at = 0;
    for (size_t q = 0; q < n_requests; q++) {
        req_len[q] = 3 + (uint32_t)(rng_next(&x) % 4);
        for (uint32_t j = 0; j < req_len[q]; j++) {
            uint32_t id;
            int again;
            do { /* distinct passages within a request, in the order drawn */
                double u = (double)(rng_next(&x) >> 11) / 9007199254740992.0 * sum;
                size_t lo = 0, hi = n_passages - 1;
                while (lo < hi) {
                    size_t mid = (lo + hi) / 2;
                    if (cdf[mid] < u)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                id = (uint32_t)lo;
                again = 0;
                for (uint32_t k = 0; k < j; k++)
                    again |= order[at - j + k] == id;
            } while (again);
            order[at++] = id;
        }
    }
    /* SmolLM2-135M's geometry in full mode; fewer layers (the same relative sizes) in quick. */
    struct kvt_bench_evict_trace t = {.passage_tokens = len,
                                      .n_passages = n_passages,
                                      .order = order,
                                      .request_len = req_len,
                                      .n_requests = n_requests,
                                      .layers = opts->quick ? 4 : 30,
                                      .kv_heads = 3,
                                      .head_dim = 64};
    struct kvt_bench_evict_arm arms[2];
    kvt_bench_progress("evict: %zu passages, %zu requests, Zipf %.1f, DRAM %.0f%% of the passages",
                       n_passages, n_requests, zipf_s, fraction * 100);
    rc = kvt_bench_evict_run(opts, &t, fraction, r, arms);
out:
    free(len);
    free(req_len);
    free(order);
    free(cdf);
    return rc;
}
