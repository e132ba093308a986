/*
 * Benchmark `lossy` (issue 12): the lossy KV forms. Part `kernels`, the one built so far, measures
 * the kernels the daemon and the engine will call, every supported variant in the same run, in
 * Llama-3-8B head geometry (head_dim 128):
 *  - quantize and dequantize of fp16 KV rows, 8 and 4 bits, groups of 32 along head_dim (values
 *    per token) and along the tokens of each channel (keys per channel, KIVI): GB/s of fp16 bytes
 *    (the input of quantize, the output of dequantize), over blocks of 256 rows (a 64 KiB span of
 *    one KV head, as the daemon would quantize a chunk) spread over a 64 MiB working set, so that
 *    each block comes from memory as it would in a tier write or read;
 *  - clustering of windows of 256 entries (keys and values of one (layer, KV head)) at 50% fewer
 *    entries: windows/s and GB/s of key and value bytes, for the matching kernel alone (the
 *    similarity matrix, 128 x 128 cosines a window) and the whole window step.
 * Times are the thread's CPU time (on a shared machine, the time other processes held the core is
 * left out), best of 3 rounds of at least 0.3 s (0.1 s with --quick). The later parts of the issue
 * (decode over real text: KL, top-1 agreement, passkey) are added as parts of this benchmark.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "kernels/cluster.h"
#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kvtier/errors.h"

enum {
    HEAD_DIM = 128,
    BLOCK_ROWS = 256,
    SET_BYTES = 64 << 20,
    WINDOW = 256,
    WINDOWS = 256, /* 256 windows of keys and values: 32 MiB */
};

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Values like a KV head's: mostly within a few units, with a few channels of larger magnitude
 * (the outlier channels of keys that make per-channel groups pay). */
static void fill_kv(uint16_t *x, size_t count, uint32_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < count; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        double v = (double)(int64_t)(s % 20001) / 5000.0 - 2.0;
        if (i % HEAD_DIM == 7 || i % HEAD_DIM == 77)
            v *= 20.0;
        x[i] = kvt_f32_to_f16((float)v);
    }
}

struct quant_case {
    uint32_t bits, axis;
    const char *name, *short_name;
};

/* Best GB/s of fp16 bytes over rounds of at least min_s. */
static double quant_gbps(const struct kvt_kernels *k, const struct kvt_quant_fmt *f, int dequant,
                         uint16_t *x, uint8_t *q, size_t blocks, double min_s)
{
    const size_t row_bytes = HEAD_DIM * sizeof(uint16_t), qbytes = kvt_quant_bytes(f, BLOCK_ROWS);
    double best = 0;
    for (int round = 0; round < 3; round++) {
        size_t done = 0;
        double t0 = cpu_s(), t;
        do {
            for (size_t b = 0; b < blocks; b++) {
                uint16_t *xb = x + b * BLOCK_ROWS * HEAD_DIM;
                if (dequant)
                    k->dequant_f16(f, q + b * qbytes, BLOCK_ROWS, xb, HEAD_DIM);
                else
                    k->quant_f16(f, xb, BLOCK_ROWS, HEAD_DIM, q + b * qbytes);
            }
            done += blocks * BLOCK_ROWS * row_bytes;
            t = cpu_s() - t0;
        } while (t < min_s);
        double g = (double)done / t / 1e9;
        best = g > best ? g : best;
    }
    return best;
}

static int bench_quant(struct kvt_bench_report *r, const struct kvt_kernels *const *vars,
                       size_t n_vars, double min_s)
{
    const size_t blocks = SET_BYTES / (BLOCK_ROWS * HEAD_DIM * sizeof(uint16_t));
    const struct quant_case cases[] = {
        {8, KVT_QUANT_AXIS_TOKEN, "q8 token g32", "q8_token"},
        {4, KVT_QUANT_AXIS_TOKEN, "q4 token g32", "q4_token"},
        {8, KVT_QUANT_AXIS_CHANNEL, "q8 channel g32", "q8_channel"},
        {4, KVT_QUANT_AXIS_CHANNEL, "q4 channel g32", "q4_channel"},
    };
    uint16_t *x = malloc(SET_BYTES), *orig = malloc(SET_BYTES);
    uint8_t *q = malloc(SET_BYTES); /* 8-bit blocks are 9/16 of the fp16 bytes */
    if (!x || !q || !orig) {
        free(x);
        free(q);
        free(orig);
        return KVT_E_NOMEM;
    }
    fill_kv(orig, SET_BYTES / sizeof(uint16_t), 1);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const struct kvt_quant_fmt f = {cases[c].bits, cases[c].axis, 32, HEAD_DIM};
        double ref_gbps[2] = {0, 0};
        for (size_t v = 0; v < n_vars; v++) {
            memcpy(x, orig, SET_BYTES);
            double qg = quant_gbps(vars[v], &f, 0, x, q, blocks, min_s);
            double dg = quant_gbps(vars[v], &f, 1, x, q, blocks, min_s);
            /* The round trip's mean absolute error on the benchmark's data, as a sanity figure. */
            double err = 0;
            for (size_t i = 0; i < SET_BYTES / sizeof(uint16_t); i += 97)
                err += fabsf(kvt_f16_to_f32(x[i]) - kvt_f16_to_f32(orig[i]));
            char label[64];
            snprintf(label, sizeof(label), "%s %s", cases[c].name, vars[v]->name);
            kvt_bench_row(r, label);
            kvt_bench_str(r, "kernels", vars[v]->name);
            kvt_bench_num(r, "bits", cases[c].bits);
            kvt_bench_str(r, "groups",
                          cases[c].axis == KVT_QUANT_AXIS_TOKEN ? "head_dim" : "tokens");
            kvt_bench_num(r, "group", 32);
            kvt_bench_num(r, "head_dim", HEAD_DIM);
            kvt_bench_num(r, "block_rows", BLOCK_ROWS);
            kvt_bench_num(r, "bytes_kept_ratio",
                          (double)kvt_quant_bytes(&f, BLOCK_ROWS) /
                              (double)(BLOCK_ROWS * HEAD_DIM * sizeof(uint16_t)));
            kvt_bench_num(r, "quantize_gbps", qg);
            kvt_bench_num(r, "dequantize_gbps", dg);
            kvt_bench_num(r, "mean_abs_error", err / (double)(SET_BYTES / sizeof(uint16_t) / 97));
            if (v == 0) {
                ref_gbps[0] = qg;
                ref_gbps[1] = dg;
            } else {
                kvt_bench_num(r, "quantize_vs_ref_ratio", qg / ref_gbps[0]);
                kvt_bench_num(r, "dequantize_vs_ref_ratio", dg / ref_gbps[1]);
                char name[64];
                snprintf(name, sizeof(name), "%s_%s_quantize_vs_ref_ratio", cases[c].short_name,
                         vars[v]->name);
                kvt_bench_ratio(r, name, qg / ref_gbps[0]);
                snprintf(name, sizeof(name), "%s_%s_dequantize_vs_ref_ratio", cases[c].short_name,
                         vars[v]->name);
                kvt_bench_ratio(r, name, dg / ref_gbps[1]);
            }
        }
    }
    free(x);
    free(q);
    free(orig);
    return 0;
}

static int bench_cluster(struct kvt_bench_report *r, const struct kvt_kernels *const *vars,
                         size_t n_vars, double min_s)
{
    const size_t win_elems = (size_t)WINDOW * HEAD_DIM, sb = kvt_cluster_scratch_bytes(WINDOW);
    uint16_t *k = malloc(WINDOWS * win_elems * 2), *v = malloc(WINDOWS * win_elems * 2);
    uint16_t *ko = malloc(win_elems * 2), *vo = malloc(win_elems * 2);
    uint32_t *best = malloc(WINDOW * 4), cnt[WINDOW];
    float *sim = malloc(WINDOW * 4);
    void *scratch = malloc(sb);
    int rc = KVT_E_NOMEM;
    if (!k || !v || !ko || !vo || !best || !sim || !scratch)
        goto out;
    fill_kv(k, WINDOWS * win_elems, 2);
    fill_kv(v, WINDOWS * win_elems, 3);
    const struct kvt_cluster_params p = {WINDOW / 2, 0, 0};
    double ref_ws[2] = {0, 0};
    for (size_t vi = 0; vi < n_vars; vi++) {
        double ws[2] = {0, 0}; /* windows/s: matching alone, the whole step */
        for (int whole = 0; whole < 2; whole++) {
            for (int round = 0; round < 3; round++) {
                size_t done = 0, n_out;
                double t0 = cpu_s(), t;
                do {
                    /* The clock is read after each window: the reference takes milliseconds. */
                    const size_t w = done % WINDOWS;
                    {
                        const uint16_t *kw = k + w * win_elems, *vw = v + w * win_elems;
                        if (whole) {
                            rc = kvt_cluster_window_f16(vars[vi], &p, kw, vw, HEAD_DIM, HEAD_DIM,
                                                        WINDOW, NULL, scratch, sb, ko, vo, HEAD_DIM,
                                                        cnt, NULL, &n_out);
                            if (rc)
                                goto out;
                        } else {
                            vars[vi]->cluster_match_f16(kw, HEAD_DIM, HEAD_DIM, WINDOW, 0, WINDOW,
                                                        best, sim);
                        }
                    }
                    done++;
                    t = cpu_s() - t0;
                } while (t < min_s);
                double rate = (double)done / t;
                ws[whole] = rate > ws[whole] ? rate : ws[whole];
            }
        }
        char label[64];
        snprintf(label, sizeof(label), "cluster w%d 50%% %s", WINDOW, vars[vi]->name);
        kvt_bench_row(r, label);
        kvt_bench_str(r, "kernels", vars[vi]->name);
        kvt_bench_num(r, "window_entries", WINDOW);
        kvt_bench_num(r, "head_dim", HEAD_DIM);
        kvt_bench_num(r, "entries_kept_ratio", 0.5);
        kvt_bench_num(r, "match_windows_per_s", ws[0]);
        kvt_bench_num(r, "window_windows_per_s", ws[1]);
        /* Key and value bytes in: what a window of the cache costs to cluster. */
        kvt_bench_num(r, "window_gbps", ws[1] * 2.0 * (double)win_elems * 2.0 / 1e9);
        if (vi == 0) {
            ref_ws[0] = ws[0];
            ref_ws[1] = ws[1];
        } else {
            kvt_bench_num(r, "match_vs_ref_ratio", ws[0] / ref_ws[0]);
            kvt_bench_num(r, "window_vs_ref_ratio", ws[1] / ref_ws[1]);
            char name[64];
            snprintf(name, sizeof(name), "cluster_%s_window_vs_ref_ratio", vars[vi]->name);
            kvt_bench_ratio(r, name, ws[1] / ref_ws[1]);
        }
    }
    rc = 0;
out:
    free(k);
    free(v);
    free(ko);
    free(vo);
    free(best);
    free(sim);
    free(scratch);
    return rc;
}

int kvt_bench_lossy(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    if (!kvt_bench_part(opts, "kernels"))
        return 0;
    const struct kvt_kernels *vars[KVT_KERNELS_VARIANT_COUNT];
    size_t n_vars = 0;
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++) {
        const struct kvt_kernels *t = kvt_kernels_variant((enum kvt_kernels_variant)v);
        /* AVX-512's table runs the AVX2 lossy kernels: measured once, as avx2. */
        if (t && v != KVT_KERNELS_AVX512)
            vars[n_vars++] = t;
    }
    const double min_s = opts->quick ? 0.1 : 0.3;
    kvt_bench_progress("lossy: quantize/dequantize, %zu variants", n_vars);
    int rc = bench_quant(r, vars, n_vars, min_s);
    if (rc)
        return rc;
    kvt_bench_progress("lossy: clustering windows, %zu variants", n_vars);
    rc = bench_cluster(r, vars, n_vars, min_s);
    if (rc)
        return rc;
    return 0;
}
