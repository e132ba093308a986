/*
 * Bad input sent to a running daemon over raw sockets: every case checks the exact error, and that
 * a bystander connection and the data it stored are unaffected afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "common/checksum.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

static struct kvt_test_daemon dp;
static const char *raw_path; /* the daemon raw_connect() talks to: dp unless a test says so */
static struct kvt_client *bystander;
static struct kvt_ns_info bns;
static struct kvt_key bkey = {0x1234, 0x5678};
static uint8_t bdata[2048];

static const struct kvt_ns_spec spec = {.model_id = "bad-input",
                                        .layers = 2,
                                        .kv_heads = 2,
                                        .head_dim = 8,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};
#define CHUNK_BYTES 2048
/* The daemon's id of the bystander's namespace: the first slot, first generation. */
#define BNS_DAEMON_ID ((1u << 17) | 1u)

static int setup(void **state)
{
    (void)state;
    static char tenants[128];
    /* "mallory" is a tenant this uid may act for; "victim" is one it may not. */
    snprintf(tenants, sizeof(tenants), "--tenants=mallory=uid:%u;victim=uid:4000000", getuid());
    const char *args[] = {"--max_clients=8", "--max_frame_bytes=64K", "--inline_max_bytes=16K",
                          tenants, NULL};
    if (kvt_test_daemon_start(&dp, args))
        return -1;
    raw_path = dp.socket_path;
    struct kvt_connect_opts o = {.socket_path = dp.socket_path, .arena_bytes = 1 << 20};
    if (kvt_connect(&o, &bystander) || kvt_register(bystander, &spec, &bns))
        return -1;
    for (size_t i = 0; i < sizeof(bdata); i++)
        bdata[i] = (uint8_t)(i * 31 + 7);
    return kvt_put(bystander, bns.handle, &bkey, bdata, sizeof(bdata), 0);
}

static int teardown(void **state)
{
    (void)state;
    kvt_close(bystander);
    int rc = kvt_test_daemon_stop(&dp);
    kvt_test_daemon_cleanup(&dp);
    return rc;
}

/* The bystander still works and its chunk is intact. */
static void assert_daemon_healthy(void)
{
    uint8_t out[CHUNK_BYTES];
    size_t len = 0;
    assert_int_equal(kvt_ping(bystander), 0);
    assert_int_equal(kvt_get(bystander, bns.handle, &bkey, out, sizeof(out), &len, NULL), 0);
    assert_int_equal(len, sizeof(bdata));
    assert_memory_equal(out, bdata, sizeof(bdata));
}

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, raw_path, strnlen(raw_path, sizeof(a.sun_path) - 1));
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_raw(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* With KVT_FUZZ_SEED_DIR set, every frame these tests send is also written there as one file:
 * the seeds of the frame fuzzer (tests/fuzz/seeds, make fuzz). */
static void save_seed(const uint8_t *h, const void *p, uint32_t n)
{
    static unsigned seq;
    const char *dir = getenv("KVT_FUZZ_SEED_DIR");
    if (!dir || n > 65536 - 4)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/bad-input-%03u", dir, seq++);
    FILE *f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(h, 1, 4, f);
    if (n)
        fwrite(p, 1, n, f);
    fclose(f);
}

static void send_frame(int fd, const void *p, uint32_t n)
{
    uint8_t h[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    save_seed(h, p, n);
    send_raw(fd, h, 4);
    if (n)
        send_raw(fd, p, n);
}

static void send_request(int fd, Kvtier__Request *req)
{
    uint8_t buf[8192];
    size_t n = kvtier__request__get_packed_size(req);
    assert_true(n <= sizeof(buf));
    kvtier__request__pack(req, buf);
    send_frame(fd, buf, (uint32_t)n);
}

/* Reads one response frame; NULL when the connection ended first. */
static Kvtier__Response *read_response(int fd)
{
    return kvt_test_read_response(fd, 70000);
}

static int expect_status(int fd, uint64_t id)
{
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->id, id);
    int st = r->status;
    assert_true(st == 0 || (r->error && *r->error)); /* every error says why */
    kvtier__response__free_unpacked(r, NULL);
    return st;
}

static void assert_closed(int fd)
{
    char b;
    struct pollfd pf = {fd, POLLIN, 0};
    assert_int_equal(poll(&pf, 1, 5000), 1);
    assert_int_equal(recv(fd, &b, 1, 0), 0);
}

/* Sends a Hello (tenant may be NULL) announcing arena_bytes, passing pass_fd (-1: none) with it as
 * SCM_RIGHTS, the way a client shares its arena. */
static void send_hello(int fd, uint64_t id, const char *tenant, uint64_t arena_bytes, int pass_fd)
{
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = 1;
    h.tenant = (char *)tenant;
    h.arena_bytes = arena_bytes;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    uint8_t buf[512];
    size_t n = kvtier__request__get_packed_size(&req);
    kvtier__request__pack(&req, buf + 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = buf[3] = 0;
    save_seed(buf, buf + 4, (uint32_t)n);
    assert_int_equal(kvt_test_send_with_fd(fd, buf, n + 4, pass_fd), 0);
}

static uint32_t register_ns_id(int fd, uint64_t id, const struct kvt_ns_spec *sp_in);

/* A raw connection with Hello (and optionally an arena) and the test namespace registered. */
static int raw_session(uint64_t arena_bytes, uint8_t **arena_out, uint32_t *ns_out,
                       const char *tenant)
{
    int fd = raw_connect();
    int mfd = -1;
    if (arena_bytes) {
        mfd = memfd_create("test-arena", MFD_ALLOW_SEALING);
        assert_int_equal(ftruncate(mfd, (off_t)arena_bytes), 0);
        assert_int_equal(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        *arena_out = mmap(NULL, arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        assert_true(*arena_out != MAP_FAILED);
    }
    send_hello(fd, 1, tenant, arena_bytes, mfd);
    if (mfd >= 0)
        close(mfd);
    assert_int_equal(expect_status(fd, 1), 0);

    *ns_out = register_ns_id(fd, 2, &spec);
    return fd;
}

/* A raw Put of arena[off, off + len) with its checksum (arena NULL: a checksum of 0, for requests
 * that must be refused before any copy). */
static int put_status(int fd, uint64_t id, uint32_t ns, const uint8_t *arena, uint64_t off,
                      uint64_t len, uint32_t n_tokens)
{
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    Kvtier__Checksum ck = KVTIER__CHECKSUM__INIT;
    ck.value = arena ? kvt_payload_checksum(arena + off, len) : 0;
    p.checksum = &ck;
    k.lo = id * 1000 + 1;
    k.hi = 99;
    p.ns = ns;
    p.key = &k;
    p.offset = off;
    p.length = len;
    p.n_tokens = n_tokens;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_PUT;
    req.put = &p;
    send_request(fd, &req);
    return expect_status(fd, id);
}

static void test_truncated_frame(void **state)
{
    (void)state;
    int fd = raw_connect();
    uint8_t partial[4 + 10] = {100, 0, 0, 0, 8, 1};
    send_raw(fd, partial, sizeof(partial));
    shutdown(fd, SHUT_WR);
    assert_int_equal(expect_status(fd, 0), KVT_E_TRUNCATED);
    assert_closed(fd);
    close(fd);
    assert_daemon_healthy();
}

static void test_frame_too_long(void **state)
{
    (void)state;
    int fd = raw_connect();
    uint8_t hdr[4] = {0, 0, 0x10, 0}; /* 1 MiB > max_frame_bytes 64K */
    send_raw(fd, hdr, 4);
    assert_int_equal(expect_status(fd, 0), KVT_E_TOOBIG);
    assert_closed(fd);
    close(fd);
    assert_daemon_healthy();
}

static void test_unparsable_protobuf(void **state)
{
    (void)state;
    int fd = raw_connect();
    uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x22, 0x99};
    send_frame(fd, junk, sizeof(junk));
    assert_int_equal(expect_status(fd, 0), KVT_E_BADFRAME);
    assert_closed(fd);
    close(fd);
    assert_daemon_healthy();
}

static void test_unknown_operation(void **state)
{
    (void)state;
    int fd = raw_connect();
    /* id = 7 (field 1, varint), then field 99 (length-delimited, empty): a well-formed message
     * carrying an operation this daemon does not know. */
    uint8_t msg[] = {0x08, 0x07, 0x9a, 0x06, 0x00};
    send_frame(fd, msg, sizeof(msg));
    assert_int_equal(expect_status(fd, 7), KVT_E_BADOP);
    /* The connection stays usable after a well-formed but unknown request. */
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__PingReq p = KVTIER__PING_REQ__INIT;
    req.id = 8;
    req.op_case = KVTIER__REQUEST__OP_PING;
    req.ping = &p;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 8), 0);
    close(fd);
    assert_daemon_healthy();
}

static void test_offsets_outside_arena(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(64 * 1024, &arena, &ns, NULL);
    assert_int_equal(put_status(fd, 10, ns, NULL, 64 * 1024 - 1024, CHUNK_BYTES, 0), KVT_E_RANGE);
    assert_int_equal(put_status(fd, 11, ns, NULL, UINT64_MAX - 10, CHUNK_BYTES, 0), KVT_E_RANGE);
    assert_int_equal(put_status(fd, 12, ns, arena, 0, CHUNK_BYTES, 0), 0);
    /* Get into a region outside the arena. */
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = 12 * 1000 + 1;
    k.hi = 99;
    g.ns = ns;
    g.key = &k;
    g.offset = 63 * 1024;
    g.capacity = CHUNK_BYTES;
    req.id = 13;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 13), KVT_E_RANGE);
    g.offset = 0;
    req.id = 14;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 14), 0);
    munmap(arena, 64 * 1024);
    close(fd);
    assert_daemon_healthy();
}

static void test_unsealed_arena_refused(void **state)
{
    (void)state;
    /* A plain memfd without F_SEAL_SHRINK could be truncated under the daemon's mapping. */
    int fd = raw_connect();
    int mfd = memfd_create("unsealed", 0);
    assert_int_equal(ftruncate(mfd, 65536), 0);
    send_hello(fd, 3, NULL, 65536, mfd);
    assert_int_equal(expect_status(fd, 3), KVT_E_INVAL);
    close(mfd);
    close(fd);
    assert_daemon_healthy();
}

static void test_wrong_size_for_geometry(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(64 * 1024, &arena, &ns, NULL);
    assert_int_equal(put_status(fd, 20, ns, NULL, 0, CHUNK_BYTES - 1, 0), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 21, ns, NULL, 0, CHUNK_BYTES + 128, 0), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 22, ns, NULL, 0, 3 * 128, 4), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 23, ns, NULL, 0, 17 * 128, 17), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 24, ns, arena, 0, 4 * 128, 4), 0);
    munmap(arena, 64 * 1024);
    close(fd);
    /* Through the library too. */
    uint8_t buf[CHUNK_BYTES] = {0};
    struct kvt_key k = {5, 5};
    assert_int_equal(kvt_put(bystander, bns.handle, &k, buf, 100, 0), KVT_E_GEOMETRY);
    assert_daemon_healthy();
}

static void test_unknown_namespace(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(64 * 1024, &arena, &ns, NULL);
    assert_int_equal(put_status(fd, 30, 9999, NULL, 0, CHUNK_BYTES, 0), KVT_E_NONS);
    assert_int_equal(put_status(fd, 31, 0, NULL, 0, CHUNK_BYTES, 0), KVT_E_NONS);
    munmap(arena, 64 * 1024);
    close(fd);
    assert_daemon_healthy();
}

static void test_other_tenants_namespace(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(64 * 1024, &arena, &ns, "mallory");
    /* bns belongs to the tenant of this uid, "uid-N": every operation on it is refused. */
    assert_int_equal(put_status(fd, 40, BNS_DAEMON_ID, NULL, 0, CHUNK_BYTES, 0), KVT_E_ACCESS);
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = bkey.lo;
    k.hi = bkey.hi;
    g.ns = BNS_DAEMON_ID;
    g.key = &k;
    g.capacity = CHUNK_BYTES;
    req.id = 41;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 41), KVT_E_ACCESS);
    Kvtier__DeleteReq d = KVTIER__DELETE_REQ__INIT;
    Kvtier__Key *kp = &k;
    d.ns = BNS_DAEMON_ID;
    d.n_keys = 1;
    d.keys = &kp;
    Kvtier__Request dreq = KVTIER__REQUEST__INIT;
    dreq.id = 42;
    dreq.op_case = KVTIER__REQUEST__OP_DEL;
    dreq.del = &d;
    send_request(fd, &dreq);
    assert_int_equal(expect_status(fd, 42), KVT_E_ACCESS);
    munmap(arena, 64 * 1024);
    close(fd);
    assert_daemon_healthy();
}

/* The reuse, hold and rotation requests a library never sends malformed: each gets its error
 * with a reason, and the connection and daemon go on. */
static void test_reuse_and_hold_frames(void **state)
{
    (void)state;
    uint8_t *arena = NULL;
    uint32_t ns = 0;
    int fd = raw_session(1 << 20, &arena, &ns, NULL);
    uint64_t id = 100;
    Kvtier__Key k = KVTIER__KEY__INIT, *kp[1] = {&k};
    k.lo = 0x5151;

    Kvtier__ReleaseReq rel = KVTIER__RELEASE_REQ__INIT;
    const uint64_t holds[] = {0, 1, 0xffffffffffffffffull, (uint64_t)7 << 32 | 3};
    for (size_t i = 0; i < 4; i++) {
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        rel.hold = holds[i];
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_RELEASE;
        req.release = &rel;
        send_request(fd, &req);
        assert_int_equal(expect_status(fd, id), KVT_E_NOHOLD);
    }

    /* VersionSet: no key, a variant past 31, too long a prefix, a chunk never stored. */
    Kvtier__VersionSetReq vs = KVTIER__VERSION_SET_REQ__INIT;
    vs.ns = ns;
    const struct {
        Kvtier__Key *key;
        uint32_t variant;
        size_t n_prefix;
        int want;
    } vcases[] = {{NULL, 0, 0, KVT_E_INVAL},
                  {&k, 99, 0, KVT_E_INVAL},
                  {&k, 0, 300, KVT_E_TOOBIG},
                  {&k, 0, 0, KVT_E_NOTFOUND}};
    static Kvtier__Key *many[300];
    for (size_t i = 0; i < 300; i++)
        many[i] = &k;
    for (size_t i = 0; i < 4; i++) {
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        vs.key = vcases[i].key;
        k.variant = vcases[i].variant;
        vs.n_prefix = vcases[i].n_prefix;
        vs.prefix = many;
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_VERSION_SET;
        req.version_set = &vs;
        send_request(fd, &req);
        assert_int_equal(expect_status(fd, id), vcases[i].want);
    }
    k.variant = 0;

    /* ChunkLookup: counts that disagree, too many passages or indices, a NaN or negative alpha. */
    uint64_t pos[1] = {0};
    Kvtier__ChunkLookupReq cl = KVTIER__CHUNK_LOOKUP_REQ__INIT;
    cl.ns = ns;
    const struct {
        size_t n_passages, n_pos;
        uint32_t recompute_max;
        float alpha;
        int want;
    } ccases[] = {{1, 0, 0, 0, KVT_E_INVAL},         {300, 300, 0, 0, KVT_E_TOOBIG},
                  {1, 1, 1u << 30, 0, KVT_E_TOOBIG}, {1, 1, 0, NAN, KVT_E_INVAL},
                  {1, 1, 0, -1.0f, KVT_E_INVAL},     {1, 1, 16, 0, 0}};
    static uint64_t many_pos[300];
    for (size_t i = 0; i < 6; i++) {
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        cl.n_passages = ccases[i].n_passages;
        cl.passages = ccases[i].n_passages > 1 ? many : kp;
        cl.n_start_pos = ccases[i].n_pos;
        cl.start_pos = ccases[i].n_pos > 1 ? many_pos : pos;
        cl.recompute_max = ccases[i].recompute_max;
        cl.alpha = ccases[i].alpha;
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_CHUNK_LOOKUP;
        req.chunk_lookup = &cl;
        send_request(fd, &req);
        assert_int_equal(expect_status(fd, id), ccases[i].want);
    }

    /* A rotated Get inline, or of a chunk without version info; a hold on a miss. */
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    g.ns = ns;
    g.key = &k;
    g.rotate = 1;
    g.rotate_to = 1u << 30;
    g.want_inline = 1;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = ++id;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, id), KVT_E_INVAL);
    assert_int_equal(put_status(fd, ++id, ns, arena, 0, CHUNK_BYTES, 0), 0);
    k.lo = id * 1000 + 1;
    k.hi = 99;
    g.want_inline = 0;
    g.capacity = CHUNK_BYTES;
    req.id = ++id;
    send_request(fd, &req);
    int st = expect_status(fd, id);
    assert_true(st == KVT_E_INVAL || st == KVT_E_NOTFOUND); /* no RoPE, or no version info */
    Kvtier__LookupReq l = KVTIER__LOOKUP_REQ__INIT;
    Kvtier__Key miss = KVTIER__KEY__INIT, *mp[1] = {&miss};
    l.ns = ns;
    l.n_keys = 1;
    l.keys = mp;
    l.hold_ms = 0xffffffffu;
    req = (Kvtier__Request)KVTIER__REQUEST__INIT;
    req.id = ++id;
    req.op_case = KVTIER__REQUEST__OP_LOOKUP;
    req.lookup = &l;
    send_request(fd, &req);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->status, 0);
    assert_int_equal(r->lookup->hits, 0);
    assert_int_equal(r->lookup->hold, 0);
    kvtier__response__free_unpacked(r, NULL);
    close(fd);
    assert_daemon_healthy();
}

/* Lossy frames on a namespace registered without allow_lossy: a Put asking for a form (a known
 * one, an unknown one, the clustered form) is refused and stores nothing, and so is a Get of the
 * stored form, even of a chunk that is there. A ChunkLookup budget of any size is answered. */
static void test_lossy_and_budget_frames(void **state)
{
    (void)state;
    uint8_t *arena = NULL;
    uint32_t ns = 0;
    int fd = raw_session(1 << 20, &arena, &ns, NULL);
    kvt_test_fill(arena, CHUNK_BYTES, 77);
    uint64_t id = 300;
    const uint32_t forms[] = {1, 2, 3, 99, 0xffffffffu};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
        Kvtier__Key k = KVTIER__KEY__INIT;
        Kvtier__Checksum ck = KVTIER__CHECKSUM__INIT;
        ck.value = kvt_payload_checksum(arena, CHUNK_BYTES);
        k.lo = 0x1055 + i;
        p.ns = ns;
        p.key = &k;
        p.length = CHUNK_BYTES;
        p.checksum = &ck;
        p.form = forms[i];
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_PUT;
        req.put = &p;
        send_request(fd, &req);
        int st = expect_status(fd, id);
        assert_true(st == KVT_E_LOSSY || st == KVT_E_INVAL);
        /* Nothing was stored under that key. */
        Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
        g.ns = ns;
        g.key = &k;
        g.capacity = CHUNK_BYTES;
        g.offset = 2 * CHUNK_BYTES;
        req = (Kvtier__Request)KVTIER__REQUEST__INIT;
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_GET;
        req.get = &g;
        send_request(fd, &req);
        assert_int_equal(expect_status(fd, id), KVT_E_NOTFOUND);
    }
    /* A plain chunk there, read as stored: refused too, the destination untouched. */
    assert_int_equal(put_status(fd, ++id, ns, arena, 0, CHUNK_BYTES, 0), 0);
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = id * 1000 + 1;
    k.hi = 99;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    g.ns = ns;
    g.key = &k;
    g.capacity = CHUNK_BYTES;
    g.offset = 2 * CHUNK_BYTES;
    g.stored_form = 1;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = ++id;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    memset(arena + 2 * CHUNK_BYTES, 0x3c, CHUNK_BYTES);
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, id), KVT_E_LOSSY);
    for (size_t i = 0; i < CHUNK_BYTES; i++)
        assert_int_equal(arena[2 * CHUNK_BYTES + i], 0x3c);
    /* ChunkLookup budgets: none, tiny, the largest. */
    const uint32_t budgets[] = {0, 1, 0xffffffffu};
    Kvtier__Key *kp[1] = {&k};
    uint64_t pos[1] = {0};
    for (size_t i = 0; i < 3; i++) {
        Kvtier__ChunkLookupReq cl = KVTIER__CHUNK_LOOKUP_REQ__INIT;
        cl.ns = ns;
        cl.n_passages = 1;
        cl.passages = kp;
        cl.n_start_pos = 1;
        cl.start_pos = pos;
        cl.recompute_budget_per_passage = budgets[i];
        req = (Kvtier__Request)KVTIER__REQUEST__INIT;
        req.id = ++id;
        req.op_case = KVTIER__REQUEST__OP_CHUNK_LOOKUP;
        req.chunk_lookup = &cl;
        send_request(fd, &req);
        assert_int_equal(expect_status(fd, id), 0);
    }
    close(fd);
    assert_daemon_healthy();
}

/* A stored-form GetRange of rows [first, first + n) of layer into arena[off, off + cap): the
 * answer's status; *len_out its GetResp length (the room needed with E_SMALLBUF). */
static int stored_range_status(int fd, uint64_t id, uint32_t ns, const Kvtier__Key *k,
                               uint32_t layer, uint32_t first, uint32_t n, uint64_t off,
                               uint64_t cap, uint64_t *len_out)
{
    Kvtier__GetRangeReq g = KVTIER__GET_RANGE_REQ__INIT;
    g.ns = ns;
    g.key = (Kvtier__Key *)k;
    g.layer = layer;
    g.token_first = first;
    g.n_tokens = n;
    g.offset = off;
    g.capacity = cap;
    g.stored_form = 1;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_GET_RANGE;
    req.get_range = &g;
    send_request(fd, &req);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->id, id);
    int st = r->status;
    assert_true(st == 0 || st == KVT_E_SMALLBUF || (r->error && *r->error)); /* says why */
    if (len_out)
        *len_out = r->result_case == KVTIER__RESPONSE__RESULT_GET_RANGE ? r->get_range->length : 0;
    kvtier__response__free_unpacked(r, NULL);
    return st;
}

/* Stored-form GetRange frames that must be refused with nothing changed (the destination
 * untouched): in a namespace without allow_lossy (E_LOSSY, even of a chunk that is there); in a
 * lossy-allowed one, rows outside the chunk (E_GEOMETRY), no rows (E_INVAL), a clustered
 * variant (E_INVAL: entries, not rows) and too small a buffer (E_SMALLBUF with the room the
 * rows need: fp16 ones here, the chunk is in DRAM). The chunk still reads back afterwards. */
static void test_stored_range_frames(void **state)
{
    (void)state;
    uint8_t *arena = NULL;
    uint32_t ns = 0;
    int fd = raw_session(1 << 20, &arena, &ns, NULL);
    kvt_test_fill(arena, CHUNK_BYTES, 78);
    uint64_t id = 400;
    uint8_t *dst = arena + 4 * CHUNK_BYTES;
    const uint64_t row = CHUNK_BYTES / 16 / 2; /* one token of one layer: 64 bytes */
    assert_int_equal(put_status(fd, ++id, ns, arena, 0, CHUNK_BYTES, 0), 0);
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = id * 1000 + 1;
    k.hi = 99;
    memset(dst, 0x3c, CHUNK_BYTES);
    assert_int_equal(
        stored_range_status(fd, ++id, ns, &k, 0, 0, 4, 4 * CHUNK_BYTES, CHUNK_BYTES, NULL),
        KVT_E_LOSSY);
    /* A lossy-allowed namespace of the same shape (a namespace of its own), the same bytes. */
    struct kvt_ns_spec lspec = spec;
    lspec.allow_lossy = 1;
    uint32_t lns = register_ns_id(fd, ++id, &lspec);
    assert_int_equal(put_status(fd, ++id, lns, arena, 0, CHUNK_BYTES, 0), 0);
    Kvtier__Key lk = KVTIER__KEY__INIT;
    lk.lo = id * 1000 + 1;
    lk.hi = 99;
    uint64_t len = 0;
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &lk, 2, 0, 4, 4 * CHUNK_BYTES, CHUNK_BYTES, NULL),
        KVT_E_GEOMETRY);
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &lk, 1, 10, 7, 4 * CHUNK_BYTES, CHUNK_BYTES, NULL),
        KVT_E_GEOMETRY);
    assert_int_equal(stored_range_status(fd, ++id, lns, &lk, 1, 0xffffffffu, 2, 4 * CHUNK_BYTES,
                                         CHUNK_BYTES, NULL),
                     KVT_E_GEOMETRY);
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &lk, 0, 0, 0, 4 * CHUNK_BYTES, CHUNK_BYTES, NULL),
        KVT_E_INVAL);
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &lk, 0, 0, 4, 4 * CHUNK_BYTES, 4 * row - 1, &len),
        KVT_E_SMALLBUF);
    assert_int_equal(len, 4 * row);
    /* A clustered variant (8 entries for 16 tokens, every count 2) of the same key. */
    uint8_t *cl = arena + 2 * CHUNK_BYTES;
    const uint64_t cl_len = 8 * (CHUNK_BYTES / 16 + 4 * 2 * 2);
    kvt_test_fill(cl, cl_len, 79);
    for (uint32_t i = 0; i < 2 * 2 * 8; i++) {
        uint32_t two = 2;
        memcpy(cl + 8 * (CHUNK_BYTES / 16) + 4 * i, &two, 4);
    }
    Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
    Kvtier__Checksum ck = KVTIER__CHECKSUM__INIT;
    Kvtier__Key vk = lk;
    vk.variant = 1;
    ck.value = kvt_payload_checksum(cl, cl_len);
    p.ns = lns;
    p.key = &vk;
    p.offset = 2 * CHUNK_BYTES;
    p.length = cl_len;
    p.n_tokens = 16;
    p.form = 3;
    p.checksum = &ck;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = ++id;
    req.op_case = KVTIER__REQUEST__OP_PUT;
    req.put = &p;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, id), 0);
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &vk, 0, 0, 4, 4 * CHUNK_BYTES, CHUNK_BYTES, NULL),
        KVT_E_INVAL);
    for (size_t i = 0; i < CHUNK_BYTES; i++)
        assert_int_equal(dst[i], 0x3c);
    /* Nothing changed: the chunk's rows come back (fp16, from DRAM), where they were asked. */
    assert_int_equal(
        stored_range_status(fd, ++id, lns, &lk, 1, 2, 4, 4 * CHUNK_BYTES, 4 * row, &len), 0);
    assert_int_equal(len, 4 * row);
    assert_memory_equal(dst, arena + CHUNK_BYTES / 2 + 2 * row, 4 * row);
    close(fd);
    assert_daemon_healthy();
}

static void test_get_missing_key(void **state)
{
    (void)state;
    struct kvt_key k = {0xdead, 0xbeef};
    uint8_t out[CHUNK_BYTES];
    size_t len = 1;
    assert_int_equal(kvt_get(bystander, bns.handle, &k, out, sizeof(out), &len, NULL),
                     KVT_E_NOTFOUND);
    assert_int_equal(len, 0);
    assert_daemon_healthy();
}

static void test_disconnect_mid_request(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        uint8_t *arena;
        uint32_t ns;
        int fd = raw_session(1 << 20, &arena, &ns, NULL);
        /* Half a request, then gone. */
        uint8_t part[] = {50, 0, 0, 0, 0x08, 0x01};
        send_raw(fd, part, sizeof(part));
        close(fd);
        munmap(arena, 1 << 20);
        /* A full Put then gone before the answer. */
        fd = raw_session(1 << 20, &arena, &ns, NULL);
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
        Kvtier__Key k = KVTIER__KEY__INIT;
        k.lo = 777000 + (uint64_t)round;
        p.ns = ns;
        p.key = &k;
        p.length = CHUNK_BYTES;
        req.id = 5;
        req.op_case = KVTIER__REQUEST__OP_PUT;
        req.put = &p;
        send_request(fd, &req);
        close(fd);
        munmap(arena, 1 << 20);
    }
    assert_daemon_healthy();
}

static void test_too_many_connections(void **state)
{
    (void)state;
    /* max_clients = 8 and the bystander holds one. */
    struct kvt_client *c[7];
    struct kvt_connect_opts o = {.socket_path = dp.socket_path, .arena_bytes = 4096};
    for (int i = 0; i < 7; i++)
        assert_int_equal(kvt_connect(&o, &c[i]), 0);
    struct kvt_client *extra = NULL;
    assert_int_equal(kvt_connect(&o, &extra), KVT_E_CONNLIMIT);
    assert_null(extra);
    int fd = raw_connect();
    assert_int_equal(expect_status(fd, 0), KVT_E_CONNLIMIT);
    assert_closed(fd);
    close(fd);
    kvt_close(c[0]);
    /* A slot frees up once a client leaves. */
    int rc = KVT_E_CONNLIMIT;
    for (int i = 0; i < 100 && rc == KVT_E_CONNLIMIT; i++) {
        rc = kvt_connect(&o, &extra);
        if (rc)
            usleep(10000);
    }
    assert_int_equal(rc, 0);
    kvt_close(extra);
    for (int i = 1; i < 7; i++)
        kvt_close(c[i]);
    assert_daemon_healthy();
}

static void test_stats_count_rejections(void **state)
{
    (void)state;
    struct kvt_stat *st;
    size_t n;
    assert_int_equal(kvt_stats(bystander, &st, &n), 0);
    const char *names[] = {"bad_frames",        "truncated_frames", "oversized_frames",
                           "unknown_ops",       "range_errors",     "geometry_errors",
                           "unknown_namespace", "access_denied",    "connections_rejected_busy"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(st[i].name, names[k]))
                v = st[i].value;
        if (v == 0)
            fail_msg("stat %s is 0", names[k]);
    }
    kvt_stats_free(st, n);
}

/* ---- hardening: each test below sends what an adversarial client sent ------------------------ */

static uint64_t daemon_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    assert_non_null(p);
    unsigned long long ut = 0, st = 0;
    /* Fields after the command: state(3) ... utime(14) stime(15). */
    int field = 2;
    for (const char *q = p + 1; *q && field < 15; q++) {
        if (*q == ' ') {
            field++;
            if (field == 14)
                ut = strtoull(q + 1, NULL, 10);
            else if (field == 15)
                st = strtoull(q + 1, NULL, 10);
        }
    }
    return (ut + st) * 1000ull / (unsigned long long)sysconf(_SC_CLK_TCK);
}

static void send_lookup_empty_keys(int fd, uint64_t id, uint32_t ns, size_t n_keys)
{
    /* Keys of zero encode as empty messages (2 bytes each): many fit in a small frame. */
    Kvtier__Key zero = KVTIER__KEY__INIT;
    Kvtier__Key **keys = malloc(n_keys * sizeof(*keys));
    for (size_t i = 0; i < n_keys; i++)
        keys[i] = &zero;
    Kvtier__LookupReq l = KVTIER__LOOKUP_REQ__INIT;
    l.ns = ns;
    l.n_keys = n_keys;
    l.keys = keys;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_LOOKUP;
    req.lookup = &l;
    size_t n = kvtier__request__get_packed_size(&req);
    uint8_t *buf = malloc(n);
    kvtier__request__pack(&req, buf);
    send_frame(fd, buf, (uint32_t)n);
    free(buf);
    free(keys);
}

static void test_lookup_answer_too_big(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(0, &arena, &ns, NULL);
    /* 30,000 keys fit a 64 KiB frame but their answer would not: E_TOOBIG, not a hang. */
    send_lookup_empty_keys(fd, 60, ns, 30000);
    assert_int_equal(expect_status(fd, 60), KVT_E_TOOBIG);
    /* The connection still works. */
    send_lookup_empty_keys(fd, 61, ns, 10);
    assert_int_equal(expect_status(fd, 61), 0);
    close(fd);
    assert_daemon_healthy();
}

struct pipeline_reader {
    int fd;
    int want;
    int got;
};

/* Reads frames as a stream (answers arrive back to back) and counts the good ones. */
static void *pipeline_read(void *arg)
{
    struct pipeline_reader *r = arg;
    static uint8_t buf[1 << 20];
    size_t have = 0;
    while (r->got < r->want) {
        while (have >= 4) {
            uint32_t n = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
                         (uint32_t)buf[3] << 24;
            if (have < 4 + (size_t)n)
                break;
            Kvtier__Response *resp = kvtier__response__unpack(NULL, n, buf + 4);
            if (resp && resp->status == 0)
                r->got++;
            kvtier__response__free_unpacked(resp, NULL);
            memmove(buf, buf + 4 + n, have - 4 - n);
            have -= 4 + n;
        }
        struct pollfd pf = {r->fd, POLLIN, 0};
        if (r->got == r->want || poll(&pf, 1, 5000) <= 0)
            break;
        ssize_t got = recv(r->fd, buf + have, sizeof(buf) - have, 0);
        if (got <= 0)
            break;
        have += (size_t)got;
    }
    return NULL;
}

static void test_pipelining_never_stalls(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(0, &arena, &ns, NULL);
    /* Stats answers are large (their reservation alone fills the output buffer after a few), so
     * the daemon must resume the buffered requests each time output drains. */
    enum { N = 400 };
    struct pipeline_reader r = {fd, N, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pipeline_read, &r), 0);
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__StatsReq sr = KVTIER__STATS_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_STATS;
    req.stats = &sr;
    for (int i = 0; i < N; i++) {
        req.id = 1000 + (uint64_t)i;
        send_request(fd, &req);
    }
    pthread_join(t, NULL);
    assert_int_equal(r.got, N);
    close(fd);
    assert_daemon_healthy();
}

static void test_no_busy_loop_on_stuck_clients(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    /* (a) A client that sends and never reads: the daemon's buffers fill and it must stop
     * listening to that socket rather than spin on it. */
    int a = raw_session(0, &arena, &ns, NULL);
    int sndbuf = 1 << 20;
    setsockopt(a, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    fcntl(a, F_SETFL, O_NONBLOCK);
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__StatsReq sr = KVTIER__STATS_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_STATS;
    req.stats = &sr;
    uint8_t frame[64];
    req.id = 7;
    size_t n = kvtier__request__get_packed_size(&req);
    kvtier__request__pack(&req, frame + 4);
    frame[0] = (uint8_t)n;
    frame[1] = frame[2] = frame[3] = 0;
    for (int i = 0; i < 200000; i++)
        if (send(a, frame, n + 4, MSG_NOSIGNAL) < 0)
            break;
    /* (b) A client that half-closes while its answers cannot be delivered. */
    int b = raw_session(0, &arena, &ns, NULL);
    for (int i = 0; i < 2000; i++)
        send_raw(b, frame, n + 4);
    shutdown(b, SHUT_WR);
    usleep(200000);
    uint64_t before = daemon_cpu_ms(dp.pid);
    usleep(1000000);
    uint64_t used = daemon_cpu_ms(dp.pid) - before;
    printf("daemon CPU over 1 s with a non-reading and a half-closed client: %llu ms\n",
           (unsigned long long)used);
    assert_true(used < 300);
    close(a);
    close(b);
    assert_daemon_healthy();
}

static void test_put_checksum(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(64 * 1024, &arena, &ns, NULL);
    for (size_t i = 0; i < CHUNK_BYTES; i++)
        arena[i] = (uint8_t)(i * 7 + 3);
    /* A checksum that does not match the bytes: refused, nothing stored. */
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    Kvtier__Checksum ck = KVTIER__CHECKSUM__INIT;
    k.lo = 0xc0ffee;
    ck.value = kvt_payload_checksum(arena, CHUNK_BYTES) + 1;
    p.ns = ns;
    p.key = &k;
    p.length = CHUNK_BYTES;
    p.checksum = &ck;
    req.id = 70;
    req.op_case = KVTIER__REQUEST__OP_PUT;
    req.put = &p;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 70), KVT_E_CHECKSUM);
    /* No checksum at all: refused (put_checksum = required). */
    p.checksum = NULL;
    req.id = 71;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 71), KVT_E_INVAL);
    /* Neither stored anything under the key. */
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    g.ns = ns;
    g.key = &k;
    g.offset = 8192;
    g.capacity = CHUNK_BYTES;
    Kvtier__Request greq = KVTIER__REQUEST__INIT;
    greq.id = 72;
    greq.op_case = KVTIER__REQUEST__OP_GET;
    greq.get = &g;
    send_request(fd, &greq);
    assert_int_equal(expect_status(fd, 72), KVT_E_NOTFOUND);
    /* The right checksum: stored. */
    ck.value = kvt_payload_checksum(arena, CHUNK_BYTES);
    p.checksum = &ck;
    req.id = 73;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 73), 0);
    greq.id = 74;
    send_request(fd, &greq);
    assert_int_equal(expect_status(fd, 74), 0);
    assert_memory_equal(arena + 8192, arena, CHUNK_BYTES);
    munmap(arena, 64 * 1024);
    close(fd);
    assert_daemon_healthy();
}

/* The reported case: one request in flight per connection, write-through, a Put from the arena,
 * more Puts buffered, close, overwrite the arena. No key may ever return the new bytes. */
static void test_no_wrong_bytes_after_hangup(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--max_inflight_per_conn=1", "--disk.bytes=64M",
                          "--tier.write_policy=write-through", NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    raw_path = d.socket_path;
    enum { ROUNDS = 20, PUTS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        uint8_t *arena;
        uint32_t ns;
        int fd = raw_session(1 << 20, &arena, &ns, NULL);
        memset(arena, 0xA5, 64 * 1024);
        uint64_t sum = kvt_payload_checksum(arena, CHUNK_BYTES);
        for (int i = 0; i < PUTS; i++) {
            Kvtier__Request req = KVTIER__REQUEST__INIT;
            Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
            Kvtier__Key k = KVTIER__KEY__INIT;
            Kvtier__Checksum ck = KVTIER__CHECKSUM__INIT;
            k.lo = (uint64_t)round * 100 + (uint64_t)i + 1;
            k.hi = 0xbadbad;
            ck.value = sum;
            p.ns = ns;
            p.key = &k;
            p.length = CHUNK_BYTES;
            p.checksum = &ck;
            req.id = 100 + (uint64_t)i;
            req.op_case = KVTIER__REQUEST__OP_PUT;
            req.put = &p;
            send_request(fd, &req);
        }
        close(fd);
        memset(arena, 0x5A, 64 * 1024); /* the client reuses its buffer */
        munmap(arena, 1 << 20);
    }
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .arena_bytes = 1 << 20};
    struct kvt_client *c;
    struct kvt_ns_info info;
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, &info), 0);
    uint8_t out[CHUNK_BYTES], want[CHUNK_BYTES];
    memset(want, 0xA5, sizeof(want));
    int found = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < PUTS; i++) {
            struct kvt_key k = {(uint64_t)round * 100 + (uint64_t)i + 1, 0xbadbad};
            size_t len;
            int rc = kvt_get(c, info.handle, &k, out, sizeof(out), &len, NULL);
            assert_true(rc == 0 || rc == KVT_E_NOTFOUND);
            if (rc == 0) {
                found++;
                assert_memory_equal(out, want, sizeof(want));
            }
        }
    }
    printf("%d of %d Puts of clients that hung up were stored, all with the right bytes\n", found,
           ROUNDS * PUTS);
    /* The rest were not run: dropped with the end of input while buffered behind the one in
     * flight, or refused because the bytes they named no longer matched their checksum (the
     * daemon read them after the client had overwritten its buffer). Which of the two depends on
     * how the daemon's reads fell against the client's close; either shows the hazard was met. */
    uint64_t dropped = kvt_test_stat(c, "requests_dropped_eof");
    uint64_t refused = kvt_test_stat(c, "put_checksum_errors");
    assert_true(dropped != UINT64_MAX && refused != UINT64_MAX);
    printf("%llu dropped at hang-up, %llu refused for their checksum\n",
           (unsigned long long)dropped, (unsigned long long)refused);
    assert_true(dropped + refused > 0);
    assert_true((uint64_t)found + dropped + refused <= ROUNDS * PUTS);
    kvt_close(c);
    raw_path = dp.socket_path;
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void register_status_geometry(int fd, uint64_t id, uint32_t layers, uint32_t heads,
                                     uint32_t dim, uint32_t tokens, int want)
{
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)"geometry";
    sp.layers = layers;
    sp.kv_heads = heads;
    sp.head_dim = dim;
    sp.tokens_per_chunk = tokens;
    rr.spec = &sp;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    req.register_ns = &rr;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, id), want);
}

static void test_geometry_overflow(void **state)
{
    (void)state;
    uint8_t *arena;
    uint32_t ns;
    int fd = raw_session(0, &arena, &ns, NULL);
    /* Used to register as an 8,192-byte chunk: the size wrapped around 2^64. */
    register_status_geometry(fd, 80, 43691, 52232, 45712, 65536, KVT_E_INVAL);
    register_status_geometry(fd, 81, 43691, 52232, 45712, 256, KVT_E_INVAL);
    close(fd);
    assert_daemon_healthy();
}

/* Registers spec on a raw connection; the daemon's namespace id (asserts success). */
static uint32_t register_ns_id(int fd, uint64_t id, const struct kvt_ns_spec *sp_in)
{
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)sp_in->model_id;
    sp.layers = sp_in->layers;
    sp.kv_heads = sp_in->kv_heads;
    sp.head_dim = sp_in->head_dim;
    sp.dtype = sp_in->dtype;
    sp.tokens_per_chunk = sp_in->tokens_per_chunk;
    sp.allow_lossy = sp_in->allow_lossy;
    rr.spec = &sp;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    req.register_ns = &rr;
    send_request(fd, &req);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->status, 0);
    uint32_t ns = r->register_ns->ns_id;
    kvtier__response__free_unpacked(r, NULL);
    return ns;
}

static int hello_status(int fd, uint64_t id, const char *tenant)
{
    send_hello(fd, id, tenant, 0, -1);
    return expect_status(fd, id);
}

static void test_tenant_bound_to_credentials(void **state)
{
    (void)state;
    /* "victim" is mapped to another uid: claiming it is refused, whatever the client says. */
    int fd = raw_connect();
    assert_int_equal(hello_status(fd, 90, "victim"), KVT_E_TENANT);
    assert_int_equal(hello_status(fd, 91, "some-unmapped-name"), KVT_E_TENANT);
    /* Its own uid's tenant and a mapped one are fine. */
    char own[32];
    snprintf(own, sizeof(own), "uid-%u", getuid());
    assert_int_equal(hello_status(fd, 92, own), 0);
    close(fd);
    fd = raw_connect();
    assert_int_equal(hello_status(fd, 93, "mallory"), 0);
    close(fd);
    /* "default" (or no tenant) is the uid's own tenant, the bystander's: registering its spec
     * names its namespace, with or without a Hello. */
    for (int hello = 0; hello < 2; hello++) {
        fd = raw_connect();
        if (hello)
            assert_int_equal(hello_status(fd, 94, "default"), 0);
        assert_int_equal(register_ns_id(fd, 95, &spec), BNS_DAEMON_ID);
        close(fd);
    }
    assert_daemon_healthy();
}

static int config_set_status(int fd, uint64_t id, const char *key, const char *value)
{
    Kvtier__ConfigSetReq cs = KVTIER__CONFIG_SET_REQ__INIT;
    cs.key = (char *)key;
    cs.value = (char *)value;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.id = id;
    req.op_case = KVTIER__REQUEST__OP_CONFIG_SET;
    req.config_set = &cs;
    send_request(fd, &req);
    return expect_status(fd, id);
}

/* Another uid (nobody) connects: it may not change admin keys nor act for a tenant it claims. */
static void test_other_uid_is_no_admin(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip(); /* needs root to become another uid */
    struct kvt_test_daemon d = {0};
    d.no_fault_injection = 1;
    const char *args[] = {"--socket_mode=0666", "--tenants=team-a=uid:0", NULL};
    snprintf(d.dir, sizeof(d.dir), "/tmp/kvtier-test-XXXXXX");
    assert_non_null(mkdtemp(d.dir));
    assert_int_equal(chmod(d.dir, 0711), 0);
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    raw_path = d.socket_path;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) || setuid(65534))
            _exit(10);
        int fd = raw_connect();
        int bad = 0;
        bad |= (hello_status(fd, 1, "team-a") != KVT_E_TENANT) << 0;
        bad |= (hello_status(fd, 2, "uid-65534") != 0) << 1;
        bad |= (config_set_status(fd, 3, "max_clients", "1") != KVT_E_NOTADMIN) << 2;
        bad |= (config_set_status(fd, 4, "allowed_uids", "65534") != KVT_E_NOTADMIN) << 3;
        bad |= (config_set_status(fd, 5, "disk.fault_fail_next_io", "1") != KVT_E_NOTADMIN) << 4;
        bad |= (config_set_status(fd, 6, "busy_poll_us", "40") != 0) << 5; /* not admin-only */
        _exit(bad);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* Root is an admin, but fault injection is off unless the daemon was started for tests. */
    int fd = raw_connect();
    assert_int_equal(config_set_status(fd, 7, "disk.fault_fail_next_io", "1"), KVT_E_BADCONFIG);
    assert_int_equal(config_set_status(fd, 8, "max_clients", "100"), 0);
    assert_int_equal(config_set_status(fd, 9, "tenants", "bad map"), KVT_E_BADCONFIG);
    close(fd);
    raw_path = dp.socket_path;
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_namespaces_reclaimed_and_quota(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--max_namespaces=8", "--quota.namespaces_per_tenant=4", NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    raw_path = d.socket_path;
    /* Clients come, register namespaces and go, many times over: the table never stays full. */
    for (int round = 0; round < 6; round++) {
        int fd = raw_connect();
        for (uint32_t i = 0; i < 4; i++)
            register_status_geometry(fd, 100 + i, 1 + i + (uint32_t)round * 4, 1, 8, 16, 0);
        /* A fifth namespace held at once is over the tenant's quota. */
        register_status_geometry(fd, 110, 200 + (uint32_t)round, 1, 8, 16, KVT_E_QUOTA);
        close(fd);
        usleep(20000);
    }
    int fd = raw_connect();
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__StatsReq sr = KVTIER__STATS_REQ__INIT;
    req.id = 120;
    req.op_case = KVTIER__REQUEST__OP_STATS;
    req.stats = &sr;
    send_request(fd, &req);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    uint64_t quota = 0, namespaces = 99;
    for (size_t i = 0; i < r->stats->n_stats; i++) {
        if (!strcmp(r->stats->stats[i]->name, "quota_rejections"))
            quota = r->stats->stats[i]->value;
        if (!strcmp(r->stats->stats[i]->name, "namespaces"))
            namespaces = r->stats->stats[i]->value;
    }
    kvtier__response__free_unpacked(r, NULL);
    assert_int_equal(quota, 6);
    assert_true(namespaces <= 8);
    close(fd);
    raw_path = dp.socket_path;
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_max_clients_checked_against_nofile(void **state)
{
    (void)state;
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low.rlim_cur = 200;
    low.rlim_max = 200;
    if (old.rlim_max != RLIM_INFINITY && old.rlim_max < 200)
        skip();
    /* The daemon inherits a hard limit of 200 descriptors: 256 clients cannot fit. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setrlimit(RLIMIT_NOFILE, &low);
        struct kvt_test_daemon d = {0};
        const char *args[] = {"--max_clients=256", NULL};
        int rc = kvt_test_daemon_start(&d, args);
        int ok = rc != 0; /* refused to start */
        if (rc == 0)
            kvt_test_daemon_stop(&d);
        const char *args2[] = {"--max_clients=60", NULL}; /* 2 x 60 + 64 fit in 200 */
        struct kvt_test_daemon d2 = {0};
        ok &= kvt_test_daemon_start(&d2, args2) == 0;
        kvt_test_daemon_stop(&d2);
        kvt_test_daemon_cleanup(&d);
        kvt_test_daemon_cleanup(&d2);
        _exit(ok ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_sighup_reloads_config(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    snprintf(d.dir, sizeof(d.dir), "/tmp/kvtier-test-XXXXXX");
    assert_non_null(mkdtemp(d.dir));
    char conf[320], arg[340];
    snprintf(conf, sizeof(conf), "%s/kvtier.conf", d.dir);
    FILE *f = fopen(conf, "w");
    fprintf(f, "busy_poll_us = 10\n");
    fclose(f);
    snprintf(arg, sizeof(arg), "--config=%s", conf);
    char logf[320], logarg[340], rotated[330];
    snprintf(logf, sizeof(logf), "%s/k.log", d.dir);
    snprintf(rotated, sizeof(rotated), "%s.1", logf);
    snprintf(logarg, sizeof(logarg), "--log_file=%s", logf);
    const char *args[] = {arg, logarg, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    /* logrotate renames the file; SIGHUP makes the daemon write a new one. */
    assert_int_equal(rename(logf, rotated), 0);
    f = fopen(conf, "w");
    fprintf(f, "busy_poll_us = 33\nmax_namespaces = 99\n");
    fclose(f);
    assert_int_equal(kill(d.pid, SIGHUP), 0);
    struct kvt_connect_opts o = {.socket_path = d.socket_path, .arena_bytes = 4096};
    struct kvt_client *c;
    char v[64] = "";
    assert_int_equal(kvt_connect(&o, &c), 0);
    for (int i = 0; i < 200 && strcmp(v, "33"); i++) {
        usleep(10000);
        assert_int_equal(kvt_config_get(c, "busy_poll_us", v, sizeof(v)), 0);
    }
    assert_string_equal(v, "33");
    assert_int_equal(access(logf, F_OK), 0); /* reopened under its name */
    /* A key that needs a restart is left as it was. */
    assert_int_equal(kvt_config_get(c, "max_namespaces", v, sizeof(v)), 0);
    assert_string_equal(v, "256");
    /* A broken file changes nothing and the daemon lives on. */
    f = fopen(conf, "w");
    fprintf(f, "busy_poll_us = lots\n");
    fclose(f);
    assert_int_equal(kill(d.pid, SIGHUP), 0);
    usleep(100000);
    assert_int_equal(kvt_ping(c), 0);
    assert_int_equal(kvt_config_get(c, "busy_poll_us", v, sizeof(v)), 0);
    assert_string_equal(v, "33");
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

static void test_hugetlb_and_file_arenas_refused(void **state)
{
    (void)state;
    /* A file on a disk file system, sealed or not, is not a memfd. */
    int fd = raw_connect();
    char path[] = "/var/tmp/kvtier-arena-XXXXXX";
    int afd = mkstemp(path);
    assert_true(afd >= 0);
    unlink(path);
    assert_int_equal(ftruncate(afd, 65536), 0);
    send_hello(fd, 95, NULL, 65536, afd);
    assert_int_equal(expect_status(fd, 95), KVT_E_INVAL);
    close(afd);
    /* A hugetlb memfd sealed against shrinking: its pages can still vanish (punch a hole and use
     * up the free huge pages), so it is refused. Skipped where huge pages cannot be had. */
    afd = memfd_create("huge-arena", MFD_HUGETLB | MFD_ALLOW_SEALING);
    if (afd >= 0 && ftruncate(afd, 2 << 20) == 0 && fcntl(afd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) {
        send_hello(fd, 96, NULL, 2 << 20, afd);
        assert_int_equal(expect_status(fd, 96), KVT_E_INVAL);
    } else {
        printf("hugetlb memfd not available here: that case is skipped\n");
    }
    if (afd >= 0)
        close(afd);
    close(fd);
    assert_daemon_healthy();
}

/* One tenant filling the CPU tier far past its quota.cpu_share evicts only its own chunks: the
 * other tenant's older chunks survive, and the filler's Puts keep succeeding. */
static void test_cpu_quota_per_tenant(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    static char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=quiet=uid:%u", getuid());
    const char *args[] = {"--quota.cpu_share=0.5", "--cpu.page_bytes=4M", tenants, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0); /* a 256 MiB CPU tier */
    const struct kvt_ns_spec big = {.model_id = "quota",
                                    .layers = 2,
                                    .kv_heads = 2,
                                    .head_dim = 64,
                                    .dtype = KVT_DTYPE_FP16,
                                    .tokens_per_chunk = 1024}; /* 1 MiB chunks */
    struct kvt_connect_opts oq = {
        .socket_path = d.socket_path, .tenant = "quiet", .arena_bytes = 4 << 20};
    struct kvt_connect_opts of = {.socket_path = d.socket_path, .arena_bytes = 4 << 20};
    struct kvt_client *quiet, *filler;
    struct kvt_ns_info nq, nf;
    assert_int_equal(kvt_connect(&oq, &quiet), 0);
    assert_int_equal(kvt_connect(&of, &filler), 0);
    assert_int_equal(kvt_register(quiet, &big, &nq), 0);
    assert_int_equal(kvt_register(filler, &big, &nf), 0);
    uint8_t *buf = kvt_arena_alloc(quiet, 1 << 20), *fbuf = kvt_arena_alloc(filler, 1 << 20);
    assert_non_null(buf);
    assert_non_null(fbuf);
    enum { QUIET = 32, FILL = 600 };
    for (uint64_t i = 0; i < QUIET; i++) {
        memset(buf, (int)i, 1 << 20);
        struct kvt_key k = {i + 1, 7};
        assert_int_equal(kvt_put(quiet, nq.handle, &k, buf, 1 << 20, 0), 0);
    }
    /* 600 MiB into a 256 MiB tier, at most half of it for this tenant. */
    for (uint64_t i = 0; i < FILL; i++) {
        memset(fbuf, (int)(i * 3), 1 << 20);
        struct kvt_key k = {i + 1, 9};
        assert_int_equal(kvt_put(filler, nf.handle, &k, fbuf, 1 << 20, 0), 0);
    }
    for (uint64_t i = 0; i < QUIET; i++) {
        struct kvt_key k = {i + 1, 7};
        size_t len;
        assert_int_equal(kvt_get(quiet, nq.handle, &k, buf, 1 << 20, &len, NULL), 0);
        assert_int_equal(buf[0], (uint8_t)i);
        assert_int_equal(buf[(1 << 20) - 1], (uint8_t)i);
    }
    uint64_t evictions = kvt_test_stat(filler, "quota_evictions");
    printf("filler: %d Puts of 1 MiB, %llu of its own chunks evicted for its quota; all %d of the "
           "quiet tenant's chunks intact\n",
           FILL, (unsigned long long)evictions, QUIET);
    assert_true(evictions > 0 && evictions != UINT64_MAX);
    kvt_close(quiet);
    kvt_close(filler);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* quota.objects_share: one tenant's chunks take at most its share of the index; another tenant
 * can still store. */
static void test_objects_quota_per_tenant(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    static char tenants[96];
    snprintf(tenants, sizeof(tenants), "--tenants=other=uid:%u", getuid());
    const char *args[] = {"--index.max_objects=1000", "--quota.objects_share=0.1", tenants, NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_connect_opts oa = {.socket_path = d.socket_path, .arena_bytes = 1 << 20};
    struct kvt_connect_opts ob = oa;
    ob.tenant = "other";
    struct kvt_client *a, *b;
    struct kvt_ns_info na, nb;
    assert_int_equal(kvt_connect(&oa, &a), 0);
    assert_int_equal(kvt_connect(&ob, &b), 0);
    assert_int_equal(kvt_register(a, &spec, &na), 0);
    assert_int_equal(kvt_register(b, &spec, &nb), 0);
    uint8_t buf[CHUNK_BYTES];
    memset(buf, 1, sizeof(buf));
    int stored = 0, refused = 0;
    for (uint64_t i = 0; i < 150; i++) {
        struct kvt_key k = {i + 1, 3};
        int rc = kvt_put(a, na.handle, &k, buf, sizeof(buf), 0);
        assert_true(rc == 0 || rc == KVT_E_QUOTA);
        stored += rc == 0;
        refused += rc == KVT_E_QUOTA;
    }
    assert_int_equal(stored, 100);
    assert_int_equal(refused, 50);
    struct kvt_key k = {1, 4};
    assert_int_equal(kvt_put(b, nb.handle, &k, buf, sizeof(buf), 0), 0);
    /* Deleting frees the quota again. */
    struct kvt_key first = {1, 3};
    assert_int_equal(kvt_delete(a, na.handle, &first, 1, NULL), 0);
    struct kvt_key again = {500, 3};
    assert_int_equal(kvt_put(a, na.handle, &again, buf, sizeof(buf), 0), 0);
    kvt_close(a);
    kvt_close(b);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

/* Each test talks to the shared daemon unless it starts its own: a test that failed while
 * pointing raw_path at its own (stopped) daemon must not fail the ones after it. */
static int use_shared_daemon(void **state)
{
    (void)state;
    raw_path = dp.socket_path;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_truncated_frame, use_shared_daemon),
        cmocka_unit_test_setup(test_frame_too_long, use_shared_daemon),
        cmocka_unit_test_setup(test_unparsable_protobuf, use_shared_daemon),
        cmocka_unit_test_setup(test_unknown_operation, use_shared_daemon),
        cmocka_unit_test_setup(test_offsets_outside_arena, use_shared_daemon),
        cmocka_unit_test_setup(test_unsealed_arena_refused, use_shared_daemon),
        cmocka_unit_test_setup(test_wrong_size_for_geometry, use_shared_daemon),
        cmocka_unit_test_setup(test_unknown_namespace, use_shared_daemon),
        cmocka_unit_test_setup(test_other_tenants_namespace, use_shared_daemon),
        cmocka_unit_test_setup(test_get_missing_key, use_shared_daemon),
        cmocka_unit_test_setup(test_disconnect_mid_request, use_shared_daemon),
        cmocka_unit_test_setup(test_too_many_connections, use_shared_daemon),
        cmocka_unit_test_setup(test_lookup_answer_too_big, use_shared_daemon),
        cmocka_unit_test_setup(test_pipelining_never_stalls, use_shared_daemon),
        cmocka_unit_test_setup(test_no_busy_loop_on_stuck_clients, use_shared_daemon),
        cmocka_unit_test_setup(test_put_checksum, use_shared_daemon),
        cmocka_unit_test_setup(test_no_wrong_bytes_after_hangup, use_shared_daemon),
        cmocka_unit_test_setup(test_geometry_overflow, use_shared_daemon),
        cmocka_unit_test_setup(test_tenant_bound_to_credentials, use_shared_daemon),
        cmocka_unit_test_setup(test_other_uid_is_no_admin, use_shared_daemon),
        cmocka_unit_test_setup(test_namespaces_reclaimed_and_quota, use_shared_daemon),
        cmocka_unit_test_setup(test_cpu_quota_per_tenant, use_shared_daemon),
        cmocka_unit_test_setup(test_objects_quota_per_tenant, use_shared_daemon),
        cmocka_unit_test_setup(test_reuse_and_hold_frames, use_shared_daemon),
        cmocka_unit_test_setup(test_lossy_and_budget_frames, use_shared_daemon),
        cmocka_unit_test_setup(test_stored_range_frames, use_shared_daemon),
        cmocka_unit_test_setup(test_max_clients_checked_against_nofile, use_shared_daemon),
        cmocka_unit_test_setup(test_sighup_reloads_config, use_shared_daemon),
        cmocka_unit_test_setup(test_hugetlb_and_file_arenas_refused, use_shared_daemon),
        cmocka_unit_test_setup(test_stats_count_rejections, use_shared_daemon),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
