/*
 * host benchmark: Put and Get of 64 KiB, 1 MiB and 4 MiB chunks through a real kvtierd's CPU tier
 * over the shared-memory path, by one client (one request at a time, and 8 in flight) and by
 * several; baselines in the same run: memcpy of the same bytes over the same working set (the
 * physical limit) and redis-server SET/GET of the same bytes over a Unix socket (what a user would
 * pick instead).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define MIB (1024u * 1024u)
#define THREADS_MAX 4

struct sized_ns {
    struct kvt_ns_info info;
    size_t bytes;
};

static int make_ns(struct kvt_client *c, size_t bytes, struct kvt_ns_info *out)
{
    /* 1 layer x 1 head x 64 dims x fp16 x (k, v) = 256 bytes per token. */
    struct kvt_ns_spec spec = {.model_id = "bench-host",
                               .layers = 1,
                               .kv_heads = 1,
                               .head_dim = 64,
                               .dtype = KVT_DTYPE_FP16,
                               .tokens_per_chunk = (uint32_t)(bytes / 256)};
    return kvt_register(c, &spec, out);
}

static struct kvt_client *open_client(const char *sock, uint64_t arena)
{
    struct kvt_connect_opts o = {.socket_path = sock, .arena_bytes = arena, .timeout_ms = 30000};
    struct kvt_client *c = NULL;
    return kvt_connect(&o, &c) ? NULL : c;
}

static double put_gbps(struct kvt_client *c, const struct kvt_ns_info *ns, size_t bytes, int iters,
                       uint64_t key_base)
{
    uint8_t *buf = kvt_arena_alloc(c, bytes);
    if (!buf)
        return -1;
    kvt_bench_fill(buf, bytes, 7);
    uint64_t t0 = kvt_bench_now_ns();
    for (int i = 0; i < iters; i++) {
        struct kvt_key k = {key_base + (uint64_t)i, bytes};
        if (kvt_put(c, ns->handle, &k, buf, bytes, 0)) {
            kvt_arena_free(c, buf);
            return -1;
        }
    }
    double gbps = (double)bytes * iters / (double)(kvt_bench_now_ns() - t0);
    kvt_arena_free(c, buf);
    return gbps;
}

/* Gets round-robin over n_keys stored chunks into one warm arena buffer. */
static double get_gbps(struct kvt_client *c, const struct kvt_ns_info *ns, size_t bytes, int iters,
                       uint64_t key_base, int n_keys)
{
    uint8_t *buf = kvt_arena_alloc(c, bytes);
    if (!buf)
        return -1;
    memset(buf, 0, bytes);
    size_t len;
    uint64_t t0 = kvt_bench_now_ns();
    for (int i = 0; i < iters; i++) {
        struct kvt_key k = {key_base + (uint64_t)(i % n_keys), bytes};
        if (kvt_get(c, ns->handle, &k, buf, bytes, &len, NULL) || len != bytes) {
            kvt_arena_free(c, buf);
            return -1;
        }
    }
    double gbps = (double)bytes * iters / (double)(kvt_bench_now_ns() - t0);
    kvt_arena_free(c, buf);
    return gbps;
}

/* Same as get_gbps with depth requests in flight (kvt_get_batch), as an engine fetching a
 * layer's chunks does. */
static double get_pipelined_gbps(struct kvt_client *c, const struct kvt_ns_info *ns, size_t bytes,
                                 int iters, uint64_t key_base, int n_keys, int depth)
{
    struct kvt_item items[16];
    uint8_t *buf = kvt_arena_alloc(c, bytes * (size_t)depth);
    if (!buf || depth > 16)
        return -1;
    memset(buf, 0, bytes * (size_t)depth);
    uint64_t t0 = kvt_bench_now_ns();
    for (int i = 0; i < iters; i += depth) {
        for (int j = 0; j < depth; j++)
            items[j] = (struct kvt_item){.key = {key_base + (uint64_t)((i + j) % n_keys), bytes},
                                         .buf = buf + (size_t)j * bytes,
                                         .len = bytes};
        if (kvt_get_batch(c, ns->handle, items, (size_t)depth))
            return -1;
        for (int j = 0; j < depth; j++)
            if (items[j].status || items[j].len != bytes)
                return -1;
    }
    double gbps = (double)bytes * (iters / depth * depth) / (double)(kvt_bench_now_ns() - t0);
    kvt_arena_free(c, buf);
    return gbps;
}

struct thread_arg {
    const char *sock;
    size_t bytes;
    int iters;
    uint64_t key_base;
    int n_keys;
    double gbps;
};

static void *get_thread(void *p)
{
    struct thread_arg *a = p;
    struct kvt_client *c = open_client(a->sock, a->bytes + MIB);
    struct kvt_ns_info ns;
    a->gbps = -1;
    if (c && !make_ns(c, a->bytes, &ns))
        a->gbps = get_gbps(c, &ns, a->bytes, a->iters, a->key_base, a->n_keys);
    kvt_close(c);
    return NULL;
}

static double redis_gbps(redisContext *rc, size_t bytes, int iters, int is_get)
{
    uint8_t *buf = malloc(bytes);
    if (!buf)
        return -1;
    kvt_bench_fill(buf, bytes, 9);
    double gbps = -1;
    uint64_t t0 = kvt_bench_now_ns();
    int i = 0;
    for (; i < iters; i++) {
        redisReply *r = is_get ? redisCommand(rc, "GET k%d", i % 8)
                               : redisCommand(rc, "SET k%d %b", i % 8, buf, bytes);
        int ok = r && (is_get ? r->type == REDIS_REPLY_STRING && (size_t)r->len == bytes
                              : r->type == REDIS_REPLY_STATUS);
        freeReplyObject(r);
        if (!ok)
            break;
    }
    if (i == iters)
        gbps = (double)bytes * iters / (double)(kvt_bench_now_ns() - t0);
    free(buf);
    return gbps;
}

int kvt_bench_host(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    const size_t sizes[] = {64 * 1024, MIB, 4 * MIB};
    const char *names[] = {"64k", "1m", "4m"};
    const uint64_t budget = opts->quick ? 512ull * MIB : 4096ull * MIB;
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--cpu.arena_bytes=1G", "--cpu.page_bytes=32M", "--cpu.prefault=true",
                          "--log_level=warn", NULL};
    if (kvt_test_daemon_start(&d, args)) {
        fprintf(stderr, "host: cannot start kvtierd\n");
        return 1;
    }
    struct kvt_bench_redis redis = {0};
    const char *redis_why = NULL;
    int have_redis = kvt_bench_redis_start(&redis, opts->work_dir, &redis_why) == 0;
    redisContext *rc = have_redis ? redisConnectUnix(redis.socket_path) : NULL;
    if (rc && rc->err) {
        redisFree(rc);
        rc = NULL;
        redis_why = "cannot connect to redis-server";
    }
    struct kvt_client *c = open_client(d.socket_path, 64 * MIB);
    int rcode = c ? 0 : 1;
    for (size_t s = 0; s < 3 && !rcode; s++) {
        size_t bytes = sizes[s];
        int iters = (int)(budget / bytes);
        int n_keys = (int)((256ull * MIB) / bytes);
        if (n_keys > 64)
            n_keys = 64;
        struct kvt_ns_info ns;
        if (make_ns(c, bytes, &ns)) {
            rcode = 1;
            break;
        }
        kvt_bench_progress("%s: memcpy, put, get (%d iterations)", names[s], iters);
        /* Get copies from n_keys stored chunks into one buffer; Put copies one buffer into slots
         * spread over the 1 GiB arena. The baselines repeat exactly those movements with libc
         * memcpy; "warm" copies between two cached buffers, for reference. */
        double mc = kvt_bench_memcpy_gbps(bytes, iters, n_keys, 1);
        double mc_put = kvt_bench_memcpy_gbps(bytes, iters, 1, (int)(1024ull * MIB / bytes));
        double mc_warm = kvt_bench_memcpy_gbps(bytes, iters, 1, 1);
        /* Warm up the daemon's slots and the client's buffer, then measure. */
        uint64_t base = 1000000ull * (s + 1);
        put_gbps(c, &ns, bytes, n_keys, base);
        get_gbps(c, &ns, bytes, n_keys, base, n_keys);
        double put = put_gbps(c, &ns, bytes, iters, base + 100000);
        /* The measured puts may have evicted the first keys: store them again. */
        put_gbps(c, &ns, bytes, n_keys, base + 500000);
        double get = get_gbps(c, &ns, bytes, iters, base + 500000, n_keys);
        double getp = get_pipelined_gbps(c, &ns, bytes, iters, base + 500000, n_keys, 8);

        struct thread_arg ta[THREADS_MAX];
        pthread_t th[THREADS_MAX];
        for (int t = 0; t < THREADS_MAX; t++) {
            ta[t] = (struct thread_arg){d.socket_path, bytes,  iters / THREADS_MAX,
                                        base + 500000, n_keys, 0};
            pthread_create(&th[t], NULL, get_thread, &ta[t]);
        }
        double multi = 0;
        for (int t = 0; t < THREADS_MAX; t++) {
            pthread_join(th[t], NULL);
            multi += ta[t].gbps > 0 ? ta[t].gbps : 0;
        }

        double rset = -1, rget = -1;
        if (rc) {
            int riters = iters / 4 > 8 ? iters / 4 : 8;
            rset = redis_gbps(rc, bytes, riters, 0);
            rget = redis_gbps(rc, bytes, riters, 1);
        }
        char label[64];
        snprintf(label, sizeof(label), "chunk %s", names[s]);
        kvt_bench_row(r, label);
        kvt_bench_num(r, "chunk_bytes", (double)bytes);
        kvt_bench_num(r, "memcpy_get_pattern_gbps", mc);
        kvt_bench_num(r, "memcpy_put_pattern_gbps", mc_put);
        kvt_bench_num(r, "memcpy_warm_gbps", mc_warm);
        kvt_bench_num(r, "kvtier_put_gbps", put);
        kvt_bench_num(r, "kvtier_get_gbps", get);
        kvt_bench_num(r, "kvtier_get_depth8_gbps", getp);
        kvt_bench_num(r, "kvtier_get_4clients_gbps", multi);
        if (rc) {
            kvt_bench_num(r, "redis_set_gbps", rset);
            kvt_bench_num(r, "redis_get_gbps", rget);
        } else {
            kvt_bench_null(r, "redis_set_gbps", redis_why);
            kvt_bench_null(r, "redis_get_gbps", redis_why);
        }
        char rn[64];
        snprintf(rn, sizeof(rn), "get_%s_vs_memcpy_ratio", names[s]);
        kvt_bench_ratio(r, rn, get / mc);
        snprintf(rn, sizeof(rn), "get_depth8_%s_vs_memcpy_ratio", names[s]);
        kvt_bench_ratio(r, rn, getp / mc);
        snprintf(rn, sizeof(rn), "put_%s_vs_memcpy_ratio", names[s]);
        kvt_bench_ratio(r, rn, put / mc_put);
        if (rc && rget > 0 && rset > 0) {
            snprintf(rn, sizeof(rn), "get_%s_vs_redis_ratio", names[s]);
            kvt_bench_ratio(r, rn, get / rget);
            snprintf(rn, sizeof(rn), "put_%s_vs_redis_ratio", names[s]);
            kvt_bench_ratio(r, rn, put / rset);
        }
        if (put < 0 || get < 0 || getp < 0)
            rcode = 1;
    }
    kvt_close(c);
    if (rc)
        redisFree(rc);
    kvt_bench_redis_stop(&redis);
    kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rcode;
}
