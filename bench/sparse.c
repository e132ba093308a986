/*
 * kvtier-bench sparse: importance-aware retrieval on the real model (issue 10, docs/sparse.md).
 *
 * One daemon whose CPU tier holds about 10% of the context's KV (--cpu-share F; the rest goes to
 * its disk tier), and the reference engine decoding real text (teacher forcing) after a
 * full-attention prefill, in the same run:
 *   - resident: every row in the engine's memory (the reference, reported by each eval run);
 *   - offload:  every stored row fetched from kvtier for every generated token;
 *   - sparse:   per layer and token, Select picks the spans for the query and only those rows are
 *               fetched (10% and 20% budgets); at 20% twice, each on a fresh daemon of its own,
 *               with the tier manager learning from selections (tier.select_promote, the
 *               default) and without, so the two start from the same state;
 *   - q8:       the 8-bit KV calibration point of EVALUATION.md (fidelity only).
 * Each arm is one `kvtier-engine eval --decode-from N` process, which also runs resident on the
 * same positions and reports KL, top-1 agreement, ms per token and KV bytes per token by tier.
 * Full mode: 8,192-token context, 256 decoded positions; quick mode: 2,048 and 32.
 *
 * Needs the model (scripts/fetch-model.sh models) and /usr/share/common-licenses; without them the
 * rows are null with the reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define KV_BYTES_PER_TOKEN 23040.0 /* SmolLM2-135M: 30 layers x 2 x 3 heads x 64 x fp16 */

struct arm {
    const char *label;
    const char *mode;
    double budget; /* 0: none */
    int own;       /* 1: on a fresh daemon of its own, with tier.select_promote = promote */
    int promote;
    /* results */
    int ok;
    double kl_mean, kl_p99, top1, ms, resident_ms, disk_bytes, fetched_bytes, ppl, resident_ppl;
    /* own daemons: chunks promoted because of selections, queued for it, found no room */
    double sel_promotions, sel_queued, sel_no_room;
};

/* The daemon's stat name, or -1 when it cannot be read. */
static double daemon_stat(const char *socket, const char *name)
{
    struct kvt_connect_opts o = {.socket_path = socket, .arena_bytes = 1 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    if (kvt_connect(&o, &c))
        return -1;
    double v = (double)kvt_test_stat(c, name);
    kvt_close(c);
    return v;
}

static int run_arm(const struct kvt_bench_opts *opts, const char *text, const char *socket,
                   unsigned ctx, unsigned decode, struct arm *a)
{
    char json[512], cmd[2048], budget[64] = "";
    snprintf(json, sizeof(json), "%s/%s.json", opts->work_dir, a->label);
    if (a->budget > 0)
        snprintf(budget, sizeof(budget), "--budget %.3f", a->budget);
    snprintf(cmd, sizeof(cmd),
             "'%s/kvtier-engine' eval --model %s --text '%s' --tokens %u --decode-from %u "
             "--mode %s %s --socket '%s' --json '%s' 2>&1 | tail -1 >&2",
             opts->bin_dir, MODEL, text, ctx + decode, ctx, a->mode, budget, socket, json);
    kvt_bench_progress("sparse: %s (%u-token context, %u decoded positions)", a->label, ctx,
                       decode);
    if (system(cmd) != 0)
        return -1;
    char *t = kvt_bench_slurp(json);
    if (!t)
        return -1;
    int bad = kvt_bench_json_num(t, NULL, "kl_mean", &a->kl_mean) |
              kvt_bench_json_num(t, NULL, "kl_p99", &a->kl_p99) |
              kvt_bench_json_num(t, NULL, "top1_agreement_with_resident", &a->top1) |
              kvt_bench_json_num(t, NULL, "ms_per_token", &a->ms) |
              kvt_bench_json_num(t, NULL, "resident_ms_per_token", &a->resident_ms) |
              kvt_bench_json_num(t, NULL, "perplexity", &a->ppl) |
              kvt_bench_json_num(t, NULL, "resident_perplexity", &a->resident_ppl) |
              kvt_bench_json_num(t, "\"kv_bytes_per_token\"", "disk", &a->disk_bytes) |
              kvt_bench_json_num(t, "\"kv_bytes_per_token\"", "fetched", &a->fetched_bytes);
    free(t);
    a->ok = !bad;
    return bad ? -1 : 0;
}

/* --cpu-share F: the CPU tier's share of the context's KV (0.1 unless given). */
static int parse_share(const struct kvt_bench_opts *opts, double *share)
{
    for (int i = 0; i < opts->argc; i++) {
        const char *a = opts->argv[i], *eq = strchr(a, '=');
        const char *v = eq ? eq + 1 : (i + 1 < opts->argc ? opts->argv[i + 1] : NULL);
        size_t klen = eq ? (size_t)(eq - a) : strlen(a);
        char *end = NULL;
        double x = v ? strtod(v, &end) : 0;
        if (klen != 11 || strncmp(a, "--cpu-share", klen) || !v || *end || !(x > 0 && x <= 1)) {
            fprintf(stderr,
                    "kvtier-bench sparse: the option is --cpu-share F (in (0, 1]), not %s\n", a);
            return -1;
        }
        *share = x;
        if (!eq)
            i++;
    }
    return 0;
}

int kvt_bench_sparse(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    unsigned ctx = opts->quick ? 2048 : 8192, decode = opts->quick ? 32 : 256;
    double share = 0.1;
    if (parse_share(opts, &share))
        return KVT_BENCH_USAGE;
    struct arm arms[] = {
        {.label = "offload", .mode = "offload"},
        {.label = "sparse-20", .mode = "sparse", .budget = 0.2, .own = 1, .promote = 1},
        {.label = "sparse-10", .mode = "sparse", .budget = 0.1},
        {.label = "q8", .mode = "q8"},
        {.label = "sparse-20-nopromote", .mode = "sparse", .budget = 0.2, .own = 1},
    };
    const size_t n_arms = sizeof(arms) / sizeof(arms[0]);
    const char *why = NULL;
    if (access(MODEL, R_OK) && system("./scripts/fetch-model.sh models >/dev/null") != 0)
        why = "model not available (scripts/fetch-model.sh models)";
    /* Real text: GPL-3 is about 8K tokens; more licenses after it for longer contexts. */
    char text[512];
    snprintf(text, sizeof(text), "%s/text.txt", opts->work_dir);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd /usr/share/common-licenses && cat GPL-3 LGPL-3 Apache-2.0 Artistic GPL-2 > '%s' "
             "2>/dev/null",
             text);
    if (!why && system(cmd) != 0)
        why = "cannot read /usr/share/common-licenses";

    /* The CPU tier holds 10% of the context's KV (--cpu-share) plus 4 MiB; chunks of 64 tokens
     * are 1.4 MiB, one per 2 MiB page. */
    struct kvt_test_daemon d = {0};
    char arena[64], disk[64];
    snprintf(arena, sizeof(arena), "--cpu.arena_bytes=%llu",
             (unsigned long long)(share * ctx * KV_BYTES_PER_TOKEN) + (4u << 20));
    snprintf(disk, sizeof(disk), "--disk.bytes=%llu",
             (unsigned long long)(4.0 * (ctx + decode) * KV_BYTES_PER_TOKEN) + (64u << 20));
    const char *args[] = {arena, "--cpu.page_bytes=2M", disk, "--disk.codec=none", NULL, NULL};
    if (!why && kvt_test_daemon_start(&d, args))
        why = "kvtierd did not start";
    for (size_t i = 0; i < n_arms && !why; i++) {
        struct arm *a = &arms[i];
        if (!a->own) {
            if (run_arm(opts, text, d.socket_path, ctx, decode, a))
                fprintf(stderr, "kvtier-bench sparse: arm %s failed\n", a->label);
            continue;
        }
        struct kvt_test_daemon own = {0};
        args[4] = a->promote ? "--tier.select_promote=true" : "--tier.select_promote=false";
        if (kvt_test_daemon_start(&own, args)) {
            fprintf(stderr, "kvtier-bench sparse: arm %s: kvtierd did not start\n", a->label);
            continue;
        }
        if (run_arm(opts, text, own.socket_path, ctx, decode, a))
            fprintf(stderr, "kvtier-bench sparse: arm %s failed\n", a->label);
        a->sel_promotions = daemon_stat(own.socket_path, "tier.sel_promotions");
        a->sel_queued = daemon_stat(own.socket_path, "tier.sel_promotes_queued");
        a->sel_no_room = daemon_stat(own.socket_path, "tier.sel_promote_no_room");
        kvt_test_daemon_stop(&own);
        kvt_test_daemon_cleanup(&own);
    }
    if (d.pid) {
        kvt_test_daemon_stop(&d);
        kvt_test_daemon_cleanup(&d);
    }

    for (size_t i = 0; i < n_arms; i++) {
        struct arm *a = &arms[i];
        kvt_bench_row(r, a->label);
        kvt_bench_num(r, "context_tokens", ctx);
        kvt_bench_num(r, "decode_positions", decode);
        kvt_bench_num(r, "cpu_share", share);
        if (!a->ok) {
            kvt_bench_null(r, "kl_mean", why ? why : "the eval run failed (see stderr)");
            continue;
        }
        kvt_bench_num(r, "budget", a->budget);
        kvt_bench_num(r, "kl_mean", a->kl_mean);
        kvt_bench_num(r, "kl_p99", a->kl_p99);
        kvt_bench_num(r, "top1_agreement_with_resident", a->top1);
        kvt_bench_num(r, "perplexity", a->ppl);
        kvt_bench_num(r, "resident_perplexity", a->resident_ppl);
        kvt_bench_num(r, "ms_per_token", a->ms);
        kvt_bench_num(r, "resident_ms_per_token", a->resident_ms);
        kvt_bench_num(r, "fetched_bytes_per_token", a->fetched_bytes);
        kvt_bench_num(r, "disk_bytes_per_token", a->disk_bytes);
        if (a->own) {
            kvt_bench_num(r, "select_promote", a->promote);
            kvt_bench_num(r, "sel_promotions", a->sel_promotions);
            kvt_bench_num(r, "sel_promotes_queued", a->sel_queued);
            kvt_bench_num(r, "sel_promote_no_room", a->sel_no_room);
        }
    }
    const struct arm *off = &arms[0], *s20 = &arms[1], *s10 = &arms[2], *q8 = &arms[3],
                     *s20n = &arms[4];
    if (s20->ok && s20n->ok) {
        if (s20n->disk_bytes > 0)
            kvt_bench_ratio(r, "select_promote_disk_bytes_ratio",
                            s20->disk_bytes / s20n->disk_bytes);
        kvt_bench_ratio(r, "select_promote_time_ratio", s20->ms / s20n->ms);
    }
    if (off->ok && s20->ok) {
        kvt_bench_ratio(r, "sparse_vs_offload_speedup_ratio", off->ms / s20->ms);
        kvt_bench_ratio(r, "sparse_vs_resident_time_ratio", s20->ms / s20->resident_ms);
        if (off->disk_bytes > 0)
            kvt_bench_ratio(r, "sparse_disk_bytes_vs_offload_ratio",
                            s20->disk_bytes / off->disk_bytes);
        kvt_bench_ratio(r, "sparse_fetched_bytes_vs_offload_ratio",
                        s20->fetched_bytes / off->fetched_bytes);
    }
    if (s20->ok)
        kvt_bench_ratio(r, "sparse20_kl_mean", s20->kl_mean);
    if (s10->ok)
        kvt_bench_ratio(r, "sparse10_kl_mean", s10->kl_mean);
    if (q8->ok)
        kvt_bench_ratio(r, "q8_kl_mean", q8->kl_mean);
    if (s20->ok && q8->ok && q8->kl_mean > 0)
        kvt_bench_ratio(r, "sparse20_kl_vs_q8_kl_ratio", s20->kl_mean / q8->kl_mean);
    return why ? 1 : 0;
}
