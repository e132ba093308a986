/*
 * rotate benchmark: what re-rotating a reused passage's keys costs (docs/reuse.md). For passages
 * of 256 tokens in two geometries (SmolLM2-135M: 30 layers x 3 KV heads x 64; Llama-3-8B: 32 x 8 x
 * 128), stored in a real kvtierd's CPU tier with version info: plain Gets against rotated Gets of
 * the same chunks into the same arena buffer, one request at a time, in the same run; and the
 * rope_shift_f16 kernel alone, reference against the SIMD version, on the keys of one chunk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kernels/kernels.h"
#include "kernels/rope.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define TOKENS 256
#define KEYS 8 /* chunks the Gets go round */

struct geom {
    const char *name;
    uint32_t layers, heads, dim;
};

/* Gets (rotated or not) of KEYS chunks, round robin, into one arena buffer: GB/s. */
static double gets_gbps(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys, uint8_t *buf,
                        size_t bytes, int iters, int rotate)
{
    uint64_t t0 = kvt_bench_now_ns();
    for (int i = 0; i < iters; i++) {
        size_t len = 0;
        int rc = rotate ? kvt_get_rotated(c, ns, &keys[i % KEYS], 0, 5000 + (uint64_t)i, buf, bytes,
                                          &len, NULL)
                        : kvt_get_v(c, ns, &keys[i % KEYS], 0, buf, bytes, &len, NULL);
        if (rc || len != bytes)
            return -1;
    }
    return (double)bytes * iters / (double)(kvt_bench_now_ns() - t0);
}

/* The kernel alone on one chunk's keys, in place: GB/s of keys rotated. */
static double kernel_gbps(const struct kvt_kernels *k, uint16_t *kv, const struct geom *g,
                          int iters)
{
    float cs[KVT_ROPE_DIMS_MAX];
    size_t rows = (size_t)g->layers * TOKENS, stride = 2u * g->heads * g->dim;
    uint64_t t0 = kvt_bench_now_ns();
    for (int i = 0; i < iters; i++) {
        kvt_rope_shift_table(10000.0, g->dim, 17 + i, cs);
        k->rope_shift_f16(kv, rows, stride, g->heads, g->dim, g->dim, KVT_ROPE_NEOX, cs);
    }
    return (double)rows * g->heads * g->dim * 2 * iters / (double)(kvt_bench_now_ns() - t0);
}

int kvt_bench_rotate(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    const struct geom geoms[] = {{"smollm2", 30, 3, 64}, {"llama3_8b", 32, 8, 128}};
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--cpu.arena_bytes=1G", "--log_level=warn", NULL};
    if (kvt_test_daemon_start(&d, args)) {
        fprintf(stderr, "rotate: cannot start kvtierd\n");
        return 1;
    }
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = 64u << 20, .timeout_ms = 30000};
    struct kvt_client *c = NULL;
    int rc = kvt_connect(&o, &c) ? 1 : 0;
    for (size_t gi = 0; gi < 2 && !rc; gi++) {
        const struct geom *g = &geoms[gi];
        struct kvt_ns_spec spec = {.model_id = g->name,
                                   .layers = g->layers,
                                   .kv_heads = g->heads,
                                   .head_dim = g->dim,
                                   .dtype = KVT_DTYPE_FP16,
                                   .tokens_per_chunk = TOKENS,
                                   .rope_theta = 10000.0f};
        struct kvt_ns_info ns;
        size_t bytes = (size_t)g->layers * TOKENS * 2 * g->heads * g->dim * 2;
        uint8_t *buf = NULL;
        if (kvt_register(c, &spec, &ns) || !(buf = kvt_arena_alloc(c, bytes))) {
            rc = 1;
            break;
        }
        /* Finite fp16 values: a pattern of small numbers. */
        uint16_t *kv = (uint16_t *)buf;
        for (size_t i = 0; i < bytes / 2; i++)
            kv[i] = (uint16_t)(0x3000 + (i * 2654435761u >> 20) % 0x0c00);
        struct kvt_key keys[KEYS];
        static float layer_mass[64], token_mass[TOKENS];
        for (uint32_t l = 0; l < g->layers; l++)
            layer_mass[l] = 0.5f;
        for (int k = 0; k < KEYS && !rc; k++) {
            int32_t toks[TOKENS];
            for (int t = 0; t < TOKENS; t++)
                toks[t] = (int32_t)(k * TOKENS + t);
            struct kvt_version_info vi = {.start_pos = 100,
                                          .layers = g->layers,
                                          .n_tokens = TOKENS,
                                          .layer_mass = layer_mass,
                                          .token_mass = token_mass};
            if (kvt_passage_key(&ns, toks, TOKENS, &keys[k]) ||
                kvt_put_v(c, ns.handle, &keys[k], 0, buf, bytes, TOKENS) ||
                kvt_version_set(c, ns.handle, &keys[k], 0, &vi))
                rc = 1;
        }
        if (rc)
            break;
        int iters = (int)((opts->quick ? 256ull : 2048ull) * (1u << 20) / bytes);
        if (iters < 16)
            iters = 16;
        kvt_bench_progress("%s: %d Gets and rotated Gets of %zu-byte passages", g->name, iters,
                           bytes);
        gets_gbps(c, ns.handle, keys, buf, bytes, KEYS, 0); /* warm */
        double plain = 0, rot = 0;
        for (int rep = 0; rep < 2; rep++) { /* interleaved, best of 2 */
            double p = gets_gbps(c, ns.handle, keys, buf, bytes, iters, 0);
            double q = gets_gbps(c, ns.handle, keys, buf, bytes, iters, 1);
            plain = p > plain ? p : plain;
            rot = q > rot ? q : rot;
        }
        uint16_t *scratch = malloc(bytes);
        if (!scratch || plain < 0 || rot < 0) {
            free(scratch);
            rc = 1;
            break;
        }
        memcpy(scratch, buf, bytes);
        const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF), *best = kvt_kernels();
        double kref = kernel_gbps(ref, scratch, g, opts->quick ? 4 : 16);
        double kbest = kernel_gbps(best, scratch, g, opts->quick ? 16 : 64);
        free(scratch);
        char label[64];
        snprintf(label, sizeof(label), "%s %u tokens", g->name, TOKENS);
        kvt_bench_row(r, label);
        kvt_bench_num(r, "chunk_bytes", (double)bytes);
        kvt_bench_num(r, "get_gbps", plain);
        kvt_bench_num(r, "get_rotated_gbps", rot);
        kvt_bench_num(r, "get_us", (double)bytes / plain / 1e3);
        kvt_bench_num(r, "get_rotated_us", (double)bytes / rot / 1e3);
        kvt_bench_num(r, "kernel_ref_gbps", kref);
        kvt_bench_num(r, "kernel_gbps", kbest);
        kvt_bench_str(r, "kernel_variant", best->name);
        char rn[64];
        snprintf(rn, sizeof(rn), "%s_rotated_vs_plain_get_ratio", g->name);
        kvt_bench_ratio(r, rn, rot / plain);
        kvt_arena_free(c, buf);
    }
    kvt_close(c);
    kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rc;
}
