/*
 * Variants of one chunk key through a real kvtierd: two versions of a key coexist (each Get,
 * batch Get and GetRange returns its own bytes), Lookup chains and Deletes name a variant each,
 * everything survives a restart on the same data directory (write-through, kill -9 once durable,
 * write-back with the shutdown flush), a variant is deleted alone, and a request whose Key has no
 * variant field (an older client's frame, encoded by hand here) means variant 0. The CLI names
 * variants as KEY:N.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

/* 2 layers x 1 head x 32 dims x fp16 x (k, v): 128 bytes per token and layer; 32 tokens. */
static const struct kvt_ns_spec spec = {.model_id = "variants-test",
                                        .layers = 2,
                                        .kv_heads = 1,
                                        .head_dim = 32,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 32};
#define TOKENS 32u
#define ROW 128u
#define CHUNK (2u * TOKENS * ROW)

static const char *wt_args[] = {"--tier.write_policy=write-through", "--disk.bytes=64M",
                                "--disk.object_bytes_max=64K", "--disk.codec=none", NULL};
static const char *wb_args[] = {"--tier.write_policy=write-back", "--disk.bytes=64M",
                                "--disk.object_bytes_max=64K", "--disk.codec=none", NULL};

static struct kvt_client *connect_ns(const struct kvt_test_daemon *d, struct kvt_ns_info *ns)
{
    struct kvt_connect_opts o = {
        .socket_path = d->socket_path, .arena_bytes = 4 << 20, .timeout_ms = 5000};
    struct kvt_client *c = NULL;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

static struct kvt_key key_of(uint64_t i)
{
    return (struct kvt_key){i, 0xfa11};
}

/* The bytes of variant v of chunk i: every variant of every chunk differs. */
static void fill_var(uint8_t *buf, uint64_t i, uint32_t v)
{
    kvt_test_fill(buf, CHUNK, i * 1000 + v + 1);
}

static int put_var(struct kvt_client *c, uint32_t ns, uint64_t i, uint32_t v)
{
    static uint8_t buf[CHUNK];
    struct kvt_key k = key_of(i);
    fill_var(buf, i, v);
    return kvt_put_v(c, ns, &k, v, buf, CHUNK, 0);
}

/* Gets variant v of chunk i and checks that it holds that variant's bytes; returns the status. */
static int get_var(struct kvt_client *c, uint32_t ns, uint64_t i, uint32_t v,
                   enum kvt_tier_id *tier)
{
    static uint8_t got[CHUNK], want[CHUNK];
    struct kvt_key k = key_of(i);
    size_t len = 0;
    int rc = kvt_get_v(c, ns, &k, v, got, sizeof(got), &len, tier);
    if (rc == 0) {
        assert_int_equal(len, CHUNK);
        fill_var(want, i, v);
        if (memcmp(got, want, CHUNK) != 0)
            fail_msg("chunk %llu variant %u served with wrong bytes", (unsigned long long)i, v);
    }
    return rc;
}

/* GetRange of rows [t0, t0 + n) of layer 1 of variant v of chunk i, checked against its bytes. */
static int range_var(struct kvt_client *c, uint32_t ns, uint64_t i, uint32_t v, uint32_t t0,
                     uint32_t n, enum kvt_tier_id *tier)
{
    static uint8_t got[CHUNK], whole[CHUNK];
    struct kvt_key k = key_of(i);
    size_t len = 0;
    int rc = kvt_get_range_v(c, ns, &k, v, 1, t0, n, got, sizeof(got), &len, tier);
    if (rc == 0) {
        assert_int_equal(len, n * ROW);
        fill_var(whole, i, v);
        if (memcmp(got, whole + ((size_t)TOKENS + t0) * ROW, (size_t)n * ROW) != 0)
            fail_msg("rows of chunk %llu variant %u wrong", (unsigned long long)i, v);
    }
    return rc;
}

static size_t lookup_chain(struct kvt_client *c, uint32_t ns, const uint64_t *ids,
                           const uint32_t *variants, size_t n)
{
    struct kvt_key keys[8];
    enum kvt_tier_id tiers[8];
    size_t hits = 99;
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        keys[i] = key_of(ids[i]);
    assert_int_equal(kvt_lookup_v(c, ns, keys, variants, n, &hits, tiers), 0);
    return hits;
}

static int delete_var(struct kvt_client *c, uint32_t ns, uint64_t i, uint32_t v)
{
    struct kvt_key k = key_of(i);
    int status = 1;
    assert_int_equal(kvt_delete_v(c, ns, &k, &v, 1, &status), 0);
    return status;
}

/* Two variants of one key are two chunks: own bytes, own Lookup hit, own Delete; the calls
 * without a variant mean variant 0. */
static void test_variants_coexist(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    enum kvt_tier_id tier;

    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, &ns);
    assert_int_equal(put_var(c, ns.handle, 1, 0), 0);
    assert_int_equal(put_var(c, ns.handle, 1, 1), 0);
    assert_int_equal(put_var(c, ns.handle, 1, 1), 0); /* present: nothing to copy */
    assert_int_equal(get_var(c, ns.handle, 1, 0, &tier), 0);
    assert_int_equal(tier, KVT_TIER_CPU);
    assert_int_equal(get_var(c, ns.handle, 1, 1, &tier), 0);
    assert_int_equal(get_var(c, ns.handle, 1, 2, &tier), KVT_E_NOTFOUND);
    {
        /* kvt_get is variant 0. */
        static uint8_t got[CHUNK], want[CHUNK];
        struct kvt_key k = key_of(1);
        size_t len = 0;
        assert_int_equal(kvt_get(c, ns.handle, &k, got, sizeof(got), &len, NULL), 0);
        fill_var(want, 1, 0);
        assert_memory_equal(got, want, CHUNK);
    }

    /* Batches: each item names its variant. */
    static uint8_t b0[CHUNK], b1[CHUNK], b2[CHUNK], p5[CHUNK], want[CHUNK];
    fill_var(p5, 3, 5);
    struct kvt_item put = {.key = key_of(3), .variant = 5, .buf = p5, .len = CHUNK};
    assert_int_equal(kvt_put_batch(c, ns.handle, &put, 1), 0);
    assert_int_equal(put.status, 0);
    struct kvt_item items[3] = {
        {.key = key_of(1), .variant = 1, .buf = b0, .len = CHUNK},
        {.key = key_of(3), .variant = 5, .buf = b1, .len = CHUNK},
        {.key = key_of(3), .variant = 0, .buf = b2, .len = CHUNK},
    };
    assert_int_equal(kvt_get_batch(c, ns.handle, items, 3), 0);
    assert_int_equal(items[0].status, 0);
    fill_var(want, 1, 1);
    assert_memory_equal(b0, want, CHUNK);
    assert_int_equal(items[1].status, 0);
    fill_var(want, 3, 5);
    assert_memory_equal(b1, want, CHUNK);
    assert_int_equal(items[2].status, KVT_E_NOTFOUND);

    /* Lookup: a chain of keys, each with its own variant; it stops at the first one absent. */
    const uint64_t chain[2] = {1, 3};
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){1, 5}, 2), 2);
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){0, 5}, 2), 2);
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){1, 0}, 2), 1);
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){2, 5}, 2), 0);
    assert_int_equal(lookup_chain(c, ns.handle, chain, NULL, 2), 1);

    /* GetRange reads the rows of the variant named. */
    assert_int_equal(range_var(c, ns.handle, 1, 0, 8, 16, &tier), 0);
    assert_int_equal(range_var(c, ns.handle, 1, 1, 8, 16, &tier), 0);
    assert_int_equal(range_var(c, ns.handle, 3, 5, 0, 32, &tier), 0);
    assert_int_equal(range_var(c, ns.handle, 3, 0, 0, 4, &tier), KVT_E_NOTFOUND);

    /* Deleting variant 1 leaves variant 0, and the reverse. */
    assert_int_equal(delete_var(c, ns.handle, 1, 1), 0);
    assert_int_equal(get_var(c, ns.handle, 1, 1, &tier), KVT_E_NOTFOUND);
    assert_int_equal(get_var(c, ns.handle, 1, 0, &tier), 0);
    assert_int_equal(delete_var(c, ns.handle, 1, 1), KVT_E_NOTFOUND);
    assert_int_equal(put_var(c, ns.handle, 1, 1), 0);
    struct kvt_key k1 = key_of(1);
    int status = 1;
    assert_int_equal(kvt_delete(c, ns.handle, &k1, 1, &status), 0); /* variant 0 */
    assert_int_equal(status, 0);
    assert_int_equal(get_var(c, ns.handle, 1, 0, &tier), KVT_E_NOTFOUND);
    assert_int_equal(get_var(c, ns.handle, 1, 1, &tier), 0);

    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

#define N_KEYS 8u

/* Keys 0..7 with variants 0 and 1, keys 0 and 1 with variant 2 too. */
static void put_set(struct kvt_client *c, uint32_t ns)
{
    for (uint64_t i = 0; i < N_KEYS; i++)
        for (uint32_t v = 0; v < (i < 2 ? 3u : 2u); v++)
            assert_int_equal(put_var(c, ns, i, v), 0);
}

/* Every variant of the set reads back with its bytes from the disk tier (DRAM starts empty after
 * a restart), whole and by range; gone[i] names a variant of key i that was deleted (or -1). */
static void check_set_from_disk(struct kvt_client *c, uint32_t ns, const int *gone)
{
    enum kvt_tier_id tier;
    for (uint64_t i = 0; i < N_KEYS; i++) {
        for (uint32_t v = 0; v < 3; v++) {
            int want = v < (i < 2 ? 3u : 2u) && (!gone || gone[i] != (int)v) ? 0 : KVT_E_NOTFOUND;
            assert_int_equal(range_var(c, ns, i, v, 5, 20, &tier), want);
            if (want == 0)
                assert_int_equal(tier, KVT_TIER_DISK);
            assert_int_equal(get_var(c, ns, i, v, &tier), want);
        }
    }
}

/* The variants survive restarts: a clean stop (write-through), a kill -9 once the Puts are
 * answered (write-through: answered when durable), a Delete of one variant answered before a
 * kill -9, and a write-back daemon's shutdown flush. */
static void test_variants_survive_restart(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info ns;
    struct kvt_client *c;
    int gone[N_KEYS];

    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    put_set(c, ns.handle);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    check_set_from_disk(c, ns.handle, NULL);

    /* A new variant, then kill -9: it was durable when its Put was answered. */
    assert_int_equal(put_var(c, ns.handle, 5, 2), 0);
    kvt_close(c);
    kvt_test_daemon_kill(&d);
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    enum kvt_tier_id tier;
    assert_int_equal(get_var(c, ns.handle, 5, 2, &tier), 0);
    assert_int_equal(tier, KVT_TIER_DISK);
    assert_int_equal(delete_var(c, ns.handle, 5, 2), 0);
    check_set_from_disk(c, ns.handle, NULL);

    /* Deletes of one variant each, answered once durable, then kill -9. */
    for (uint64_t i = 0; i < N_KEYS; i++) {
        gone[i] = (int)(i % 2);
        assert_int_equal(delete_var(c, ns.handle, i, (uint32_t)gone[i]), 0);
    }
    kvt_close(c);
    kvt_test_daemon_kill(&d);
    assert_int_equal(kvt_test_daemon_start(&d, wt_args), 0);
    c = connect_ns(&d, &ns);
    check_set_from_disk(c, ns.handle, gone);
    const uint64_t chain[3] = {0, 1, 2};
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){1, 0, 1}, 3), 3);
    assert_int_equal(lookup_chain(c, ns.handle, chain, (const uint32_t[]){1, 1, 1}, 3), 1);
    assert_int_equal(lookup_chain(c, ns.handle, chain, NULL, 3), 0);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);

    /* Write-back: the variants reach the disk in the shutdown flush. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(kvt_test_daemon_start(&d, wb_args), 0);
    c = connect_ns(&d, &ns);
    put_set(c, ns.handle);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    assert_int_equal(kvt_test_daemon_start(&d, wb_args), 0);
    c = connect_ns(&d, &ns);
    check_set_from_disk(c, ns.handle, NULL);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* ---- raw frames --------------------------------------------------------------------------- */

static void send_frame(int fd, const uint8_t *p, size_t n)
{
    uint8_t h[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    assert_int_equal(send(fd, h, 4, MSG_NOSIGNAL), 4);
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void send_request(int fd, Kvtier__Request *req)
{
    static uint8_t buf[CHUNK + 1024];
    size_t n = kvtier__request__get_packed_size(req);
    assert_true(n <= sizeof(buf));
    kvtier__request__pack(req, buf);
    send_frame(fd, buf, n);
}

static Kvtier__Response *read_response(int fd)
{
    return kvt_test_read_response(fd, CHUNK + 4096);
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(0x80 | (v & 0x7f));
    p[n++] = (uint8_t)v;
    return n;
}

static size_t put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 8;
}

/* A Key as a client built before variants encodes it: fields 1 and 2 (fixed64) and nothing
 * else. Returns the bytes written (the field tag, length and 18 bytes of Key). */
static size_t old_key(uint8_t *p, uint64_t i)
{
    struct kvt_key k = key_of(i);
    size_t n = 0;
    p[n++] = 0x12; /* field 2 (key), length-delimited */
    p[n++] = 18;
    p[n++] = 0x09; /* Key.lo: field 1, fixed64 */
    n += put_u64(p + n, k.lo);
    p[n++] = 0x11; /* Key.hi: field 2, fixed64 */
    n += put_u64(p + n, k.hi);
    return n;
}

/* Sends a hand-encoded inline Get (id 10) of key i without a variant field; returns the
 * response. */
static Kvtier__Response *old_get(int fd, uint32_t ns, uint64_t i)
{
    uint8_t g[64], f[96];
    size_t gn = 0, fn = 0;
    g[gn++] = 0x08; /* GetReq.ns */
    gn += put_varint(g + gn, ns);
    gn += old_key(g + gn, i);
    g[gn++] = 0x20; /* GetReq.capacity */
    gn += put_varint(g + gn, CHUNK);
    g[gn++] = 0x28; /* GetReq.want_inline = true */
    g[gn++] = 0x01;
    f[fn++] = 0x08; /* Request.id = 10 */
    f[fn++] = 10;
    f[fn++] = 0x6a; /* Request.get: field 13, length-delimited */
    fn += put_varint(f + fn, gn);
    memcpy(f + fn, g, gn);
    fn += gn;
    send_frame(fd, f, fn);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->id, 10);
    return r;
}

/* A Key without the variant field (what every client before variants sends, and what one
 * sends for variant 0) names variant 0, for Get, Put and Lookup alike; the field, when sent,
 * names its variant. */
static void test_absent_variant_is_zero(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    struct kvt_ns_info nsi;
    static uint8_t want[CHUNK], frame[CHUNK + 64];
    enum kvt_tier_id tier;

    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    struct kvt_client *c = connect_ns(&d, &nsi);
    assert_int_equal(put_var(c, nsi.handle, 7, 0), 0);
    assert_int_equal(put_var(c, nsi.handle, 7, 1), 0);
    uint32_t ns; /* Hello without an arena (inline only) and the test namespace */
    int fd = kvt_test_raw_session(d.socket_path, NULL, &spec, 0, NULL, &ns);
    assert_true(fd >= 0);

    Kvtier__Response *r = old_get(fd, ns, 7);
    assert_int_equal(r->status, 0);
    assert_int_equal(r->get->inline_data.len, CHUNK);
    fill_var(want, 7, 0);
    assert_memory_equal(r->get->inline_data.data, want, CHUNK);
    kvtier__response__free_unpacked(r, NULL);
    /* Only variant 1 of key 8: the old Get misses. */
    assert_int_equal(put_var(c, nsi.handle, 8, 1), 0);
    r = old_get(fd, ns, 8);
    assert_int_equal(r->status, KVT_E_NOTFOUND);
    kvtier__response__free_unpacked(r, NULL);

    /* The same Get through the generated code with variant 1 set gets variant 1. */
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key_of(7).lo;
    k.hi = key_of(7).hi;
    k.variant = 1;
    g.ns = ns;
    g.key = &k;
    g.capacity = CHUNK;
    g.want_inline = 1;
    req.id = 11;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    send_request(fd, &req);
    r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->status, 0);
    fill_var(want, 7, 1);
    assert_int_equal(r->get->inline_data.len, CHUNK);
    assert_memory_equal(r->get->inline_data.data, want, CHUNK);
    kvtier__response__free_unpacked(r, NULL);

    /* A hand-encoded inline Put without a variant stores variant 0. */
    size_t n = 0, pn;
    uint8_t put_hdr[48];
    pn = 0;
    put_hdr[pn++] = 0x08; /* PutReq.ns */
    pn += put_varint(put_hdr + pn, ns);
    pn += old_key(put_hdr + pn, 9);
    put_hdr[pn++] = 0x32; /* PutReq.inline_data: field 6, length-delimited */
    pn += put_varint(put_hdr + pn, CHUNK);
    frame[n++] = 0x08; /* Request.id = 12 */
    frame[n++] = 12;
    frame[n++] = 0x62; /* Request.put: field 12, length-delimited */
    n += put_varint(frame + n, pn + CHUNK);
    memcpy(frame + n, put_hdr, pn);
    n += pn;
    fill_var(frame + n, 9, 0);
    n += CHUNK;
    send_frame(fd, frame, n);
    r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->id, 12);
    assert_int_equal(r->status, 0);
    kvtier__response__free_unpacked(r, NULL);
    assert_int_equal(get_var(c, nsi.handle, 9, 0, &tier), 0);
    assert_int_equal(get_var(c, nsi.handle, 9, 1, &tier), KVT_E_NOTFOUND);
    const uint64_t chain[1] = {9};
    assert_int_equal(lookup_chain(c, nsi.handle, chain, NULL, 1), 1);

    close(fd);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* ---- CLI ---------------------------------------------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* kvtier put/get/lookup/delete accept KEY:N; KEY alone is variant 0. */
static void test_cli_names_variants(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    const char *b = getenv("KVT_BUILD") ? getenv("KVT_BUILD") : "build";
    const char *key = "00000000000000aa00000000000000bb";
    char k[640];

    assert_int_equal(kvt_test_daemon_start(&d, NULL), 0);
    snprintf(k, sizeof(k), "%s/kvtier --socket %s", b, d.socket_path);
    /* One token of the CLI's default geometry is 4096 bytes. */
    assert_int_equal(
        sh("head -c 4096 /dev/urandom > %s/v0 && head -c 4096 /dev/urandom > %s/v3", d.dir, d.dir),
        0);
    assert_int_equal(sh("%s put %s/v0 %s > %s/out0", k, d.dir, key, d.dir), 0);
    assert_int_equal(sh("%s put %s/v3 %s:3 > %s/out3", k, d.dir, key, d.dir), 0);
    assert_int_equal(sh("grep -qx %s %s/out0 && grep -qx %s:3 %s/out3", key, d.dir, key, d.dir), 0);
    assert_int_equal(
        sh("%s get %s:3 %s/got3 2>/dev/null && cmp -s %s/v3 %s/got3", k, key, d.dir, d.dir, d.dir),
        0);
    assert_int_equal(
        sh("%s get %s %s/got0 2>/dev/null && cmp -s %s/v0 %s/got0", k, key, d.dir, d.dir, d.dir),
        0);
    assert_int_equal(sh("%s lookup %s:3 | grep -q '^1 of 1'", k, key), 0);
    assert_int_equal(sh("%s lookup %s:4 | grep -q '^0 of 1'", k, key), 0);
    assert_int_equal(sh("%s delete %s:3 | grep -q deleted", k, key), 0);
    assert_int_equal(sh("%s get %s:3 - >/dev/null 2>&1", k, key), 1);
    assert_int_equal(
        sh("%s get %s %s/again 2>/dev/null && cmp -s %s/v0 %s/again", k, key, d.dir, d.dir, d.dir),
        0);
    /* A variant that is not a decimal uint32 is refused before anything is sent. */
    assert_int_equal(sh("%s get %s:x - >/dev/null 2>&1", k, key), 2);
    assert_int_equal(sh("%s get %s:4294967296 - >/dev/null 2>&1", k, key), 2);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_variants_coexist),
        cmocka_unit_test(test_variants_survive_restart),
        cmocka_unit_test(test_absent_variant_is_zero),
        cmocka_unit_test(test_cli_names_variants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
