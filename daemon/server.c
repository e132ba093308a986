/*
 * Event loop, connections and framing. Frames are a 4-byte little-endian length and a protobuf
 * message. A frame that cannot be trusted (too long, unparsable, cut short) gets one error
 * response and closes its own connection; everything else about the daemon carries on.
 *
 * Output flow control: before a request is dispatched, room for its largest possible response is
 * reserved in the connection's fixed output buffer; when there is no room, or the connection
 * already has max_inflight_per_conn requests in flight, the loop stops reading that connection
 * until responses drain. So output never grows and a slow reader only slows itself.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <sys/resource.h>

#include "common/alloc.h"
#include "common/checksum.h"
#include "common/log.h"
#include "common/memguard.h"
#include "common/paths.h"
#include "common/time.h"
#include "daemon/auth.h"
#include "daemon/metrics.h"
#include "daemon/server.h"

#define EVENTS_MAX 64
#define SCRATCH_BYTES (64 * 1024)
#define OUT_EXTRA_BYTES (64 * 1024)
#define SHUTDOWN_GRACE_MS 10000
#define FDS_PER_MSG_MAX 4
#define ACCEPT_RETRY_MS 100

static void conn_close(struct kvt_server *s, struct kvt_conn *c);
static void on_conn_event(void *arg, uint32_t events);
static void on_listen(void *arg, uint32_t events);
static void on_signal(void *arg, uint32_t events);
static void on_workers(void *arg, uint32_t events);
static int ready_hook(void *arg);
static int sweep_hook(void *arg);

/* ---- protobuf-c allocator over the per-connection scratch -------------------------------- */

static void *scratch_alloc(void *data, size_t size)
{
    struct kvt_scratch *sc = data;
    size = (size + 15) & ~(size_t)15;
    if (size <= sc->cap - sc->used) {
        void *p = sc->buf + sc->used;
        sc->used += size;
        return p;
    }
    return malloc(size); /* a rare large request: heap, freed right after */
}

static void scratch_free(void *data, void *p)
{
    struct kvt_scratch *sc = data;
    if ((uint8_t *)p >= sc->buf && (uint8_t *)p < sc->buf + sc->cap)
        return;
    free(p);
}

/* ---- epoll helpers ------------------------------------------------------------------------ */

/* Arms exactly the events the connection can act on. Level-triggered epoll reports a readable
 * socket on every wait, so input interest is dropped while the input buffer is full (frames wait
 * for flow control) and after end of input; otherwise a client that does not read, or one that
 * half-closed, would make the loop spin. */
static void conn_arm(struct kvt_server *s, struct kvt_conn *c)
{
    if (c->dead)
        return;
    uint32_t want = 0;
    if (!c->read_eof && !c->closing && c->in_len < c->in_cap)
        want |= EPOLLIN | EPOLLRDHUP;
    if (c->out_off < c->out_len)
        want |= EPOLLOUT;
    kvt_loop_rearm(s->loop, &c->w, want);
}

/* Queues c to resume its buffered frames before the loop sleeps: an op finished or output drained.
 * Completions never dispatch new requests themselves (STYLE.md: like Redis's blocked clients). */
static void conn_queue(struct kvt_server *s, struct kvt_conn *c)
{
    if (c->dead || c->queued)
        return;
    c->queued = 1;
    c->ready_next = s->ready;
    s->ready = c;
}

/* ---- output ------------------------------------------------------------------------------- */

static void conn_flush(struct kvt_server *s, struct kvt_conn *c)
{
    while (!c->dead && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_arm(s, c);
            return;
        }
        /* Peer gone: nothing more can be delivered. */
        c->out_off = c->out_len = 0;
        conn_close(s, c);
        return;
    }
    c->out_off = c->out_len = 0;
    conn_arm(s, c);
}

void kvt__server_respond(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         Kvtier__Response *resp, int status, const char *detail)
{
    if (op) {
        /* Every answer passes here: its latency, from the frame to the answer (docs/stats.md). */
        struct kvt_hist *lat =
            op->kind == KVTIER__REQUEST__OP_PUT ? &s->st.put_latency_us
            : op->kind == KVTIER__REQUEST__OP_GET || op->kind == KVTIER__REQUEST__OP_GET_RANGE
                ? &s->st.get_latency_us
            : op->kind == KVTIER__REQUEST__OP_LOOKUP ? &s->st.lookup_latency_us
            : op->kind == KVTIER__REQUEST__OP_SELECT ? &s->st.select_latency_us
                                                     : NULL;
        if (lat)
            kvt_hist_observe_since_ns(lat, op->start_ns);
        resp->id = op->req_id;
        kvt_abs_unref(op->abs); /* a Put answered before its abstract was stored */
        op->abs = NULL;
        c->out_reserved -= op->reserve;
        op->next_free = c->free_ops;
        c->free_ops = op;
        c->inflight--;
        conn_queue(s, c); /* a freed op may let buffered frames through */
    }
    if (status) {
        resp->status = status;
        resp->error = (char *)(detail ? detail : kvt_strerror(status));
        s->st.errors++;
    }
    if (c->dead)
        return;
    size_t need = kvtier__response__get_packed_size(resp);
    if (c->out_off > 0 && c->out_len + 4 + need > c->out_cap) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + 4 + need > c->out_cap) {
        /* Reservation makes this unreachable; if it happens, drop the connection, not the
         * daemon. */
        KVT_ERR("server", "response does not fit conn=%llu need=%zu", (unsigned long long)c->id,
                need);
        conn_close(s, c);
        return;
    }
    uint8_t *p = c->out + c->out_len;
    uint32_t len = (uint32_t)need;
    p[0] = (uint8_t)len;
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 24);
    kvtier__response__pack(resp, p + 4);
    c->out_len += 4 + need;
}

/* Sends one error that belongs to no request (id 0) and stops reading the connection. */
static void conn_fail(struct kvt_server *s, struct kvt_conn *c, int status, const char *detail)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server", "closing conn=%llu: %s (%s)",
                        (unsigned long long)c->id, kvt_strerror_name(status), detail);
    kvt__server_respond(s, c, NULL, &resp, status, detail);
    c->closing = 1;
    c->in_len = 0;
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_free(struct kvt_conn *c)
{
    if (c->arena)
        munmap(c->arena, c->arena_bytes);
    if (c->pending_fd >= 0)
        close(c->pending_fd);
    kvt_free(KVT_ALLOC_CONN, c->in);
    kvt_free(KVT_ALLOC_CONN, c->out);
    kvt_free(KVT_ALLOC_CONN, c->ops);
    kvt_free(KVT_ALLOC_CONN, c->scratch.buf);
    kvt_free(KVT_ALLOC_CONN, c);
}

static void conn_unlink(struct kvt_server *s, struct kvt_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->n_conns--;
}

/* Closes the socket now. The memory is freed later by sweep_closed(), once no worker copies
 * through this connection's arena any more and no caller up the stack still holds the pointer. */
static void conn_close(struct kvt_server *s, struct kvt_conn *c)
{
    if (c->dead)
        return;
    kvt_loop_unwatch(s->loop, &c->w);
    close(c->fd);
    c->dead = 1;
    for (uint32_t i = 0; i < c->n_ns_held; i++)
        kvt_ns_release(&s->ns, c->ns_held[i]);
    c->n_ns_held = 0;
    conn_unlink(s, c);
    c->prev = NULL;
    c->next = s->closed;
    s->closed = c;
    KVT_DEBUG("server", "conn closed id=%llu inflight=%u", (unsigned long long)c->id, c->inflight);
}

/* Frees closed connections whose in-flight ops have all come back. Runs between loop
 * iterations, when no handler holds a connection pointer. */
static void sweep_closed(struct kvt_server *s)
{
    struct kvt_conn **link = &s->closed;
    while (*link) {
        struct kvt_conn *c = *link;
        if (c->inflight == 0 && !c->queued) {
            *link = c->next;
            conn_free(c);
        } else {
            link = &c->next;
        }
    }
}

static struct kvt_conn *conn_new(struct kvt_server *s, int fd)
{
    const struct kvt_dconfig *cfg = s->cfg;
    struct kvt_conn *c = kvt_calloc(KVT_ALLOC_CONN, 1, sizeof(*c));
    if (!c)
        return NULL;
    c->fd = fd;
    c->server = s;
    c->pending_fd = -1;
    c->id = ++s->next_conn_id;
    c->in_cap = cfg->max_frame_bytes + 4;
    c->out_cap = cfg->max_frame_bytes + 4 + OUT_EXTRA_BYTES;
    c->in = kvt_malloc(KVT_ALLOC_CONN, c->in_cap);
    c->out = kvt_malloc(KVT_ALLOC_CONN, c->out_cap);
    c->ops = kvt_calloc(KVT_ALLOC_CONN, cfg->max_inflight_per_conn, sizeof(*c->ops));
    c->scratch.buf = kvt_malloc(KVT_ALLOC_CONN, SCRATCH_BYTES);
    c->scratch.cap = SCRATCH_BYTES;
    if (!c->in || !c->out || !c->ops || !c->scratch.buf) {
        conn_free(c);
        return NULL;
    }
    for (uint64_t i = 0; i < cfg->max_inflight_per_conn; i++) {
        c->ops[i].conn = c;
        c->ops[i].next_free = c->free_ops;
        c->free_ops = &c->ops[i];
    }
    return c;
}

/* Rejects a connection with one error frame, written best effort on the fresh socket. */
static void reject(int fd, int status)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    resp.status = status;
    resp.error = (char *)kvt_strerror(status);
    uint8_t buf[512];
    size_t n = kvtier__response__get_packed_size(&resp);
    if (n + 4 <= sizeof(buf)) {
        buf[0] = (uint8_t)n;
        buf[1] = (uint8_t)(n >> 8);
        buf[2] = buf[3] = 0;
        kvtier__response__pack(&resp, buf + 4);
        ssize_t w = send(fd, buf, n + 4, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    /* Read what the client already sent, so closing does not reset the connection before it
     * has read why. */
    shutdown(fd, SHUT_WR);
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
    close(fd);
}

int kvt__server_adopt(struct kvt_server *s, int fd, const struct ucred *cred)
{
    struct kvt_conn *c = conn_new(s, fd);
    if (!c) {
        reject(fd, KVT_E_NOMEM);
        return KVT_E_NOMEM;
    }
    c->uid = cred->uid;
    c->gid = cred->gid;
    c->pid = cred->pid;
    c->admin = kvt_admin_uid(s->cfg, cred->uid);
    kvt_tenant_default(cred->uid, c->tenant, sizeof(c->tenant));
    int rc = kvt_loop_watch(s->loop, &c->w, fd, EPOLLIN | EPOLLRDHUP, on_conn_event, c);
    if (rc) {
        close(fd);
        conn_free(c);
        return rc;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    s->st.connections_accepted++;
    KVT_DEBUG("server", "conn open id=%llu uid=%u pid=%d", (unsigned long long)c->id, cred->uid,
              cred->pid);
    return 0;
}

static void accept_retry(void *arg);

/* Out of descriptors: the pending connection would keep the listening socket readable and the
 * loop spinning. Give back the spare descriptor, accept the connection, tell it why and close it,
 * then take the spare again. */
static void accept_out_of_fds(struct kvt_server *s, int err)
{
    s->st.connections_rejected_nofile++;
    KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server",
                        "accept: %s: refusing connections until descriptors free up "
                        "(raise RLIMIT_NOFILE or lower max_clients)",
                        strerror(err));
    if (s->spare_fd >= 0) {
        close(s->spare_fd);
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            reject(fd, KVT_E_CONNLIMIT);
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (s->spare_fd < 0 && !kvt_loop_timer_armed(&s->accept_retry)) {
        /* No spare to refuse with: stop listening for a while rather than spin on a listening
         * socket that stays readable. */
        kvt_loop_rearm(s->loop, &s->listen_w, 0);
        kvt_loop_timer_start(s->loop, &s->accept_retry, ACCEPT_RETRY_MS, accept_retry, s);
    }
}

/* The pause after running out of descriptors is over: take a spare again and listen. */
static void accept_retry(void *arg)
{
    struct kvt_server *s = arg;
    if (s->spare_fd < 0)
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (s->listen_fd >= 0)
        kvt_loop_rearm(s->loop, &s->listen_w, EPOLLIN);
}

static void on_accept(struct kvt_server *s)
{
    for (int i = 0; i < EVENTS_MAX; i++) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_out_of_fds(s, errno);
            else if (errno != EAGAIN && errno != EINTR)
                KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server", "accept: %s", strerror(errno));
            return;
        }
        struct ucred cred = {0};
        socklen_t cl = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) || cl != sizeof(cred)) {
            /* Without credentials the peer cannot be told apart from root: refuse it. */
            s->st.connections_rejected_uid++;
            KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server", "rejected connection: SO_PEERCRED: %s",
                                strerror(errno));
            reject(fd, KVT_E_PEERUID);
            continue;
        }
        if (!kvt_uid_listed(s->cfg->allowed_uids, cred.uid, 1)) {
            s->st.connections_rejected_uid++;
            KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server", "rejected uid=%u pid=%d", cred.uid,
                                cred.pid);
            reject(fd, KVT_E_PEERUID);
            continue;
        }
        if (s->n_conns >= s->cfg->max_clients || s->stop) {
            s->st.connections_rejected_busy++;
            KVT_LOG_RATELIMITED(KVT_LOG_WARN, "server",
                                "rejected connection: %u clients (max %llu)", s->n_conns,
                                (unsigned long long)s->cfg->max_clients);
            reject(fd, s->stop ? KVT_E_SHUTDOWN : KVT_E_CONNLIMIT);
            continue;
        }
        kvt__server_adopt(s, fd, &cred);
    }
}

/* ---- input -------------------------------------------------------------------------------- */

static void take_fds(struct kvt_conn *c, struct msghdr *mh)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < n; i++) {
            /* Keep only the newest descriptor; a client cannot make us hoard fds. */
            if (c->pending_fd >= 0)
                close(c->pending_fd);
            c->pending_fd = fds[i];
        }
    }
}

static uint32_t frame_len(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Dispatches every complete frame the connection has buffered, as far as flow control allows. */
static void process_frames(struct kvt_server *s, struct kvt_conn *c)
{
    size_t pos = 0;
    while (!c->closing && !c->dead && c->in_len - pos >= 4) {
        uint32_t len = frame_len(c->in + pos);
        if (len > s->cfg->max_frame_bytes) {
            s->st.oversized_frames++;
            char why[128];
            snprintf(why, sizeof(why), "frame of %u bytes exceeds max_frame_bytes %llu", len,
                     (unsigned long long)s->cfg->max_frame_bytes);
            conn_fail(s, c, KVT_E_TOOBIG, why);
            return;
        }
        if (c->in_len - pos - 4 < len)
            break;
        if (!c->free_ops)
            break;

        ProtobufCAllocator pa = {scratch_alloc, scratch_free, &c->scratch};
        c->scratch.used = 0;
        Kvtier__Request *req = kvtier__request__unpack(&pa, len, c->in + pos + 4);
        if (!req) {
            s->st.bad_frames++;
            conn_fail(s, c, KVT_E_BADFRAME, "request frame is not a valid protobuf message");
            return;
        }
        size_t reserve = kvt__ops_reserve(s, req);
        int too_big = reserve > s->cfg->max_frame_bytes;
        if (too_big)
            reserve = KVT_ERROR_RESERVE_BYTES; /* only an error answer will be sent */
        if (c->out_len - c->out_off + c->out_reserved + reserve + 4 > c->out_cap) {
            kvtier__request__free_unpacked(req, &pa);
            break; /* resumes when output drains */
        }
        struct kvt_op *op = c->free_ops;
        c->free_ops = op->next_free;
        c->inflight++;
        memset(&op->job, 0, sizeof(op->job));
        op->abs = NULL;
        op->abs_stage = 0;
        op->lossy_sum = 0;
        op->stored = 0;
        op->form = 0;
        op->cluster = 0;
        op->n_entries = 0;
        op->req_id = req->id;
        op->reserve = reserve;
        op->kind = req->op_case;
        op->start_ns = kvt_now_ns();
        c->out_reserved += reserve;
        s->st.requests++;
        if (too_big) {
            /* Its answer would exceed max_frame_bytes (a Lookup or Delete of too many keys):
             * refuse it rather than wait forever for output room that can never exist. */
            char why[160];
            s->st.requests_too_big++;
            snprintf(why, sizeof(why),
                     "the answer to this request would exceed max_frame_bytes %llu: send fewer "
                     "keys",
                     (unsigned long long)s->cfg->max_frame_bytes);
            kvt__server_respond(s, c, op, &(Kvtier__Response)KVTIER__RESPONSE__INIT, KVT_E_TOOBIG,
                                why);
        } else {
            kvt__ops_dispatch(s, c, op, req);
        }
        kvtier__request__free_unpacked(req, &pa);
        pos += 4 + len;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
}

/* The peer hung up (or half-closed): requests it sent but that were not dispatched yet are
 * dropped, not served. A client that gave up on its calls may already reuse the arena buffers
 * they name, so a Put dispatched now could store bytes that were never meant for its key. */
static void conn_input_ended(struct kvt_server *s, struct kvt_conn *c)
{
    size_t pos = 0;
    uint64_t dropped = 0;
    while (c->in_len - pos >= 4 && c->in_len - pos - 4 >= frame_len(c->in + pos)) {
        pos += 4 + (size_t)frame_len(c->in + pos);
        dropped++;
    }
    if (dropped) {
        s->st.requests_dropped_eof += dropped;
        KVT_LOG_RATELIMITED(KVT_LOG_INFO, "server",
                            "conn=%llu hung up: %llu buffered requests dropped",
                            (unsigned long long)c->id, (unsigned long long)dropped);
    }
    if (pos < c->in_len) {
        /* The peer stopped sending in the middle of a frame. */
        s->st.truncated_frames++;
        conn_fail(s, c, KVT_E_TRUNCATED, "connection ended inside a frame");
    }
    c->in_len = 0;
    c->closing = 1;
}

static void conn_maybe_finish(struct kvt_server *s, struct kvt_conn *c)
{
    if (c->dead)
        return;
    if (c->read_eof && !c->closing)
        conn_input_ended(s, c);
    conn_flush(s, c);
    if (!c->dead && c->closing && c->inflight == 0 && c->out_len == c->out_off)
        conn_close(s, c);
    conn_arm(s, c);
}

static void on_readable(struct kvt_server *s, struct kvt_conn *c, int to_eof)
{
    /* Read what is there first and dispatch after: frames that arrived together with the end of
     * input are dropped with it (conn_input_ended). A read that did not fill the buffer took what
     * the socket held: unless epoll said the peer hung up (to_eof), the next read would only say
     * EAGAIN, one wasted system call per request; epoll reports what comes later. */
    for (int rounds = 0; rounds < 16 && !c->closing && !c->read_eof; rounds++) {
        if (c->in_len == c->in_cap)
            break; /* full of frames waiting for flow control */
        struct iovec iov = {c->in + c->in_len, c->in_cap - c->in_len};
        union {
            char buf[CMSG_SPACE(sizeof(int) * FDS_PER_MSG_MAX)];
            struct cmsghdr align;
        } cbuf;
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = cbuf.buf,
                            .msg_controllen = sizeof(cbuf.buf)};
        ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            c->read_eof = 1;
            break;
        }
        take_fds(c, &mh);
        if (n == 0) {
            c->read_eof = 1;
            break;
        }
        c->in_len += (size_t)n;
        if ((size_t)n < iov.iov_len && !to_eof)
            break;
    }
    if (!c->read_eof)
        process_frames(s, c);
    conn_maybe_finish(s, c);
}

/* ---- workers ------------------------------------------------------------------------------ */

/* Adds one part of an op's copy to its result: the first fault wins, checksums add up. */
static void op_merge_part(struct kvt_op *op, const struct kvt_job *part)
{
    if (part->res && !op->copy_res)
        op->copy_res = part->res;
    op->sum += part->sum;
}

/* Loop-side completion of an op whose whole copy was done (on the loop or by the workers). */
static void op_copied(struct kvt_server *s, struct kvt_op *op)
{
    struct kvt_conn *c = op->conn;
    if (s->destroying) {
        kvt_abs_unref(op->abs);
        op->abs = NULL;
        c->inflight--;
        return;
    }
    kvt__ops_complete(s, op);
    conn_queue(s, c); /* answered, or dropped: either way c may resume */
}

/* A worker copied the whole op. */
static void op_job_done(struct kvt_job *j)
{
    struct kvt_op *op = (struct kvt_op *)j;
    op_merge_part(op, j);
    op_copied(j->ctx, op);
}

/* Loop-side completion of one worker's part of a striped copy: the last part completes the op. */
static void stripe_done(struct kvt_job *j)
{
    struct kvt_op *op = j->ctx;
    op_merge_part(op, j);
    if (--op->stripes_left == 0)
        op_copied(op->job.ctx, op);
}

static void abs_on_remove(void *arg, uint32_t id)
{
    struct kvt_server *s = arg;
    kvt_abs_store_drop(&s->abs, id);
    kvt_version_store_drop(&s->versions, id);
}

void kvt__server_spans_config(struct kvt_server *s)
{
    const struct kvt_dconfig *cfg = s->cfg;
    s->abs.bytes_max = cfg->abstract_bytes_max;
    s->span_dflt = (struct kvt_span_policy){
        .kind = !strcmp(cfg->abstract_spans, "none")    ? KVT_SPANS_NONE
                : !strcmp(cfg->abstract_spans, "fixed") ? KVT_SPANS_FIXED
                                                        : KVT_SPANS_VARIABLE,
        .block_tokens = (uint32_t)cfg->abstract_block_tokens,
        .max_tokens = (uint32_t)cfg->abstract_max_tokens,
        .merge_tol = (float)cfg->abstract_merge_tol,
        .fine_layers = (uint32_t)cfg->abstract_fine_layers,
    };
    if (s->span_dflt.max_tokens < s->span_dflt.block_tokens)
        s->span_dflt.max_tokens = s->span_dflt.block_tokens;
}

void kvt__server_compute(struct kvt_server *s, struct kvt_op *op, kvt_job_fn fn)
{
    op->job.fn = fn;
    op->job.done = op_job_done;
    op->job.ctx = s;
    op->job.sum = 0;
    op->job.res = 0;
    if (!s->workers) {
        fn(&op->job);
        kvt__ops_complete(s, op);
        return;
    }
    s->st.worker_jobs++;
    op->stripes_left = 1;
    kvt_workers_submit(s->workers, &op->job);
}

void kvt__server_submit(struct kvt_server *s, struct kvt_op *op)
{
    /* A Put fills a slot nobody has touched lately: stream it past the caches (a Put that is
     * checksummed uses ordinary stores and hashes each block while it is in cache). */
    op->job.fn = op->kind == KVTIER__REQUEST__OP_PUT ? kvt_job_copy_stream : kvt_job_copy;
    /* A rotated Get (docs/reuse.md) rotates each part's keys right after copying it, and its
     * parts end on whole rows (it has no checksum blocks to keep). */
    int rope = op->kind == KVTIER__REQUEST__OP_GET && op->rope.on;
    if (rope)
        op->job.fn = kvt__ops_copy_rotate;
    op->job.owner = op;
    op->job.done = op_job_done;
    op->job.ctx = s;
    op->job.sum_off = 0;
    op->job.sum = 0;
    op->copy_res = 0;
    op->sum = 0;
    uint64_t len = op->job.len, stripe_min = s->cfg->copy_stripe_bytes;
    if (!s->workers || len < s->cfg->copy_offload_bytes) {
        op->job.fn(&op->job);
        op_merge_part(op, &op->job);
        kvt__ops_complete(s, op);
        return;
    }
    /* A large copy is split into stripes copied at once by the workers and the loop: one core
     * cannot move bytes as fast as the memory system can. */
    uint64_t parts = stripe_min ? len / stripe_min : 1;
    if (parts > s->n_workers + 1u)
        parts = s->n_workers + 1u;
    if (parts > KVT_STRIPES_MAX)
        parts = KVT_STRIPES_MAX;
    /* Stripes end on checksum block boundaries (64 KiB, which may leave fewer of them) so each
     * part's checksum is its own; the loop's stripe, the op's own job, is the first. */
    const uint64_t align =
        rope ? (uint64_t)op->rope.stride * sizeof(uint16_t) : KVT_CHECKSUM_BLOCK_BYTES;
    uint64_t per = parts > 1 ? (len / parts + align - 1) / align * align : len;
    parts = (len + per - 1) / per;
    if (parts < 2) {
        s->st.worker_jobs++;
        op->stripes_left = 1;
        kvt_workers_submit(s->workers, &op->job);
        return;
    }
    uint8_t *dst = op->job.dst;
    const uint8_t *src = op->job.src;
    op->stripes_left = (uint32_t)parts;
    for (uint64_t k = 1; k < parts; k++) {
        struct kvt_job *j = &op->stripe[k - 1];
        uint64_t at = k * per;
        j->fn = op->job.fn;
        j->done = stripe_done;
        j->ctx = op;
        j->dst = dst + at;
        j->src = src + at;
        j->len = k + 1 < parts ? per : len - at;
        j->want_sum = op->job.want_sum;
        j->owner = op;
        j->sum_off = at;
        j->sum = 0;
        j->res = 0;
        s->st.worker_jobs++;
        kvt_workers_submit(s->workers, j);
    }
    op->job.len = per;
    op->job.fn(&op->job);
    op_merge_part(op, &op->job);
    op->job.len = len;
    /* The workers' stripes are reaped later, through the loop: the last of them completes. */
    op->stripes_left--;
}

void kvt__server_after_ops(struct kvt_server *s, struct kvt_conn *c)
{
    conn_queue(s, c);
}

/* Resumes the connections queued since the last call: their buffered frames, their output. Those
 * queued meanwhile wait for the next call (the loop then does not sleep). */
static void resume_ready(struct kvt_server *s)
{
    struct kvt_conn *c = s->ready;
    s->ready = NULL;
    while (c) {
        struct kvt_conn *next = c->ready_next;
        c->queued = 0;
        c->ready_next = NULL;
        if (!c->dead) {
            process_frames(s, c);
            conn_maybe_finish(s, c);
        }
        c = next;
    }
}

static void on_workers(void *arg, uint32_t events)
{
    struct kvt_server *s = arg;
    (void)events;
    struct kvt_job *j = kvt_workers_reap(s->workers);
    while (j) {
        struct kvt_job *next = j->next;
        j->done(j);
        j = next;
    }
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

/* Fills a Unix socket address; -1 when the path does not fit. */
static int unix_addr(const char *path, struct sockaddr_un *a)
{
    size_t n = strlen(path);
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (n >= sizeof(a->sun_path))
        return -1;
    memcpy(a->sun_path, path, n + 1);
    return 0;
}

static int socket_in_use(const char *path)
{
    struct sockaddr_un a;
    if (unix_addr(path, &a))
        return 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int live = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return live;
}

static int bind_socket(struct kvt_server *s)
{
    char why[256];
    if (!*s->cfg->socket) {
        /* The default lives in a directory of the daemon's own, never in a world-writable one
         * where another user could bind the name first. */
        int rc = kvt_socket_default(s->cfg->socket, sizeof(s->cfg->socket));
        if (rc == 0)
            rc = kvt_socket_dir_prepare(s->cfg->socket, why, sizeof(why));
        if (rc) {
            KVT_ERR("server",
                    "default socket %s: %s (set --socket to a path in a directory only "
                    "the daemon's user can write)",
                    s->cfg->socket, rc == KVT_E_TOOBIG ? "path too long" : why);
            return rc;
        }
    } else if (kvt_socket_dir_prepare(s->cfg->socket, why, sizeof(why))) {
        KVT_WARN("server", "socket %s: %s: another user could bind it first", s->cfg->socket, why);
    }
    const char *path = s->cfg->socket;
    struct sockaddr_un a;
    if (unix_addr(path, &a)) {
        KVT_ERR("server", "socket path too long (max %zu): %s", sizeof(a.sun_path) - 1, path);
        return KVT_E_INVAL;
    }
    if (socket_in_use(path)) {
        KVT_ERR("server", "another daemon is listening on %s", path);
        return -EADDRINUSE;
    }
    unlink(path); /* a stale socket from a daemon that died */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    mode_t mode = (mode_t)strtoul(s->cfg->socket_mode, NULL, 8) & 0777;
    mode_t old = umask(0777 & ~mode);
    int rc = bind(fd, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    if (rc || listen(fd, 512)) {
        rc = -errno;
        KVT_ERR("server", "cannot listen on %s: %s", path, strerror(-rc));
        close(fd);
        return rc;
    }
    chmod(path, mode);
    s->listen_fd = fd;
    return 0;
}

/* Raises the soft descriptor limit to what max_clients needs, as far as the hard limit allows;
 * kvt_dconfig_check then refuses a max_clients that still does not fit. */
static void raise_nofile(const struct kvt_dconfig *cfg)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)KVT_FDS_NEEDED(cfg->max_clients);
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        KVT_INFO("server", "RLIMIT_NOFILE raised to %llu for max_clients",
                 (unsigned long long)rl.rlim_cur);
}

/* Lookup holds pin and unpin index entries through the tier manager. */
static void hold_pin(void *arg, uint32_t entry)
{
    struct kvt_server *s = arg;
    kvt_tm_pin(s->tm, entry);
}

static void hold_unpin(void *arg, uint32_t entry, uint32_t gen)
{
    struct kvt_server *s = arg;
    kvt_tm_unpin(s->tm, entry, gen);
}

static uint32_t worker_count(const struct kvt_dconfig *cfg)
{
    if (cfg->workers)
        return (uint32_t)cfg->workers;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 2 ? (uint32_t)(cores - 1) : 1;
}

static size_t metrics_snapshot(void *arg, const struct kvt_stat **out)
{
    return kvt__server_stats_snapshot(arg, out);
}

static int metrics_health(void *arg, char *why, size_t cap)
{
    struct kvt_server *s = arg;
    if (s->stop) {
        snprintf(why, cap, "shutting down");
        return 1;
    }
    return kvt__server_tiers_health(s, why, cap);
}

int kvt_server_create(struct kvt_dconfig *cfg, struct kvt_server **out)
{
    struct kvt_server *s = kvt_calloc(KVT_ALLOC_MISC, 1, sizeof(*s));
    if (!s)
        return KVT_E_NOMEM;
    s->cfg = cfg;
    s->listen_fd = s->signal_fd = s->spare_fd = -1;
    s->start_ms = kvt_now_ms();
    int rc;
    /* Block the shutdown and reload signals before any thread starts, so every thread inherits
     * the mask and only the loop's signalfd sees them. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN); /* a peer that vanished is an error return, never a signal */
    raise_nofile(cfg);
    char why[256];
    if ((rc = kvt_dconfig_check(cfg, why, sizeof(why)))) {
        KVT_ERR("server", "%s", why);
        goto err;
    }
    if ((rc = kvt_memguard_init())) {
        KVT_ERR("server", "cannot install the SIGBUS guard: %s", kvt_strerror(rc));
        goto err;
    }
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if ((rc = kvt_ns_table_init(&s->ns, (uint32_t)cfg->max_namespaces)))
        goto err;
    if ((rc = kvt_index_init(&s->idx, (uint32_t)cfg->index_max_objects)))
        goto err;
    s->idx.owner_objects = s->ns.objects; /* chunks per namespace, for quotas and reclaim */
    s->idx.n_owners = s->ns.cap;
    if ((rc = kvt_version_store_init(&s->versions, s->idx.cap, cfg->reuse_bytes_max)))
        goto err;
    if ((rc = kvt_abs_store_init(&s->abs, s->idx.cap, cfg->abstract_bytes_max)))
        goto err;
    s->idx.on_remove = abs_on_remove; /* an entry's abstract and version info leave with it */
    s->idx.on_remove_arg = s;
    kvt__server_spans_config(s);
    s->n_workers = worker_count(cfg);
    if ((rc = kvt_workers_create(s->n_workers, &s->workers)))
        goto err;
    struct kvt_loop_config lc = {.timers_max = 64};
    if ((rc = kvt_loop_create(&lc, &s->loop)))
        goto err;
    if ((rc = kvt_ctx_table_init(&s->ctx, (uint32_t)cfg->context_max,
                                 (uint32_t)cfg->context_chunks_max, s->loop)))
        goto err;
    if ((rc = kvt__server_tiers_open(s)))
        goto err;
    struct kvt_hold_pins pins = {hold_pin, hold_unpin, s};
    if ((rc = kvt_hold_table_init(&s->holds, (uint32_t)cfg->hold_max, cfg->hold_pins_max, &pins,
                                  s->loop)))
        goto err;
    s->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->signal_fd < 0) {
        rc = -errno;
        goto err;
    }
    if ((rc = bind_socket(s)))
        goto err;
    if (cfg->metrics_listen[0]) {
        struct kvt_metrics_config mc = {.listen = cfg->metrics_listen,
                                        .allow_remote = cfg->metrics_allow_remote,
                                        .connections_max = (uint32_t)cfg->metrics_connections_max,
                                        .idle_timeout_s = (uint32_t)cfg->metrics_idle_timeout_s,
                                        .snapshot = metrics_snapshot,
                                        .health = metrics_health,
                                        .arg = s};
        if ((rc = kvt_metrics_create(&mc, s->loop, why, sizeof(why), &s->metrics))) {
            KVT_ERR("server", "%s", why);
            goto err;
        }
    }
    if ((rc = kvt_loop_watch(s->loop, &s->listen_w, s->listen_fd, EPOLLIN, on_listen, s)) ||
        (rc = kvt_loop_watch(s->loop, &s->signal_w, s->signal_fd, EPOLLIN, on_signal, s)) ||
        (rc = kvt_loop_watch(s->loop, &s->workers_w, kvt_workers_fd(s->workers), EPOLLIN,
                             on_workers, s)))
        goto err;
    /* Before the loop sleeps (after the tier manager's background work, which it registered):
     * the connections that completions queued, then freeing the closed ones nobody refers to. */
    kvt_loop_before_sleep(s->loop, &s->ready_hook, ready_hook, s);
    kvt_loop_before_sleep(s->loop, &s->sweep_hook, sweep_hook, s);
    KVT_INFO("server", "listening socket=%s workers=%u max_clients=%llu", cfg->socket, s->n_workers,
             (unsigned long long)cfg->max_clients);
    *out = s;
    return 0;
err:
    kvt_server_destroy(s);
    return rc;
}

/* SIGHUP: reads the config file again and applies the keys that may change at run time (with the
 * same checks as a runtime Config set), then reopens the log. A bad file changes nothing. */
static void reload(struct kvt_server *s)
{
    kvt_log_reopen();
    if (!s->config_path) {
        KVT_INFO("server", "SIGHUP: log reopened; no config file to reload (--config)");
        return;
    }
    char why[512];
    struct kvt_dconfig next = *s->cfg;
    int rc = kvt_cfg_load_file(&kvt_dconfig_table, &next, s->config_path, why, sizeof(why));
    if (!rc)
        rc = kvt_dconfig_check(&next, why, sizeof(why));
    if (rc) {
        s->st.reload_failures++;
        KVT_ERR("server", "SIGHUP: config not reloaded: %s", why);
        return;
    }
    const struct kvt_cfg_table *t = &kvt_dconfig_table;
    unsigned changed = 0, ignored = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct kvt_cfg_entry *e = &t->entries[i];
        char before[1100], after[1100];
        kvt_cfg_get(t, s->cfg, e->key, before, sizeof(before));
        kvt_cfg_get(t, &next, e->key, after, sizeof(after));
        if (!strcmp(before, after))
            continue;
        if (!(e->flags & KVT_CFG_RUNTIME)) {
            ignored++;
            KVT_WARN("server", "SIGHUP: %s changed in %s but needs a restart", e->key,
                     s->config_path);
            continue;
        }
        kvt_cfg_set(t, s->cfg, e->key, after, 1, NULL, 0);
        changed++;
        KVT_INFO("server", "SIGHUP: %s = %s", e->key, after);
    }
    kvt__server_config_applied(s);
    s->st.reloads++;
    KVT_INFO("server", "SIGHUP: config reloaded from %s (%u changed, %u need a restart)",
             s->config_path, changed, ignored);
}

static void begin_shutdown(struct kvt_server *s)
{
    if (s->stop)
        return;
    s->stop = 1;
    s->stop_deadline_ms = kvt_now_ms() + SHUTDOWN_GRACE_MS;
    KVT_INFO("server", "shutting down: %u connections", s->n_conns);
    kvt_loop_timer_stop(s->loop, &s->accept_retry);
    kvt_loop_unwatch(s->loop, &s->listen_w);
    close(s->listen_fd);
    s->listen_fd = -1;
    unlink(s->cfg->socket);
    /* Stop reading requests; answer what is in flight; write back what DRAM holds alone. */
    for (struct kvt_conn *c = s->conns; c; c = c->next)
        c->closing = 1;
    kvt_hold_table_deinit(&s->holds); /* a held chunk is not written back: let go first */
    kvt_tm_flush(s->tm);
}

static int inflight_total(const struct kvt_server *s)
{
    int n = 0;
    for (const struct kvt_conn *c = s->conns; c; c = c->next)
        n += (int)c->inflight;
    return n;
}

static void on_listen(void *arg, uint32_t events)
{
    (void)events;
    on_accept(arg);
}

static void on_signal(void *arg, uint32_t events)
{
    struct kvt_server *s = arg;
    (void)events;
    struct signalfd_siginfo si;
    while (read(s->signal_fd, &si, sizeof(si)) == sizeof(si)) {
        KVT_INFO("server", "signal %u received", si.ssi_signo);
        if (si.ssi_signo == SIGHUP)
            reload(s);
        else
            begin_shutdown(s);
    }
}

static void on_conn_event(void *arg, uint32_t events)
{
    struct kvt_conn *c = arg;
    struct kvt_server *s = c->server;
    if (c->dead)
        return;
    if (events & (EPOLLHUP | EPOLLERR)) {
        /* Gone both ways: nothing more can be delivered, and epoll would report it on every
         * wait until the fd is closed. What it sent is read (and dropped with the end of input,
         * never dispatched), then the socket is closed. */
        on_readable(s, c, 1);
        if (!c->dead && !c->read_eof) {
            c->read_eof = 1;
            conn_input_ended(s, c);
        }
        conn_close(s, c);
        return;
    }
    if (events & EPOLLOUT) {
        conn_flush(s, c);
        conn_queue(s, c); /* drained output may let buffered frames through */
    }
    if (!c->dead && (events & (EPOLLIN | EPOLLRDHUP)))
        on_readable(s, c, (events & EPOLLRDHUP) != 0);
    else if (!c->dead)
        conn_maybe_finish(s, c);
}

static int ready_hook(void *arg)
{
    struct kvt_server *s = arg;
    resume_ready(s);
    return s->ready != NULL; /* queued meanwhile: the next iteration must not sleep */
}

static int sweep_hook(void *arg)
{
    sweep_closed(arg);
    return 0;
}

int kvt_server_run_once(struct kvt_server *s, int timeout_ms)
{
    /* The disk tier is plugged for the whole iteration, so the reads and writes that its events
     * and hooks dispatch (one per request, from many connections) reach the kernel in one
     * io_uring_enter when it ends, just before the next wait, instead of one system call each.
     * Nothing is submitted while the loop sleeps, so the plug delays no I/O. */
    struct kvt_disk *disk = s->disk;
    if (disk)
        kvt_disk_plug(disk);
    int n = kvt_loop_run_once(s->loop, s->ready ? 0 : timeout_ms);
    if (disk)
        kvt_disk_unplug(disk);
    if (n < 0)
        KVT_ERR("server", "epoll_wait: %s", strerror(-n));
    return n;
}

int kvt_server_run(struct kvt_server *s)
{
    uint64_t last_event_ns = 0;
    for (;;) {
        if (s->stop) {
            for (struct kvt_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                conn_maybe_finish(s, c);
            }
            int conns_done = s->n_conns == 0 || inflight_total(s) == 0;
            if ((conns_done && !kvt_tm_busy(s->tm)) || kvt_now_ms() > s->stop_deadline_ms)
                break;
        }
        /* Right after activity, poll without sleeping for busy_poll_us: the next request of a
         * pipelined client usually arrives within microseconds, and waking a sleeping thread on
         * another core costs tens of them on virtual machines. */
        int timeout_ms = s->stop ? (kvt_tm_busy(s->tm) ? 1 : 50) : 1000;
        if (kvt_now_ns() - last_event_ns < s->cfg->busy_poll_us * 1000ull)
            timeout_ms = 0;
        int n = kvt_server_run_once(s, timeout_ms);
        if (n < 0)
            return n;
        if (n > 0)
            last_event_ns = kvt_now_ns();
    }
    KVT_INFO("server", "stopped after %llu requests", (unsigned long long)s->st.requests);
    return 0;
}

void kvt_server_destroy(struct kvt_server *s)
{
    if (!s)
        return;
    /* The tier manager stops answering first, so that the jobs settled below only release what
     * they hold (a finished write-back is cancelled, not submitted). */
    if (s->tm)
        kvt_tm_stop(s->tm);
    /* Workers next: after this no job references a connection. Jobs they finished but the
     * loop never reaped still count as in flight; settle them so every connection can go. */
    if (s->workers) {
        s->destroying = 1;
        s->vlog.stopping = 1; /* its last batch is written by kvt_vlog_close */
        kvt_workers_stop(s->workers);
        for (struct kvt_job *j = kvt_workers_reap(s->workers), *next; j; j = next) {
            next = j->next;
            j->done(j);
        }
        kvt_workers_destroy(s->workers);
        s->workers = NULL;
    }
    kvt_metrics_destroy(s->metrics); /* answers nothing from here on */
    s->metrics = NULL;
    s->destroying = 1;
    kvt_hold_table_deinit(&s->holds); /* unpins through the tier manager: before it goes */
    kvt__server_tiers_close(s); /* waits for disk I/O; its callbacks only release what they hold */
    kvt_vlog_close(&s->vlog);   /* after the last copies landed and logged their versions */
    while (s->closed) {
        struct kvt_conn *c = s->closed;
        s->closed = c->next;
        conn_free(c);
    }
    while (s->conns) {
        struct kvt_conn *c = s->conns;
        conn_unlink(s, c);
        if (!c->dead)
            close(c->fd);
        conn_free(c);
    }
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(s->cfg->socket);
    }
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    kvt_ctx_table_deinit(&s->ctx);
    kvt_sel_scratch_free(&s->sel);
    kvt_loop_destroy(s->loop);
    s->idx.on_remove = NULL;
    kvt_abs_store_deinit(&s->abs);
    kvt_version_store_deinit(&s->versions);
    kvt_index_deinit(&s->idx);
    kvt_ns_table_deinit(&s->ns);
    kvt_free(KVT_ALLOC_MISC, s);
}
