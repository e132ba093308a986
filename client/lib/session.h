/*
 * Internals of libkvtier shared by its files (never installed, never exported): the session
 * struct, the pipelined transfer core of client.c, and the asynchronous submission state of
 * async.c. Functions here are kvt__cl_*; client.c owns the socket, framing and arena, async.c
 * only queues requests through them and completes items from their answers.
 */
#ifndef KVT_CLIENT_SESSION_H
#define KVT_CLIENT_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "client/lib/arena.h"
#include "common/paths.h"
#include "kvtier.pb-c.h"
#include "kvtier/kvtier.h"

#define NS_MAX 64
#define RECONNECT_BACKOFF_MS 100
#define IN_EXTRA_BYTES (64 * 1024 + 4)
#define BATCH_WINDOW 64 /* requests in flight at once in batch calls */
/* Requests in flight at once on one socket: a batch window of a synchronous call plus one of
 * asynchronous submissions (both may be unanswered when the socket is dropped). */
#define INFLIGHT_MAX (2 * BATCH_WINDOW)
#define DRAIN_MAX 4                 /* old sockets whose staging buffers wait for the daemon */
#define DRAIN_READ_BYTES (1u << 20) /* discarded per recv() while draining */
#define DRAIN_READS_MAX 64          /* recv() calls per socket per reap: bounds one reap's work */
#define ERROR_TEXT_MAX 256

struct ns_slot {
    int used;
    uint32_t daemon_id; /* 0 when not registered on the current connection */
    struct kvt_ns_spec spec;
    char model_id[KVT_MODEL_ID_MAX];
    struct kvt_ns_info info;
    int has_spans;
    struct kvt_span_policy spans;
};

/* An old connection draining: shut down for writing, read until the daemon closes it. */
struct drain {
    int fd; /* -1: slot free */
    uint64_t seq;
    uint32_t n_stage;
    uint64_t stage_off[INFLIGHT_MAX]; /* staging buffers of its unanswered requests */
};

struct kvt__async;

struct kvt_client {
    char socket_path[KVT_SOCKET_PATH_MAX];
    char tenant[KVT_TENANT_MAX];
    int64_t daemon_uid; /* a uid trusted besides our euid and root; -1: none */
    uint32_t timeout_ms;
    uint32_t spin_us;
    uint32_t window; /* requests a batch call keeps in flight (1 .. BATCH_WINDOW) */
    int fd;          /* -1 when disconnected */
    uint64_t next_id;
    uint64_t retry_after_ms;

    int arena_fd;
    int arena_owned; /* created and mapped by the library (else the caller's, kvt_connect_arena) */
    uint8_t *arena;
    uint64_t arena_bytes;
    struct kvt_arena_alloc alloc;

    uint64_t max_frame_bytes;
    uint64_t inline_max_bytes;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_cap;
    size_t out_len; /* frames queued in out, not sent yet (kvt__cl_queue) */

    struct ns_slot ns[NS_MAX];

    /* Staging buffers of unanswered requests on the current socket; they go with it to a drain
     * slot when it is dropped. */
    uint32_t n_pending;
    uint64_t pending_off[INFLIGHT_MAX];
    struct drain drain[DRAIN_MAX];
    uint64_t drain_seq;
    uint64_t stage_lost; /* buffers given up on for good (see the top of client.c) */

    /* The daemon's detail text of the last error answer received, and its code. */
    int last_error;
    char last_error_text[ERROR_TEXT_MAX];

    struct kvt__async *async; /* NULL until the first kvt_submit */
};

enum xfer_kind { XFER_PUT, XFER_GET, XFER_RANGE };

/* Per item bookkeeping while a request is in flight. */
struct xfer {
    uint64_t req_id;
    uint64_t stage_off; /* staging buffer in the arena, or UINT64_MAX */
    int inline_get;
    uint64_t bytes; /* bulk bytes the request moves, for the wait's spin budget */
};

/* The protobuf parts of one request, on the caller's stack. */
struct xfer_msg {
    Kvtier__PutReq pr;
    Kvtier__GetReq gr;
    Kvtier__GetRangeReq rr;
    Kvtier__Key key;
    Kvtier__Checksum ck;
};

/* ---- client.c, for async.c ---------------------------------------------------------------- */

/* Connected (reconnecting when needed), or a session error. */
int kvt__cl_ensure_session(struct kvt_client *c);
/* The daemon's id of namespace handle on the current connection; KVT_E_NONS. */
int kvt__cl_ns_id(struct kvt_client *c, uint32_t handle, uint32_t *id);
/* Builds the request of one item (staging its buffer when it is outside the arena); an error
 * (KVT_E_NOMEM) belongs to the item, nothing was staged. */
int kvt__cl_build_xfer(struct kvt_client *c, enum xfer_kind kind, uint32_t ns_id,
                       struct kvt_item *it, struct xfer *x, Kvtier__Request *req,
                       struct xfer_msg *m, uint64_t deadline_ms);
/* Fills the item from its answer (copying staged bytes into the caller's buffer). */
void kvt__cl_finish_xfer(struct kvt_client *c, enum xfer_kind kind, struct kvt_item *it,
                         struct xfer *x, const Kvtier__Response *r);
void kvt__cl_release_stage(struct kvt_client *c, struct xfer *x);
/* Queues a request frame (KVT_E_TOOBIG: refused, nothing queued) / sends what is queued. */
int kvt__cl_queue(struct kvt_client *c, Kvtier__Request *req, uint64_t deadline_ms);
int kvt__cl_flush(struct kvt_client *c, uint64_t deadline_ms);
/* The next answer frame, waiting up to deadline_ms (KVT_E_TIMEOUT). */
int kvt__cl_recv(struct kvt_client *c, Kvtier__Response **out, uint64_t deadline_ms,
                 uint64_t bulk_bytes);
/* After a failed exchange: a session error drops the socket (failing every asynchronous item in
 * flight with rc). Returns rc. */
int kvt__cl_session_fail(struct kvt_client *c, int rc);

/* One request, its answer (*out, free with kvtier__response__free_unpacked) within the timeout;
 * a session error drops the socket. */
int kvt__cl_call(struct kvt_client *c, Kvtier__Request *req, Kvtier__Response **out);
/* Queues and sends req (its id already set) and reads answers until the one with its id (*out,
 * free it), completing submitted items whose answers come first. An error is a session error:
 * the caller drops the socket (kvt__cl_drop) after keeping what the daemon may still touch. */
int kvt__cl_await(struct kvt_client *c, Kvtier__Request *req, uint64_t deadline_ms,
                  uint64_t bulk_bytes, Kvtier__Response **out);
/* A Get of (ns, key, variant) with the options already in *gr (rotate, stored_form...) whose
 * bytes go to buf (cap bytes): written in place when buf is in the arena, else through a staging
 * buffer copied into buf; never inline. Returns the answer's status (KVT_E_PROTO for an answer
 * that is no Get or longer than cap) or a session error (the socket dropped, *out NULL). *out,
 * when set, is the answer (free it): on 0 its bytes are in buf; on KVT_E_SMALLBUF its length is
 * what buf needs. */
int kvt__cl_get_placed(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                       uint32_t variant, Kvtier__GetReq *gr, void *buf, size_t cap,
                       Kvtier__Response **out);
/* Protobuf keys for keys[0..n) (variants NULL: 0): returns the pointer array, *store the keys;
 * free both. NULL when out of memory. */
Kvtier__Key **kvt__cl_keys_to_proto(const struct kvt_key *keys, const uint32_t *variants, size_t n,
                                    Kvtier__Key **store);
/* A staging buffer of bytes in the arena (waits for draining sockets up to deadline_ms). */
int kvt__cl_stage_alloc(struct kvt_client *c, uint64_t bytes, uint64_t *off, uint64_t deadline_ms);
/* Whether [p, p + len) is inside the arena (*off its offset). */
int kvt__cl_in_arena(const struct kvt_client *c, const void *p, size_t len, uint64_t *off);
/* Drops the socket whatever rc is (the daemon gave up on the connection). */
void kvt__cl_drop(struct kvt_client *c, int why);

/* ---- async.c, for client.c ---------------------------------------------------------------- */

/* An answer a synchronous call did not wait for: 1 when it belonged to a submitted item (which
 * is now complete), 0 otherwise. r stays the caller's. */
int kvt__async_take(struct kvt_client *c, const Kvtier__Response *r);
/* The socket is being dropped: every submitted item not yet complete completes with rc; staging
 * buffers of the ones in flight go to c->pending_off (quarantined with the socket). */
void kvt__async_fail_all(struct kvt_client *c, int rc);
void kvt__async_free(struct kvt_client *c);

#endif
