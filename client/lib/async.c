/*
 * libkvtier: asynchronous submission (kvt_submit, kvt_poll, kvt_cancel).
 *
 * A submission is an array of items the caller pins until each item's completion has been
 * returned. Its requests go out on the session's socket through client.c's pipelined core,
 * oldest submission first, at most one batch window of them in flight; kvt_poll sends more as
 * answers come back, and turns each answer into a completion in a ring (one slot per item
 * submitted and not yet returned, so it never overflows). A synchronous call made meanwhile
 * hands the answers it did not wait for to kvt__async_take, so the two never steal each other's.
 *
 * Failure model, the same as the synchronous calls': a request unanswered past the session
 * timeout, or a lost connection, drops the socket, and every item still open, sent or not,
 * completes with that error (its own status, never a failed poll). Staging buffers of requests
 * in flight are quarantined with the socket, as client.c describes.
 */
#include <stdlib.h>
#include <string.h>

#include "client/lib/session.h"
#include "common/time.h"

#define SUBS_MAX 256
#define ITEMS_MAX 4096 /* items submitted whose completion kvt_poll has not returned */

struct sub {
    uint64_t ticket; /* 0: slot free */
    enum xfer_kind kind;
    uint32_t ns_id;
    struct kvt_item *items; /* pinned by the caller */
    size_t n;
    size_t next; /* first item not sent yet */
    size_t open; /* items whose completion has not been returned */
};

struct req {
    struct xfer x; /* x.req_id 0: slot free */
    uint32_t sub;
    size_t item;
    uint64_t deadline_ms;
};

struct done {
    uint32_t sub;
    size_t item;
};

struct kvt__async {
    struct sub subs[SUBS_MAX];
    uint32_t sending; /* the sub whose items go out next, or SUBS_MAX: find the oldest */
    struct req reqs[BATCH_WINDOW];
    uint32_t n_reqs;
    uint64_t bulk; /* bytes the requests in flight move */
    struct done ring[ITEMS_MAX];
    size_t ring_head, ring_n;
    size_t open_items;
    uint64_t next_ticket;
};

static void push_done(struct kvt__async *a, uint32_t sub, size_t item)
{
    a->ring[(a->ring_head + a->ring_n) % ITEMS_MAX] = (struct done){sub, item};
    a->ring_n++;
}

static void fail_item(struct kvt__async *a, uint32_t sub, size_t item, int status)
{
    struct sub *s = &a->subs[sub];
    struct kvt_item *it = &s->items[item];
    it->status = status;
    it->tier = KVT_TIER_NONE;
    if (s->kind != XFER_PUT)
        it->len = 0;
    push_done(a, sub, item);
}

/* The oldest submission with items not sent yet, or SUBS_MAX. */
static uint32_t next_sub(struct kvt__async *a)
{
    if (a->sending < SUBS_MAX) {
        struct sub *s = &a->subs[a->sending];
        if (s->ticket && s->next < s->n)
            return a->sending;
    }
    uint32_t best = SUBS_MAX;
    for (uint32_t i = 0; i < SUBS_MAX; i++) {
        struct sub *s = &a->subs[i];
        if (s->ticket && s->next < s->n && (best == SUBS_MAX || s->ticket < a->subs[best].ticket))
            best = i;
    }
    return a->sending = best;
}

/* Sends what the window allows. A session error is returned (nothing failed yet); an item that
 * cannot be staged or is too big completes with its own error. */
static int pump(struct kvt_client *c)
{
    struct kvt__async *a = c->async;
    uint64_t now = kvt_now_ms(), deadline = now + c->timeout_ms;
    int queued = 0;
    while (a->n_reqs < c->window) {
        uint32_t si = next_sub(a);
        if (si == SUBS_MAX)
            break;
        struct sub *s = &a->subs[si];
        size_t i = s->next++;
        struct req *q = NULL;
        for (uint32_t k = 0; k < BATCH_WINDOW && !q; k++)
            if (!a->reqs[k].x.req_id)
                q = &a->reqs[k];
        Kvtier__Request req = KVTIER__REQUEST__INIT;
        struct xfer_msg m;
        int rc = kvt__cl_build_xfer(c, s->kind, s->ns_id, &s->items[i], &q->x, &req, &m, deadline);
        if (!rc) {
            rc = kvt__cl_queue(c, &req, deadline);
            if (rc && rc != KVT_E_TOOBIG) {
                /* A send error: this item is in flight as far as anyone can tell. */
                q->sub = si;
                q->item = i;
                q->deadline_ms = deadline;
                a->n_reqs++;
                return rc;
            }
            if (rc)
                kvt__cl_release_stage(c, &q->x);
        }
        if (rc) {
            q->x.req_id = 0;
            fail_item(a, si, i, rc);
            continue;
        }
        q->sub = si;
        q->item = i;
        q->deadline_ms = deadline;
        q->x.bytes = s->items[i].len;
        a->bulk += q->x.bytes;
        a->n_reqs++;
        queued = 1;
    }
    return queued ? kvt__cl_flush(c, deadline) : 0;
}

int kvt__async_take(struct kvt_client *c, const Kvtier__Response *r)
{
    struct kvt__async *a = c->async;
    if (!a || !a->n_reqs || !r->id)
        return 0;
    for (uint32_t k = 0; k < BATCH_WINDOW; k++) {
        struct req *q = &a->reqs[k];
        if (q->x.req_id != r->id)
            continue;
        struct sub *s = &a->subs[q->sub];
        kvt__cl_finish_xfer(c, s->kind, &s->items[q->item], &q->x, r);
        kvt__cl_release_stage(c, &q->x);
        a->bulk -= q->x.bytes;
        q->x.req_id = 0;
        a->n_reqs--;
        push_done(a, q->sub, q->item);
        return 1;
    }
    return 0;
}

void kvt__async_fail_all(struct kvt_client *c, int rc)
{
    struct kvt__async *a = c->async;
    if (!a)
        return;
    for (uint32_t k = 0; k < BATCH_WINDOW; k++) {
        struct req *q = &a->reqs[k];
        if (!q->x.req_id)
            continue;
        /* The daemon may still copy into or out of it: it goes with the socket. */
        if (q->x.stage_off != UINT64_MAX)
            c->pending_off[c->n_pending++] = q->x.stage_off;
        q->x.stage_off = UINT64_MAX;
        q->x.req_id = 0;
        fail_item(a, q->sub, q->item, rc);
    }
    a->n_reqs = 0;
    a->bulk = 0;
    for (uint32_t i = 0; i < SUBS_MAX; i++) {
        struct sub *s = &a->subs[i];
        for (; s->ticket && s->next < s->n; s->next++)
            fail_item(a, i, s->next, rc);
    }
}

void kvt__async_free(struct kvt_client *c)
{
    free(c->async);
    c->async = NULL;
}

int kvt_submit(struct kvt_client *c, uint32_t ns, enum kvt_submit_op op, struct kvt_item *items,
               size_t n, uint64_t *ticket_out)
{
    if (!c || !items || !n || !ticket_out ||
        (op != KVT_SUBMIT_GET && op != KVT_SUBMIT_PUT && op != KVT_SUBMIT_GET_RANGE))
        return KVT_E_INVAL;
    for (size_t i = 0; i < n; i++)
        if ((!items[i].buf && items[i].len) || (op == KVT_SUBMIT_GET_RANGE && !items[i].n_tokens))
            return KVT_E_INVAL;
    if (!c->async && !(c->async = calloc(1, sizeof(*c->async))))
        return KVT_E_NOMEM;
    struct kvt__async *a = c->async;
    if (n > ITEMS_MAX - a->open_items)
        return KVT_E_FULL;
    uint32_t si = 0;
    while (si < SUBS_MAX && a->subs[si].ticket)
        si++;
    if (si == SUBS_MAX)
        return KVT_E_FULL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        items[i].status = KVT_ITEM_PENDING;
        items[i].tier = KVT_TIER_NONE;
    }
    a->subs[si] = (struct sub){.ticket = ++a->next_ticket,
                               .kind = op == KVT_SUBMIT_PUT   ? XFER_PUT
                                       : op == KVT_SUBMIT_GET ? XFER_GET
                                                              : XFER_RANGE,
                               .ns_id = ns_id,
                               .items = items,
                               .n = n,
                               .open = n};
    a->open_items += n;
    *ticket_out = a->subs[si].ticket;
    if ((rc = pump(c)))
        kvt__cl_session_fail(c, rc); /* every open item completes with rc */
    return 0;
}

/* Moves up to max completions from the ring to out. */
static size_t pop_done(struct kvt__async *a, struct kvt_completion *out, size_t max)
{
    size_t k = 0;
    for (; k < max && a->ring_n; k++) {
        struct done d = a->ring[a->ring_head];
        a->ring_head = (a->ring_head + 1) % ITEMS_MAX;
        a->ring_n--;
        struct sub *s = &a->subs[d.sub];
        out[k] = (struct kvt_completion){.ticket = s->ticket,
                                         .index = d.item,
                                         .item = &s->items[d.item],
                                         .status = s->items[d.item].status};
        a->open_items--;
        if (--s->open == 0)
            s->ticket = 0;
    }
    return k;
}

int kvt_poll(struct kvt_client *c, struct kvt_completion *out, size_t max, uint32_t timeout_ms,
             size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!c || !out || !max || !n_out)
        return KVT_E_INVAL;
    struct kvt__async *a = c->async;
    uint64_t deadline = kvt_now_ms() + timeout_ms;
    while (a && a->open_items) {
        if (a->ring_n) {
            *n_out = pop_done(a, out, max);
            return 0;
        }
        int rc = pump(c);
        if (rc) {
            kvt__cl_session_fail(c, rc);
            continue;
        }
        if (!a->n_reqs)
            break; /* cannot happen: open items are in flight, unsent or in the ring */
        uint64_t oldest = UINT64_MAX;
        for (uint32_t k = 0; k < BATCH_WINDOW; k++)
            if (a->reqs[k].x.req_id && a->reqs[k].deadline_ms < oldest)
                oldest = a->reqs[k].deadline_ms;
        Kvtier__Response *r = NULL;
        rc = kvt__cl_recv(c, &r, deadline < oldest ? deadline : oldest, a->bulk);
        if (rc == KVT_E_TIMEOUT && kvt_now_ms() < oldest)
            return 0; /* the poll's own timeout: nothing finished yet */
        if (!rc && r->id == 0 && r->status)
            rc = r->status; /* the daemon gave up on the connection */
        if (rc) {
            if (r)
                kvtier__response__free_unpacked(r, NULL);
            kvt__cl_drop(c, rc);
            continue;
        }
        kvt__async_take(c, r); /* or a late answer to an abandoned request: discarded */
        kvtier__response__free_unpacked(r, NULL);
    }
    return 0;
}

int kvt_cancel(struct kvt_client *c, uint64_t ticket, size_t *n_canceled)
{
    if (n_canceled)
        *n_canceled = 0;
    struct kvt__async *a = c ? c->async : NULL;
    if (!c || !ticket)
        return KVT_E_INVAL;
    for (uint32_t i = 0; a && i < SUBS_MAX; i++) {
        struct sub *s = &a->subs[i];
        if (s->ticket != ticket)
            continue;
        size_t k = 0;
        for (; s->next < s->n; s->next++, k++)
            fail_item(a, i, s->next, KVT_E_CANCELED);
        if (n_canceled)
            *n_canceled = k;
        return 0;
    }
    return KVT_E_NOTFOUND;
}

size_t kvt_pending(const struct kvt_client *c)
{
    return c && c->async ? c->async->open_items : 0;
}

int kvt_fd(const struct kvt_client *c)
{
    return c ? c->fd : -1;
}
