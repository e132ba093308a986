/*
 * kvtier-bench: runs one benchmark (or all) and renders its report. Usage:
 *   kvtier-bench NAME|all [--quick] [--json FILE] [--only PART,...] [BENCHMARK OPTIONS]
 * --only runs the named parts of a benchmark (the list is under --help), so that one figure can be
 * measured again without the rest of a long run.
 * Without --json, results still go to bench/out/NAME.json and .csv for `make bench-plot`.
 * Options this file does not know are passed to the one benchmark named, when it takes options
 * (capacity); any other benchmark, or `all`, refuses them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/report.h"

#pragma weak kvt_bench_host
#pragma weak kvt_bench_lookup
#pragma weak kvt_bench_disk
#pragma weak kvt_bench_codec
#pragma weak kvt_bench_sparse
#pragma weak kvt_bench_select
#pragma weak kvt_bench_capacity
#pragma weak kvt_bench_lossy
#pragma weak kvt_bench_rotate
#pragma weak kvt_bench_reuse
#pragma weak kvt_bench_evict

struct bench_entry {
    const char *name;
    kvt_bench_fn fn;
    const char *what;
    const char *parts; /* what --only can name, or NULL when it runs as one part */
    const char *args;  /* the options it takes, or NULL when none */
};

static void usage(const struct bench_entry *benches, size_t n)
{
    fprintf(stderr, "usage: kvtier-bench NAME|all [--quick] [--json FILE] [--only PART,...]\n"
                    "benchmarks:\n");
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "  %-7s %s%s%s\n", benches[i].name, benches[i].what,
                benches[i].parts ? "; parts: " : "", benches[i].parts ? benches[i].parts : "");
    for (size_t i = 0; i < n; i++)
        if (benches[i].args)
            fprintf(stderr, "options of %s: %s\n", benches[i].name, benches[i].args);
}

static int run_one(const struct bench_entry *b, const struct kvt_bench_opts *opts,
                   const char *json_path)
{
    if (!b->fn) {
        fprintf(stderr, "kvtier-bench: %s is not built into this binary\n", b->name);
        return 1;
    }
    static struct kvt_bench_report r;
    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "%s", b->name);
    char jp[512], cp[512];
    if (json_path) {
        snprintf(jp, sizeof(jp), "%s", json_path);
    } else {
        mkdir("bench/out", 0755);
        snprintf(jp, sizeof(jp), "bench/out/%s.json", b->name);
    }
    /* A benchmark's extra files (time series) go beside its JSON. */
    struct kvt_bench_opts o = *opts;
    char dir[512];
    const char *slash = strrchr(jp, '/');
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - jp) : 1, slash ? jp : ".");
    o.out_dir = dir;
    fprintf(stderr, "kvtier-bench %s%s: %s\n", b->name, opts->quick ? " (quick)" : "", b->what);
    int rc = b->fn(&o, &r);
    if (rc == KVT_BENCH_USAGE)
        return 2; /* bad options: nothing was measured, nothing is written */
    kvt_bench_print(&r, stdout);
    snprintf(cp, sizeof(cp), "%.*s.csv",
             (int)(strlen(jp) > 5 && !strcmp(jp + strlen(jp) - 5, ".json") ? strlen(jp) - 5
                                                                           : strlen(jp)),
             jp);
    if (kvt_bench_write_json(&r, jp) || kvt_bench_write_csv(&r, cp))
        fprintf(stderr, "kvtier-bench: cannot write %s\n", jp);
    else
        fprintf(stderr, "wrote %s and %s\n", jp, cp);
    if (rc)
        fprintf(stderr, "kvtier-bench %s failed: %d\n", b->name, rc);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    const struct bench_entry benches[] = {
        {"host", kvt_bench_host, "Put/Get through the CPU tier vs memcpy and redis-server", NULL,
         NULL},
        {"lookup", kvt_bench_lookup, "32-key Lookup latency vs redis-server PING and MGET", NULL,
         NULL},
        {"disk", kvt_bench_disk, "disk tier writes and cold reads vs plain io_uring and files",
         "whole (256K-4M chunks: store, io_uring, files, kvtierd), daemon-whole (only io_uring and "
         "kvtierd), store-ranges, "
         "daemon-ranges (kvtierd cold ranges vs io_uring), restart, restore-abstracts (span "
         "abstracts read back at a kvtierd restart)",
         NULL},
        {"codec", kvt_bench_codec, "lossless KV compression vs plain lz4/zstd", NULL, NULL},
        {"select", kvt_bench_select,
         "span scoring (Quest bound) and top-k per layer, Llama-3-8B geometry, vs memcpy",
         "8k, 32k, 128k (context tokens)", NULL},
        {"sparse", kvt_bench_sparse,
         "decode on the real model: sparse retrieval vs offload and resident, KL vs q8, with and "
         "without learning from selections",
         NULL, "--cpu-share F (the CPU tier's share of the context's KV; 0.1)"},
        {"capacity", kvt_bench_capacity,
         "many clients, Zipf reuse, tiers far below the working set; LRU vs cost-aware, vs "
         "DRAM-only "
         "LRU and no cache",
         "kvtier (CPU and disk tiers), kvtier_cost (the same, tier.eviction=cost, replays "
         "kvtier's sessions), dram_lru (DRAM only, replays kvtier's sessions)",
         "--socket PATH, --clients N, --processes P, --duration S, --working-set BYTES, --dram "
         "BYTES, "
         "--disk BYTES, --seed N, --zipf S, --abstract-bytes BYTES, --prefill-tokens-per-s N, "
         "--daemon-opt KEY=VALUE, --bound-scale F"},
        {"rotate", kvt_bench_rotate,
         "reuse: Gets with keys re-rotated by RoPE vs plain Gets, and the rotation kernel", NULL,
         NULL},
        {"reuse", kvt_bench_reuse,
         "RAG trace on the real model: full prefill, prefix caching, naive reuse, static32 "
         "recompute, kvtier's plan, and the plan held to static32's recompute (tokens "
         "recomputed, TTFT, KL, passkey), LRU vs cost eviction",
         "trace (the RAG trace through every arm), passkey (the two passkey traces), evict (the "
         "LRU against cost-aware replay)",
         "--trials N (passkey trials per trace; 4, quick 1), --requests N (16, quick 3), "
         "--passages N (16, quick 6)"},
        {"evict", kvt_bench_evict,
         "reuse: LRU vs cost-aware eviction under a DRAM limit on a RAG passage trace", NULL, NULL},
        {"lossy", kvt_bench_lossy,
         "lossy KV forms: kernels (reference vs SIMD), and decode on the real model (KL vs q8, "
         "top-1, passkey against bytes kept)",
         "kernels (GB/s of quantize/dequantize 8/4-bit, clustering windows/s), decode (quant, "
         "cluster, with sparse retrieval)",
         "--tokens N, --decode N, --passkey-tokens N, --trials N"},
    };
    const size_t n = sizeof(benches) / sizeof(benches[0]);
    struct kvt_bench_opts opts = {0};
    const char *name = NULL, *json = NULL;
    char *extra[64];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            opts.quick = 1;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            opts.only = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(benches, n);
            return 0;
        } else if (argv[i][0] != '-' && !name) {
            name = argv[i];
        } else if (!strncmp(argv[i], "--", 2) && opts.argc + 2 <= 64) {
            /* The benchmark's own option, with its value when it is not --name=value. */
            extra[opts.argc++] = argv[i];
            if (!strchr(argv[i], '=') && i + 1 < argc && strncmp(argv[i + 1], "--", 2))
                extra[opts.argc++] = argv[++i];
        } else {
            name = NULL;
            break;
        }
    }
    if (!name) {
        usage(benches, n);
        return 2;
    }
    opts.argv = extra;
    if (opts.argc) {
        const struct bench_entry *e = NULL;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(name, benches[i].name))
                e = &benches[i];
        if (!e || !e->args) {
            fprintf(stderr, "kvtier-bench: %s takes no option %s\n", name, extra[0]);
            return 2;
        }
    }
    char dir[] = "/tmp/kvtier-bench-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    opts.work_dir = dir;
    const char *b = getenv("KVT_BUILD");
    opts.bin_dir = b && *b ? b : "build";
    int rc = 0, found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(name, "all") && strcmp(name, benches[i].name))
            continue;
        found = 1;
        if (!strcmp(name, "all") && !benches[i].fn)
            continue;
        rc |= run_one(&benches[i], &opts, strcmp(name, "all") ? json : NULL);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "kvtier-bench: could not remove %s\n", dir);
    if (!found) {
        fprintf(stderr, "kvtier-bench: unknown benchmark %s\n", name);
        return 2;
    }
    return rc;
}
