/*
 * The C side of client/python/bench/bench_python.py: the same loops the Python benchmark runs,
 * through libkvtier directly, against the same daemon, so the two are compared in one run.
 *
 *   cbench SOCKET get4k|lookup32|get4m SECONDS
 *
 * get4k: kvt_get of one 4 KiB chunk into an arena buffer; lookup32: kvt_lookup of 32 chained
 * keys that are all cached; get4m: kvt_get of 4 MiB chunks (8 of them, in turn) into an arena
 * buffer, the daemon copying straight into it. Prints one JSON line: ops, seconds, ops/s and
 * bytes/s. The namespaces and chunks match bench_python.py's (same model ids and tokens), so
 * whichever side runs first stores them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/time.h"
#include "kvtier/kvtier.h"

#define LOOKUP_KEYS 32
#define BIG_CHUNKS 8

static int fail(const char *what, int rc)
{
    fprintf(stderr, "cbench: %s: %s\n", what, kvt_strerror(rc));
    return 1;
}

/* Puts chunk i of ns (tokens i*tpc .. filled with a pattern) unless it is there. */
static int put_chunks(struct kvt_client *c, const struct kvt_ns_info *ns, size_t n,
                      struct kvt_key *keys)
{
    size_t n_tok = n * ns->tokens_per_chunk;
    int32_t *tok = malloc(n_tok * sizeof(*tok));
    uint8_t *buf = kvt_arena_alloc(c, ns->chunk_bytes);
    if (!tok || !buf) {
        free(tok);
        return KVT_E_NOMEM;
    }
    for (size_t i = 0; i < n_tok; i++)
        tok[i] = (int32_t)i;
    kvt_chunk_keys(ns, NULL, tok, n_tok, keys, n);
    free(tok);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        memset(buf, (int)(i * 37 + 1), ns->chunk_bytes);
        rc = kvt_put(c, ns->handle, &keys[i], buf, ns->chunk_bytes, 0);
    }
    kvt_arena_free(c, buf);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: cbench SOCKET get4k|lookup32|get4m SECONDS\n");
        return 2;
    }
    const char *mode = argv[2];
    uint64_t dur_ns = (uint64_t)(atof(argv[3]) * 1e9);
    struct kvt_connect_opts o = {.socket_path = argv[1], .arena_bytes = 64ull << 20};
    struct kvt_client *c;
    int rc = kvt_connect(&o, &c);
    if (rc)
        return fail("connect", rc);
    int big = !strcmp(mode, "get4m");
    /* 4 KiB: 1 layer x 2 x 1 head x 64 x fp16 x 16 tokens; 4 MiB: 16 x 2 x 8 x 128 x fp16 x 64. */
    struct kvt_ns_spec spec = {.model_id = big ? "bench-py-4m" : "bench-py-4k",
                               .layers = big ? 16 : 1,
                               .kv_heads = big ? 8 : 1,
                               .head_dim = big ? 128 : 64,
                               .dtype = KVT_DTYPE_FP16,
                               .tokens_per_chunk = big ? 64 : 16};
    struct kvt_ns_info ns;
    if ((rc = kvt_register(c, &spec, &ns)))
        return fail("register", rc);
    struct kvt_key keys[LOOKUP_KEYS];
    size_t n_keys = big ? BIG_CHUNKS : LOOKUP_KEYS;
    if ((rc = put_chunks(c, &ns, n_keys, keys)))
        return fail("put", rc);
    void *dst = kvt_arena_alloc(c, ns.chunk_bytes);
    if (!dst)
        return fail("arena", KVT_E_NOMEM);

    uint64_t ops = 0, bytes = 0, t0 = kvt_now_ns(), t = t0;
    while (t - t0 < dur_ns) {
        for (int k = 0; k < 16; k++, ops++) {
            size_t len = 0, hits = 0;
            if (!strcmp(mode, "lookup32")) {
                rc = kvt_lookup(c, ns.handle, keys, LOOKUP_KEYS, &hits, NULL);
                if (!rc && hits != LOOKUP_KEYS)
                    rc = KVT_E_NOTFOUND;
            } else {
                rc = kvt_get(c, ns.handle, &keys[big ? ops % BIG_CHUNKS : 0], dst, ns.chunk_bytes,
                             &len, NULL);
                bytes += len;
            }
            if (rc)
                return fail(mode, rc);
        }
        t = kvt_now_ns();
    }
    double s = (double)(t - t0) / 1e9;
    printf("{\"mode\": \"%s\", \"ops\": %llu, \"seconds\": %.3f, \"ops_per_s\": %.1f, "
           "\"bytes_per_s\": %.1f}\n",
           mode, (unsigned long long)ops, s, (double)ops / s, (double)bytes / s);
    kvt_close(c);
    return 0;
}
