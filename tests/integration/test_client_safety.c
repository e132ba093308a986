/*
 * libkvtier against daemons it must not trust blindly, and against timeouts:
 *   - a "daemon" listening as another uid never receives the arena memfd (KVT_E_UNTRUSTED), unless
 *     that uid is configured (daemon_uid, $KVTIER_DAEMON_UID);
 *   - a fake daemon that answers a Get with more bytes than the caller's capacity gets
 *     KVT_E_PROTO, and the caller's buffer is never overrun;
 *   - every Put (arena, staged, inline; single and batch) carries the payload checksum;
 *   - Puts and Gets that time out against a real, stopped kvtierd do not leak their staging
 *     buffers: many of them in a row still leave the whole arena usable.
 * The fake daemons speak the real protocol (protobuf frames) from a thread, or from a child process
 * that drops to uid 65534 (only when the test runs as root; skipped otherwise).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/checksum.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define OTHER_UID 65534
#define FRAME_MAX (2u << 20)

static const struct kvt_ns_spec spec = {.model_id = "client-safety",
                                        .layers = 1,
                                        .kv_heads = 1,
                                        .head_dim = 64,
                                        .dtype = KVT_DTYPE_FP16,
                                        .tokens_per_chunk = 16};

/* ---- a temporary socket directory and a listening socket ---------------------------------- */

struct sockdir {
    char dir[64];
    char path[128];
};

static void sockdir_make(struct sockdir *s)
{
    snprintf(s->dir, sizeof(s->dir), "/tmp/kvt-safety-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof(s->path), "%s/kvtier.sock", s->dir);
}

static void sockdir_remove(struct sockdir *s)
{
    unlink(s->path);
    rmdir(s->dir);
}

static int listen_on(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 8)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Accepts one connection within timeout_ms; -1 when none came. */
static int accept_within(int lfd, int timeout_ms)
{
    struct pollfd pf = {lfd, POLLIN, 0};
    if (poll(&pf, 1, timeout_ms) != 1)
        return -1;
    return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

/* ---- an untrusted "daemon": another uid, counts what it is sent --------------------------- */

struct sniff {
    int fds;    /* SCM_RIGHTS descriptors received */
    long bytes; /* payload bytes received */
    int conns;
};

/* Child: drops to OTHER_UID, listens on path, reports readiness on ready_fd, takes one
 * connection (within 3 s) and reads it until end of file or 300 ms of silence. Writes a struct
 * sniff to out_fd. */
static void sniff_child(const char *path, int ready_fd, int out_fd)
{
    struct sniff sn = {0};
    if (setgid(OTHER_UID) || setuid(OTHER_UID))
        _exit(100);
    int lfd = listen_on(path);
    char ok = lfd >= 0 ? 'y' : 'n';
    if (write(ready_fd, &ok, 1) != 1 || lfd < 0)
        _exit(101);
    int fd = accept_within(lfd, 3000);
    if (fd >= 0) {
        sn.conns++;
        for (;;) {
            struct pollfd pf = {fd, POLLIN, 0};
            if (poll(&pf, 1, 300) != 1)
                break;
            uint8_t buf[4096];
            union {
                char b[CMSG_SPACE(sizeof(int) * 4)];
                struct cmsghdr align;
            } cb;
            struct iovec iov = {buf, sizeof(buf)};
            struct msghdr mh = {.msg_iov = &iov,
                                .msg_iovlen = 1,
                                .msg_control = cb.b,
                                .msg_controllen = sizeof(cb)};
            ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
            if (n <= 0)
                break;
            sn.bytes += n;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                    sn.fds += (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        }
        close(fd);
    }
    _exit(write(out_fd, &sn, sizeof(sn)) == sizeof(sn) ? 0 : 102);
}

/* Starts the sniffer, runs one kvt_connect with opts (socket_path filled in), returns its result
 * and what the sniffer saw. */
static int connect_to_sniffer(struct kvt_connect_opts o, struct sniff *seen)
{
    struct sockdir sd;
    sockdir_make(&sd);
    assert_int_equal(chown(sd.dir, OTHER_UID, OTHER_UID), 0);
    int ready[2], out[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        sniff_child(sd.path, ready[1], out[1]);
    char ok = 0;
    assert_int_equal(read(ready[0], &ok, 1), 1);
    assert_int_equal(ok, 'y');
    o.socket_path = sd.path;
    o.timeout_ms = 200;
    o.arena_bytes = 1 << 20;
    struct kvt_client *c = NULL;
    int rc = kvt_connect(&o, &c);
    kvt_close(c);
    assert_int_equal(read(out[0], seen, sizeof(*seen)), (ssize_t)sizeof(*seen));
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(ready[0]);
    close(ready[1]);
    close(out[0]);
    close(out[1]);
    sockdir_remove(&sd);
    return rc;
}

static void test_untrusted_daemon_gets_no_arena(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        skip(); /* needs a second uid to listen as */
        return;
    }
    unsetenv("KVTIER_DAEMON_UID");
    struct sniff sn;
    assert_int_equal(connect_to_sniffer((struct kvt_connect_opts){0}, &sn), KVT_E_UNTRUSTED);
    assert_int_equal(sn.conns, 1); /* it did connect ... */
    assert_int_equal(sn.fds, 0);   /* ... but shared no memfd */
    assert_int_equal(sn.bytes, 0); /* and sent no Hello */

    /* The same squatter trusted by configuration does get the Hello and the arena: the check
     * above is what kept them away. */
    assert_int_equal(connect_to_sniffer((struct kvt_connect_opts){.daemon_uid = OTHER_UID}, &sn),
                     KVT_E_DISCONNECTED);
    assert_int_equal(sn.fds, 1);
    assert_true(sn.bytes > 0);

    setenv("KVTIER_DAEMON_UID", "65534", 1);
    assert_int_equal(connect_to_sniffer((struct kvt_connect_opts){0}, &sn), KVT_E_DISCONNECTED);
    assert_int_equal(sn.fds, 1);
    /* A configured uid other than the squatter's trusts nothing more. */
    setenv("KVTIER_DAEMON_UID", "4242", 1);
    assert_int_equal(connect_to_sniffer((struct kvt_connect_opts){0}, &sn), KVT_E_UNTRUSTED);
    assert_int_equal(sn.fds, 0);
    assert_int_equal(connect_to_sniffer((struct kvt_connect_opts){.daemon_uid = 4242}, &sn),
                     KVT_E_UNTRUSTED);
    assert_int_equal(sn.fds, 0);
    unsetenv("KVTIER_DAEMON_UID");
}

static void test_daemon_uid_option_checked(void **state)
{
    (void)state;
    struct kvt_client *c = NULL;
    const char *bad[] = {"abc", "12x", "-1", "", "4294967295", "99999999999999999999", " 5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (!bad[i][0])
            continue; /* empty means unset */
        setenv("KVTIER_DAEMON_UID", bad[i], 1);
        assert_int_equal(
            kvt_connect(&(struct kvt_connect_opts){.socket_path = "/nonexistent/s"}, &c),
            KVT_E_INVAL);
    }
    unsetenv("KVTIER_DAEMON_UID");
    assert_int_equal(
        kvt_connect(&(struct kvt_connect_opts){.socket_path = "/nonexistent/s", .daemon_uid = -2},
                    &c),
        KVT_E_INVAL);
    assert_int_equal(kvt_connect(&(struct kvt_connect_opts){.socket_path = "/nonexistent/s",
                                                            .daemon_uid = 4294967295ll},
                                 &c),
                     KVT_E_INVAL);
    /* Valid options get as far as the (missing) socket. */
    assert_int_equal(
        kvt_connect(&(struct kvt_connect_opts){.socket_path = "/nonexistent/s", .daemon_uid = 4242},
                    &c),
        KVT_E_DISCONNECTED);
}

/* ---- a lying daemon in a thread (same uid, so trusted) ------------------------------------ */

struct fake {
    struct sockdir sd;
    int lfd;
    pthread_t th;
    uint64_t inline_max;
    uint64_t get_length; /* what every Get answer claims */
    /* results, valid after fake_stop */
    int puts_ok, puts_bad, gets;
};

static int read_full(int fd, void *p, size_t n, int *memfd)
{
    uint8_t *b = p;
    while (n > 0) {
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cb;
        struct iovec iov = {b, n};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf, .msg_controllen = sizeof(cb)};
        ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (r <= 0)
            return -1;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (cm && cm->cmsg_type == SCM_RIGHTS && memfd)
            memcpy(memfd, CMSG_DATA(cm), sizeof(int));
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static void send_resp(int fd, Kvtier__Response *r)
{
    size_t n = kvtier__response__get_packed_size(r);
    uint8_t *buf = malloc(n + 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    kvtier__response__pack(r, buf + 4);
    size_t off = 0;
    while (off < n + 4) {
        ssize_t w = send(fd, buf + off, n + 4 - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    free(buf);
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    int fd = accept_within(f->lfd, 5000);
    if (fd < 0)
        return NULL;
    int memfd = -1;
    uint8_t *arena = MAP_FAILED;
    uint64_t arena_bytes = 0;
    uint8_t *frame = malloc(FRAME_MAX);
    for (;;) {
        uint8_t hdr[4];
        if (read_full(fd, hdr, 4, &memfd))
            break;
        uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
                       (uint32_t)hdr[3] << 24;
        if (len > FRAME_MAX || read_full(fd, frame, len, NULL))
            break;
        Kvtier__Request *q = kvtier__request__unpack(NULL, len, frame);
        if (!q)
            break;
        Kvtier__Response r = KVTIER__RESPONSE__INIT;
        r.id = q->id;
        Kvtier__HelloResp h = KVTIER__HELLO_RESP__INIT;
        Kvtier__RegisterResp rr = KVTIER__REGISTER_RESP__INIT;
        Kvtier__GetResp g = KVTIER__GET_RESP__INIT;
        Kvtier__PutResp p = KVTIER__PUT_RESP__INIT;
        switch (q->op_case) {
        case KVTIER__REQUEST__OP_HELLO:
            arena_bytes = q->hello->arena_bytes;
            if (memfd >= 0 && arena_bytes)
                arena = mmap(NULL, arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
            h.version = 1;
            h.arena_bytes = arena_bytes;
            h.max_frame_bytes = 1 << 20;
            h.inline_max_bytes = f->inline_max;
            r.result_case = KVTIER__RESPONSE__RESULT_HELLO;
            r.hello = &h;
            break;
        case KVTIER__REQUEST__OP_REGISTER_NS:
            rr.ns_id = 1;
            rr.seed = 7;
            rr.bytes_per_token = 256;
            rr.chunk_bytes = 4096;
            r.result_case = KVTIER__RESPONSE__RESULT_REGISTER_NS;
            r.register_ns = &rr;
            break;
        case KVTIER__REQUEST__OP_GET:
            /* Writes as much as the caller allowed, claims get_length. */
            if (arena != MAP_FAILED && !q->get->want_inline && q->get->offset < arena_bytes &&
                q->get->capacity <= arena_bytes - q->get->offset)
                memset(arena + q->get->offset, 0xAB, q->get->capacity);
            g.length = f->get_length;
            g.tier = KVT_TIER_CPU;
            r.result_case = KVTIER__RESPONSE__RESULT_GET;
            r.get = &g;
            f->gets++;
            break;
        case KVTIER__REQUEST__OP_PUT: {
            const Kvtier__PutReq *pq = q->put;
            const uint8_t *bytes = pq->inline_data.len ? pq->inline_data.data : NULL;
            if (!bytes && arena != MAP_FAILED && pq->offset < arena_bytes &&
                pq->length <= arena_bytes - pq->offset)
                bytes = arena + pq->offset;
            if (bytes && pq->checksum &&
                pq->checksum->value == kvt_payload_checksum(bytes, pq->length))
                f->puts_ok++;
            else
                f->puts_bad++;
            r.result_case = KVTIER__RESPONSE__RESULT_PUT;
            r.put = &p;
            break;
        }
        default:
            r.status = KVT_E_BADOP;
            break;
        }
        send_resp(fd, &r);
        kvtier__request__free_unpacked(q, NULL);
    }
    free(frame);
    if (arena != MAP_FAILED)
        munmap(arena, arena_bytes);
    if (memfd >= 0)
        close(memfd);
    close(fd);
    return NULL;
}

static void fake_start(struct fake *f, uint64_t inline_max, uint64_t get_length)
{
    memset(f, 0, sizeof(*f));
    sockdir_make(&f->sd);
    f->inline_max = inline_max;
    f->get_length = get_length;
    f->lfd = listen_on(f->sd.path);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
    pthread_join(f->th, NULL);
    close(f->lfd);
    sockdir_remove(&f->sd);
}

static struct kvt_client *fake_connect(struct fake *f, struct kvt_ns_info *ns)
{
    struct kvt_client *c = NULL;
    struct kvt_connect_opts o = {
        .socket_path = f->sd.path, .arena_bytes = 1 << 20, .timeout_ms = 2000};
    assert_int_equal(kvt_connect(&o, &c), 0);
    assert_int_equal(kvt_register(c, &spec, ns), 0);
    return c;
}

/* Gets into a heap buffer of cap bytes followed by a guard; the daemon claims `claim` bytes. */
static int get_with_claim(uint64_t claim, size_t cap, size_t *len, int *guard_intact)
{
    struct fake f;
    struct kvt_ns_info ns;
    fake_start(&f, 0, claim); /* inline_max 0: every Get is staged through the arena */
    struct kvt_client *c = fake_connect(&f, &ns);
    enum { GUARD = 4096 };
    uint8_t *buf = malloc(cap + GUARD);
    memset(buf, 0x5A, cap + GUARD);
    struct kvt_key k = {1, 2};
    *len = 12345;
    int rc = kvt_get(c, ns.handle, &k, buf, cap, len, NULL);
    *guard_intact = 1;
    for (size_t i = cap; i < cap + GUARD; i++)
        *guard_intact &= buf[i] == 0x5A;
    if (rc == 0)
        for (size_t i = 0; i < *len; i++)
            assert_int_equal(buf[i], 0xAB);
    free(buf);
    kvt_close(c);
    fake_stop(&f);
    return rc;
}

static void test_staged_get_length_checked(void **state)
{
    (void)state;
    size_t len;
    int intact;
    assert_int_equal(get_with_claim(4096, 4096, &len, &intact), 0); /* an honest answer */
    assert_int_equal(len, 4096);
    assert_true(intact);
    assert_int_equal(get_with_claim(4096 + 1, 4096, &len, &intact), KVT_E_PROTO);
    assert_true(intact);
    assert_int_equal(len, 0);
    assert_int_equal(get_with_claim(8192, 4096, &len, &intact), KVT_E_PROTO);
    assert_true(intact);
    assert_int_equal(get_with_claim(1ull << 40, 4096, &len, &intact), KVT_E_PROTO);
    assert_true(intact);
    assert_int_equal(get_with_claim(UINT64_MAX, 4096, &len, &intact), KVT_E_PROTO);
    assert_true(intact);
}

static void test_arena_get_length_checked(void **state)
{
    (void)state;
    struct fake f;
    struct kvt_ns_info ns;
    fake_start(&f, 0, 8192);
    struct kvt_client *c = fake_connect(&f, &ns);
    uint8_t *buf = kvt_arena_alloc(c, 4096);
    assert_non_null(buf);
    struct kvt_key k = {1, 2};
    size_t len = 1;
    assert_int_equal(kvt_get(c, ns.handle, &k, buf, 4096, &len, NULL), KVT_E_PROTO);
    assert_int_equal(len, 0); /* never more than the caller's capacity */
    struct kvt_item it[2] = {{.key = k, .buf = buf, .len = 4096},
                             {.key = k, .buf = buf, .len = 16}};
    assert_int_equal(kvt_get_batch(c, ns.handle, it, 2), 0);
    assert_int_equal(it[0].status, KVT_E_PROTO);
    assert_int_equal(it[1].status, KVT_E_PROTO);
    assert_true(it[0].len <= 4096 && it[1].len <= 16);
    kvt_close(c);
    fake_stop(&f);
}

static void test_every_put_has_checksum(void **state)
{
    (void)state;
    struct fake f;
    struct kvt_ns_info ns;
    fake_start(&f, 2048, 0);
    struct kvt_client *c = fake_connect(&f, &ns);
    uint8_t small[1024], big[8192];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 131 + 17);
    memcpy(small, big + 100, sizeof(small));
    uint8_t *ab = kvt_arena_alloc(c, 200000); /* several checksum blocks */
    assert_non_null(ab);
    for (size_t i = 0; i < 200000; i++)
        ab[i] = (uint8_t)(i * 7 + (i >> 12));
    struct kvt_key k = {3, 4};
    assert_int_equal(kvt_put(c, ns.handle, &k, small, sizeof(small), 0), 0); /* inline */
    assert_int_equal(kvt_put(c, ns.handle, &k, big, sizeof(big), 0), 0);     /* staged */
    assert_int_equal(kvt_put(c, ns.handle, &k, ab, 200000, 0), 0);           /* arena */
    struct kvt_item it[4] = {{.key = k, .buf = small, .len = sizeof(small)},
                             {.key = k, .buf = big, .len = sizeof(big)},
                             {.key = k, .buf = ab, .len = 200000},
                             {.key = k, .buf = ab + 4096, .len = 777}};
    assert_int_equal(kvt_put_batch(c, ns.handle, it, 4), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(it[i].status, 0);
    kvt_close(c);
    fake_stop(&f);
    assert_int_equal(f.puts_bad, 0);
    assert_int_equal(f.puts_ok, 7);
}

/* ---- timeouts against a real daemon ------------------------------------------------------- */

#define TO_CHUNK (256u << 10)
#define TO_ARENA (1u << 20) /* four staging buffers of TO_CHUNK */
#define TO_ROUNDS 12

static const struct kvt_ns_spec to_spec = {.model_id = "client-timeouts",
                                           .layers = 1,
                                           .kv_heads = 1,
                                           .head_dim = 128,
                                           .dtype = KVT_DTYPE_FP16,
                                           .tokens_per_chunk = 512}; /* 256 KiB chunks */

static void wait_ping(struct kvt_client *c)
{
    for (int i = 0; i < 400; i++) {
        if (kvt_ping(c) == 0)
            return;
        usleep(5000);
    }
    fail_msg("daemon does not answer after SIGCONT");
}

static void test_timeouts_do_not_exhaust_arena(void **state)
{
    (void)state;
    struct kvt_test_daemon d = {0};
    const char *args[] = {"--inline_max_bytes=16K", NULL};
    assert_int_equal(kvt_test_daemon_start(&d, args), 0);
    struct kvt_client *c = NULL;
    struct kvt_connect_opts o = {
        .socket_path = d.socket_path, .arena_bytes = TO_ARENA, .timeout_ms = 100};
    assert_int_equal(kvt_connect(&o, &c), 0);
    struct kvt_ns_info ns;
    assert_int_equal(kvt_register(c, &to_spec, &ns), 0);
    assert_int_equal(ns.chunk_bytes, TO_CHUNK);
    uint8_t *buf = malloc(2 * TO_CHUNK); /* outside the arena: staged */
    assert_non_null(buf);
    memset(buf, 0x11, 2 * TO_CHUNK);

    for (int round = 0; round < TO_ROUNDS; round++) {
        struct kvt_key k = {100 + (uint64_t)round, 9};
        assert_int_equal(kill(d.pid, SIGSTOP), 0);
        if (round % 2 == 0) {
            assert_int_equal(kvt_put(c, ns.handle, &k, buf, TO_CHUNK, 0), KVT_E_TIMEOUT);
        } else {
            struct kvt_item it[2] = {{.key = k, .buf = buf, .len = TO_CHUNK},
                                     {.key = k, .buf = buf + TO_CHUNK, .len = TO_CHUNK}};
            assert_int_equal(kvt_get_batch(c, ns.handle, it, 2), KVT_E_TIMEOUT);
            assert_int_equal(it[0].status, KVT_E_TIMEOUT);
        }
        assert_int_equal(kill(d.pid, SIGCONT), 0);
        wait_ping(c);
    }
    /* Every staging buffer came back: staged Puts and Gets work, and the whole arena can be
     * allocated again (a leak of even one buffer would leave room for three). */
    struct kvt_key k = {1, 1};
    assert_int_equal(kvt_put(c, ns.handle, &k, buf, TO_CHUNK, 0), 0);
    size_t len = 0;
    assert_int_equal(kvt_get(c, ns.handle, &k, buf + TO_CHUNK, TO_CHUNK, &len, NULL), 0);
    assert_int_equal(len, TO_CHUNK);
    void *all[4];
    for (int i = 0; i < 4; i++)
        assert_non_null(all[i] = kvt_arena_alloc(c, TO_CHUNK));
    for (int i = 0; i < 4; i++)
        kvt_arena_free(c, all[i]);
    free(buf);
    kvt_close(c);
    assert_int_equal(kvt_test_daemon_stop(&d), 0);
    kvt_test_daemon_cleanup(&d);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untrusted_daemon_gets_no_arena),
        cmocka_unit_test(test_daemon_uid_option_checked),
        cmocka_unit_test(test_staged_get_length_checked),
        cmocka_unit_test(test_arena_get_length_checked),
        cmocka_unit_test(test_every_put_has_checksum),
        cmocka_unit_test(test_timeouts_do_not_exhaust_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
