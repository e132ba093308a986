/*
 * libkvtier: lossy forms (docs/lossy.md). kvt_get_form reads a chunk in the form the daemon keeps
 * its copy in (a q8 or q4 block undecoded, or fp16) instead of dequantized. One request through
 * client.c's session (session.h), not batched, like a rotated Get.
 */
#include <string.h>

#include "client/lib/session.h"
#include "common/time.h"

int kvt_get_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
                 void *buf, size_t cap, size_t *len_out, enum kvt_form *form_out,
                 enum kvt_tier_id *tier_out)
{
    if (len_out)
        *len_out = 0;
    if (form_out)
        *form_out = KVT_FORM_FP16;
    if (tier_out)
        *tier_out = KVT_TIER_NONE;
    if (!c || !key || !buf || !cap)
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    uint64_t deadline = kvt_now_ms() + c->timeout_ms, off = 0, stage = UINT64_MAX;
    /* Never inline: the block goes to the caller's arena buffer or a staging buffer. */
    if (!kvt__cl_in_arena(c, buf, cap, &off)) {
        if (kvt__cl_stage_alloc(c, cap, &stage, deadline))
            return KVT_E_NOMEM;
        off = stage;
    }
    Kvtier__Key k = KVTIER__KEY__INIT;
    k.lo = key->lo;
    k.hi = key->hi;
    k.variant = variant;
    Kvtier__GetReq gr = KVTIER__GET_REQ__INIT;
    gr.ns = ns_id;
    gr.key = &k;
    gr.offset = off;
    gr.capacity = cap;
    gr.stored_form = 1;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    req.op_case = KVTIER__REQUEST__OP_GET;
    req.get = &gr;
    req.id = ++c->next_id;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_queue(c, &req, deadline);
    if (!rc)
        rc = kvt__cl_flush(c, deadline);
    while (!rc) {
        rc = kvt__cl_recv(c, &r, deadline, cap);
        if (rc || r->id == req.id)
            break;
        if (r->id == 0 && r->status)
            rc = r->status;
        else
            kvt__async_take(c, r); /* a submitted item's answer, or a late one */
        kvtier__response__free_unpacked(r, NULL);
        r = NULL;
    }
    if (rc) {
        /* The daemon may still write the staging buffer: it goes with the socket. */
        if (stage != UINT64_MAX)
            c->pending_off[c->n_pending++] = stage;
        kvt__cl_drop(c, rc);
        return rc;
    }
    rc = r->status;
    if (!rc && r->result_case != KVTIER__RESPONSE__RESULT_GET)
        rc = KVT_E_PROTO;
    if (!rc && (r->get->length > cap || r->get->form > KVT_FORM_CLUSTER))
        rc = KVT_E_PROTO;
    if (rc == KVT_E_SMALLBUF && len_out && r->result_case == KVTIER__RESPONSE__RESULT_GET)
        *len_out = r->get->length; /* the capacity needed */
    if (!rc) {
        if (stage != UINT64_MAX)
            memcpy(buf, c->arena + stage, r->get->length);
        if (len_out)
            *len_out = r->get->length;
        if (form_out)
            *form_out = (enum kvt_form)r->get->form;
        if (tier_out)
            *tier_out = (enum kvt_tier_id)r->get->tier;
    }
    if (stage != UINT64_MAX)
        kvt_arena_alloc_put(&c->alloc, stage);
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_put_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, uint32_t variant,
                 enum kvt_form form, const void *buf, size_t len, uint32_t n_tokens)
{
    if (!c || !key || (!buf && len))
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    uint64_t deadline = kvt_now_ms() + c->timeout_ms;
    struct kvt_item it = {
        .key = *key, .variant = variant, .buf = (void *)buf, .len = len, .n_tokens = n_tokens};
    struct xfer x;
    struct xfer_msg m;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    rc = kvt__cl_build_xfer(c, XFER_PUT, ns_id, &it, &x, &req, &m, deadline);
    if (rc)
        return rc;
    m.pr.form = (uint32_t)form; /* the daemon validates it */
    x.bytes = len;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_queue(c, &req, deadline);
    if (!rc)
        rc = kvt__cl_flush(c, deadline);
    while (!rc) {
        rc = kvt__cl_recv(c, &r, deadline, len);
        if (rc || r->id == x.req_id)
            break;
        if (r->id == 0 && r->status)
            rc = r->status;
        else
            kvt__async_take(c, r); /* a submitted item's answer, or a late one */
        kvtier__response__free_unpacked(r, NULL);
        r = NULL;
    }
    if (rc) {
        /* The daemon may still read the staging buffer: it goes with the socket. */
        if (x.stage_off != UINT64_MAX)
            c->pending_off[c->n_pending++] = x.stage_off;
        kvt__cl_drop(c, rc);
        return rc;
    }
    kvt__cl_finish_xfer(c, XFER_PUT, &it, &x, r);
    kvt__cl_release_stage(c, &x);
    kvtier__response__free_unpacked(r, NULL);
    return it.status;
}
