/*
 * Data handlers: Put (geometry, arena range, the tenant's object and CPU-tier quotas, then a copy
 * into the CPU tier), Get (from DRAM, or through the tier manager from disk) and GetRange (rows
 * of one layer, from DRAM or read by block from disk), the completion of their copies, and the
 * tier manager's completion callbacks (kvt__ops_tm_callbacks). A Put's chunk is served only once
 * its bytes are known good. A GetRange travels the Get paths and is answered like one, with a
 * GetResp in the get_range result: the helpers below look at op->kind.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/checksum.h"
#include "daemon/ops.h"
#include "common/memguard.h"
#include "kernels/copy.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kernels/rope.h"

static int range_ok(const struct kvt_conn *c, uint64_t off, uint64_t len)
{
    return c->arena && off <= c->arena_bytes && len <= c->arena_bytes - off;
}

/* Counts into the tenant of connection c (NULL before Hello, or for an op without one). */
#define TSTAT(c, field)                                                                            \
    do {                                                                                           \
        if ((c) && (c)->tstats)                                                                    \
            (c)->tstats->field++;                                                                  \
    } while (0)

/* ---- lossy forms (docs/lossy.md) ---------------------------------------------------------- */

/* Refuses a lossy request (form: what it asks for) that the namespace cannot have: E_INVAL for
 * an unknown form or a namespace whose chunks have no lossy form (not fp16, odd head_dim),
 * E_LOSSY for one registered without allow_lossy. 0 when it may go on (form 0 always may). */
static int lossy_refused(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         const struct kvt_ns *ns, uint32_t form, const char *what)
{
    char why[KVT_MODEL_ID_MAX + 256];
    if (!form)
        return 0;
    if (!ns->allow_lossy) {
        s->st.lossy_refused++;
        snprintf(why, sizeof(why),
                 "%s asks for a lossy form, and namespace %s was registered without allow_lossy: "
                 "register it lossy-allowed, or ask for fp16",
                 what, ns->model_id);
        reply_error(s, c, op, KVT_E_LOSSY, why);
        return 1;
    }
    if (form > KVT_FORM_CLUSTER) {
        reply_error(s, c, op, KVT_E_INVAL,
                    "unknown form (0 = policy, 1 = q8, 2 = q4, 3 = clustered variant)");
        return 1;
    }
    if (ns->dtype != KVT_DTYPE_FP16 || !kvt_form_group(ns->head_dim)) {
        reply_error(s, c, op, KVT_E_INVAL,
                    "lossy forms need an fp16 namespace with an even head_dim");
        return 1;
    }
    return 0;
}

/* Bytes of one entry of a clustered variant in namespace ns: its row and its layers x KV heads
 * counts. */
static uint64_t cluster_entry_bytes(const struct kvt_ns *ns)
{
    return ns->bytes_per_token + (uint64_t)ns->layers * ns->kv_heads * sizeof(uint32_t);
}

/* Whether the counts after n_entries rows of a clustered variant (in the daemon's memory) are
 * all at least 1 and sum to n_tokens for each (layer, KV head). */
static int cluster_counts_ok(const struct kvt_ns *ns, const uint8_t *bytes, uint32_t n_entries,
                             uint32_t n_tokens)
{
    const uint8_t *p = bytes + (uint64_t)n_entries * ns->bytes_per_token;
    for (uint32_t lh = 0; lh < ns->layers * ns->kv_heads; lh++) {
        uint64_t sum = 0;
        for (uint32_t i = 0; i < n_entries; i++, p += 4) {
            uint32_t n =
                (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            if (!n)
                return 0;
            sum += n;
        }
        if (sum != n_tokens)
            return 0;
    }
    return 1;
}

/* Bytes of a chunk of n_tokens of namespace ns in form (fp16: its canonical length). */
static uint64_t form_bytes(const struct kvt_ns *ns, uint32_t n_tokens, uint32_t form)
{
    if (form != KVT_FORM_Q8 && form != KVT_FORM_Q4)
        return (uint64_t)n_tokens * ns->bytes_per_token;
    struct kvt_quant_fmt f = {form == KVT_FORM_Q8 ? 8u : 4u, KVT_QUANT_AXIS_TOKEN,
                              kvt_form_group(ns->head_dim), ns->head_dim};
    struct kvt_quant_chunk qc = {ns->layers, ns->kv_heads, f, f};
    return kvt_quant_chunk_bytes(&qc, n_tokens);
}

static uint32_t form_of_name(const char *name)
{
    return !strcmp(name, "q8") ? KVT_FORM_Q8 : !strcmp(name, "q4") ? KVT_FORM_Q4 : KVT_FORM_FP16;
}

/* Whether recent Selects ranked entry e low: of the last (up to) KVT_SEL_COLD_WINDOW Selects that
 * scored it, none returned any of its tokens. A chunk no Select has scored is not cold. */
#define KVT_SEL_COLD_WINDOW 4u
static int sel_cold(const struct kvt_entry *e)
{
    uint32_t n = e->sel_seen < KVT_SEL_COLD_WINDOW ? e->sel_seen : KVT_SEL_COLD_WINDOW;
    return n > 0 && (e->sel_hist & ((1u << n) - 1u)) == 0;
}

void kvt__ops_sel_note(struct kvt_server *s, uint32_t id, int selected)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    e->sel_hist = (uint8_t)((e->sel_hist << 1) | (selected ? 1u : 0u));
    if (e->sel_seen < UINT8_MAX)
        e->sel_seen++;
}

/* The tier manager's form callback: the form entry id's lower-tier copy is kept in. Only chunks
 * of a live lossy-allowed fp16 namespace get one: the Put's own form when it asked, else
 * disk.form_cold for a chunk recent Selects ranked low, else disk.form. */
/* The live namespace that stored entry e, or NULL (reclaimed, or a chunk recovered from disk). */
static const struct kvt_ns *entry_ns(const struct kvt_server *s, const struct kvt_entry *e)
{
    if (!e->owner || e->owner > s->ns.used)
        return NULL;
    const struct kvt_ns *ns = &s->ns.v[e->owner - 1];
    return ns->id && ns->seed == e->id.ns_seed ? ns : NULL;
}

static uint32_t tm_form(void *arg, uint32_t id)
{
    struct kvt_server *s = arg;
    const struct kvt_entry *e = kvt_index_at(&s->idx, id);
    if (e->form_want == KVT_FORM_CLUSTER)
        return KVT_FORM_CLUSTER; /* its bytes are entries and counts: tagged in every tier */
    const struct kvt_ns *ns = entry_ns(s, e);
    if (!ns || !ns->allow_lossy || ns->dtype != KVT_DTYPE_FP16 || !kvt_form_group(ns->head_dim))
        return 0;
    uint32_t form = e->form_want;
    if (!form && sel_cold(e) && strcmp(s->cfg->disk_form_cold, "same")) {
        form = form_of_name(s->cfg->disk_form_cold);
        s->st.lossy_cold_forms++;
    } else if (!form) {
        form = form_of_name(s->cfg->disk_form);
    }
    if (form)
        s->st.lossy_forms_asked++;
    return form;
}

/* ---- Put ---------------------------------------------------------------------------------- */

struct tenant_pick {
    struct kvt_server *s;
    const struct kvt_ns *ns;
};

/* A chunk in DRAM of the Put's tenant that nobody holds. */
static int tenant_chunk(void *arg, uint32_t id)
{
    const struct tenant_pick *tp = arg;
    const struct kvt_entry *e = kvt_index_at(&tp->s->idx, id);
    return e->owner && e->state == KVT_ENTRY_READY && kvt_tm_in_memory(e) && !e->refs &&
           !e->promoting && kvt_ns_same_tenant(&tp->s->ns, e->owner - 1u, tp->ns);
}

/* quota.cpu_share: before a tenant's Put takes DRAM beyond its share, its own coldest chunks make
 * room (written back or dropped as the tier manager decides for any eviction), so one tenant
 * cannot push every other out of the CPU tier. KVT_E_QUOTA when none of them can go. */
static int tenant_dram_room(struct kvt_server *s, const struct kvt_ns *ns, uint64_t len)
{
    enum { PICK = 16, SCAN = 4096, ROUNDS = 8 };
    if (s->cfg->quota_cpu_share >= 1.0)
        return 0;
    double limit = s->cfg->quota_cpu_share * (double)kvt_tm_memory_bytes(s->tm);
    uint64_t need = kvt_tm_memory_slot_bytes(s->tm, len);
    struct tenant_pick tp = {s, ns};
    for (int round = 0; round < ROUNDS; round++) {
        if ((double)(kvt_ns_tenant_dram_bytes(&s->ns, ns) + need) <= limit)
            return 0;
        size_t freed = kvt_tm_evict_coldest(s->tm, tenant_chunk, &tp, PICK, SCAN);
        s->st.quota_evictions += freed;
        if (!freed)
            break;
    }
    return (double)(kvt_ns_tenant_dram_bytes(&s->ns, ns) + need) <= limit ? 0 : KVT_E_QUOTA;
}

static void put_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, int existed,
                      enum kvt_tier_id tier)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__PutResp pr = KVTIER__PUT_RESP__INIT;
    pr.existed = existed;
    pr.tier = tier;
    resp.result_case = KVTIER__RESPONSE__RESULT_PUT;
    resp.put = &pr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_put_reply(struct kvt_server *s, struct kvt_op *op, enum kvt_tier_id tier)
{
    put_reply(s, op->conn, op, 0, tier);
}

/* Sets a Put up to build its chunk's span abstract once the bytes are in (fp16 namespaces whose
 * policy is not NONE, while abstract.bytes_max has room). */
static void put_abstract(struct kvt_server *s, const struct kvt_ns *ns, struct kvt_op *op,
                         uint32_t n_tokens)
{
    const char *why;
    if (ns->dtype != KVT_DTYPE_FP16 ||
        kvt_span_policy_resolve(&ns->spans, &s->span_dflt, &op->abs_policy, &why) ||
        op->abs_policy.kind == KVT_SPANS_NONE)
        return;
    struct kvt_abs_geom g = {ns->layers, ns->kv_heads, ns->head_dim, n_tokens};
    uint32_t per_layer = (n_tokens + op->abs_policy.block_tokens - 1) / op->abs_policy.block_tokens;
    if (!kvt_abs_store_room(&s->abs, kvt_abs_bytes(&g, per_layer))) {
        s->abs.dropped++;
        return;
    }
    op->abs = kvt_abs_alloc(&g, &op->abs_policy); /* NULL: stored without one */
}

/* Worker: the abstract of a Put's chunk, from its bytes in DRAM. */
static void abstract_job(struct kvt_job *j)
{
    struct kvt_op *op = (struct kvt_op *)j;
    kvt_abs_build(op->abs, &op->abs_policy, op->job.dst);
    if (op->abs_policy.kind == KVT_SPANS_VARIABLE) {
        /* Merged spans leave the allocation (sized for the finest cut) partly unused. */
        struct kvt_abs *c = kvt_abs_compact(op->abs);
        if (c != op->abs) {
            kvt_abs_unref(op->abs); /* the one reference, ours: not shared yet */
            op->abs = c;
        }
    }
}

void kvt__ops_put(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                  const Kvtier__PutReq *p)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    char why[160];
    int rc = resolve_ns(s, c, p->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(p->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "Put without a key");
        return;
    }
    uint32_t n_tokens = p->n_tokens ? p->n_tokens : ns->tokens_per_chunk;
    uint64_t len = p->inline_data.len ? p->inline_data.len : p->length;
    if (p->form == KVT_FORM_CLUSTER) {
        /* Merged entries and their counts: refused before anything else is looked at. */
        if (lossy_refused(s, c, op, ns, p->form, "this Put"))
            return;
        uint64_t per = cluster_entry_bytes(ns);
        op->n_entries = (uint32_t)(len / per);
        if (n_tokens > ns->tokens_per_chunk || len % per || !op->n_entries ||
            op->n_entries >= n_tokens) {
            s->st.geometry_errors++;
            snprintf(why, sizeof(why),
                     "a clustered variant of %u tokens is 1 to %u entries of %" PRIu64
                     " bytes (a row and its counts), got %" PRIu64 " bytes",
                     n_tokens, n_tokens ? n_tokens - 1 : 0, per, len);
            reply_error(s, c, op, KVT_E_GEOMETRY, why);
            return;
        }
        op->cluster = 1;
    } else if (n_tokens > ns->tokens_per_chunk || len != n_tokens * ns->bytes_per_token) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why),
                 "chunk of %u tokens must be %" PRIu64 " bytes in this namespace, got %" PRIu64,
                 n_tokens, n_tokens * ns->bytes_per_token, len);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    if (lossy_refused(s, c, op, ns, p->form, "this Put"))
        return;
    const uint8_t *src;
    if (p->inline_data.len) {
        if (len > s->cfg->inline_max_bytes) {
            reply_error(s, c, op, KVT_E_TOOBIG, "inline data larger than inline_max_bytes");
            return;
        }
        src = p->inline_data.data;
    } else if (!c->arena) {
        reply_error(s, c, op, KVT_E_NOARENA, NULL);
        return;
    } else if (!range_ok(c, p->offset, len)) {
        s->st.range_errors++;
        snprintf(why, sizeof(why),
                 "offset %" PRIu64 " + length %" PRIu64 " outside the %" PRIu64 "-byte arena",
                 p->offset, len, c->arena_bytes);
        reply_error(s, c, op, KVT_E_RANGE, why);
        return;
    } else {
        src = c->arena + p->offset;
    }
    if (!p->checksum && !p->inline_data.len && !strcmp(s->cfg->put_checksum, "required")) {
        s->st.put_checksum_missing++;
        reply_error(s, c, op, KVT_E_INVAL,
                    "Put from the arena without a payload checksum (put_checksum = required)");
        return;
    }
    s->st.puts++;
    TSTAT(c, puts);
    struct kvt_obj_id oid = {.ns_seed = ns->seed, .key = key, .variant = p->key->variant};
    uint32_t found = kvt_index_find(&s->idx, &oid);
    if (found != KVT_INDEX_NIL) {
        s->st.puts_existed++;
        enum kvt_tier_id t = kvt_tm_tier_of(s->tm, kvt_index_at(&s->idx, found));
        put_reply(s, c, op, 1, t == KVT_TIER_NONE ? KVT_TIER_CPU : t);
        return;
    }
    if (s->cfg->quota_objects_share < 1.0 && (double)kvt_ns_tenant_objects(&s->ns, ns) >=
                                                 s->cfg->quota_objects_share * (double)s->idx.cap) {
        s->st.quota_rejections++;
        reply_error(s, c, op, KVT_E_QUOTA,
                    "tenant stores its share of index.max_objects (quota.objects_share): delete "
                    "chunks or raise the quota");
        return;
    }
    uint32_t id;
    if (kvt_tm_index_insert(s->tm, &oid, &id)) {
        s->st.index_full++;
        reply_error(s, c, op, KVT_E_INDEXFULL, NULL);
        return;
    }
    kvt_index_set_owner(&s->idx, id, (uint16_t)(kvt_ns_slot(ns) + 1));
    if (tenant_dram_room(s, ns, len)) {
        kvt_index_remove(&s->idx, id);
        s->st.quota_rejections++;
        reply_error(s, c, op, KVT_E_QUOTA,
                    "tenant holds its share of the CPU tier (quota.cpu_share) and none of its "
                    "chunks can be evicted now: retry");
        return;
    }
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    e->length = len;
    e->n_tokens = n_tokens;
    e->elem_bytes = (uint8_t)kvt_dtype_size((enum kvt_dtype)ns->dtype);
    e->form_want = (uint8_t)p->form;
    void *dst;
    rc = kvt_tm_reserve(s->tm, id, &dst); /* pinned for this writer until committed */
    if (rc) {
        kvt_index_remove(&s->idx, id);
        if (rc == KVT_E_FULL)
            s->st.tier_full++;
        reply_error(s, c, op, rc,
                    rc == KVT_E_TOOBIG      ? "chunk larger than cpu.page_bytes"
                    : rc == KVT_E_DIRTYFULL ? "CPU tier full of chunks not yet written to disk "
                                              "(tier.dirty_full = reject): retry"
                                            : NULL);
        return;
    }
    op->entry = id;
    op->length = len;
    op->n_tokens = n_tokens;
    if (!op->cluster) /* merged entries' keys bound no token's: no abstract */
        put_abstract(s, ns, op, n_tokens);
    op->has_checksum = p->checksum != NULL;
    op->checksum = p->checksum ? p->checksum->value : 0;
    op->job.dst = dst;
    op->job.src = src;
    op->job.len = len;
    op->job.want_sum = (uint8_t)op->has_checksum;
    if (p->inline_data.len) {
        /* Inline bytes live in the request, which is freed after dispatch: copy now. They are
         * the daemon's own memory: no guard needed. */
        kvt_copy_stream(op->job.dst, src, len);
        op->copy_res = 0;
        op->sum = op->has_checksum ? kvt_payload_checksum(op->job.dst, len) : 0;
        kvt__ops_complete(s, op);
        return;
    }
    kvt__server_submit(s, op);
}

/* ---- Get ---------------------------------------------------------------------------------- */

static void get_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const struct kvt_entry *e, const uint8_t *inline_data)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__GetResp gr = KVTIER__GET_RESP__INIT;
    gr.tier = op->tier;
    if (op->kind == KVTIER__REQUEST__OP_GET_RANGE) {
        /* Never inline: the rows are at the client's destination already. Rows dequantized
         * from a lossy copy carry the daemon's checksum of them, as a whole Get's do. */
        Kvtier__Checksum rsum = KVTIER__CHECKSUM__INIT;
        gr.length = op->length;
        gr.n_tokens = op->n_tokens;
        gr.form = op->form;
        if (op->lossy_sum) {
            rsum.value = op->sum;
            gr.checksum = &rsum;
            s->st.get_ranges_dequantized++;
        }
        resp.result_case = KVTIER__RESPONSE__RESULT_GET_RANGE;
        resp.get_range = &gr;
        kvt__server_respond(s, c, op, &resp, 0, NULL);
        return;
    }
    gr.length = op->stored ? op->length : e->length;
    gr.n_tokens = e->n_tokens;
    gr.form = op->form;
    if (op->form == KVT_FORM_CLUSTER)
        gr.n_entries = op->n_entries;
    Kvtier__Checksum sum = KVTIER__CHECKSUM__INIT;
    if (inline_data) {
        gr.inline_data.data = (uint8_t *)inline_data;
        gr.inline_data.len = e->length;
        if (op->lossy_sum)
            op->sum = kvt_payload_checksum(inline_data, e->length); /* small: on the loop */
    }
    if (op->lossy_sum) {
        /* fp16 bytes dequantized from a lossy copy: the client cannot know their checksum. */
        sum.value = op->sum;
        gr.checksum = &sum;
        s->st.gets_dequantized++;
    }
    resp.result_case = KVTIER__RESPONSE__RESULT_GET;
    resp.get = &gr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

/* Counts what a Get or a GetRange returns. */
static void count_served(struct kvt_server *s, const struct kvt_op *op, const struct kvt_entry *e)
{
    if (op->kind == KVTIER__REQUEST__OP_GET_RANGE) {
        s->st.get_range_bytes += op->length;
        return;
    }
    s->st.get_hits++;
    s->st.get_bytes += op->stored ? op->length : e->length;
    TSTAT(op->conn, get_hits);
}

void kvt__ops_get_reply_entry(struct kvt_server *s, struct kvt_op *op, const struct kvt_entry *e)
{
    int quantized = op->io.form == KVT_FORM_Q8 || op->io.form == KVT_FORM_Q4;
    if (op->stored) {
        /* A stored-form read straight into the client's buffer: the block (or rows) and its
         * form. */
        op->length = op->io.got;
        op->form = op->io.form;
        if (quantized && op->kind == KVTIER__REQUEST__OP_GET_RANGE)
            s->st.get_ranges_stored_form++;
        else if (quantized)
            s->st.gets_stored_form++;
    } else if (op->kind == KVTIER__REQUEST__OP_GET_RANGE && quantized) {
        /* Rows the disk tier dequantized into the client's buffer: the checksum of what it
         * wrote there (one layer's rows: small, summed on the loop). */
        op->lossy_sum = 1;
        op->sum = kvt_payload_checksum(op->job.dst, op->length);
    }
    count_served(s, op, e);
    get_reply(s, op->conn, op, e, NULL);
}

void kvt__ops_get_fail(struct kvt_server *s, struct kvt_op *op, int status)
{
    if (status == KVT_E_NOTFOUND) {
        s->st.get_misses++;
        TSTAT(op->conn, get_misses);
    }
    reply_error(s, op->conn, op, status, NULL);
}

/* A whole Get served from a DRAM copy dequantized from a lossy one: its copy computes the
 * checksum of what it writes (a rotated Get's rotation follows the copy: it carries none; an
 * inline answer is summed on the loop). A stored-form Get served from DRAM is fp16 as kept. */
static void lossy_sum_setup(struct kvt_op *op, const struct kvt_entry *e)
{
    op->stored = 0;
    op->form = e->form_want == KVT_FORM_CLUSTER ? KVT_FORM_CLUSTER : KVT_FORM_FP16;
    op->lossy_sum = op->kind != KVTIER__REQUEST__OP_PUT && e->lossy && !op->rope.on;
    op->job.want_sum = op->lossy_sum && !op->want_inline;
}

static void room_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, uint64_t needed,
                       int status);

void kvt__ops_get_deliver(struct kvt_server *s, struct kvt_op *op)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    uint64_t len = op->kind == KVTIER__REQUEST__OP_GET_RANGE ? op->length : e->length;
    if (!op->want_inline && len > op->io.cap) {
        /* A stored-form read sized for a quantized copy found the chunk promoted meanwhile by
         * another read: DRAM answers fp16, which does not fit what the client gave. */
        kvt_tm_release(s->tm, op->entry);
        room_reply(s, op->conn, op, len, KVT_E_SMALLBUF);
        return;
    }
    count_served(s, op, e);
    const uint8_t *src = kvt_tm_memory_ptr(s->tm, e);
    lossy_sum_setup(op, e);
    if (op->want_inline) {
        get_reply(s, op->conn, op, e, src);
        kvt_tm_release(s->tm, op->entry);
        return;
    }
    /* refs stays taken until the copy to the client completes (kvt__ops_complete). A GetRange
     * copies only its rows (op->length was set from them when it was validated). */
    if (op->kind == KVTIER__REQUEST__OP_GET_RANGE) {
        op->job.src = src + op->range_off;
        op->job.len = op->length;
    } else {
        op->length = e->length;
        op->job.src = src;
        op->job.len = e->length;
    }
    kvt__server_submit(s, op);
}

/* A Get's or GetRange's destination: an arena must be shared and [offset, offset + capacity)
 * inside it. 0, or the error was answered. */
static int dest_ok(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, uint64_t offset,
                   uint64_t capacity)
{
    char why[160];
    if (!c->arena) {
        reply_error(s, c, op, KVT_E_NOARENA, NULL);
        return 0;
    }
    if (!range_ok(c, offset, capacity)) {
        s->st.range_errors++;
        snprintf(why, sizeof(why),
                 "offset %" PRIu64 " + capacity %" PRIu64 " outside the %" PRIu64 "-byte arena",
                 offset, capacity, c->arena_bytes);
        reply_error(s, c, op, KVT_E_RANGE, why);
        return 0;
    }
    return 1;
}

/* The readable entry of variant of key, or NULL when there is none (a counted miss, answered). */
static struct kvt_entry *find_readable(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                                       const struct kvt_ns *ns, const struct kvt_key *key,
                                       uint32_t variant, uint32_t *id_out,
                                       enum kvt_tier_id *tier_out)
{
    struct kvt_obj_id oid = {.ns_seed = ns->seed, .key = *key, .variant = variant};
    uint32_t id = kvt_index_find(&s->idx, &oid);
    struct kvt_entry *e = id == KVT_INDEX_NIL ? NULL : kvt_index_at(&s->idx, id);
    enum kvt_tier_id tier = e ? kvt_tm_tier_of(s->tm, e) : KVT_TIER_NONE;
    kvt_tm_note_read(s->tm, &oid);
    if (tier == KVT_TIER_NONE) {
        s->st.get_misses++;
        TSTAT(c, get_misses);
        kvt_tm_count_miss(s->tm);
        reply_error(s, c, op, KVT_E_NOTFOUND, NULL);
        return NULL;
    }
    *id_out = id;
    *tier_out = tier;
    return e;
}

/* Refuses a Get or GetRange with status, telling the client how much room it needs. */
static void room_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, uint64_t needed,
                       int status)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__GetResp gr = KVTIER__GET_RESP__INIT;
    gr.length = needed;
    if (op->kind == KVTIER__REQUEST__OP_GET_RANGE) {
        resp.result_case = KVTIER__RESPONSE__RESULT_GET_RANGE;
        resp.get_range = &gr;
    } else {
        resp.result_case = KVTIER__RESPONSE__RESULT_GET;
        resp.get = &gr;
    }
    kvt__server_respond(s, c, op, &resp, status, NULL);
}

void kvt__ops_get(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                  const Kvtier__GetReq *g)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    int rc = resolve_ns(s, c, g->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(g->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "Get without a key");
        return;
    }
    if (!g->want_inline && !dest_ok(s, c, op, g->offset, g->capacity))
        return;
    if (g->rotate && (g->want_inline || !ns->rope_theta || ns->dtype != KVT_DTYPE_FP16)) {
        reply_error(s, c, op, KVT_E_INVAL,
                    g->want_inline ? "a rotated Get goes to the arena, never inline"
                                   : "a rotated Get needs an fp16 namespace with rope_theta");
        return;
    }
    if (g->stored_form && (g->want_inline || g->rotate)) {
        reply_error(s, c, op, KVT_E_INVAL,
                    "a Get of the stored form goes to the arena, never inline nor rotated");
        return;
    }
    if (g->stored_form && !ns->allow_lossy) {
        s->st.lossy_refused++;
        reply_error(s, c, op, KVT_E_LOSSY,
                    "this Get asks for the stored (lossy) form, and the namespace was registered "
                    "without allow_lossy: it holds fp16 only, read it with a plain Get");
        return;
    }
    s->st.gets++;
    TSTAT(c, gets);
    uint32_t id;
    enum kvt_tier_id tier;
    struct kvt_entry *e = find_readable(s, c, op, ns, &key, g->key->variant, &id, &tier);
    if (!e)
        return;
    op->rope.on = 0;
    if (g->rotate && e->form_want == KVT_FORM_CLUSTER) {
        reply_error(s, c, op, KVT_E_INVAL, "a clustered variant is not rotated");
        return;
    }
    if (g->rotate) {
        const struct kvt_version *v = kvt_version_store_get(&s->versions, id);
        if (!v) {
            reply_error(s, c, op, KVT_E_NOTFOUND,
                        "no version info for this variant (kvt_version_set): its start position "
                        "is unknown, so it cannot be rotated");
            return;
        }
        op->rope.on = 1;
        op->rope.style = (int)ns->rope_style;
        op->rope.rows = ns->layers * e->n_tokens;
        op->rope.heads = ns->kv_heads;
        op->rope.head_dim = ns->head_dim;
        op->rope.rotary_dims = ns->rotary_dims ? ns->rotary_dims : ns->head_dim;
        op->rope.stride = 2 * ns->kv_heads * ns->head_dim;
        op->rope.delta = (int64_t)(g->rotate_to - v->start_pos);
        op->rope.theta = ns->rope_theta;
        s->st.gets_rotated++;
    }
    /* A chunk without a DRAM copy is read from a lower one, perhaps kept in a lossy form: a Get
     * of the stored form returns that block, of its own size. */
    uint32_t lform = kvt_tm_in_memory(e) ? KVT_FORM_FP16 : kvt_tm_lower_form(s->tm, e);
    int quantized = lform == KVT_FORM_Q8 || lform == KVT_FORM_Q4;
    uint64_t need = g->stored_form && quantized ? form_bytes(ns, e->n_tokens, lform) : e->length;
    if (e->form_want == KVT_FORM_CLUSTER) {
        op->form = KVT_FORM_CLUSTER;
        op->n_entries = (uint32_t)(e->length / cluster_entry_bytes(ns));
    }
    /* The caller's capacity bounds an inline answer too (0 there means "any size"): a client
     * must never receive more bytes than it said it has room for. */
    int too_big = g->want_inline && e->length > s->cfg->inline_max_bytes;
    int no_room = (!g->want_inline || g->capacity) && need > g->capacity;
    if (too_big || no_room) {
        room_reply(s, c, op, need, no_room ? KVT_E_SMALLBUF : KVT_E_TOOBIG);
        return;
    }
    if (e->hits < UINT16_MAX)
        e->hits++;
    e->referenced = 1;
    op->tier = tier;
    op->want_inline = g->want_inline;
    op->entry = id;
    op->length = e->length;
    const uint8_t *src = kvt_tm_acquire(s->tm, id); /* pinned until the copy out completes */
    if (!src) {
        /* Only in a lower tier: read through the tier manager. */
        kvt_tm_count_miss(s->tm);
        op->job.dst = g->want_inline ? NULL : c->arena + g->offset;
        /* A rotated Get is delivered from DRAM, pinned, so the rotation can follow the copy; so
         * is one of a lossy copy, dequantized, so that its copy out computes the checksum of
         * the bytes it returns. A Get of the stored form reads the copy as it is. */
        op->stored = (uint8_t)g->stored_form;
        op->io = (struct kvt_tm_io){.dst = op->job.dst,
                                    .cap = need,
                                    .want_dram = g->want_inline || g->rotate ||
                                                 (quantized && !g->stored_form),
                                    .stored = g->stored_form};
        rc = kvt_tm_read(s->tm, &op->io, id);
        if (rc)
            kvt__ops_get_fail(s, op, rc);
        return;
    }
    s->st.get_hits++;
    s->st.get_bytes += e->length;
    TSTAT(c, get_hits);
    lossy_sum_setup(op, e);
    if (g->want_inline) {
        get_reply(s, c, op, e, src);
        kvt_tm_release(s->tm, id);
        return;
    }
    op->job.dst = c->arena + g->offset;
    op->job.src = src;
    op->job.len = e->length;
    kvt__server_submit(s, op);
}

/* ---- GetRange ----------------------------------------------------------------------------- */

void kvt__ops_get_range(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                        const Kvtier__GetRangeReq *g)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    char why[160];
    int rc = resolve_ns(s, c, g->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(g->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "GetRange without a key");
        return;
    }
    if (!g->n_tokens) {
        reply_error(s, c, op, KVT_E_INVAL, "GetRange of no tokens");
        return;
    }
    /* 64-bit sums: token_first + n_tokens cannot wrap around to a small number. */
    if (g->layer >= ns->layers || (uint64_t)g->token_first + g->n_tokens > ns->tokens_per_chunk) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why),
                 "layer %u tokens [%u, %" PRIu64 ") outside the namespace's %u layers of %u tokens",
                 g->layer, g->token_first, (uint64_t)g->token_first + g->n_tokens, ns->layers,
                 ns->tokens_per_chunk);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    if (!dest_ok(s, c, op, g->offset, g->capacity))
        return;
    if (g->stored_form && !ns->allow_lossy) {
        s->st.lossy_refused++;
        reply_error(s, c, op, KVT_E_LOSSY,
                    "this GetRange asks for the stored (lossy) form, and the namespace was "
                    "registered without allow_lossy: it holds fp16 only, read it with a plain "
                    "GetRange");
        return;
    }
    uint64_t row_bytes = ns->bytes_per_token / ns->layers; /* one layer of one token */
    uint64_t bytes = (uint64_t)g->n_tokens * row_bytes;
    /* A stored-form GetRange of quantized rows needs room for those only (below, once the
     * chunk's copy is known); any other needs the fp16 rows. */
    if (bytes > g->capacity && !g->stored_form) {
        room_reply(s, c, op, bytes, KVT_E_SMALLBUF);
        return;
    }
    s->st.gets_range++;
    uint32_t id;
    enum kvt_tier_id tier;
    struct kvt_entry *e = find_readable(s, c, op, ns, &key, g->key->variant, &id, &tier);
    if (!e)
        return;
    if (e->form_want == KVT_FORM_CLUSTER) {
        reply_error(s, c, op, KVT_E_INVAL,
                    "a clustered variant has entries, not token rows: read it whole with Get");
        return;
    }
    /* A chunk may hold fewer tokens than the namespace's chunks. */
    if ((uint64_t)g->token_first + g->n_tokens > e->n_tokens) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why), "tokens [%u, %" PRIu64 ") outside the chunk's %u tokens",
                 g->token_first, (uint64_t)g->token_first + g->n_tokens, e->n_tokens);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    /* Only a copy kept quantized, with no DRAM copy, answers quantized rows: their bytes are
     * what one layer's rows take in that form. */
    uint32_t lform = kvt_tm_in_memory(e) ? KVT_FORM_FP16 : kvt_tm_lower_form(s->tm, e);
    int quantized = g->stored_form && (lform == KVT_FORM_Q8 || lform == KVT_FORM_Q4);
    uint64_t need = quantized ? form_bytes(ns, g->n_tokens, lform) / ns->layers : bytes;
    if (need > g->capacity) {
        room_reply(s, c, op, need, KVT_E_SMALLBUF);
        return;
    }
    if (e->hits < UINT16_MAX)
        e->hits++;
    e->referenced = 1;
    op->tier = tier;
    op->want_inline = 0;
    op->rope.on = 0;
    op->layer = g->layer;
    op->token_first = g->token_first;
    op->n_tokens = g->n_tokens;
    op->range_off = ((uint64_t)g->layer * e->n_tokens + g->token_first) * row_bytes;
    op->length = bytes;
    op->job.dst = c->arena + g->offset;
    op->entry = id;
    kvt_tm_note_rows(s->tm, id, bytes, 0);          /* evidence for tier.select_promote */
    const uint8_t *src = kvt_tm_acquire(s->tm, id); /* pinned until the copy out completes */
    if (!src) {
        kvt_tm_count_miss(s->tm);
        op->stored = (uint8_t)g->stored_form;
        s->st.gets_range_disk++;
        op->io = (struct kvt_tm_io){.dst = op->job.dst,
                                    .cap = need,
                                    .range = 1,
                                    .stored = g->stored_form,
                                    .r = {.layer = g->layer,
                                          .first = g->token_first,
                                          .n = g->n_tokens,
                                          .n_tokens = e->n_tokens,
                                          .row_bytes = row_bytes,
                                          .head_dim = ns->head_dim}};
        rc = kvt_tm_read(s->tm, &op->io, id);
        if (rc)
            kvt__ops_get_fail(s, op, rc);
        return;
    }
    s->st.gets_range_dram++;
    s->st.get_range_bytes += bytes;
    lossy_sum_setup(op, e); /* rows of a DRAM copy dequantized from a lossy one: summed */
    op->job.src = src + op->range_off;
    op->job.len = bytes;
    kvt__server_submit(s, op);
}

/* A rotated Get's copy job (every part of it): the part copied a block of rows at a time, each
 * block's keys re-rotated in place while it is still in cache, under the SIGBUS guard (the
 * destination is the client's arena). Parts end on whole rows. */
#define ROTATE_BLOCK_BYTES (64u << 10)
void kvt__ops_copy_rotate(struct kvt_job *j)
{
    struct kvt_op *op = j->owner;
    float cs[KVT_ROPE_DIMS_MAX];
    kvt_rope_shift_table(op->rope.theta, op->rope.rotary_dims, op->rope.delta, cs);
    size_t row = (size_t)op->rope.stride * sizeof(uint16_t);
    size_t block = ROTATE_BLOCK_BYTES / row ? ROTATE_BLOCK_BYTES / row * row : row;
    const struct kvt_kernels *k = kvt_kernels();
    for (size_t at = 0; at < j->len; at += block) {
        size_t n = j->len - at < block ? j->len - at : block;
        uint8_t *dst = (uint8_t *)j->dst + at;
        j->res = kvt_copy_guarded(dst, (const uint8_t *)j->src + at, n, 0);
        if (j->res)
            return;
        struct kvt_memguard g;
        if (sigsetjmp(g.env, 0)) {
            j->res = KVT_E_FAULT;
            return;
        }
        kvt_memguard_arm(&g, dst, n, NULL, 0);
        k->rope_shift_f16((uint16_t *)dst, n / row, op->rope.stride, op->rope.heads,
                          op->rope.head_dim, op->rope.rotary_dims, op->rope.style, cs);
        kvt_memguard_disarm(&g);
    }
}

void kvt__ops_complete(struct kvt_server *s, struct kvt_op *op)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    if (op->kind != KVTIER__REQUEST__OP_PUT)
        kvt_tm_release(s->tm, op->entry);
    if (op->kind == KVTIER__REQUEST__OP_PUT && op->abs_stage) {
        /* The abstract job is back: the bytes were verified before it ran. */
        kvt_abs_store_set(&s->abs, op->entry, op->abs);
        op->abs = NULL;
    } else if (op->kind == KVTIER__REQUEST__OP_PUT) {
        /* The copied bytes cannot be trusted when the client gave up on this Put (timeout or
         * exit: it may already reuse its buffer), when its memory vanished mid-copy, or when
         * they are not the bytes it checksummed: the chunk is dropped, never served. */
        int status = op->conn->dead                                ? KVT_E_DISCONNECTED
                     : op->copy_res                                ? op->copy_res
                     : op->has_checksum && op->sum != op->checksum ? KVT_E_CHECKSUM
                                                                   : 0;
        /* A clustered variant's counts, read from the daemon's own copy (the client's arena
         * is never read on the loop). */
        const struct kvt_ns *cns = op->cluster ? entry_ns(s, e) : NULL;
        if (!status && op->cluster &&
            (!cns || !cluster_counts_ok(cns, op->job.dst, op->n_entries, op->n_tokens))) {
            s->st.cluster_counts_refused++;
            kvt_tm_abort(s->tm, op->entry);
            reply_error(s, op->conn, op, KVT_E_INVAL,
                        "a clustered variant's counts must be at least 1 and sum to n_tokens for "
                        "every layer and KV head; nothing was stored");
            return;
        }
        if (status) {
            if (status == KVT_E_CHECKSUM)
                s->st.put_checksum_errors++;
            else if (status == KVT_E_FAULT)
                s->st.client_memory_faults++;
            kvt_tm_abort(s->tm, op->entry);
            reply_error(s, op->conn, op, status,
                        status == KVT_E_CHECKSUM
                            ? "the bytes copied from the arena do not match the Put's checksum: "
                              "the buffer changed during the copy; nothing was stored"
                            : NULL);
            return;
        }
    } else if (op->copy_res) {
        s->st.client_memory_faults++;
        reply_error(s, op->conn, op, op->copy_res,
                    "the Get's destination in the arena could not be written");
        return;
    }
    if (op->kind == KVTIER__REQUEST__OP_PUT && op->abs && !op->abs_stage) {
        /* Verified bytes: their abstract is built on a worker before the Put is answered, so
         * a Select right after it sees the chunk. */
        op->abs_stage = 1;
        kvt__server_compute(s, op, abstract_job);
        return;
    }
    if (op->kind == KVTIER__REQUEST__OP_PUT) {
        s->st.put_bytes += op->length;
        s->st.cluster_puts += op->cluster;
        if (op->conn && op->conn->tstats)
            op->conn->tstats->put_bytes += op->length;
        enum kvt_tier_id tier;
        if (!kvt_tm_put_committed(s->tm, &op->io, op->entry, &tier))
            put_reply(s, op->conn, op, 0, tier);
    } else {
        get_reply(s, op->conn, op, e, NULL);
    }
}

/* ---- completions the tier manager reports ------------------------------------------------- */

/* The request an io belongs to. */
static struct kvt_op *op_of(struct kvt_tm_io *io)
{
    return (struct kvt_op *)((char *)io - offsetof(struct kvt_op, io));
}

/* Each answers its op and queues the connection to resume before the loop sleeps. */
static void tm_put_done(void *arg, struct kvt_tm_io *io, enum kvt_tier_id tier)
{
    struct kvt_op *op = op_of(io);
    struct kvt_conn *c = op->conn;
    kvt__ops_put_reply(arg, op, tier);
    kvt__server_after_ops(arg, c);
}

static void tm_get_failed(void *arg, struct kvt_tm_io *io, int status)
{
    struct kvt_op *op = op_of(io);
    struct kvt_conn *c = op->conn;
    kvt__ops_get_fail(arg, op, status);
    kvt__server_after_ops(arg, c);
}

static void tm_get_in_dram(void *arg, struct kvt_tm_io *io)
{
    struct kvt_op *op = op_of(io);
    struct kvt_conn *c = op->conn;
    op->tier = io->tier;
    kvt__ops_get_deliver(arg, op);
    kvt__server_after_ops(arg, c);
}

static void tm_get_read_direct(void *arg, struct kvt_tm_io *io, const struct kvt_entry *e)
{
    struct kvt_op *op = op_of(io);
    struct kvt_conn *c = op->conn;
    op->tier = io->tier;
    kvt__ops_get_reply_entry(arg, op, e);
    kvt__server_after_ops(arg, c);
}

static void tm_delete_done(void *arg, void *ctx, const int32_t *status, uint32_t n)
{
    struct kvt_op *op = ctx;
    struct kvt_conn *c = op->conn;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__DeleteResp dr = KVTIER__DELETE_RESP__INIT;
    dr.n_status = n;
    dr.status = (int32_t *)status;
    resp.result_case = KVTIER__RESPONSE__RESULT_DEL;
    resp.del = &dr;
    kvt__server_respond(arg, c, op, &resp, 0, NULL);
    kvt__server_after_ops(arg, c);
}

/* Shutdown: the op is never answered; its connection stops waiting for it. */
static void tm_abandoned(void *arg, struct kvt_tm_io *io)
{
    (void)arg;
    op_of(io)->conn->inflight--;
}

static void tm_delete_abandoned(void *arg, void *ctx)
{
    struct kvt_op *op = ctx;
    (void)arg;
    op->conn->inflight--;
}

/* The shape of entry e's chunk, from the namespace that stored it, so that its lower-tier copy
 * can be read by layer and token range; nonzero when unknown (a chunk recovered from disk and not
 * stored again since, or a namespace reclaimed meanwhile): the copy is then one opaque layer. */
static int tm_geom(void *arg, const struct kvt_entry *e, struct kvt_chunk_geom *g)
{
    const struct kvt_server *s = arg;
    if (!e->owner || e->owner > s->ns.used)
        return -1;
    const struct kvt_ns *ns = &s->ns.v[e->owner - 1];
    if (!ns->id || ns->seed != e->id.ns_seed ||
        (uint64_t)e->n_tokens * ns->bytes_per_token != e->length)
        return -1;
    memset(g, 0, sizeof(*g));
    g->n_layers = ns->layers;
    g->n_kv_heads = ns->kv_heads;
    g->head_dim = ns->head_dim;
    g->elem_bytes = (uint16_t)kvt_dtype_size((enum kvt_dtype)ns->dtype);
    g->dtype = (uint16_t)ns->dtype;
    g->sparse = 0;
    return 0;
}

const struct kvt_tm_callbacks kvt__ops_tm_callbacks = {
    .put_done = tm_put_done,
    .get_failed = tm_get_failed,
    .get_in_dram = tm_get_in_dram,
    .get_read_direct = tm_get_read_direct,
    .delete_done = tm_delete_done,
    .abandoned = tm_abandoned,
    .delete_abandoned = tm_delete_abandoned,
    .geom = tm_geom,
    .form = tm_form,
    .meta_pin = kvt__ops_meta_pin,
    .meta_release = kvt__ops_meta_release,
    .meta_want = kvt__ops_meta_want,
    .meta_loaded = kvt__ops_meta_loaded,
    .copied = kvt__ops_copied,
};
