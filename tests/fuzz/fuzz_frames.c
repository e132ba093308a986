/*
 * libFuzzer target for the daemon's front door: the frame decoder, request validation and every
 * handler behind it, run in process on a real server object (no mocks). Each input is the byte
 * stream one client sends after a legitimate Hello (with a sealed memfd arena, so offsets into it
 * are exercised) and a RegisterNamespace; the harness drives the event loop until the daemon has
 * answered what it can, then hangs up and waits until the connection is freed.
 *
 * Invariants checked by the sanitizers and by the harness: no crash, no leak of connections (the
 * server's connection count returns to zero after each input), and the configuration a fuzzed
 * Config set changed is restored so that inputs stay independent.
 *
 * Build and run: `make fuzz` (FUZZ_SECONDS=1800 for the long run; see docs/fuzzing.md).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "daemon/config.h"
#include "daemon/server.h"
#include "kvtier.pb-c.h"

#define ARENA_BYTES (1u << 20)
#define ITERATIONS_MAX 4000

static struct kvt_server *srv;
static struct kvt_dconfig cfg, saved;

static void setup_once(void)
{
    char dir[] = "/tmp/kvtier-fuzz-XXXXXX";
    if (!mkdtemp(dir))
        abort();
    if (kvt_cfg_defaults(&kvt_dconfig_table, &cfg))
        abort();
    snprintf(cfg.socket, sizeof(cfg.socket), "%s/kvtier.sock", dir);
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", dir);
    snprintf(cfg.log_level, sizeof(cfg.log_level), "error");
    cfg.cpu_arena_bytes = 64u << 20;
    cfg.cpu_page_bytes = 1u << 20;
    cfg.cpu_hugepages = 0;
    cfg.max_frame_bytes = 256u << 10;
    cfg.inline_max_bytes = 64u << 10;
    cfg.index_max_objects = 4096;
    cfg.workers = 1;
    cfg.busy_poll_us = 0;
    cfg.copy_offload_bytes = 64u << 10; /* exercise the striped worker path too */
    cfg.copy_stripe_bytes = 64u << 10;
    kvt_log_set_level(KVT_LOG_ERROR);
    if (kvt_server_create(&cfg, &srv))
        abort();
    saved = cfg;
}

static void send_with_fd(int fd, const uint8_t *p, size_t n, int pass_fd)
{
    struct iovec iov = {(void *)p, n};
    union {
        char c[CMSG_SPACE(sizeof(int))];
        struct cmsghdr a;
    } cb;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pass_fd >= 0) {
        mh.msg_control = cb.c;
        mh.msg_controllen = sizeof(cb.c);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    }
    if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)n)
        abort();
}

static void send_request(int fd, Kvtier__Request *req, int pass_fd)
{
    uint8_t buf[1024];
    size_t n = kvtier__request__get_packed_size(req);
    if (n + 4 > sizeof(buf))
        abort();
    kvtier__request__pack(req, buf + 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = buf[3] = 0;
    send_with_fd(fd, buf, n + 4, pass_fd);
}

/* The legitimate start of a session: Hello with an arena, one namespace. */
static void open_session(int fd, uint8_t **arena)
{
    int mfd = memfd_create("fuzz-arena", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, ARENA_BYTES) || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK))
        abort();
    *arena = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (*arena == MAP_FAILED)
        abort();
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = 1;
    h.arena_bytes = ARENA_BYTES;
    req.id = 1;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    send_request(fd, &req, mfd);
    close(mfd);
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)"fuzz";
    sp.layers = 2;
    sp.kv_heads = 2;
    sp.head_dim = 8;
    sp.tokens_per_chunk = 16;
    rr.spec = &sp;
    Kvtier__Request reg = KVTIER__REQUEST__INIT;
    reg.id = 2;
    reg.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    reg.register_ns = &rr;
    send_request(fd, &reg, -1);
}

static void drain(int fd)
{
    static uint8_t sink[1 << 16];
    while (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv)
        setup_once();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        abort();
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct ucred cred = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    if (kvt__server_adopt(srv, sv[0], &cred))
        abort();
    uint8_t *arena;
    open_session(sv[1], &arena);
    memset(arena, 0x5c, 64 * 1024);
    size_t sent = 0;
    int idle = 0;
    for (int it = 0; it < ITERATIONS_MAX && idle < 3; it++) {
        if (sent < size) {
            ssize_t w = send(sv[1], data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
        }
        int n = kvt_server_run_once(srv, sent < size ? 0 : 1);
        drain(sv[1]);
        idle = (n == 0 && sent == size) ? idle + 1 : 0;
    }
    close(sv[1]);
    /* Wait until the daemon has let go of the connection (in-flight copies come back first). */
    for (int it = 0; it < ITERATIONS_MAX && (srv->n_conns || srv->closed); it++)
        kvt_server_run_once(srv, 1);
    if (srv->n_conns || srv->closed)
        abort(); /* a connection that is never freed: a leak the daemon would accumulate */
    munmap(arena, ARENA_BYTES);
    *srv->cfg = saved;
    kvt__server_config_applied(srv);
    return 0;
}
