/*
 * Benchmark `lossy` (issue 12): the lossy KV forms, in two parts.
 *
 * Part `kernels` measures the kernels the daemon and the engine call, every supported variant in
 * the same run, in Llama-3-8B head geometry (head_dim 128):
 *  - quantize and dequantize of fp16 KV rows, 8 and 4 bits, groups of 32 along head_dim (values
 *    per token) and along the tokens of each channel (keys per channel, KIVI): GB/s of fp16 bytes
 *    (the input of quantize, the output of dequantize), over blocks of 256 rows (a 64 KiB span of
 *    one KV head, as the daemon would quantize a chunk) spread over a 64 MiB working set, so that
 *    each block comes from memory as it would in a tier write or read;
 *  - clustering of windows of 256 entries (keys and values of one (layer, KV head)) at 50% fewer
 *    entries: windows/s and GB/s of key and value bytes, for the matching kernel alone (the
 *    similarity matrix, 128 x 128 cosines a window) and the whole window step.
 * Times are the thread's CPU time (on a shared machine, the time other processes held the core is
 * left out), best of 3 rounds of at least 0.3 s (0.1 s with --quick).
 *
 * Part `decode` runs the engine's lossy modes on the real model (SmolLM2-135M) over real text
 * (GPL-3 and more licenses), in decode mode as the sparse benchmark does (a batched prefill of
 * --tokens positions, then --decode positions one at a time, teacher forcing), each setting one
 * `kvtier-engine eval --decode-from` process that also runs resident on the same positions:
 * q8 (the calibration point of EVALUATION.md), quant 8 and 4 bits (groups along head_dim), quant
 * 4 bits with keys per channel (KIVI), cluster at 25, 50 and 75% fewer entries, and cluster 50%
 * and quant 4-bit with sparse retrieval over their own entries (budget 20%). The modes are lossy in
 * the prefill too (what left the recent window is quantized or clustered as the prompt is read),
 * like q8. Per setting: kv_bytes_kept_ratio (bytes the mode keeps at the end against fp16), KL
 * mean and p99 against resident, the KL against q8's (kl_vs_q8_ratio), top-1 agreement, and the
 * passkey accuracy of `kvtier-engine passkey` at --passkey-tokens over --trials trials (resident's
 * as the reference row). Full mode: 2,048 positions (1,984 prefilled, 64 decoded), passkey at
 * 2,048 tokens, 2 trials (depths 10% and 90%), about 20 minutes on the project's shared 2-core
 * machine; the 8K run is `--tokens 8192 --passkey-tokens 8000` (one setting at 8,192
 * positions took over 12 minutes there, so ten take hours). --quick: 384 (368 + 16), passkey at
 * 384, 1 trial. Options
 * --tokens, --decode, --passkey-tokens and --trials override them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/util.h"
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

static int bench_kernels(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
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

/* ---- decode on the real model ------------------------------------------------------------------
 */

#define MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

struct lossy_arm {
    const char *label;
    const char *args; /* kvtier-engine --mode ... */
    int no_passkey;   /* the calibration point: KL only */
    int ok, pk_ok;
    double kl_mean, kl_p99, top1, ratio, ms, resident_ms, ppl, resident_ppl, pk_acc, pk_logp;
};

struct decode_sizes {
    unsigned tokens, decode, pk_tokens, trials;
};

static int run_eval(const struct kvt_bench_opts *opts, const char *text,
                    const struct decode_sizes *z, struct lossy_arm *a)
{
    char json[512], cmd[2048];
    snprintf(json, sizeof(json), "%s/%s.json", opts->work_dir, a->label);
    snprintf(cmd, sizeof(cmd),
             "'%s/kvtier-engine' eval --model %s --text '%s' --tokens %u --decode-from %u %s "
             "--json '%s' 2>&1 | tail -1 >&2",
             opts->bin_dir, MODEL, text, z->tokens, z->tokens - z->decode, a->args, json);
    kvt_bench_progress("lossy: %s: decode eval (%u positions, %u decoded)", a->label, z->tokens,
                       z->decode);
    if (system(cmd) != 0)
        return -1;
    char *t = kvt_bench_slurp(json);
    if (!t)
        return -1;
    int bad = kvt_bench_json_num(t, NULL, "kl_mean", &a->kl_mean) |
              kvt_bench_json_num(t, NULL, "kl_p99", &a->kl_p99) |
              kvt_bench_json_num(t, NULL, "top1_agreement_with_resident", &a->top1) |
              kvt_bench_json_num(t, NULL, "kv_bytes_kept_ratio", &a->ratio) |
              kvt_bench_json_num(t, NULL, "ms_per_token", &a->ms) |
              kvt_bench_json_num(t, NULL, "resident_ms_per_token", &a->resident_ms) |
              kvt_bench_json_num(t, NULL, "perplexity", &a->ppl) |
              kvt_bench_json_num(t, NULL, "resident_perplexity", &a->resident_ppl);
    free(t);
    a->ok = !bad;
    return bad ? -1 : 0;
}

static int run_passkey(const struct kvt_bench_opts *opts, const struct decode_sizes *z,
                       struct lossy_arm *a)
{
    char json[512], cmd[2048];
    snprintf(json, sizeof(json), "%s/%s-passkey.json", opts->work_dir, a->label);
    snprintf(cmd, sizeof(cmd),
             "'%s/kvtier-engine' passkey --model %s --tokens %u --trials %u --seed 7 %s "
             "--json '%s' 2>&1 | tail -1 >&2",
             opts->bin_dir, MODEL, z->pk_tokens, z->trials, a->args, json);
    kvt_bench_progress("lossy: %s: passkey (%u tokens, %u trials)", a->label, z->pk_tokens,
                       z->trials);
    if (system(cmd) != 0)
        return -1;
    char *t = kvt_bench_slurp(json);
    if (!t)
        return -1;
    int bad = kvt_bench_json_num(t, NULL, "accuracy", &a->pk_acc) |
              kvt_bench_json_num(t, NULL, "mean_key_logprob", &a->pk_logp);
    free(t);
    a->pk_ok = !bad;
    return bad ? -1 : 0;
}

static int parse_sizes(const struct kvt_bench_opts *opts, struct decode_sizes *z)
{
    for (int i = 0; i < opts->argc; i++) {
        const char *a = opts->argv[i], *eq = strchr(a, '=');
        const char *v = eq ? eq + 1 : (i + 1 < opts->argc ? opts->argv[i + 1] : NULL);
        size_t klen = eq ? (size_t)(eq - a) : strlen(a);
        unsigned *dst = NULL;
        if (klen == 8 && !strncmp(a, "--tokens", klen))
            dst = &z->tokens;
        else if (klen == 8 && !strncmp(a, "--decode", klen))
            dst = &z->decode;
        else if (klen == 16 && !strncmp(a, "--passkey-tokens", klen))
            dst = &z->pk_tokens;
        else if (klen == 8 && !strncmp(a, "--trials", klen))
            dst = &z->trials;
        char *end;
        unsigned long x = v ? strtoul(v, &end, 10) : 0;
        if (!dst || !v || *end || x == 0 || x > 8192) {
            fprintf(stderr,
                    "kvtier-bench lossy: options are --tokens N, --decode N, --passkey-tokens N "
                    "and --trials N (positive, at most 8192), not %s\n",
                    a);
            return -1;
        }
        *dst = (unsigned)x;
        if (!eq)
            i++;
    }
    if (z->decode + 2 > z->tokens) {
        fprintf(stderr, "kvtier-bench lossy: --decode must be below --tokens - 1\n");
        return -1;
    }
    return 0;
}

static int bench_decode(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    struct decode_sizes z = {2048, 64, 2048, 2};
    if (opts->quick)
        z = (struct decode_sizes){384, 16, 384, 1};
    if (parse_sizes(opts, &z))
        return KVT_BENCH_USAGE;
    struct lossy_arm arms[] = {
        {.label = "resident", .args = "--mode resident"},
        {.label = "q8", .args = "--mode q8", .no_passkey = 1},
        {.label = "quant8", .args = "--mode quant --bits 8"},
        {.label = "quant4", .args = "--mode quant --bits 4"},
        {.label = "quant4-kivi", .args = "--mode quant --bits 4 --kivi"},
        {.label = "cluster25", .args = "--mode cluster --ratio 0.25"},
        {.label = "cluster50", .args = "--mode cluster --ratio 0.5"},
        {.label = "cluster75", .args = "--mode cluster --ratio 0.75"},
        {.label = "cluster50-sparse20", .args = "--mode cluster --ratio 0.5 --budget 0.2"},
        {.label = "quant4-sparse20", .args = "--mode quant --bits 4 --budget 0.2"},
    };
    const size_t n_arms = sizeof(arms) / sizeof(arms[0]);
    const char *why = NULL;
    if (access(MODEL, R_OK) && system("./scripts/fetch-model.sh models >/dev/null") != 0)
        why = "model not available (scripts/fetch-model.sh models)";
    char text[512], cmd[1024];
    snprintf(text, sizeof(text), "%s/text.txt", opts->work_dir);
    snprintf(cmd, sizeof(cmd),
             "cd /usr/share/common-licenses && cat GPL-3 LGPL-3 Apache-2.0 Artistic GPL-2 > '%s' "
             "2>/dev/null",
             text);
    if (!why && system(cmd) != 0)
        why = "cannot read /usr/share/common-licenses";
    uint64_t t0 = kvt_bench_now_ns();
    for (size_t i = 0; i < n_arms && !why; i++) {
        /* resident is the passkey reference only: its eval would compare it with itself. */
        if (i > 0 && run_eval(opts, text, &z, &arms[i]))
            fprintf(stderr, "kvtier-bench lossy: %s: the eval run failed\n", arms[i].label);
        if (!arms[i].no_passkey && run_passkey(opts, &z, &arms[i]))
            fprintf(stderr, "kvtier-bench lossy: %s: the passkey run failed\n", arms[i].label);
    }
    double minutes = (double)(kvt_bench_now_ns() - t0) / 60e9;
    const struct lossy_arm *res = &arms[0], *q8 = &arms[1];
    for (size_t i = 0; i < n_arms; i++) {
        struct lossy_arm *a = &arms[i];
        kvt_bench_row(r, a->label);
        kvt_bench_str(r, "args", a->args);
        kvt_bench_num(r, "context_tokens", z.tokens);
        kvt_bench_num(r, "decode_positions", z.decode);
        if (i == 0) {
            kvt_bench_num(r, "kv_bytes_kept_ratio", 1.0);
        } else if (!a->ok) {
            kvt_bench_null(r, "kl_mean", why ? why : "the eval run failed (see stderr)");
        } else {
            kvt_bench_num(r, "kv_bytes_kept_ratio", a->ratio);
            kvt_bench_num(r, "kl_mean", a->kl_mean);
            kvt_bench_num(r, "kl_p99", a->kl_p99);
            if (q8->ok && q8->kl_mean > 0)
                kvt_bench_num(r, "kl_vs_q8_ratio", a->kl_mean / q8->kl_mean);
            kvt_bench_num(r, "top1_agreement_with_resident", a->top1);
            kvt_bench_num(r, "perplexity", a->ppl);
            kvt_bench_num(r, "resident_perplexity", a->resident_ppl);
            kvt_bench_num(r, "ms_per_token", a->ms);
            kvt_bench_num(r, "resident_ms_per_token", a->resident_ms);
        }
        kvt_bench_num(r, "passkey_tokens", z.pk_tokens);
        kvt_bench_num(r, "passkey_trials", z.trials);
        if (a->pk_ok) {
            kvt_bench_num(r, "passkey_accuracy", a->pk_acc);
            kvt_bench_num(r, "passkey_key_logprob", a->pk_logp);
        } else if (a->no_passkey) {
            kvt_bench_null(r, "passkey_accuracy", "calibration point: KL only");
        } else {
            kvt_bench_null(r, "passkey_accuracy",
                           why ? why : "the passkey run failed (see stderr)");
        }
    }
    kvt_bench_progress("lossy: decode part took %.1f minutes", minutes);
    /* The targets: 50% fewer entries at a KL no worse than 8-bit's; 8-bit's agreement. */
    const struct lossy_arm *c50 = &arms[6], *qt8 = &arms[2];
    if (c50->ok && q8->ok && q8->kl_mean > 0)
        kvt_bench_ratio(r, "cluster50_kl_vs_q8_kl_ratio", c50->kl_mean / q8->kl_mean);
    if (qt8->ok)
        kvt_bench_ratio(r, "quant8_top1_agreement_ratio", qt8->top1);
    if (q8->ok)
        kvt_bench_ratio(r, "q8_top1_agreement_ratio", q8->top1);
    /* The smallest form whose passkey accuracy equals full attention's. */
    const struct lossy_arm *best = NULL;
    for (size_t i = 1; res->pk_ok && i < n_arms; i++)
        if (arms[i].ok && arms[i].pk_ok && arms[i].pk_acc >= res->pk_acc &&
            (!best || arms[i].ratio < best->ratio))
            best = &arms[i];
    if (best) {
        kvt_bench_row(r, "smallest-passkey-equal");
        kvt_bench_str(r, "setting", best->label);
        kvt_bench_num(r, "kv_bytes_kept_ratio", best->ratio);
        kvt_bench_num(r, "passkey_accuracy", best->pk_acc);
        kvt_bench_ratio(r, "smallest_passkey_equal_bytes_kept_ratio", best->ratio);
    }
    return why ? 1 : 0;
}

int kvt_bench_lossy(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    int rc = 0;
    if (kvt_bench_part(opts, "kernels") && (rc = bench_kernels(opts, r)) != 0)
        return rc;
    if (kvt_bench_part(opts, "decode"))
        rc = bench_decode(opts, r);
    return rc;
}
