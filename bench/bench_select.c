/*
 * Benchmark `select`: the cost of choosing which spans of a long context to read, per layer, in
 * Llama-3-8B geometry (32 layers, 32 query heads in 8 GQA groups of 4, head_dim 128) with
 * 16-token spans, for contexts of 8K, 32K and 128K tokens.
 *
 * One measurement (an "arm") takes a context's span abstracts — per layer and KV head, the fp16
 * min/max of every span's keys, [layer][kv_head][span][min | max][head_dim], as the daemon keeps
 * them in DRAM — and, layer after layer as a decode step would, scores every span of every KV
 * head against its group's 4 queries (bound_f16) and takes the top 20% of the layer's spans
 * (topk_f32 over all heads' spans). Every layer has its own abstracts, so a pass over the 32
 * layers reads them from wherever a decode step would find them (beyond the caches at 128K).
 *
 * The baseline, in the same run and interleaved pass by pass with the arm: memcpy of each
 * layer's abstract bytes, from the same buffers, into one destination. The headline
 * select_scan_vs_memcpy_ratio is abstract bytes scored per second over memcpy's bytes per second
 * (the scan alone, without the top-k), the smallest over the contexts measured.
 *
 * select_arm_kernels is the kernel arm; an arm that goes through the daemon's Select (with the
 * same setup) is one more entry of g_arms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kernels/kernels.h"
#include "kvtier/errors.h"

enum {
    LAYERS = 32,
    Q_HEADS = 32,
    KV_HEADS = 8,
    GROUP = Q_HEADS / KV_HEADS,
    HEAD_DIM = 128,
    SPAN_TOKENS = 16,
    SPAN_ELEMS = 2 * HEAD_DIM, /* min then max, fp16 */
    BUDGET_PERCENT = 20,
};

/* What every arm gets: one context's abstracts and queries, and the buffers for the results. */
struct select_setup {
    size_t tokens;
    size_t spans_per_head;  /* tokens / SPAN_TOKENS */
    size_t spans_per_layer; /* spans_per_head * KV_HEADS */
    size_t k;               /* BUDGET_PERCENT of spans_per_layer */
    size_t layer_bytes;     /* abstract bytes of one layer */
    uint16_t *bounds;       /* LAYERS * spans_per_layer spans of SPAN_ELEMS */
    float *q;               /* [layer][q_head][head_dim] */
    float *scores;          /* spans_per_layer */
    uint32_t *idx;          /* k */
    uint8_t *copy_dst;      /* layer_bytes, for the memcpy baseline */
};

/* What one pass of an arm over the layers measured, per layer. */
struct select_samples {
    double *scan_ns, *topk_ns; /* capacity: passes_max * LAYERS */
    size_t n;
    uint64_t checksum; /* of the chosen indices, so that no work can be optimised away */
};

typedef int (*select_arm_fn)(const struct select_setup *s, struct select_samples *out);

/* The kernel arm: one pass over the layers, with the active kernel table. */
static int select_arm_kernels(const struct select_setup *s, struct select_samples *out)
{
    const struct kvt_kernels *k = kvt_kernels();
    for (size_t l = 0; l < LAYERS; l++) {
        const uint16_t *layer = s->bounds + l * s->spans_per_layer * SPAN_ELEMS;
        const float *q = s->q + l * Q_HEADS * HEAD_DIM;
        uint64_t t0 = kvt_bench_now_ns();
        for (size_t h = 0; h < KV_HEADS; h++)
            k->bound_f16(q + h * GROUP * HEAD_DIM, GROUP,
                         layer + h * s->spans_per_head * SPAN_ELEMS, s->spans_per_head, SPAN_ELEMS,
                         HEAD_DIM, s->scores + h * s->spans_per_head);
        uint64_t t1 = kvt_bench_now_ns();
        size_t got = k->topk_f32(s->scores, s->spans_per_layer, s->k, s->idx);
        uint64_t t2 = kvt_bench_now_ns();
        if (got != s->k)
            return KVT_E_INVAL;
        out->scan_ns[out->n] = (double)(t1 - t0);
        out->topk_ns[out->n] = (double)(t2 - t1);
        out->n++;
        out->checksum += s->idx[0] + s->idx[s->k - 1];
    }
    return 0;
}

static const struct {
    const char *name;
    select_arm_fn fn;
} g_arms[] = {
    {"kernels", select_arm_kernels},
};

/* The baseline: memcpy of each layer's abstract bytes, one pass over the layers. */
static double memcpy_pass_ns(const struct select_setup *s)
{
    uint64_t t0 = kvt_bench_now_ns();
    for (size_t l = 0; l < LAYERS; l++) {
        memcpy(s->copy_dst, (const uint8_t *)s->bounds + l * s->layer_bytes, s->layer_bytes);
        /* Keep the compiler from dropping a copy whose result is never read. */
        __asm__ volatile("" : : "r"(s->copy_dst) : "memory");
    }
    return (double)(kvt_bench_now_ns() - t0);
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Abstracts like real ones: per channel a negative minimum and a positive maximum of magnitudes
 * between 1/8 and 4 (fp16 exponents 12 to 16), four values from each random draw. Queries are
 * uniform in [-2, 2). */
static void fill_setup(struct select_setup *s, uint64_t seed)
{
    uint64_t x = seed | 1;
    const size_t spans = LAYERS * s->spans_per_layer;
    for (size_t sp = 0; sp < spans; sp++) {
        uint16_t *b = s->bounds + sp * SPAN_ELEMS;
        for (size_t i = 0; i < HEAD_DIM; i += 2) {
            uint64_t r = rng_next(&x);
            for (int j = 0; j < 2; j++, r >>= 32) {
                uint16_t lo = (uint16_t)(r & 0x3ffu), hi = (uint16_t)((r >> 10) & 0x3ffu);
                uint16_t elo = (uint16_t)(12 + (r >> 20) % 5), ehi = (uint16_t)(12 + (r >> 24) % 5);
                b[i + (size_t)j] = (uint16_t)(0x8000u | (elo << 10) | lo);
                b[HEAD_DIM + i + (size_t)j] = (uint16_t)((ehi << 10) | hi);
            }
        }
    }
    for (size_t i = 0; i < (size_t)LAYERS * Q_HEADS * HEAD_DIM; i++)
        s->q[i] = (float)((double)(rng_next(&x) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
}

/* Memory for the abstracts on transparent huge pages where the kernel gives them, as the daemon's
 * arena is: 2 MiB pages take 1/512 of the page faults to fill (the 128K context has 1 GiB of
 * abstracts) and far fewer TLB misses to scan. */
static void *alloc_huge(size_t bytes)
{
    const size_t huge = 2u << 20;
    bytes = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, bytes);
    if (p)
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* advice only: small pages work too */
    return p;
}

static void free_setup(struct select_setup *s)
{
    free(s->bounds);
    free(s->q);
    free(s->scores);
    free(s->idx);
    free(s->copy_dst);
}

static int make_setup(size_t tokens, struct select_setup *s)
{
    memset(s, 0, sizeof(*s));
    s->tokens = tokens;
    s->spans_per_head = tokens / SPAN_TOKENS;
    s->spans_per_layer = s->spans_per_head * KV_HEADS;
    s->k = s->spans_per_layer * BUDGET_PERCENT / 100;
    s->layer_bytes = s->spans_per_layer * SPAN_ELEMS * sizeof(uint16_t);
    s->bounds = alloc_huge(LAYERS * s->layer_bytes);
    s->q = malloc((size_t)LAYERS * Q_HEADS * HEAD_DIM * sizeof(float));
    s->scores = malloc(s->spans_per_layer * sizeof(float));
    s->idx = malloc(s->k * sizeof(uint32_t));
    s->copy_dst = aligned_alloc(64, s->layer_bytes);
    if (!s->bounds || !s->q || !s->scores || !s->idx || !s->copy_dst) {
        free_setup(s);
        return KVT_E_NOMEM;
    }
    fill_setup(s, 0x5e1ec7 + tokens);
    memset(s->copy_dst, 0, s->layer_bytes);
    return 0;
}

/* Measures one context: passes of the arm and of memcpy alternate until min_s seconds have gone
 * and at least min_passes of each ran (at most passes_max). */
static int bench_context(struct kvt_bench_report *r, size_t tokens, int quick, double *ratio_out)
{
    const int min_passes = quick ? 1 : 5, passes_max = quick ? 20 : 400;
    const double min_s = quick ? 0.25 : 3.0;
    struct select_setup s;
    int rc = make_setup(tokens, &s);
    if (rc)
        return rc;
    struct select_samples smp = {0};
    smp.scan_ns = malloc((size_t)passes_max * LAYERS * sizeof(double));
    smp.topk_ns = malloc((size_t)passes_max * LAYERS * sizeof(double));
    double *total = malloc((size_t)passes_max * LAYERS * sizeof(double));
    if (!smp.scan_ns || !smp.topk_ns || !total) {
        rc = KVT_E_NOMEM;
        goto out_free;
    }
    for (size_t a = 0; a < sizeof(g_arms) / sizeof(g_arms[0]); a++) {
        smp.n = 0;
        double copy_ns = 0, scan_sum_ns = 0, topk_sum_ns = 0;
        int passes = 0;
        /* One untimed pass of each: first touches and branch history are not the steady state. */
        rc = g_arms[a].fn(&s, &smp);
        if (rc)
            goto out_free;
        smp.n = 0;
        memcpy_pass_ns(&s);
        uint64_t start = kvt_bench_now_ns();
        while (passes < passes_max &&
               (passes < min_passes || (double)(kvt_bench_now_ns() - start) < min_s * 1e9)) {
            rc = g_arms[a].fn(&s, &smp);
            if (rc)
                goto out_free;
            copy_ns += memcpy_pass_ns(&s);
            passes++;
        }
        for (size_t i = 0; i < smp.n; i++) {
            scan_sum_ns += smp.scan_ns[i];
            topk_sum_ns += smp.topk_ns[i];
            total[i] = smp.scan_ns[i] + smp.topk_ns[i];
        }
        const double bytes = (double)s.layer_bytes * (double)smp.n;
        const double scan_gbps = bytes / scan_sum_ns, copy_gbps = bytes / copy_ns;
        const double ratio = scan_gbps / copy_gbps;
        char label[64];
        snprintf(label, sizeof(label), "select %zuK %s", tokens / 1024, g_arms[a].name);
        kvt_bench_row(r, label);
        kvt_bench_str(r, "kernels", kvt_kernels()->name);
        kvt_bench_num(r, "context_tokens", (double)tokens);
        kvt_bench_num(r, "spans_per_layer", (double)s.spans_per_layer);
        kvt_bench_num(r, "topk_spans", (double)s.k);
        kvt_bench_num(r, "abstract_bytes_per_layer", (double)s.layer_bytes);
        kvt_bench_num(r, "layer_samples", (double)smp.n);
        kvt_bench_num(r, "select_ms_per_layer_p50", kvt_bench_percentile(total, smp.n, 50) / 1e6);
        kvt_bench_num(r, "select_ms_per_layer_p99", kvt_bench_percentile(total, smp.n, 99) / 1e6);
        kvt_bench_num(r, "scan_ms_per_layer_p50",
                      kvt_bench_percentile(smp.scan_ns, smp.n, 50) / 1e6);
        kvt_bench_num(r, "topk_ms_per_layer_p50",
                      kvt_bench_percentile(smp.topk_ns, smp.n, 50) / 1e6);
        kvt_bench_num(r, "select_ms_all_layers_mean",
                      (scan_sum_ns + topk_sum_ns) / (double)smp.n * LAYERS / 1e6);
        kvt_bench_num(r, "scan_gbps", scan_gbps);
        kvt_bench_num(r, "scan_and_topk_gbps", bytes / (scan_sum_ns + topk_sum_ns));
        kvt_bench_num(r, "memcpy_gbps", copy_gbps);
        kvt_bench_num(r, "scan_vs_memcpy_ratio", ratio);
        kvt_bench_num(r, "checksum", (double)(smp.checksum % 1000000007u));
        if (a == 0)
            *ratio_out = ratio;
    }
out_free:
    free(smp.scan_ns);
    free(smp.topk_ns);
    free(total);
    free_setup(&s);
    return rc;
}

int kvt_bench_select(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    static const struct {
        const char *part;
        size_t tokens;
        const char *ratio;
    } contexts[] = {
        {"8k", 8192, "select_scan_vs_memcpy_8k_ratio"},
        {"32k", 32768, "select_scan_vs_memcpy_32k_ratio"},
        {"128k", 131072, "select_scan_vs_memcpy_128k_ratio"},
    };
    double worst = INFINITY;
    for (size_t c = 0; c < sizeof(contexts) / sizeof(contexts[0]); c++) {
        if (!kvt_bench_part(opts, contexts[c].part))
            continue;
        kvt_bench_progress("select: %zu-token context, %s kernels", contexts[c].tokens,
                           kvt_kernels()->name);
        double ratio = 0;
        int rc = bench_context(r, contexts[c].tokens, opts->quick, &ratio);
        if (rc)
            return rc;
        kvt_bench_ratio(r, contexts[c].ratio, ratio);
        worst = ratio < worst ? ratio : worst;
    }
    if (worst != INFINITY)
        kvt_bench_ratio(r, "select_scan_vs_memcpy_ratio", worst);
    return 0;
}
