/*
 * libkvtier: session, framing, transfer arena and the request calls of <kvtier/kvtier.h>.
 *
 * The library owns the arena: a memfd sealed against shrinking and growing, so the daemon can map
 * it without fear of SIGBUS, and so the same arena (and every pointer into it) survives a daemon
 * restart: on reconnect the library shares it again and re-registers every namespace.
 *
 * Every wait is bounded by the session timeout. A timeout or a broken socket closes the session's
 * socket (its state is unknown) and the next call reconnects; reconnect attempts back off so a
 * dead daemon costs a failing call microseconds, not a timeout each.
 *
 * Trust: before the Hello that carries the arena memfd, the library asks the kernel who serves the
 * socket (SO_PEERCRED) and shares nothing unless it is our euid, root or the configured daemon
 * uid: whoever bound a squatted socket would otherwise read and write every chunk we move.
 *
 * Staging buffers of requests that were never answered (a timeout, a lost connection) may still
 * be copied into or out of by the daemon. They are quarantined with the old socket, which is shut
 * down for writing and kept open to drain: the daemon answers or drops every request of a
 * connection whose peer stopped sending, and closes it only once none is in flight, so end of file
 * on that socket is the moment the buffers are safe to hand out again. At most DRAIN_MAX old
 * sockets drain at once; past that the oldest is closed and its buffers are never reused (counted
 * in stage_lost), the one way staging memory can still be lost, and only to a daemon that keeps
 * requests in flight through DRAIN_MAX timeouts.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/types.h>
#include <unistd.h>

#include "client/lib/arena.h"
#include "client/lib/session.h"
#include "common/checksum.h"
#include "common/paths.h"
#include "common/time.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"

#define PROTO_VERSION 1
#define DEFAULT_ARENA_BYTES (64ull << 20)
#define DEFAULT_TIMEOUT_MS 5000u
#define DEFAULT_SPIN_US 50u
/* While bulk bytes are in flight the wait is stretched by the time the daemon needs to copy them
 * (assumed no faster than this), up to SPIN_BULK_MAX_US, yielding the core between polls. */
#define SPIN_BULK_BYTES_PER_US 4096u
#define SPIN_BULK_MAX_US 2000u

/* Threads of this process spinning for an answer right now. Past one fewer than the online CPUs
 * (at least one) a waiter sleeps at once: spinners that outnumber the cores only take them from
 * each other and from the daemon that would answer them. */
static atomic_uint spinners;

static unsigned spinners_max(void)
{
    static atomic_uint cached;
    unsigned v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (!v) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        v = n > 2 ? (unsigned)n - 1 : 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
}

/* Takes a spinning slot: 1 when this thread may spin (release with spin_leave), 0 to sleep. */
static int spin_enter(void)
{
    if (atomic_fetch_add_explicit(&spinners, 1, memory_order_relaxed) < spinners_max())
        return 1;
    atomic_fetch_sub_explicit(&spinners, 1, memory_order_relaxed);
    return 0;
}

static void spin_leave(void)
{
    atomic_fetch_sub_explicit(&spinners, 1, memory_order_relaxed);
}

/* ---- socket and frames -------------------------------------------------------------------- */

static void drain_release(struct kvt_client *c, struct drain *d)
{
    for (uint32_t i = 0; i < d->n_stage; i++)
        kvt_arena_alloc_put(&c->alloc, d->stage_off[i]);
    d->n_stage = 0;
    close(d->fd);
    d->fd = -1;
}

/* Reads and discards what the draining sockets have; a socket at end of file (or broken) gives
 * its buffers back. Waits up to deadline_ms for that (0: only what is there now). Returns the
 * number of sockets still draining. */
static int drains_reap(struct kvt_client *c, uint64_t deadline_ms)
{
    for (;;) {
        struct pollfd pf[DRAIN_MAX];
        int n = 0;
        for (int i = 0; i < DRAIN_MAX; i++) {
            struct drain *d = &c->drain[i];
            if (d->fd < 0)
                continue;
            int reads = 0;
            for (; reads < DRAIN_READS_MAX; reads++) {
                ssize_t got = recv(d->fd, c->out, DRAIN_READ_BYTES, MSG_DONTWAIT);
                if (got > 0 || (got < 0 && errno == EINTR))
                    continue;
                if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                drain_release(c, d); /* end of file, or the connection is gone anyway */
                break;
            }
            if (d->fd >= 0)
                pf[n++] = (struct pollfd){d->fd, POLLIN, 0};
        }
        uint64_t now = kvt_now_ms();
        if (n == 0 || now >= deadline_ms)
            return n;
        if (poll(pf, (nfds_t)n, (int)(deadline_ms - now)) < 0 && errno != EINTR)
            return n;
    }
}

/* Moves the current socket and its pending staging buffers to a drain slot. */
static void drain_start(struct kvt_client *c)
{
    drains_reap(c, 0);
    struct drain *d = &c->drain[0]; /* a free slot, else the oldest */
    for (int i = 0; i < DRAIN_MAX; i++) {
        struct drain *e = &c->drain[i];
        if (e->fd < 0) {
            d = e;
            break;
        }
        if (e->seq < d->seq)
            d = e;
    }
    if (d->fd >= 0) {
        /* Every slot busy: give up on the oldest. Its buffers stay allocated forever, since the
         * daemon may still use them; closing its socket does not tell us when it stops. */
        c->stage_lost += d->n_stage;
        d->n_stage = 0;
        close(d->fd);
    }
    shutdown(c->fd, SHUT_WR); /* the daemon sees end of file, finishes and closes */
    d->fd = c->fd;
    d->seq = ++c->drain_seq;
    d->n_stage = c->n_pending;
    memcpy(d->stage_off, c->pending_off, c->n_pending * sizeof(c->pending_off[0]));
    c->n_pending = 0;
}

/* Drops the current socket; asynchronous items still in flight on it complete with why. */
static void drop_connection(struct kvt_client *c, int why)
{
    if (c->fd >= 0)
        kvt__async_fail_all(c, why);
    if (c->fd >= 0 && c->n_pending > 0)
        drain_start(c);
    else if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in_len = 0;
    c->out_len = 0; /* frames never sent belong to the old connection: never sent on a new one */
    for (int i = 0; i < NS_MAX; i++)
        c->ns[i].daemon_id = 0;
}

static int send_all(struct kvt_client *c, const uint8_t *p, size_t n, int fd_to_pass,
                    uint64_t deadline_ms)
{
    int first = 1;
    while (n > 0) {
        struct iovec iov = {(void *)p, n};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cb;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (first && fd_to_pass >= 0) {
            mh.msg_control = cb.buf;
            mh.msg_controllen = sizeof(cb.buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &fd_to_pass, sizeof(int));
        }
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            first = 0;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            uint64_t now = kvt_now_ms();
            if (now >= deadline_ms)
                return KVT_E_TIMEOUT;
            struct pollfd pf = {c->fd, POLLOUT, 0};
            poll(&pf, 1, (int)(deadline_ms - now));
            continue;
        }
        return KVT_E_DISCONNECTED;
    }
    return 0;
}

/* Sends the frames queued in c->out (queue_request) in one go. */
int kvt__cl_flush(struct kvt_client *c, uint64_t deadline_ms)
{
    size_t n = c->out_len;
    c->out_len = 0;
    return n ? send_all(c, c->out, n, -1, deadline_ms) : 0;
}

/* Appends req's frame to c->out, sending what is queued first when it would not fit. The frames
 * of a batch's window go out in one system call (and reach the daemon in one read). KVT_E_TOOBIG
 * (nothing queued) for a frame larger than max_frame_bytes; a send error otherwise. */
int kvt__cl_queue(struct kvt_client *c, Kvtier__Request *req, uint64_t deadline_ms)
{
    size_t n = kvtier__request__get_packed_size(req);
    if (n + 4 > c->out_cap || n > c->max_frame_bytes)
        return KVT_E_TOOBIG;
    if (n + 4 > c->out_cap - c->out_len) {
        int rc = kvt__cl_flush(c, deadline_ms);
        if (rc)
            return rc;
    }
    uint8_t *o = c->out + c->out_len;
    o[0] = (uint8_t)n;
    o[1] = (uint8_t)(n >> 8);
    o[2] = (uint8_t)(n >> 16);
    o[3] = (uint8_t)(n >> 24);
    kvtier__request__pack(req, o + 4);
    c->out_len += n + 4;
    return 0;
}

static int send_request(struct kvt_client *c, Kvtier__Request *req, int fd_to_pass,
                        uint64_t deadline_ms)
{
    size_t n = kvtier__request__get_packed_size(req);
    if (n + 4 > c->out_cap || n > c->max_frame_bytes)
        return KVT_E_TOOBIG;
    c->out[0] = (uint8_t)n;
    c->out[1] = (uint8_t)(n >> 8);
    c->out[2] = (uint8_t)(n >> 16);
    c->out[3] = (uint8_t)(n >> 24);
    kvtier__request__pack(req, c->out + 4);
    return send_all(c, c->out, n + 4, fd_to_pass, deadline_ms);
}

/* Receives the next response frame; *out must be freed with kvtier__response__free_unpacked.
 * While waiting it polls the socket for spin_us, then for the copy time of bulk_bytes in flight
 * (yielding the core between polls, so that other threads on a busy machine, the daemon's
 * included, still run), and only then sleeps in poll(): a wake-up from poll() costs tens of
 * microseconds on a virtual machine, more than a small copy takes. No more threads spin at once
 * than the machine has cores to spare (spin_enter); the others sleep at once. */
int kvt__cl_recv(struct kvt_client *c, Kvtier__Response **out, uint64_t deadline_ms,
                 uint64_t bulk_bytes)
{
    uint64_t bulk_us = c->spin_us ? bulk_bytes / SPIN_BULK_BYTES_PER_US : 0;
    if (bulk_us > SPIN_BULK_MAX_US)
        bulk_us = SPIN_BULK_MAX_US;

    for (;;) {
        if (c->in_len >= 4) {
            uint32_t len = (uint32_t)c->in[0] | (uint32_t)c->in[1] << 8 | (uint32_t)c->in[2] << 16 |
                           (uint32_t)c->in[3] << 24;
            if ((size_t)len + 4 > c->in_cap)
                return KVT_E_PROTO;
            if (c->in_len >= (size_t)len + 4) {
                Kvtier__Response *r = kvtier__response__unpack(NULL, len, c->in + 4);
                memmove(c->in, c->in + 4 + len, c->in_len - 4 - len);
                c->in_len -= 4 + len;
                if (!r)
                    return KVT_E_PROTO;
                if (r->status) {
                    c->last_error = r->status;
                    snprintf(c->last_error_text, sizeof(c->last_error_text), "%s",
                             r->error && *r->error ? r->error : kvt_strerror(r->status));
                }
                *out = r;
                return 0;
            }
        }
        uint64_t now_ns = kvt_now_ns();
        uint64_t yield_from = now_ns + (uint64_t)c->spin_us * 1000u;
        uint64_t spin_end = yield_from + bulk_us * 1000u;
        if (spin_end > deadline_ms * 1000000ull)
            spin_end = deadline_ms * 1000000ull; /* the call's timeout bounds the spinning too */
        ssize_t got = -1;
        int spinning = c->spin_us && spin_enter();
        for (;;) {
            got = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
            if (got >= 0 || errno != EAGAIN || !spinning || (now_ns = kvt_now_ns()) >= spin_end)
                break;
            if (now_ns >= yield_from)
                sched_yield();
        }
        if (spinning)
            spin_leave();
        if (got > 0) {
            c->in_len += (size_t)got;
            continue;
        }
        if (got == 0 || (errno != EAGAIN && errno != EINTR))
            return KVT_E_DISCONNECTED;
        uint64_t now = kvt_now_ms();
        if (now >= deadline_ms)
            return KVT_E_TIMEOUT;
        struct pollfd pf = {c->fd, POLLIN, 0};
        int pr = poll(&pf, 1, (int)(deadline_ms - now));
        if (pr < 0 && errno != EINTR)
            return KVT_E_DISCONNECTED;
        if (pr <= 0)
            continue;
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        if (n > 0)
            c->in_len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            return KVT_E_DISCONNECTED;
    }
}

/* Waits for the response to request id. Responses to other ids (late answers to requests that
 * were abandoned) are discarded. A connection-level error (id 0) ends the wait with its status. */
static int wait_response(struct kvt_client *c, uint64_t id, Kvtier__Response **out,
                         uint64_t deadline_ms)
{
    for (;;) {
        Kvtier__Response *r;
        int rc = kvt__cl_recv(c, &r, deadline_ms, 0);
        if (rc)
            return rc;
        if (r->id == id) {
            *out = r;
            return 0;
        }
        if (r->id == 0 && r->status) {
            rc = r->status;
            kvtier__response__free_unpacked(r, NULL);
            return rc;
        }
        kvt__async_take(c, r); /* a submitted item's answer, or a late one: discarded */
        kvtier__response__free_unpacked(r, NULL);
    }
}

/* ---- connect, hello, register ------------------------------------------------------------- */

static int fill_spec(Kvtier__NamespaceSpec *sp, const struct kvt_ns_spec *spec)
{
    kvtier__namespace_spec__init(sp);
    sp->model_id = (char *)spec->model_id;
    sp->layers = spec->layers;
    sp->kv_heads = spec->kv_heads;
    sp->head_dim = spec->head_dim;
    sp->dtype = (uint32_t)spec->dtype;
    sp->tokens_per_chunk = spec->tokens_per_chunk;
    sp->rope_theta = spec->rope_theta;
    sp->rotary_dims = spec->rotary_dims;
    sp->rope_style = spec->rope_style;
    sp->allow_lossy = spec->allow_lossy != 0;
    return 0;
}

static int register_on_daemon(struct kvt_client *c, struct ns_slot *slot, uint64_t deadline_ms)
{
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__RegisterReq rr = KVTIER__REGISTER_REQ__INIT;
    Kvtier__NamespaceSpec sp;
    Kvtier__SpanPolicy spp = KVTIER__SPAN_POLICY__INIT;
    fill_spec(&sp, &slot->spec);
    if (slot->has_spans) {
        spp.kind = slot->spans.kind;
        spp.block_tokens = slot->spans.block_tokens;
        spp.max_tokens = slot->spans.max_tokens;
        spp.merge_tol = slot->spans.merge_tol;
        spp.has_fine_layers = slot->spans.fine_layers != KVT_SPANS_FINE_DEFAULT;
        spp.fine_layers = spp.has_fine_layers ? slot->spans.fine_layers : 0;
        sp.spans = &spp;
    }
    rr.spec = &sp;
    req.id = ++c->next_id;
    req.op_case = KVTIER__REQUEST__OP_REGISTER_NS;
    req.register_ns = &rr;
    int rc = send_request(c, &req, -1, deadline_ms);
    Kvtier__Response *resp = NULL;
    if (!rc)
        rc = wait_response(c, req.id, &resp, deadline_ms);
    if (rc)
        return rc;
    rc = resp->status;
    if (!rc && resp->result_case == KVTIER__RESPONSE__RESULT_REGISTER_NS) {
        slot->daemon_id = resp->register_ns->ns_id;
        slot->info.seed = resp->register_ns->seed;
        slot->info.bytes_per_token = resp->register_ns->bytes_per_token;
        slot->info.chunk_bytes = resp->register_ns->chunk_bytes;
        slot->info.tokens_per_chunk = slot->spec.tokens_per_chunk;
    } else if (!rc) {
        rc = KVT_E_PROTO;
    }
    kvtier__response__free_unpacked(resp, NULL);
    return rc;
}

static int is_session_error(int rc)
{
    return rc == KVT_E_DISCONNECTED || rc == KVT_E_TIMEOUT || rc == KVT_E_PROTO;
}

/* 0 when the process serving fd runs as our euid, root or the configured daemon uid;
 * KVT_E_UNTRUSTED otherwise, and when the kernel cannot tell (nothing is shared unverified). */
static int check_daemon_peer(const struct kvt_client *c, int fd)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof(cr))
        return KVT_E_UNTRUSTED;
    if (cr.uid == geteuid() || cr.uid == 0 ||
        (c->daemon_uid >= 0 && (int64_t)cr.uid == c->daemon_uid))
        return 0;
    return KVT_E_UNTRUSTED;
}

/* Opens the socket, checks who serves it, shares the arena and re-registers every namespace. */
static int open_session(struct kvt_client *c, uint32_t timeout_ms)
{
    uint64_t deadline = kvt_now_ms() + timeout_ms;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, c->socket_path, sizeof(c->socket_path));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return KVT_E_DISCONNECTED;
    }
    int trust = check_daemon_peer(c, fd);
    if (trust) {
        close(fd);
        return trust;
    }
    c->fd = fd;
    c->in_len = 0;

    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__HelloReq h = KVTIER__HELLO_REQ__INIT;
    h.version = PROTO_VERSION;
    h.tenant = c->tenant;
    h.arena_bytes = c->arena_bytes;
    h.client_name = (char *)"libkvtier";
    req.id = ++c->next_id;
    req.op_case = KVTIER__REQUEST__OP_HELLO;
    req.hello = &h;
    Kvtier__Response *resp = NULL;
    int rc = send_request(c, &req, c->arena_fd, deadline);
    if (rc == KVT_E_DISCONNECTED) {
        /* A daemon that turns us away (E_CONNLIMIT, E_PEERUID, E_SHUTDOWN) writes why and closes
         * before it reads our Hello: fetch that answer rather than report a bare disconnect. */
        int why = wait_response(c, req.id, &resp, kvt_now_ms() + 100);
        if (why && why != KVT_E_TIMEOUT && why != KVT_E_DISCONNECTED)
            rc = why;
        else if (!why)
            kvtier__response__free_unpacked(resp, NULL);
        resp = NULL;
    } else if (!rc) {
        rc = wait_response(c, req.id, &resp, deadline);
    }
    if (!rc) {
        rc = resp->status;
        if (!rc && resp->result_case == KVTIER__RESPONSE__RESULT_HELLO) {
            c->max_frame_bytes = resp->hello->max_frame_bytes;
            c->inline_max_bytes = resp->hello->inline_max_bytes;
        } else if (!rc) {
            rc = KVT_E_PROTO;
        }
        kvtier__response__free_unpacked(resp, NULL);
    }
    for (int i = 0; !rc && i < NS_MAX; i++)
        if (c->ns[i].used)
            rc = register_on_daemon(c, &c->ns[i], deadline);
    if (rc) {
        drop_connection(c, rc);
        return rc;
    }
    return 0;
}

/* Makes sure the session is connected, reconnecting when needed. */
int kvt__cl_ensure_session(struct kvt_client *c)
{
    drains_reap(c, 0);
    if (c->fd >= 0)
        return 0;
    uint64_t now = kvt_now_ms();
    if (now < c->retry_after_ms)
        return KVT_E_DISCONNECTED;
    uint32_t t = c->timeout_ms < 1000 ? c->timeout_ms : 1000;
    int rc = open_session(c, t);
    if (rc) {
        c->retry_after_ms = now + RECONNECT_BACKOFF_MS;
        return is_session_error(rc) ? KVT_E_DISCONNECTED : rc;
    }
    return 0;
}

void kvt__cl_drop(struct kvt_client *c, int why)
{
    drop_connection(c, why);
}

/* After a failed exchange: session errors drop the socket so the next call starts clean. */
int kvt__cl_session_fail(struct kvt_client *c, int rc)
{
    if (is_session_error(rc) || rc == KVT_E_SHUTDOWN)
        drop_connection(c, rc);
    return rc;
}

/* A uid written in decimal, nothing else: 0 or KVT_E_INVAL. */
static int parse_uid(const char *s, int64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return KVT_E_INVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v >= UINT32_MAX) /* (uid_t)-1 is no uid */
        return KVT_E_INVAL;
    *out = (int64_t)v;
    return 0;
}

/* A caller's arena (kvt_connect_arena): a memfd sealed against shrinking and growing, of exactly
 * bytes (a 4 KiB multiple), mapped by the caller at a 4 KiB-aligned base; the staging range inside
 * it. 0 or KVT_E_INVAL. */
static int check_arena_spec(const struct kvt_arena_spec *a)
{
    struct stat st;
    int seals = a->fd >= 0 ? fcntl(a->fd, F_GET_SEALS) : -1;
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW) ||
        fstat(a->fd, &st) || (uint64_t)st.st_size != a->bytes)
        return KVT_E_INVAL;
    if (!a->base || ((uintptr_t)a->base & 4095) || !a->bytes || (a->bytes & 4095) ||
        (a->stage_offset & 4095) || a->stage_offset > a->bytes ||
        a->stage_bytes > a->bytes - a->stage_offset)
        return KVT_E_INVAL;
    return 0;
}

static int connect_with(const struct kvt_connect_opts *opts, const struct kvt_arena_spec *arena,
                        struct kvt_client **out)
{
    struct kvt_connect_opts o = opts ? *opts : (struct kvt_connect_opts){0};
    char def[KVT_SOCKET_PATH_MAX];
    const char *path = o.socket_path;
    if (!path || !*path)
        path = getenv("KVTIER_SOCKET");
    if (!path || !*path) {
        if (kvt_socket_default(def, sizeof(def)))
            return KVT_E_INVAL;
        path = def;
    }
    if (!out || strlen(path) >= sizeof(((struct kvt_client *)0)->socket_path))
        return KVT_E_INVAL;
    const char *tenant = (o.tenant && *o.tenant) ? o.tenant : "default";
    if (strlen(tenant) >= KVT_TENANT_MAX)
        return KVT_E_INVAL;
    int64_t daemon_uid = o.daemon_uid;
    if (daemon_uid == 0 || daemon_uid == -1) {
        const char *env = getenv("KVTIER_DAEMON_UID");
        daemon_uid = -1;
        if (env && *env && parse_uid(env, &daemon_uid))
            return KVT_E_INVAL;
    } else if (daemon_uid < 0 || daemon_uid >= UINT32_MAX) {
        return KVT_E_INVAL;
    }
    if (daemon_uid == 0)
        daemon_uid = -1; /* root is trusted anyway */

    struct kvt_client *c = calloc(1, sizeof(*c));
    if (!c)
        return KVT_E_NOMEM;
    snprintf(c->socket_path, sizeof(c->socket_path), "%s", path);
    c->daemon_uid = daemon_uid;
    for (int i = 0; i < DRAIN_MAX; i++)
        c->drain[i].fd = -1;
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    c->timeout_ms = o.timeout_ms ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
    c->spin_us = o.spin_us == UINT32_MAX ? 0 : o.spin_us ? o.spin_us : DEFAULT_SPIN_US;
    c->window = o.batch_window && o.batch_window < BATCH_WINDOW ? o.batch_window : BATCH_WINDOW;
    c->arena_bytes = o.arena_bytes ? (o.arena_bytes + 4095) & ~4095ull : DEFAULT_ARENA_BYTES;
    c->fd = -1;
    c->max_frame_bytes = 1u << 20;
    int rc = KVT_E_NOMEM;

    if (arena) {
        /* The caller's: our own descriptor of it (shared again on reconnects), its mapping. */
        c->arena_owned = 0;
        c->arena_bytes = arena->bytes;
        c->arena = arena->base;
        c->arena_fd = fcntl(arena->fd, F_DUPFD_CLOEXEC, 0);
        if (c->arena_fd < 0) {
            rc = -errno;
            goto err_free;
        }
        rc = kvt_arena_alloc_init_range(&c->alloc, arena->stage_offset, arena->stage_bytes);
        if (rc)
            goto err_close_memfd;
    } else {
        c->arena_owned = 1;
        c->arena_fd = memfd_create("kvtier-transfer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (c->arena_fd < 0) {
            rc = -errno;
            goto err_free;
        }
        if (ftruncate(c->arena_fd, (off_t)c->arena_bytes) ||
            fcntl(c->arena_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
            rc = -errno;
            goto err_close_memfd;
        }
        c->arena = mmap(NULL, c->arena_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c->arena_fd, 0);
        if (c->arena == MAP_FAILED) {
            rc = -errno;
            goto err_close_memfd;
        }
        rc = kvt_arena_alloc_init(&c->alloc, c->arena_bytes);
        if (rc)
            goto err_unmap;
    }
    /* Room for the largest frame any daemon configuration may send. */
    c->in_cap = (64u << 20) + IN_EXTRA_BYTES;
    c->out_cap = (64u << 20) + 4;
    c->in = malloc(c->in_cap);
    c->out = malloc(c->out_cap);
    if (!c->in || !c->out) {
        rc = KVT_E_NOMEM;
        goto err_bufs;
    }
    rc = open_session(c, c->timeout_ms);
    if (rc) {
        rc = is_session_error(rc) ? KVT_E_DISCONNECTED : rc;
        goto err_bufs;
    }
    *out = c;
    return 0;

err_bufs:
    free(c->in);
    free(c->out);
    kvt_arena_alloc_deinit(&c->alloc);
err_unmap:
    if (c->arena_owned)
        munmap(c->arena, c->arena_bytes);
err_close_memfd:
    close(c->arena_fd);
err_free:
    free(c);
    return rc;
}

int kvt_connect(const struct kvt_connect_opts *opts, struct kvt_client **out)
{
    return connect_with(opts, NULL, out);
}

int kvt_connect_arena(const struct kvt_connect_opts *opts, const struct kvt_arena_spec *arena,
                      struct kvt_client **out)
{
    if (!arena || check_arena_spec(arena))
        return KVT_E_INVAL;
    return connect_with(opts, arena, out);
}

const char *kvt_socket_path(const struct kvt_client *c)
{
    return c ? c->socket_path : "";
}

void kvt_close(struct kvt_client *c)
{
    if (!c)
        return;
    kvt__async_free(c); /* first: items still submitted are never written again */
    if (!c->arena_owned && c->fd >= 0) {
        /* The caller's arena outlives us: let the daemon finish every request of the session
         * (it closes a connection whose peer stopped sending once none is in flight), so that
         * it no longer writes into the arena when we return. Bounded by the session timeout. */
        drain_start(c);
        c->fd = -1;
    }
    drop_connection(c, KVT_E_DISCONNECTED);
    if (!c->arena_owned)
        drains_reap(c, kvt_now_ms() + c->timeout_ms);
    for (int i = 0; i < DRAIN_MAX; i++)
        if (c->drain[i].fd >= 0)
            close(c->drain[i].fd); /* the arena goes too: nothing to give back */
    kvt_arena_alloc_deinit(&c->alloc);
    if (c->arena_owned)
        munmap(c->arena, c->arena_bytes); /* a caller's arena stays mapped: it is theirs */
    close(c->arena_fd);
    free(c->in);
    free(c->out);
    free(c);
}

int kvt_register(struct kvt_client *c, const struct kvt_ns_spec *spec, struct kvt_ns_info *out)
{
    return kvt_register_spans(c, spec, NULL, out);
}

static int same_spans(const struct ns_slot *slot, const struct kvt_span_policy *p)
{
    if (!p)
        return !slot->has_spans;
    const struct kvt_span_policy *o = &slot->spans;
    return slot->has_spans && o->kind == p->kind && o->block_tokens == p->block_tokens &&
           o->max_tokens == p->max_tokens && o->merge_tol == p->merge_tol &&
           o->fine_layers == p->fine_layers;
}

int kvt_register_spans(struct kvt_client *c, const struct kvt_ns_spec *spec,
                       const struct kvt_span_policy *spans, struct kvt_ns_info *out)
{
    if (!c || !spec || !spec->model_id || strlen(spec->model_id) >= KVT_MODEL_ID_MAX)
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    if (rc)
        return rc;
    int free_slot = -1;
    for (int i = 0; i < NS_MAX; i++) {
        if (!c->ns[i].used) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        const struct kvt_ns_spec *o = &c->ns[i].spec;
        if (!strcmp(c->ns[i].model_id, spec->model_id) && o->layers == spec->layers &&
            o->kv_heads == spec->kv_heads && o->head_dim == spec->head_dim &&
            o->dtype == spec->dtype && o->tokens_per_chunk == spec->tokens_per_chunk &&
            o->rope_theta == spec->rope_theta && o->rotary_dims == spec->rotary_dims &&
            o->rope_style == spec->rope_style && !o->allow_lossy == !spec->allow_lossy) {
            if (!same_spans(&c->ns[i], spans)) {
                /* Same namespace, another span policy: the daemon applies the latest. */
                struct ns_slot *slot = &c->ns[i];
                struct ns_slot keep = *slot;
                slot->has_spans = spans != NULL;
                if (spans)
                    slot->spans = *spans;
                rc = register_on_daemon(c, slot, kvt_now_ms() + c->timeout_ms);
                if (rc) {
                    *slot = keep;
                    return kvt__cl_session_fail(c, rc);
                }
            }
            if (out)
                *out = c->ns[i].info;
            return 0;
        }
    }
    if (free_slot < 0)
        return KVT_E_FULL;
    struct ns_slot *slot = &c->ns[free_slot];
    memset(slot, 0, sizeof(*slot));
    slot->spec = *spec;
    snprintf(slot->model_id, sizeof(slot->model_id), "%s", spec->model_id);
    slot->spec.model_id = slot->model_id;
    slot->has_spans = spans != NULL;
    if (spans)
        slot->spans = *spans;
    rc = register_on_daemon(c, slot, kvt_now_ms() + c->timeout_ms);
    if (rc)
        return kvt__cl_session_fail(c, rc);
    slot->used = 1;
    slot->info.handle = (uint32_t)free_slot + 1;
    if (out)
        *out = slot->info;
    return 0;
}

int kvt__cl_ns_id(struct kvt_client *c, uint32_t handle, uint32_t *id)
{
    if (handle == 0 || handle > NS_MAX || !c->ns[handle - 1].used)
        return KVT_E_NONS;
    *id = c->ns[handle - 1].daemon_id;
    return 0;
}

/* ---- arena -------------------------------------------------------------------------------- */

void *kvt_arena_alloc(struct kvt_client *c, size_t bytes)
{
    uint64_t off;
    if (!c || kvt_arena_alloc_get(&c->alloc, bytes, &off))
        return NULL;
    return c->arena + off;
}

void kvt_arena_free(struct kvt_client *c, void *p)
{
    if (!c || !p)
        return;
    kvt_arena_alloc_put(&c->alloc, (uint64_t)((uint8_t *)p - c->arena));
}

int kvt__cl_in_arena(const struct kvt_client *c, const void *p, size_t len, uint64_t *off)
{
    const uint8_t *b = p;
    if (b < c->arena || b >= c->arena + c->arena_bytes)
        return 0;
    *off = (uint64_t)(b - c->arena);
    return len <= c->arena_bytes - *off;
}

/* ---- put / get (pipelined core) ----------------------------------------------------------- */

/* A staging buffer of bytes. When the arena is full while old sockets still drain, waits for
 * them (up to deadline_ms) rather than fail while buffers are about to come back. */
int kvt__cl_stage_alloc(struct kvt_client *c, uint64_t bytes, uint64_t *off, uint64_t deadline_ms)
{
    for (;;) {
        int rc = kvt_arena_alloc_get(&c->alloc, bytes, off);
        if (rc != KVT_E_NOMEM)
            return rc;
        int draining = drains_reap(c, 0);
        rc = kvt_arena_alloc_get(&c->alloc, bytes, off);
        if (rc != KVT_E_NOMEM || draining == 0 || kvt_now_ms() >= deadline_ms)
            return rc;
        drains_reap(c, kvt_now_ms() + 1); /* a millisecond at a time: any drain may end first */
    }
}

int kvt__cl_build_xfer(struct kvt_client *c, enum xfer_kind kind, uint32_t ns_id,
                       struct kvt_item *it, struct xfer *x, Kvtier__Request *req,
                       struct xfer_msg *m, uint64_t deadline_ms)
{
    Kvtier__PutReq *pr = &m->pr;
    Kvtier__GetReq *gr = &m->gr;
    Kvtier__Key *key = &m->key;
    Kvtier__Checksum *ck = &m->ck;
    kvtier__key__init(key);
    key->lo = it->key.lo;
    key->hi = it->key.hi;
    key->variant = it->variant;
    x->stage_off = UINT64_MAX;
    x->inline_get = 0;
    uint64_t off = 0;
    req->id = x->req_id = ++c->next_id;
    if (kind == XFER_PUT) {
        kvtier__put_req__init(pr);
        pr->ns = ns_id;
        pr->key = key;
        pr->n_tokens = it->n_tokens;
        pr->length = it->len;
        const void *bytes = it->buf;
        if (kvt__cl_in_arena(c, it->buf, it->len, &off)) {
            pr->offset = off;
        } else if (it->len <= c->inline_max_bytes && it->len + 512 < c->max_frame_bytes) {
            pr->inline_data.data = it->buf;
            pr->inline_data.len = it->len;
        } else if (kvt__cl_stage_alloc(c, it->len, &x->stage_off, deadline_ms) == 0) {
            memcpy(c->arena + x->stage_off, it->buf, it->len);
            pr->offset = x->stage_off;
            bytes = c->arena + x->stage_off;
        } else {
            return KVT_E_NOMEM;
        }
        /* Of the bytes the daemon will copy: it refuses the Put (E_CHECKSUM) when they changed
         * before its copy ended, e.g. an arena buffer reused after a timeout. */
        kvtier__checksum__init(ck);
        ck->value = kvt_payload_checksum(bytes, it->len);
        pr->checksum = ck;
        req->op_case = KVTIER__REQUEST__OP_PUT;
        req->put = pr;
    } else if (kind == XFER_RANGE) {
        Kvtier__GetRangeReq *rr = &m->rr;
        kvtier__get_range_req__init(rr);
        rr->ns = ns_id;
        rr->key = key;
        rr->layer = it->layer;
        rr->token_first = it->token_first;
        rr->n_tokens = it->n_tokens;
        rr->capacity = it->len;
        /* Never inline: rows go to the arena, the caller's buffer or a staging buffer. */
        if (kvt__cl_in_arena(c, it->buf, it->len, &off))
            rr->offset = off;
        else if (kvt__cl_stage_alloc(c, it->len ? it->len : 1, &x->stage_off, deadline_ms) == 0)
            rr->offset = x->stage_off;
        else
            return KVT_E_NOMEM;
        req->op_case = KVTIER__REQUEST__OP_GET_RANGE;
        req->get_range = rr;
    } else {
        kvtier__get_req__init(gr);
        gr->ns = ns_id;
        gr->key = key;
        gr->capacity = it->len;
        if (kvt__cl_in_arena(c, it->buf, it->len, &off)) {
            gr->offset = off;
        } else if (it->len <= c->inline_max_bytes) {
            gr->want_inline = 1;
            x->inline_get = 1;
        } else if (kvt__cl_stage_alloc(c, it->len, &x->stage_off, deadline_ms) == 0) {
            gr->offset = x->stage_off;
        } else {
            return KVT_E_NOMEM;
        }
        req->op_case = KVTIER__REQUEST__OP_GET;
        req->get = gr;
    }
    return 0;
}

void kvt__cl_finish_xfer(struct kvt_client *c, enum xfer_kind kind, struct kvt_item *it,
                         struct xfer *x, const Kvtier__Response *r)
{
    it->status = r->status;
    if (kind == XFER_GET && r->result_case == KVTIER__RESPONSE__RESULT_GET) {
        const Kvtier__GetResp *g = r->get;
        size_t cap = it->len; /* the staging buffer has this capacity too */
        it->len = g->length;
        it->tier = (enum kvt_tier_id)g->tier;
        if (!r->status && g->length > cap) {
            /* The daemon claims more than it may have written: a broken or hostile daemon.
             * Copying that length would overrun the caller's buffer. */
            it->status = KVT_E_PROTO;
            it->len = 0;
        } else if (!r->status && x->inline_get) {
            if (g->inline_data.len != g->length)
                it->status = KVT_E_PROTO;
            else
                memcpy(it->buf, g->inline_data.data, g->length);
        } else if (!r->status && x->stage_off != UINT64_MAX) {
            memcpy(it->buf, c->arena + x->stage_off, g->length);
        }
        if (!r->status && !it->status && g->form && g->form != KVT_FORM_CLUSTER) {
            it->status =
                KVT_E_PROTO; /* a plain Get is answered in fp16 or as a clustered variant */
            it->len = 0;
        } else if (!r->status && !it->status && g->checksum &&
                   kvt_payload_checksum(it->buf, g->length) != g->checksum->value) {
            /* fp16 dequantized from a lossy copy comes with the daemon's checksum of what it
             * wrote (docs/lossy.md): bytes that do not match it are not handed over as good. */
            it->status = KVT_E_CHECKSUM;
        }
    } else if (kind == XFER_RANGE && r->result_case == KVTIER__RESPONSE__RESULT_GET_RANGE) {
        const Kvtier__GetResp *g = r->get_range;
        size_t cap = it->len;
        it->len = g->length; /* with KVT_E_SMALLBUF: the capacity needed */
        it->tier = r->status ? KVT_TIER_NONE : (enum kvt_tier_id)g->tier;
        if (!r->status && g->length > cap) {
            /* The daemon claims more than it may have written: copying it would overrun buf. */
            it->status = KVT_E_PROTO;
            it->len = 0;
        } else if (!r->status && x->stage_off != UINT64_MAX) {
            memcpy(it->buf, c->arena + x->stage_off, g->length);
        } else if (r->status && r->status != KVT_E_SMALLBUF) {
            it->len = 0;
        }
        if (!r->status && !it->status && g->form) {
            it->status = KVT_E_PROTO; /* a plain GetRange is answered in fp16 */
            it->len = 0;
        } else if (!r->status && !it->status && g->checksum &&
                   kvt_payload_checksum(it->buf, g->length) != g->checksum->value) {
            /* Rows dequantized from a lossy copy come with the daemon's checksum of them. */
            it->status = KVT_E_CHECKSUM;
        }
    } else if (kind == XFER_PUT && r->result_case == KVTIER__RESPONSE__RESULT_PUT) {
        it->tier = (enum kvt_tier_id)r->put->tier;
    } else {
        if (kind != XFER_PUT)
            it->len = 0;
        if (!r->status)
            it->status = KVT_E_PROTO;
    }
}

void kvt__cl_release_stage(struct kvt_client *c, struct xfer *x)
{
    if (x->stage_off != UINT64_MAX)
        kvt_arena_alloc_put(&c->alloc, x->stage_off);
    x->stage_off = UINT64_MAX;
}

static int run_batch(struct kvt_client *c, enum xfer_kind kind, uint32_t ns, struct kvt_item *items,
                     size_t n)
{
    if (!c || (!items && n))
        return KVT_E_INVAL;
    for (size_t i = 0; i < n; i++)
        items[i].status = KVT_E_DISCONNECTED;
    int rc = kvt__cl_ensure_session(c);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            items[i].status = rc;
        return rc;
    }
    uint32_t ns_id;
    if ((rc = kvt__cl_ns_id(c, ns, &ns_id))) {
        for (size_t i = 0; i < n; i++)
            items[i].status = rc;
        return 0; /* every item answered, with its own error */
    }
    uint64_t deadline = kvt_now_ms() + c->timeout_ms;
    struct xfer xs[BATCH_WINDOW];
    size_t sent = 0, done = 0;
    uint64_t bulk = 0; /* bytes of the requests in flight */
    rc = 0;
    while (done < n && !rc) {
        /* Keep up to the window's requests in flight. */
        while (sent < n && sent - done < c->window && !rc) {
            Kvtier__Request req = KVTIER__REQUEST__INIT;
            struct xfer_msg m;
            struct xfer *x = &xs[sent % BATCH_WINDOW];
            int brc = kvt__cl_build_xfer(c, kind, ns_id, &items[sent], x, &req, &m, deadline);
            if (!brc) {
                rc = kvt__cl_queue(c, &req, deadline);
                if (rc == KVT_E_TOOBIG) {
                    brc = rc; /* refused before a byte was sent: this item's own error */
                    kvt__cl_release_stage(c, x);
                    rc = 0;
                }
            }
            if (brc) {
                /* Cannot stage or send this item: answer it locally, keep the window in order. */
                items[sent].status = brc;
                x->req_id = 0;
            } else {
                x->bytes = items[sent].len;
                bulk += x->bytes;
            }
            sent++;
        }
        if (!rc)
            rc = kvt__cl_flush(c, deadline);
        if (rc)
            break;
        struct xfer *x = &xs[done % BATCH_WINDOW];
        if (x->req_id == 0) {
            done++;
            continue;
        }
        Kvtier__Response *r = NULL;
        rc = kvt__cl_recv(c, &r, deadline, bulk);
        if (rc)
            break;
        /* Match by id: responses may come out of order. */
        size_t k = done;
        while (k < sent && xs[k % BATCH_WINDOW].req_id != r->id)
            k++;
        if (k < sent) {
            bulk -= xs[k % BATCH_WINDOW].bytes;
            kvt__cl_finish_xfer(c, kind, &items[k], &xs[k % BATCH_WINDOW], r);
            kvt__cl_release_stage(c, &xs[k % BATCH_WINDOW]);
            xs[k % BATCH_WINDOW].req_id = 0;
        } else if (r->id == 0 && r->status) {
            rc = r->status;
        } else {
            kvt__async_take(c, r);
        }
        kvtier__response__free_unpacked(r, NULL);
        while (done < sent && xs[done % BATCH_WINDOW].req_id == 0)
            done++;
    }
    if (rc) {
        /* Unanswered items keep their staging buffers: the daemon may still copy into or out of
         * them. They are quarantined with this socket, which then drains (see the top of this
         * file): a socket with requests we no longer wait for is never used again. */
        for (size_t k = done; k < sent; k++) {
            struct xfer *x = &xs[k % BATCH_WINDOW];
            if (!x->req_id)
                continue;
            items[k].status = rc;
            if (x->stage_off != UINT64_MAX)
                c->pending_off[c->n_pending++] = x->stage_off;
            x->stage_off = UINT64_MAX;
        }
        for (size_t k = sent; k < n; k++)
            items[k].status = rc;
        if (c->n_pending)
            drop_connection(c, rc);
        return kvt__cl_session_fail(c, rc);
    }
    return 0;
}

int kvt_put_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items, size_t n)
{
    return run_batch(c, XFER_PUT, ns, items, n);
}

int kvt_get_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items, size_t n)
{
    return run_batch(c, XFER_GET, ns, items, n);
}

int kvt_put(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, const void *buf,
            size_t len, uint32_t n_tokens)
{
    return kvt_put_v(c, ns, key, 0, buf, len, n_tokens);
}

int kvt_put_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
              const void *buf, size_t len, uint32_t n_tokens)
{
    if (!key || (!buf && len))
        return KVT_E_INVAL;
    struct kvt_item it = {
        .key = *key, .variant = variant, .buf = (void *)buf, .len = len, .n_tokens = n_tokens};
    int rc = run_batch(c, XFER_PUT, ns, &it, 1);
    return rc ? rc : it.status;
}

int kvt_get(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, void *buf, size_t cap,
            size_t *len_out, enum kvt_tier_id *tier_out)
{
    return kvt_get_v(c, ns, key, 0, buf, cap, len_out, tier_out);
}

int kvt_get_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
              void *buf, size_t cap, size_t *len_out, enum kvt_tier_id *tier_out)
{
    if (!key || (!buf && cap))
        return KVT_E_INVAL;
    struct kvt_item it = {.key = *key, .variant = variant, .buf = buf, .len = cap};
    int rc = run_batch(c, XFER_GET, ns, &it, 1);
    if (len_out)
        *len_out = rc ? 0 : it.len;
    if (tier_out)
        *tier_out = rc || it.status ? KVT_TIER_NONE : it.tier;
    return rc ? rc : it.status;
}

int kvt_get_range(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t layer,
                  uint32_t token_first, uint32_t n_tokens, void *buf, size_t cap, size_t *len_out,
                  enum kvt_tier_id *tier_out)
{
    return kvt_get_range_v(c, ns, key, 0, layer, token_first, n_tokens, buf, cap, len_out,
                           tier_out);
}

int kvt_get_range_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
                    uint32_t layer, uint32_t token_first, uint32_t n_tokens, void *buf, size_t cap,
                    size_t *len_out, enum kvt_tier_id *tier_out)
{
    if (len_out)
        *len_out = 0;
    if (tier_out)
        *tier_out = KVT_TIER_NONE;
    if (!c || !key || !n_tokens || (!buf && cap))
        return KVT_E_INVAL;
    struct kvt_item it = {.key = *key,
                          .variant = variant,
                          .layer = layer,
                          .token_first = token_first,
                          .n_tokens = n_tokens,
                          .buf = buf,
                          .len = cap};
    int rc = run_batch(c, XFER_RANGE, ns, &it, 1);
    if (rc)
        return rc;
    if (len_out)
        *len_out = it.len;
    if (tier_out)
        *tier_out = it.status ? KVT_TIER_NONE : it.tier;
    return it.status;
}

int kvt_get_range_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items, size_t n)
{
    for (size_t i = 0; i < n && items; i++) {
        if (!items[i].n_tokens || (!items[i].buf && items[i].len)) {
            for (size_t k = 0; k < n; k++)
                items[k].status = KVT_E_INVAL;
            return KVT_E_INVAL;
        }
    }
    return run_batch(c, XFER_RANGE, ns, items, n);
}

/* ---- simple request/response calls -------------------------------------------------------- */

int kvt__cl_call(struct kvt_client *c, Kvtier__Request *req, Kvtier__Response **out)
{
    int rc = kvt__cl_ensure_session(c);
    if (rc)
        return rc;
    uint64_t deadline = kvt_now_ms() + c->timeout_ms;
    req->id = ++c->next_id;
    rc = send_request(c, req, -1, deadline);
    if (!rc)
        rc = wait_response(c, req->id, out, deadline);
    return rc ? kvt__cl_session_fail(c, rc) : 0;
}

int kvt__cl_await(struct kvt_client *c, Kvtier__Request *req, uint64_t deadline_ms,
                  uint64_t bulk_bytes, Kvtier__Response **out)
{
    Kvtier__Response *r = NULL;
    *out = NULL;
    int rc = kvt__cl_queue(c, req, deadline_ms);
    if (!rc)
        rc = kvt__cl_flush(c, deadline_ms);
    while (!rc) {
        rc = kvt__cl_recv(c, &r, deadline_ms, bulk_bytes);
        if (rc)
            break;
        if (r->id == req->id) {
            *out = r;
            return 0;
        }
        if (r->id == 0 && r->status)
            rc = r->status;
        else
            kvt__async_take(c, r); /* a submitted item's answer, or a late one */
        kvtier__response__free_unpacked(r, NULL);
        r = NULL;
    }
    return rc;
}

int kvt__cl_get_placed(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                       uint32_t variant, Kvtier__GetReq *gr, void *buf, size_t cap,
                       Kvtier__Response **out)
{
    *out = NULL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    uint64_t deadline = kvt_now_ms() + c->timeout_ms, off = 0, stage = UINT64_MAX;
    if (!kvt__cl_in_arena(c, buf, cap, &off)) {
        if (kvt__cl_stage_alloc(c, cap, &stage, deadline))
            return KVT_E_NOMEM;
        off = stage;
    }
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key->lo;
    k.hi = key->hi;
    k.variant = variant;
    gr->ns = ns_id;
    gr->key = &k;
    gr->offset = off;
    gr->capacity = cap;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = gr;
    req.id = ++c->next_id;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_await(c, &req, deadline, cap, &r);
    if (rc) {
        /* The daemon may still write the staging buffer: it goes with the socket. */
        if (stage != UINT64_MAX)
            c->pending_off[c->n_pending++] = stage;
        kvt__cl_drop(c, rc);
        return rc;
    }
    rc = r->status;
    if (r->result_case != KVTIER__RESPONSE__RESULT_GET) {
        if (!rc)
            rc = KVT_E_PROTO;
    } else if (!rc && r->get->length > cap) {
        rc = KVT_E_PROTO;
    } else if (!rc && stage != UINT64_MAX) {
        memcpy(buf, c->arena + stage, r->get->length);
    }
    if (stage != UINT64_MAX)
        kvt_arena_alloc_put(&c->alloc, stage);
    *out = r;
    return rc;
}

/* variants: n entries, or NULL for variant 0 throughout. */
Kvtier__Key **kvt__cl_keys_to_proto(const struct kvt_key *keys, const uint32_t *variants, size_t n,
                                    Kvtier__Key **store)
{
    Kvtier__Key *k = malloc(n * sizeof(*k) + 1);
    Kvtier__Key **p = malloc(n * sizeof(*p) + 1);
    if (!k || !p) {
        free(k);
        free(p);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        kvtier__key__init(&k[i]);
        k[i].lo = keys[i].lo;
        k[i].hi = keys[i].hi;
        k[i].variant = variants ? variants[i] : 0;
        p[i] = &k[i];
    }
    *store = k;
    return p;
}

int kvt_lookup(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys, size_t n,
               size_t *hits_out, enum kvt_tier_id *tiers_out)
{
    return kvt_lookup_v(c, ns, keys, NULL, n, hits_out, tiers_out);
}

/* Lookup, pinning the hits under a hold when hold_ms > 0 (hold_out then gets its id). */
static int lookup_common(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                         const uint32_t *variants, size_t n, uint32_t hold_ms, size_t *hits_out,
                         enum kvt_tier_id *tiers_out, uint64_t *hold_out)
{
    if (hits_out)
        *hits_out = 0;
    if (hold_out)
        *hold_out = 0;
    if (!c || !hits_out || (!keys && n) || (hold_ms && !hold_out))
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    if (rc)
        return rc;
    uint32_t ns_id;
    if ((rc = kvt__cl_ns_id(c, ns, &ns_id)))
        return rc;
    Kvtier__Key *store = NULL;
    Kvtier__Key **kp = kvt__cl_keys_to_proto(keys, variants, n, &store);
    if (!kp)
        return KVT_E_NOMEM;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__LookupReq lr = KVTIER__LOOKUP_REQ__INIT;
    lr.ns = ns_id;
    lr.n_keys = n;
    lr.keys = kp;
    lr.hold_ms = hold_ms;
    req.op_case = KVTIER__REQUEST__OP_LOOKUP;
    req.lookup = &lr;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_call(c, &req, &r);
    free(kp);
    free(store);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case == KVTIER__RESPONSE__RESULT_LOOKUP && r->lookup->hits <= n &&
        r->lookup->n_tiers == r->lookup->hits) {
        *hits_out = r->lookup->hits;
        for (size_t i = 0; tiers_out && i < r->lookup->hits; i++)
            tiers_out[i] = (enum kvt_tier_id)r->lookup->tiers[i];
        if (hold_out)
            *hold_out = r->lookup->hold;
    } else if (!rc) {
        rc = KVT_E_PROTO;
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_lookup_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                 const uint32_t *variants, size_t n, size_t *hits_out, enum kvt_tier_id *tiers_out)
{
    return lookup_common(c, ns, keys, variants, n, 0, hits_out, tiers_out, NULL);
}

int kvt_lookup_hold(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                    const uint32_t *variants, size_t n, uint32_t hold_ms, size_t *hits_out,
                    enum kvt_tier_id *tiers_out, uint64_t *hold_out)
{
    if (!hold_ms) {
        if (hits_out)
            *hits_out = 0;
        if (hold_out)
            *hold_out = 0;
        return KVT_E_INVAL;
    }
    return lookup_common(c, ns, keys, variants, n, hold_ms, hits_out, tiers_out, hold_out);
}

int kvt_hold_release(struct kvt_client *c, uint64_t hold, uint32_t *released_out)
{
    if (released_out)
        *released_out = 0;
    if (!c || !hold)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__ReleaseReq rr = KVTIER__RELEASE_REQ__INIT;
    rr.hold = hold;
    req.op_case = KVTIER__REQUEST__OP_RELEASE;
    req.release = &rr;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, &req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case == KVTIER__RESPONSE__RESULT_RELEASE) {
        if (released_out)
            *released_out = r->release->released;
    } else if (!rc) {
        rc = KVT_E_PROTO;
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_delete(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys, size_t n,
               int *status_out)
{
    return kvt_delete_v(c, ns, keys, NULL, n, status_out);
}

int kvt_delete_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                 const uint32_t *variants, size_t n, int *status_out)
{
    if (!c || (!keys && n))
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    if (rc)
        return rc;
    uint32_t ns_id;
    if ((rc = kvt__cl_ns_id(c, ns, &ns_id)))
        return rc;
    Kvtier__Key *store = NULL;
    Kvtier__Key **kp = kvt__cl_keys_to_proto(keys, variants, n, &store);
    if (!kp)
        return KVT_E_NOMEM;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__DeleteReq dr = KVTIER__DELETE_REQ__INIT;
    dr.ns = ns_id;
    dr.n_keys = n;
    dr.keys = kp;
    req.op_case = KVTIER__REQUEST__OP_DEL;
    req.del = &dr;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_call(c, &req, &r);
    free(kp);
    free(store);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case == KVTIER__RESPONSE__RESULT_DEL && r->del->n_status == n) {
        for (size_t i = 0; status_out && i < n; i++)
            status_out[i] = r->del->status[i];
    } else if (!rc) {
        rc = KVT_E_PROTO;
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

/* ---- contexts and Select -------------------------------------------------------------------- */

/* Sends req and checks that the answer carries result (status and result kind); *out is freed by
 * the caller when 0 is returned. */
static int call_expect(struct kvt_client *c, Kvtier__Request *req,
                       Kvtier__Response__ResultCase result, Kvtier__Response **out)
{
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case != result)
        rc = KVT_E_PROTO;
    if (rc) {
        kvtier__response__free_unpacked(r, NULL);
        return rc;
    }
    *out = r;
    return 0;
}

int kvt_context_open(struct kvt_client *c, uint32_t ns, uint32_t ttl_ms, uint64_t *ctx_out)
{
    if (!c || !ctx_out)
        return KVT_E_INVAL;
    *ctx_out = 0;
    int rc = kvt__cl_ensure_session(c);
    if (rc)
        return rc;
    uint32_t ns_id;
    if ((rc = kvt__cl_ns_id(c, ns, &ns_id)))
        return rc;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__OpenContextReq o = KVTIER__OPEN_CONTEXT_REQ__INIT;
    o.ns = ns_id;
    o.ttl_ms = ttl_ms;
    req.op_case = KVTIER__REQUEST__OP_OPEN_CONTEXT;
    req.open_context = &o;
    Kvtier__Response *r;
    if ((rc = call_expect(c, &req, KVTIER__RESPONSE__RESULT_OPEN_CONTEXT, &r)))
        return rc;
    *ctx_out = r->open_context->ctx;
    kvtier__response__free_unpacked(r, NULL);
    return 0;
}

int kvt_context_append(struct kvt_client *c, uint64_t ctx, const struct kvt_key *keys,
                       const uint32_t *variants, const uint64_t *start_pos, size_t n,
                       struct kvt_context_info *info)
{
    if (!c || (n && (!keys || !start_pos)))
        return KVT_E_INVAL;
    Kvtier__Key *store = NULL;
    Kvtier__Key **kp = kvt__cl_keys_to_proto(keys, variants, n, &store);
    if (!kp)
        return KVT_E_NOMEM;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__AppendChunksReq a = KVTIER__APPEND_CHUNKS_REQ__INIT;
    a.ctx = ctx;
    a.n_keys = n;
    a.keys = kp;
    a.n_start_pos = n;
    a.start_pos = (uint64_t *)start_pos;
    req.op_case = KVTIER__REQUEST__OP_APPEND_CHUNKS;
    req.append_chunks = &a;
    Kvtier__Response *r;
    int rc = call_expect(c, &req, KVTIER__RESPONSE__RESULT_APPEND_CHUNKS, &r);
    free(kp);
    free(store);
    if (rc)
        return rc;
    if (info)
        *info = (struct kvt_context_info){r->append_chunks->chunks, r->append_chunks->tokens,
                                          r->append_chunks->without_abstract};
    kvtier__response__free_unpacked(r, NULL);
    return 0;
}

int kvt_context_close(struct kvt_client *c, uint64_t ctx)
{
    if (!c)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__CloseContextReq cr = KVTIER__CLOSE_CONTEXT_REQ__INIT;
    cr.ctx = ctx;
    req.op_case = KVTIER__REQUEST__OP_CLOSE_CONTEXT;
    req.close_context = &cr;
    Kvtier__Response *r;
    int rc = call_expect(c, &req, KVTIER__RESPONSE__RESULT_CLOSE_CONTEXT, &r);
    if (!rc)
        kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_select(struct kvt_client *c, uint64_t ctx, const struct kvt_select_req *q,
               struct kvt_span_sel *spans, size_t max_spans, struct kvt_select_info *info)
{
    if (info)
        memset(info, 0, sizeof(*info));
    if (!c || !q || !q->query || !q->n_query_heads || !q->head_dim || (max_spans && !spans) ||
        (uint64_t)q->n_query_heads * q->head_dim > (1u << 24))
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__SelectReq sr = KVTIER__SELECT_REQ__INIT;
    sr.ctx = ctx;
    sr.layer = q->layer;
    sr.n_query_heads = q->n_query_heads;
    sr.budget_tokens = q->budget_tokens;
    sr.budget_fraction = q->budget_fraction;
    sr.top_p = q->top_p;
    sr.sink_tokens = q->sink_tokens;
    sr.recent_tokens = q->recent_tokens;
    sr.n_estimates = q->n_estimates;
    if (q->n_estimates && (!q->est || !q->est_means))
        return KVT_E_INVAL;
    req.op_case = KVTIER__REQUEST__OP_SELECT;
    req.select = &sr;
    /* The daemon checks the query's size against the namespace's head_dim. */
    sr.query.len = (size_t)q->n_query_heads * q->head_dim * sizeof(float);
    sr.query.data = (uint8_t *)q->query;
    Kvtier__Response *r;
    int rc = call_expect(c, &req, KVTIER__RESPONSE__RESULT_SELECT, &r);
    if (rc)
        return rc;
    const Kvtier__SelectResp *a = r->select;
    size_t means_halfs = 0;
    for (size_t i = 0; i < a->n_estimates; i++)
        means_halfs += a->estimates[i]->means.len / 2;
    if (a->n_spans > max_spans || a->n_estimates > q->n_estimates ||
        means_halfs > q->est_means_cap) {
        rc = a->n_estimates > q->n_estimates ? KVT_E_PROTO : KVT_E_SMALLBUF;
    } else {
        uint16_t *m = q->est_means;
        for (size_t i = 0; i < a->n_estimates; i++) {
            const Kvtier__SpanEstimate *e = a->estimates[i];
            memcpy(m, e->means.data, e->means.len & ~(size_t)1);
            q->est[i] = (struct kvt_span_est){e->chunk, e->token_first, e->n_tokens, e->mass, m};
            m += e->means.len / 2;
        }
        for (size_t i = 0; i < a->n_spans; i++) {
            const Kvtier__SelectedSpan *x = a->spans[i];
            spans[i] = (struct kvt_span_sel){.chunk = x->chunk,
                                             .token_first = x->token_first,
                                             .n_tokens = x->n_tokens,
                                             .tier = (enum kvt_tier_id)x->tier,
                                             .mass = x->mass};
            if (x->key) {
                spans[i].key = (struct kvt_key){x->key->lo, x->key->hi};
                spans[i].variant = x->key->variant;
            }
        }
        if (info)
            *info =
                (struct kvt_select_info){a->n_spans,         a->n_estimates,    a->spans_scored,
                                         a->tokens_selected, a->context_tokens, a->mass_selected};
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_select_fetch(struct kvt_client *c, uint32_t ns, uint64_t ctx,
                     const struct kvt_select_req *req, struct kvt_span_sel *spans, size_t max_spans,
                     void *dst, size_t dst_cap, struct kvt_select_info *info)
{
    struct kvt_select_info si;
    int rc = kvt_select(c, ctx, req, spans, max_spans, &si);
    if (info)
        *info = si;
    if (rc)
        return rc;
    if (!si.n_spans)
        return 0;
    uint32_t ns_id;
    if ((rc = kvt__cl_ns_id(c, ns, &ns_id)))
        return rc;
    /* One token of one layer: [k|v][head][dim]. */
    const struct ns_slot *slot = &c->ns[ns - 1];
    size_t row = slot->info.bytes_per_token / slot->spec.layers, at = 0;
    for (size_t i = 0; i < si.n_spans; i++) {
        size_t bytes = (size_t)spans[i].n_tokens * row;
        if (bytes > dst_cap - at)
            return KVT_E_SMALLBUF;
        spans[i].dst_off = at;
        at += bytes;
    }
    struct kvt_item *items = calloc(si.n_spans, sizeof(*items));
    if (!items)
        return KVT_E_NOMEM;
    for (size_t i = 0; i < si.n_spans; i++)
        items[i] = (struct kvt_item){.key = spans[i].key,
                                     .buf = (uint8_t *)dst + spans[i].dst_off,
                                     .len = (size_t)spans[i].n_tokens * row,
                                     .n_tokens = spans[i].n_tokens,
                                     .variant = spans[i].variant,
                                     .layer = req->layer,
                                     .token_first = spans[i].token_first};
    rc = kvt_get_range_batch(c, ns, items, si.n_spans);
    for (size_t i = 0; i < si.n_spans; i++) {
        spans[i].status = items[i].status;
        spans[i].served_from = items[i].tier;
        if (!rc && items[i].status)
            rc = items[i].status;
    }
    free(items);
    return rc;
}

int kvt_ping(struct kvt_client *c)
{
    if (!c)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__PingReq pr = KVTIER__PING_REQ__INIT;
    pr.nonce = kvt_now_ns();
    req.op_case = KVTIER__REQUEST__OP_PING;
    req.ping = &pr;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, &req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && (r->result_case != KVTIER__RESPONSE__RESULT_PING || r->ping->nonce != pr.nonce))
        rc = KVT_E_PROTO;
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

/* Copies one Stat into v (strings and buckets owned by v). KVT_E_PROTO for a histogram whose
 * buckets do not add up: one bound fewer than counts, bounds rising. */
static int stat_copy(const Kvtier__Stat *m, struct kvt_stat *v)
{
    memset(v, 0, sizeof(*v));
    v->name = strdup(m->name ? m->name : "");
    v->help = strdup(m->help ? m->help : "");
    v->unit = strdup(m->unit ? m->unit : "");
    if (!v->name || !v->help || !v->unit)
        return KVT_E_NOMEM;
    v->value = m->value;
    v->type = (enum kvt_stat_type)m->type;
    v->sum = m->sum;
    if (m->type != KVTIER__STAT_TYPE__STAT_HISTOGRAM)
        return 0;
    size_t n = m->n_bucket_counts;
    if (n == 0 || n > 1024 || m->n_bucket_le + 1 != n)
        return KVT_E_PROTO;
    for (size_t i = 1; i + 1 < n; i++)
        if (m->bucket_le[i] <= m->bucket_le[i - 1])
            return KVT_E_PROTO;
    v->bucket_le = calloc(n, sizeof(*v->bucket_le));
    v->bucket_counts = calloc(n, sizeof(*v->bucket_counts));
    if (!v->bucket_le || !v->bucket_counts)
        return KVT_E_NOMEM;
    for (size_t i = 0; i < n; i++) {
        v->bucket_le[i] = i + 1 < n ? m->bucket_le[i] : UINT64_MAX;
        v->bucket_counts[i] = m->bucket_counts[i];
    }
    v->n_buckets = n;
    return 0;
}

int kvt_stats(struct kvt_client *c, struct kvt_stat **out, size_t *n_out)
{
    if (!c || !out || !n_out)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__StatsReq sr = KVTIER__STATS_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_STATS;
    req.stats = &sr;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, &req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case != KVTIER__RESPONSE__RESULT_STATS)
        rc = KVT_E_PROTO;
    if (!rc) {
        size_t n = r->stats->n_stats;
        struct kvt_stat *v = calloc(n + 1, sizeof(*v));
        size_t i = 0;
        if (!v)
            rc = KVT_E_NOMEM;
        for (; !rc && i < n; i++)
            rc = stat_copy(r->stats->stats[i], &v[i]);
        if (rc) {
            kvt_stats_free(v, i); /* the failed one is partly filled: free it too */
        } else {
            *out = v;
            *n_out = n;
        }
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

void kvt_stats_free(struct kvt_stat *stats, size_t n)
{
    for (size_t i = 0; stats && i < n; i++) {
        free(stats[i].name);
        free(stats[i].help);
        free(stats[i].unit);
        free(stats[i].bucket_le);
        free(stats[i].bucket_counts);
    }
    free(stats);
}

static int config_call(struct kvt_client *c, Kvtier__Request *req, char *buf, size_t cap)
{
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case == KVTIER__RESPONSE__RESULT_CONFIG) {
        if (buf && cap)
            snprintf(buf, cap, "%s", r->config->value ? r->config->value : "");
    } else if (!rc) {
        rc = KVT_E_PROTO;
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_config_get(struct kvt_client *c, const char *key, char *buf, size_t cap)
{
    if (!c || !key)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__ConfigGetReq g = KVTIER__CONFIG_GET_REQ__INIT;
    g.key = (char *)key;
    req.op_case = KVTIER__REQUEST__OP_CONFIG_GET;
    req.config_get = &g;
    return config_call(c, &req, buf, cap);
}

int kvt_config_set(struct kvt_client *c, const char *key, const char *value)
{
    if (!c || !key || !value)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__ConfigSetReq s = KVTIER__CONFIG_SET_REQ__INIT;
    s.key = (char *)key;
    s.value = (char *)value;
    req.op_case = KVTIER__REQUEST__OP_CONFIG_SET;
    req.config_set = &s;
    return config_call(c, &req, NULL, 0);
}

const char *kvt_last_error(const struct kvt_client *c, int *code_out)
{
    if (code_out)
        *code_out = c ? c->last_error : 0;
    return c ? c->last_error_text : "";
}

/* Copies one ConfigEntry into v (strings owned by v). */
static int config_item_copy(const Kvtier__ConfigEntry *m, struct kvt_config_item *v)
{
    memset(v, 0, sizeof(*v));
    v->key = strdup(m->key ? m->key : "");
    v->value = strdup(m->value ? m->value : "");
    v->default_value = strdup(m->default_value ? m->default_value : "");
    v->help = strdup(m->help ? m->help : "");
    v->runtime = m->runtime != 0;
    v->admin = m->admin != 0;
    return v->key && v->value && v->default_value && v->help ? 0 : KVT_E_NOMEM;
}

int kvt_config_list(struct kvt_client *c, struct kvt_config_item **out, size_t *n_out)
{
    if (!c || !out || !n_out)
        return KVT_E_INVAL;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    Kvtier__ConfigListReq lr = KVTIER__CONFIG_LIST_REQ__INIT;
    req.op_case = KVTIER__REQUEST__OP_CONFIG_LIST;
    req.config_list = &lr;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_call(c, &req, &r);
    if (rc)
        return rc;
    rc = r->status;
    if (!rc && r->result_case != KVTIER__RESPONSE__RESULT_CONFIG_LIST)
        rc = KVT_E_PROTO;
    if (!rc) {
        size_t n = r->config_list->n_entries;
        struct kvt_config_item *v = calloc(n + 1, sizeof(*v));
        size_t i = 0;
        if (!v)
            rc = KVT_E_NOMEM;
        for (; !rc && i < n; i++)
            rc = config_item_copy(r->config_list->entries[i], &v[i]);
        if (rc) {
            kvt_config_list_free(v, i); /* the failed one is partly filled: free it too */
        } else {
            *out = v;
            *n_out = n;
        }
    }
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

void kvt_config_list_free(struct kvt_config_item *items, size_t n)
{
    for (size_t i = 0; items && i < n; i++) {
        free(items[i].key);
        free(items[i].value);
        free(items[i].default_value);
        free(items[i].help);
    }
    free(items);
}
