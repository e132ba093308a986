/*
 * Spawns and stops a real kvtierd for tests and benchmarks. The daemon's stderr goes to a log
 * file in its directory so a failing test can show it.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include "kvtier.pb-c.h"

#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define ARGS_MAX 64

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int kvt_test_daemon_start(struct kvt_test_daemon *d, const char *const *extra_args)
{
    if (!d->dir[0]) {
        snprintf(d->dir, sizeof(d->dir), "/tmp/kvtier-test-XXXXXX");
        if (!mkdtemp(d->dir))
            return -1;
    }
    snprintf(d->socket_path, sizeof(d->socket_path), "%s/kvtier.sock", d->dir);
    snprintf(d->log_path, sizeof(d->log_path), "%s/kvtierd.log", d->dir);
    const char *build = getenv("KVT_BUILD");
    char bin[512], sock_arg[400], dir_arg[400];
    snprintf(bin, sizeof(bin), "%s/kvtierd", build && *build ? build : "build");
    snprintf(sock_arg, sizeof(sock_arg), "--socket=%s", d->socket_path);
    snprintf(dir_arg, sizeof(dir_arg), "--data_dir=%s", d->dir);
    const char *argv[ARGS_MAX];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = sock_arg;
    argv[n++] = dir_arg;
    argv[n++] = "--cpu.arena_bytes=256M";
    argv[n++] = "--cpu.hugepages=false";
    if (!d->no_fault_injection)
        argv[n++] = "--fault_injection=true"; /* tests inject disk faults */
    for (int i = 0; extra_args && extra_args[i] && n < ARGS_MAX - 1; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* A test that fails (cmocka jumps out of it) must not leave a daemon behind: it dies
         * with its parent, and it holds none of the parent's output pipes open. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    d->pid = pid;
    for (int i = 0; i < 1000; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            d->pid = 0;
            fprintf(stderr, "kvtierd exited at start; log %s\n", d->log_path);
            return -1;
        }
        struct kvt_client *c = NULL;
        struct kvt_connect_opts o = {
            .socket_path = d->socket_path, .arena_bytes = 4096, .timeout_ms = 1000};
        if (access(d->socket_path, F_OK) == 0 && kvt_connect(&o, &c) == 0) {
            int rc = kvt_ping(c);
            kvt_close(c);
            if (rc == 0)
                return 0;
        }
        sleep_ms(10);
    }
    kvt_test_daemon_kill(d);
    return -1;
}

/* Shows the end of the daemon's log: a test that saw the daemon die says why. */
static void dump_log(const struct kvt_test_daemon *d, const char *why)
{
    char cmd[600];
    fprintf(stderr, "kvtierd %s; last lines of %s:\n", why, d->log_path);
    snprintf(cmd, sizeof(cmd), "tail -n 40 '%s' >&2", d->log_path);
    int rc = system(cmd);
    (void)rc;
}

int kvt_test_daemon_stop(struct kvt_test_daemon *d)
{
    if (d->pid <= 0) {
        dump_log(d, "was not running at stop");
        return -1;
    }
    int status = 0;
    if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
        d->pid = 0;
        dump_log(d, "had already exited");
        return -1;
    }
    kill(d->pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            if (rc)
                dump_log(d, "did not shut down cleanly");
            return rc;
        }
        sleep_ms(10);
    }
    kvt_test_daemon_kill(d);
    return -1;
}

void kvt_test_daemon_kill(struct kvt_test_daemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

void kvt_test_daemon_cleanup(struct kvt_test_daemon *d)
{
    if (!d->dir[0])
        return;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
    int rc = system(cmd);
    (void)rc;
    d->dir[0] = '\0';
}

uint64_t kvt_test_stat(struct kvt_client *c, const char *name)
{
    struct kvt_stat *st;
    size_t n;
    uint64_t v = UINT64_MAX;
    if (kvt_stats(c, &st, &n))
        return v;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(st[i].name, name))
            v = st[i].value;
    kvt_stats_free(st, n);
    return v;
}

void kvt_test_fill(void *buf, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    uint8_t *p = buf;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (i & 1) ? (uint8_t)(x >> 24) : (uint8_t)(seed & 0x3f);
    }
}

int kvt_test_send_with_fd(int sock, const void *buf, size_t n, int pass_fd)
{
    struct iovec iov = {(void *)buf, n};
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
    return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

struct Kvtier__Response *kvt_test_read_response(int fd, size_t max_frame)
{
    uint8_t *buf = malloc(max_frame + 4);
    Kvtier__Response *resp = NULL;
    size_t have = 0;
    while (buf) {
        if (have >= 4) {
            uint32_t n = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
                         (uint32_t)buf[3] << 24;
            if (n > max_frame)
                break;
            if (have >= 4 + (size_t)n) {
                resp = kvtier__response__unpack(NULL, n, buf + 4);
                break;
            }
        }
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 5000) <= 0)
            break;
        ssize_t r = recv(fd, buf + have, max_frame + 4 - have, 0);
        if (r <= 0)
            break;
        have += (size_t)r;
    }
    free(buf);
    return resp;
}

struct Kvtier__Response *kvt_test_read_pipelined(int fd)
{
    static uint8_t buf[65536];
    static size_t have;
    static int last_fd = -1;
    if (fd != last_fd)
        have = 0;
    last_fd = fd;
    for (;;) {
        if (have >= 4) {
            uint32_t n = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
                         (uint32_t)buf[3] << 24;
            if (n > sizeof(buf) - 4)
                return NULL;
            if (have >= 4 + (size_t)n) {
                Kvtier__Response *r = kvtier__response__unpack(NULL, n, buf + 4);
                memmove(buf, buf + 4 + n, have - 4 - n);
                have -= 4 + n;
                return r;
            }
        }
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 5000) != 1)
            return NULL;
        ssize_t r = recv(fd, buf + have, sizeof(buf) - have, 0);
        if (r <= 0)
            return NULL;
        have += (size_t)r;
    }
}

int kvt_test_raw_connect(const char *socket_path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, socket_path, strnlen(socket_path, sizeof(a.sun_path) - 1));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int kvt_test_send_request(int fd, const Kvtier__Request *req, int pass_fd)
{
    size_t n = kvtier__request__get_packed_size(req);
    uint8_t *buf = malloc(n + 4);
    if (!buf)
        return -1;
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    kvtier__request__pack(req, buf + 4);
    int rc = kvt_test_send_with_fd(fd, buf, n + 4, pass_fd);
    free(buf);
    return rc;
}

/* Sends req and reads its answer: 0 when it succeeded (*out kept when not NULL), else -1. */
static int raw_call(int fd, const Kvtier__Request *req, int pass_fd, Kvtier__Response **out)
{
    if (kvt_test_send_request(fd, req, pass_fd) != 0)
        return -1;
    Kvtier__Response *r = kvt_test_read_response(fd, 1u << 20);
    if (!r || r->status != 0) {
        if (r)
            kvtier__response__free_unpacked(r, NULL);
        return -1;
    }
    if (out)
        *out = r;
    else
        kvtier__response__free_unpacked(r, NULL);
    return 0;
}

int kvt_test_raw_session(const char *socket_path, const char *tenant,
                         const struct kvt_ns_spec *spec, uint64_t arena_bytes, uint8_t **arena_out,
                         uint32_t *ns_out)
{
    int fd = kvt_test_raw_connect(socket_path), mfd = -1;
    if (fd < 0)
        return -1;
    if (arena_bytes) {
        mfd = memfd_create("test-arena", MFD_ALLOW_SEALING | MFD_CLOEXEC);
        if (mfd < 0 || ftruncate(mfd, (off_t)arena_bytes) != 0 ||
            fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
            goto fail;
        if (arena_out) {
            *arena_out = mmap(NULL, arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
            if (*arena_out == MAP_FAILED)
                goto fail;
        }
    }
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = 1;
    h.tenant = (char *)tenant;
    h.arena_bytes = arena_bytes;
    req.id = 1;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    if (raw_call(fd, &req, mfd, NULL) != 0)
        goto fail;
    if (mfd >= 0)
        close(mfd);
    mfd = -1;
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp = KVTIER__NAMESPACE_SPEC__INIT;
    sp.model_id = (char *)spec->model_id;
    sp.layers = spec->layers;
    sp.kv_heads = spec->kv_heads;
    sp.head_dim = spec->head_dim;
    sp.dtype = spec->dtype;
    sp.tokens_per_chunk = spec->tokens_per_chunk;
    sp.allow_lossy = spec->allow_lossy != 0;
    rr.spec = &sp;
    Kvtier__Request rq = KVTIER__REQUEST__INIT;
    rq.id = 2;
    rq.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    rq.register_ns = &rr;
    Kvtier__Response *r = NULL;
    if (raw_call(fd, &rq, -1, &r) != 0 || r->result_case != KVTIER__RESPONSE__RESULT_REGISTER_NS) {
        if (r)
            kvtier__response__free_unpacked(r, NULL);
        goto fail;
    }
    *ns_out = r->register_ns->ns_id;
    kvtier__response__free_unpacked(r, NULL);
    return fd;
fail:
    if (mfd >= 0)
        close(mfd);
    close(fd);
    return -1;
}
