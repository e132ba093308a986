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
    /* Never inline: the block goes to the caller's arena buffer or a staging buffer. */
    Kvtier__GetReq gr = KVTIER__GET_REQ__INIT;
    gr.stored_form = 1;
    Kvtier__Response *r = NULL;
    int rc = kvt__cl_get_placed(c, ns, key, variant, &gr, buf, cap, &r);
    if (!rc && r->get->form > KVT_FORM_CLUSTER)
        rc = KVT_E_PROTO;
    if (rc == KVT_E_SMALLBUF && len_out && r && r->result_case == KVTIER__RESPONSE__RESULT_GET)
        *len_out = r->get->length; /* the capacity needed */
    if (!rc) {
        if (len_out)
            *len_out = r->get->length;
        if (form_out)
            *form_out = (enum kvt_form)r->get->form;
        if (tier_out)
            *tier_out = (enum kvt_tier_id)r->get->tier;
    }
    if (r)
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
    rc = kvt__cl_await(c, &req, deadline, len, &r);
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
