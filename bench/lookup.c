/*
 * lookup benchmark: round-trip latency (p50, p99) of a Lookup of 32 chained chunk keys through a
 * real kvtierd, one request at a time and pipelined (ops/s); baselines in the same run, over a
 * Unix socket: redis-server PING (the floor of any request/response round trip) and MGET of 32
 * keys (the same question asked of redis), one at a time and pipelined.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bench/bench.h"
#include "bench/util.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define KEYS 32
#define PIPELINE_DEPTH 32

/* A raw protocol connection, to keep many Lookups in flight (the library's calls wait for each
 * answer). */
struct raw {
    int fd;
    uint8_t in[1 << 16];
    size_t have;
};

static int raw_open(struct raw *r, const char *path)
{
    r->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    r->have = 0;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        return -1;
    memcpy(a.sun_path, path, strlen(path) + 1);
    return connect(r->fd, (struct sockaddr *)&a, sizeof(a));
}

static int raw_recv_one(struct raw *r)
{
    for (;;) {
        if (r->have >= 4) {
            uint32_t n = (uint32_t)r->in[0] | (uint32_t)r->in[1] << 8 | (uint32_t)r->in[2] << 16 |
                         (uint32_t)r->in[3] << 24;
            if (r->have >= 4 + n) {
                Kvtier__Response *resp = kvtier__response__unpack(NULL, n, r->in + 4);
                int st = resp ? resp->status : -1;
                int ok = resp && resp->result_case == KVTIER__RESPONSE__RESULT_LOOKUP &&
                         resp->lookup->hits == KEYS;
                kvtier__response__free_unpacked(resp, NULL);
                memmove(r->in, r->in + 4 + n, r->have - 4 - n);
                r->have -= 4 + n;
                return st == 0 && ok ? 0 : -1;
            }
        }
        ssize_t got = recv(r->fd, r->in + r->have, sizeof(r->in) - r->have, 0);
        if (got <= 0)
            return -1;
        r->have += (size_t)got;
    }
}

/* Registers spec on the raw connection (the same uid, so the same tenant and namespace as the
 * library's connection) and returns the daemon's namespace id, or 0. */
static uint32_t raw_register(struct raw *r, const struct kvt_ns_spec *spec)
{
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)spec->model_id;
    sp.layers = spec->layers;
    sp.kv_heads = spec->kv_heads;
    sp.head_dim = spec->head_dim;
    sp.dtype = spec->dtype;
    sp.tokens_per_chunk = spec->tokens_per_chunk;
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    rr.spec = &sp;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = 1;
    req.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    req.register_ns = &rr;
    uint8_t frame[512];
    size_t n = kvtier__request__get_packed_size(&req);
    if (n + 4 > sizeof(frame))
        return 0;
    kvtier__request__pack(&req, frame + 4);
    frame[0] = (uint8_t)n;
    frame[1] = (uint8_t)(n >> 8);
    frame[2] = frame[3] = 0;
    if (send(r->fd, frame, n + 4, MSG_NOSIGNAL) != (ssize_t)(n + 4))
        return 0;
    while (r->have < 4 || r->have < 4 + ((size_t)r->in[0] | (size_t)r->in[1] << 8)) {
        ssize_t got = recv(r->fd, r->in + r->have, sizeof(r->in) - r->have, 0);
        if (got <= 0)
            return 0;
        r->have += (size_t)got;
    }
    size_t len = (size_t)r->in[0] | (size_t)r->in[1] << 8;
    Kvtier__Response *resp = kvtier__response__unpack(NULL, len, r->in + 4);
    uint32_t id = resp && resp->status == 0 && resp->register_ns ? resp->register_ns->ns_id : 0;
    kvtier__response__free_unpacked(resp, NULL);
    memmove(r->in, r->in + 4 + len, r->have - 4 - len);
    r->have -= 4 + len;
    return id;
}

static double pipelined_ops(struct raw *r, uint32_t ns_id, const struct kvt_key *keys, int total)
{
    Kvtier__Key k[KEYS], *kp[KEYS];
    for (int i = 0; i < KEYS; i++) {
        kvtier__key__init(&k[i]);
        k[i].lo = keys[i].lo;
        k[i].hi = keys[i].hi;
        kp[i] = &k[i];
    }
    Kvtier__LookupReq lr = KVTIER__LOOKUP_REQ__INIT;
    lr.ns = ns_id;
    lr.n_keys = KEYS;
    lr.keys = kp;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.op_case = KVTIER__REQUEST__OP_LOOKUP;
    req.lookup = &lr;
    static uint8_t frames[PIPELINE_DEPTH * 1024];
    size_t off = 0;
    for (int i = 0; i < PIPELINE_DEPTH; i++) {
        req.id = (uint64_t)i + 1;
        size_t n = kvtier__request__get_packed_size(&req);
        frames[off] = (uint8_t)n;
        frames[off + 1] = (uint8_t)(n >> 8);
        frames[off + 2] = frames[off + 3] = 0;
        kvtier__request__pack(&req, frames + off + 4);
        off += 4 + n;
    }
    uint64_t t0 = kvt_bench_now_ns();
    for (int done = 0; done < total; done += PIPELINE_DEPTH) {
        if (send(r->fd, frames, off, MSG_NOSIGNAL) != (ssize_t)off)
            return -1;
        for (int i = 0; i < PIPELINE_DEPTH; i++)
            if (raw_recv_one(r))
                return -1;
    }
    return (double)(total / PIPELINE_DEPTH * PIPELINE_DEPTH) * 1e9 /
           (double)(kvt_bench_now_ns() - t0);
}

static void latency_row(struct kvt_bench_report *r, const char *label, double *us, int n,
                        double ops)
{
    kvt_bench_row(r, label);
    kvt_bench_num(r, "p50_us", kvt_bench_percentile(us, (size_t)n, 50));
    kvt_bench_num(r, "p99_us", kvt_bench_percentile(us, (size_t)n, 99));
    if (ops >= 0)
        kvt_bench_num(r, "pipelined_ops_per_s", ops);
}

int kvt_bench_lookup(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    const int n = opts->quick ? 20000 : 200000;
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--log_level=warn", NULL};
    if (kvt_test_daemon_start(&d, args))
        return 1;
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .arena_bytes = 1 << 20};
    struct kvt_client *c = NULL;
    struct kvt_ns_info ns;
    struct kvt_ns_spec spec = {.model_id = "bench-lookup",
                               .layers = 32,
                               .kv_heads = 8,
                               .head_dim = 128,
                               .dtype = KVT_DTYPE_FP16,
                               .tokens_per_chunk = 1}; /* 128 KiB chunks, a Llama-3-8B token */
    double *lat = malloc(sizeof(double) * (size_t)n);
    int rc = 1;
    if (!lat || kvt_connect(&o, &c) || kvt_register(c, &spec, &ns))
        goto out;
    int32_t tokens[KEYS];
    struct kvt_key keys[KEYS];
    for (int i = 0; i < KEYS; i++)
        tokens[i] = 100 + i;
    kvt_chunk_keys(&ns, NULL, tokens, KEYS, keys, KEYS);
    uint8_t *buf = kvt_arena_alloc(c, ns.chunk_bytes);
    for (int i = 0; i < KEYS; i++)
        if (!buf || kvt_put(c, ns.handle, &keys[i], buf, ns.chunk_bytes, 0))
            goto out;

    kvt_bench_progress("kvtier: %d lookups of %d keys", n, KEYS);
    size_t hits;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = kvt_bench_now_ns();
        if (kvt_lookup(c, ns.handle, keys, KEYS, &hits, NULL) || hits != KEYS)
            goto out;
        lat[i] = (double)(kvt_bench_now_ns() - t0) / 1e3;
    }
    struct raw raw;
    double kops = -1;
    if (raw_open(&raw, d.socket_path) == 0) {
        /* A fresh connection without Hello acts for its uid's tenant, like c: registering the
         * same spec names the same namespace. */
        uint32_t ns_id = raw_register(&raw, &spec);
        kops = ns_id ? pipelined_ops(&raw, ns_id, keys, n) : -1;
        close(raw.fd);
    }
    double kvt_p50 = kvt_bench_percentile(lat, (size_t)n, 50);
    latency_row(r, "kvtier lookup 32 keys", lat, n, kops);

    /* The same with every busy-wait off (client spin and daemon busy poll), so the comparison
     * with redis, which blocks in poll() on both sides, is like for like. */
    struct kvt_connect_opts o2 = o;
    o2.spin_us = UINT32_MAX;
    struct kvt_client *c2 = NULL;
    double nospin_p50 = -1;
    if (kvt_connect(&o2, &c2) == 0 && kvt_register(c2, &spec, &ns) == 0 &&
        kvt_config_set(c2, "busy_poll_us", "0") == 0) {
        for (int i = 0; i < n; i++) {
            uint64_t t0 = kvt_bench_now_ns();
            if (kvt_lookup(c2, ns.handle, keys, KEYS, &hits, NULL) || hits != KEYS)
                goto out;
            lat[i] = (double)(kvt_bench_now_ns() - t0) / 1e3;
        }
        nospin_p50 = kvt_bench_percentile(lat, (size_t)n, 50);
        latency_row(r, "kvtier lookup 32 keys no-spin", lat, n, -1);
        kvt_config_set(c2, "busy_poll_us", "50");
    }
    kvt_close(c2);

    struct kvt_bench_redis redis = {0};
    const char *why = NULL;
    redisContext *rc_ = NULL;
    if (kvt_bench_redis_start(&redis, opts->work_dir, &why) == 0)
        rc_ = redisConnectUnix(redis.socket_path);
    if (rc_ && !rc_->err) {
        kvt_bench_progress("redis: %d PING and MGET", n);
        char argvbuf[KEYS][24];
        const char *argv[KEYS + 1];
        argv[0] = "MGET";
        for (int i = 0; i < KEYS; i++) {
            snprintf(argvbuf[i], sizeof(argvbuf[i]), "key%d", i);
            argv[i + 1] = argvbuf[i];
            freeReplyObject(redisCommand(rc_, "SET key%d v", i));
        }
        for (int i = 0; i < n; i++) {
            uint64_t t0 = kvt_bench_now_ns();
            freeReplyObject(redisCommand(rc_, "PING"));
            lat[i] = (double)(kvt_bench_now_ns() - t0) / 1e3;
        }
        uint64_t t0 = kvt_bench_now_ns();
        for (int done = 0; done < n; done += PIPELINE_DEPTH) {
            for (int i = 0; i < PIPELINE_DEPTH; i++)
                redisAppendCommand(rc_, "PING");
            for (int i = 0; i < PIPELINE_DEPTH; i++) {
                void *rep = NULL;
                redisGetReply(rc_, &rep);
                freeReplyObject(rep);
            }
        }
        double pops =
            (double)(n / PIPELINE_DEPTH * PIPELINE_DEPTH) * 1e9 / (double)(kvt_bench_now_ns() - t0);
        double ping_p50 = kvt_bench_percentile(lat, (size_t)n, 50);
        latency_row(r, "redis PING", lat, n, pops);
        for (int i = 0; i < n; i++) {
            t0 = kvt_bench_now_ns();
            freeReplyObject(redisCommandArgv(rc_, KEYS + 1, argv, NULL));
            lat[i] = (double)(kvt_bench_now_ns() - t0) / 1e3;
        }
        latency_row(r, "redis MGET 32 keys", lat, n, -1);
        kvt_bench_ratio(r, "lookup_p50_vs_redis_ping_p50_ratio", kvt_p50 / ping_p50);
        if (nospin_p50 > 0)
            kvt_bench_ratio(r, "lookup_nospin_p50_vs_redis_ping_p50_ratio", nospin_p50 / ping_p50);
        kvt_bench_ratio(r, "lookup_pipelined_vs_redis_ping_pipelined_ratio", kops / pops);
    } else {
        kvt_bench_row(r, "redis PING");
        kvt_bench_null(r, "p50_us", why ? why : "cannot connect to redis-server");
    }
    if (rc_)
        redisFree(rc_);
    kvt_bench_redis_stop(&redis);
    rc = kops < 0;
out:
    free(lat);
    kvt_close(c);
    kvt_test_daemon_stop(&d);
    kvt_test_daemon_cleanup(&d);
    return rc;
}
