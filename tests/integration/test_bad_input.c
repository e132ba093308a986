/*
 * Bad input sent to a running daemon over raw sockets: every case checks the exact error, and that
 * a bystander connection and the data it stored are unaffected afterwards.
 */
#include <errno.h>
#include <fcntl.h>
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

#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

static struct kvt_test_daemon dp;
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

static int setup(void **state)
{
    (void)state;
    const char *args[] = {"--max_clients=8", "--max_frame_bytes=64K", "--inline_max_bytes=16K",
                          NULL};
    if (kvt_test_daemon_start(&dp, args))
        return -1;
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
    memcpy(a.sun_path, dp.socket_path, strnlen(dp.socket_path, sizeof(a.sun_path) - 1));
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_raw(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void send_frame(int fd, const void *p, uint32_t n)
{
    uint8_t h[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
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
    uint8_t buf[70000];
    size_t have = 0;
    for (;;) {
        if (have >= 4) {
            uint32_t n = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
                         (uint32_t)buf[3] << 24;
            if (have >= 4 + n)
                return kvtier__response__unpack(NULL, n, buf + 4);
        }
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 5000) <= 0)
            return NULL;
        ssize_t r = recv(fd, buf + have, sizeof(buf) - have, 0);
        if (r <= 0)
            return NULL;
        have += (size_t)r;
    }
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

/* A raw connection with Hello (and optionally an arena) and the test namespace registered. */
static int raw_session(uint64_t arena_bytes, uint8_t **arena_out, uint32_t *ns_out,
                       const char *tenant)
{
    int fd = raw_connect();
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = 1;
    h.tenant = (char *)tenant;
    h.arena_bytes = arena_bytes;
    req.id = 1;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    uint8_t buf[512];
    size_t n = kvtier__request__get_packed_size(&req);
    kvtier__request__pack(&req, buf + 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = buf[3] = 0;
    int mfd = -1;
    if (arena_bytes) {
        mfd = memfd_create("test-arena", MFD_ALLOW_SEALING);
        assert_int_equal(ftruncate(mfd, (off_t)arena_bytes), 0);
        assert_int_equal(fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        *arena_out = mmap(NULL, arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        assert_true(*arena_out != MAP_FAILED);
    }
    struct iovec iov = {buf, n + 4};
    union {
        char c[CMSG_SPACE(sizeof(int))];
        struct cmsghdr a;
    } cb;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (mfd >= 0) {
        mh.msg_control = cb.c;
        mh.msg_controllen = sizeof(cb.c);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
    }
    assert_int_equal(sendmsg(fd, &mh, 0), (ssize_t)(n + 4));
    if (mfd >= 0)
        close(mfd);
    assert_int_equal(expect_status(fd, 1), 0);

    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)spec.model_id;
    sp.layers = spec.layers;
    sp.kv_heads = spec.kv_heads;
    sp.head_dim = spec.head_dim;
    sp.dtype = spec.dtype;
    sp.tokens_per_chunk = spec.tokens_per_chunk;
    rr.spec = &sp;
    Kvtier__Request reg = KVTIER__REQUEST__INIT;
    reg.id = 2;
    reg.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    reg.register_ns = &rr;
    send_request(fd, &reg);
    Kvtier__Response *r = read_response(fd);
    assert_non_null(r);
    assert_int_equal(r->status, 0);
    *ns_out = r->register_ns->ns_id;
    kvtier__response__free_unpacked(r, NULL);
    return fd;
}

static int put_status(int fd, uint64_t id, uint32_t ns, uint64_t off, uint64_t len,
                      uint32_t n_tokens)
{
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__PutReq p = KVTIER__PUT_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
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
    assert_int_equal(put_status(fd, 10, ns, 64 * 1024 - 1024, CHUNK_BYTES, 0), KVT_E_RANGE);
    assert_int_equal(put_status(fd, 11, ns, UINT64_MAX - 10, CHUNK_BYTES, 0), KVT_E_RANGE);
    assert_int_equal(put_status(fd, 12, ns, 0, CHUNK_BYTES, 0), 0);
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
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = 1;
    h.arena_bytes = 65536;
    req.id = 3;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    uint8_t buf[256];
    size_t n = kvtier__request__get_packed_size(&req);
    kvtier__request__pack(&req, buf + 4);
    buf[0] = (uint8_t)n;
    buf[1] = buf[2] = buf[3] = 0;
    struct iovec iov = {buf, n + 4};
    union {
        char c[CMSG_SPACE(sizeof(int))];
        struct cmsghdr a;
    } cb;
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.c, .msg_controllen = sizeof(cb.c)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
    assert_int_equal(sendmsg(fd, &mh, 0), (ssize_t)(n + 4));
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
    assert_int_equal(put_status(fd, 20, ns, 0, CHUNK_BYTES - 1, 0), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 21, ns, 0, CHUNK_BYTES + 128, 0), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 22, ns, 0, 3 * 128, 4), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 23, ns, 0, 17 * 128, 17), KVT_E_GEOMETRY);
    assert_int_equal(put_status(fd, 24, ns, 0, 4 * 128, 4), 0);
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
    assert_int_equal(put_status(fd, 30, 9999, 0, CHUNK_BYTES, 0), KVT_E_NONS);
    assert_int_equal(put_status(fd, 31, 0, 0, CHUNK_BYTES, 0), KVT_E_NONS);
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
    /* bns belongs to tenant "default": every operation on it is refused. */
    assert_int_equal(put_status(fd, 40, bns.handle, 0, CHUNK_BYTES, 0), KVT_E_ACCESS);
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__GetReq g = KVTIER__GET_REQ__INIT;
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = bkey.lo;
    k.hi = bkey.hi;
    g.ns = 1; /* the daemon id of the bystander's namespace */
    g.key = &k;
    g.capacity = CHUNK_BYTES;
    req.id = 41;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &g;
    send_request(fd, &req);
    assert_int_equal(expect_status(fd, 41), KVT_E_ACCESS);
    Kvtier__DeleteReq d = KVTIER__DELETE_REQ__INIT;
    Kvtier__Key *kp = &k;
    d.ns = 1;
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
    assert_int_equal(kvt_connect(&o, &extra), KVT_E_BUSY);
    assert_null(extra);
    int fd = raw_connect();
    assert_int_equal(expect_status(fd, 0), KVT_E_BUSY);
    assert_closed(fd);
    close(fd);
    kvt_close(c[0]);
    /* A slot frees up once a client leaves. */
    int rc = KVT_E_BUSY;
    for (int i = 0; i < 100 && rc == KVT_E_BUSY; i++) {
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truncated_frame),
        cmocka_unit_test(test_frame_too_long),
        cmocka_unit_test(test_unparsable_protobuf),
        cmocka_unit_test(test_unknown_operation),
        cmocka_unit_test(test_offsets_outside_arena),
        cmocka_unit_test(test_unsealed_arena_refused),
        cmocka_unit_test(test_wrong_size_for_geometry),
        cmocka_unit_test(test_unknown_namespace),
        cmocka_unit_test(test_other_tenants_namespace),
        cmocka_unit_test(test_get_missing_key),
        cmocka_unit_test(test_disconnect_mid_request),
        cmocka_unit_test(test_too_many_connections),
        cmocka_unit_test(test_stats_count_rejections),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
