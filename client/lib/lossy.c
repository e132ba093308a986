/*
 * libkvtier: lossy forms (docs/lossy.md). kvt_get_form reads a chunk in the form the daemon keeps
 * its copy in (a q8 or q4 block undecoded, or fp16) instead of dequantized, kvt_get_range_form
 * the rows of one layer so, and kvt_form_dequant is the C reference that turns such rows into
 * fp16 (the kernels' formula, with the one fp16 conversion of kernels/half.h, which is
 * header-only: the library links no kernel). One request through client.c's session
 * (session.h), not batched, like a rotated Get.
 */
#include <string.h>

#include "client/lib/session.h"
#include "common/checksum.h"
#include "common/time.h"
#include "kernels/half.h"

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

int kvt_get_range_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                       uint32_t variant, uint32_t layer, uint32_t token_first, uint32_t n_tokens,
                       void *buf, size_t cap, size_t *len_out, enum kvt_form *form_out,
                       enum kvt_tier_id *tier_out)
{
    if (len_out)
        *len_out = 0;
    if (form_out)
        *form_out = KVT_FORM_FP16;
    if (tier_out)
        *tier_out = KVT_TIER_NONE;
    if (!c || !key || !buf || !cap || !n_tokens)
        return KVT_E_INVAL;
    int rc = kvt__cl_ensure_session(c);
    uint32_t ns_id = 0;
    if (!rc)
        rc = kvt__cl_ns_id(c, ns, &ns_id);
    if (rc)
        return rc;
    uint64_t deadline = kvt_now_ms() + c->timeout_ms;
    struct kvt_item it = {.key = *key,
                          .variant = variant,
                          .buf = buf,
                          .len = cap,
                          .n_tokens = n_tokens,
                          .layer = layer,
                          .token_first = token_first};
    struct xfer x;
    struct xfer_msg m;
    Kvtier__Request req = KVTIER__REQUEST__INIT;
    rc = kvt__cl_build_xfer(c, XFER_RANGE, ns_id, &it, &x, &req, &m, deadline);
    if (rc)
        return rc;
    m.rr.stored_form = 1;
    Kvtier__Response *r = NULL;
    rc = kvt__cl_await(c, &req, deadline, cap, &r);
    if (rc) {
        /* The daemon may still write the staging buffer: it goes with the socket. */
        if (x.stage_off != UINT64_MAX)
            c->pending_off[c->n_pending++] = x.stage_off;
        kvt__cl_drop(c, rc);
        return rc;
    }
    const Kvtier__GetResp *g =
        r->result_case == KVTIER__RESPONSE__RESULT_GET_RANGE ? r->get_range : NULL;
    rc = r->status;
    if (rc == KVT_E_SMALLBUF && g && len_out)
        *len_out = g->length; /* the capacity needed */
    if (!rc && (!g || g->length > cap || g->form > KVT_FORM_Q4 || (g->form && g->checksum))) {
        rc = KVT_E_PROTO; /* no rows, more than buf holds, or a form a range cannot have */
    } else if (!rc) {
        if (x.stage_off != UINT64_MAX)
            memcpy(buf, c->arena + x.stage_off, g->length);
        /* fp16 rows dequantized from a lossy copy carry the daemon's checksum of them. */
        if (g->checksum && kvt_payload_checksum(buf, g->length) != g->checksum->value)
            rc = KVT_E_CHECKSUM;
    }
    if (!rc) {
        if (len_out)
            *len_out = g->length;
        if (form_out)
            *form_out = (enum kvt_form)g->form;
        if (tier_out)
            *tier_out = (enum kvt_tier_id)g->tier;
    }
    kvt__cl_release_stage(c, &x);
    kvtier__response__free_unpacked(r, NULL);
    return rc;
}

int kvt_form_dequant(enum kvt_form form, uint32_t n_kv_heads, uint32_t head_dim, uint32_t n_tokens,
                     const void *src, size_t len, void *dst, size_t dst_cap)
{
    const uint32_t bits = form == KVT_FORM_Q8 ? 8u : form == KVT_FORM_Q4 ? 4u : 0u;
    const uint32_t G = kvt_form_group(head_dim);
    if (!bits || !G || !n_kv_heads || !n_tokens || !src || !dst)
        return KVT_E_INVAL;
    /* Per KV head and k|v: n_tokens rows of codes, then the rows' groups' (scale, minimum). */
    const uint64_t code_h = (uint64_t)head_dim * bits / 8, par_h = (uint64_t)head_dim / G * 4;
    const uint64_t blk = (code_h + par_h) * n_tokens, kh_n = 2ull * n_kv_heads;
    if ((uint64_t)len != blk * kh_n)
        return KVT_E_INVAL;
    if ((uint64_t)dst_cap < (uint64_t)n_tokens * kh_n * head_dim * 2)
        return KVT_E_SMALLBUF;
    const uint8_t *in = src;
    uint8_t *out = dst;
    for (uint64_t kh = 0; kh < kh_n; kh++) {
        const uint8_t *b = in + kh * blk, *par = b + code_h * n_tokens;
        for (uint64_t t = 0; t < n_tokens; t++)
            for (uint32_t ch = 0; ch < head_dim; ch++) {
                uint64_t e = t * head_dim + ch;
                uint32_t q = bits == 8 ? b[e] : (b[e / 2] >> (e % 2 ? 4 : 0)) & 0xfu;
                const uint8_t *pp = par + (t * (head_dim / G) + ch / G) * 4;
                uint16_t scale = (uint16_t)(pp[0] | pp[1] << 8);
                uint16_t min = (uint16_t)(pp[2] | pp[3] << 8);
                uint16_t v = 0x7e00u;
                if (scale != 0x7e00u) {
                    float x = kvt_f16_to_f32(min) + (float)q * kvt_f16_to_f32(scale);
                    x = x < -65504.0f ? -65504.0f : x > 65504.0f ? 65504.0f : x;
                    v = kvt_f32_to_f16(x);
                }
                /* fp16 rows: [token][k|v][kv_head][head_dim], k|v and the head from kh. */
                uint64_t at = ((t * kh_n + kh) * head_dim + ch) * 2;
                out[at] = (uint8_t)(v & 0xffu);
                out[at + 1] = (uint8_t)(v >> 8);
            }
    }
    return 0;
}
