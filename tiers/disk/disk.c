/*
 * The disk tier (see disk.h and docs/disk.md). Objects live in 4 KiB-aligned extents of
 * preallocated files; an in-memory hash index maps (namespace seed, key) to extent, lengths and
 * sequence number. Durability is a group commit: once data writes have completed, one journal
 * write (records naming each new object and each tombstone) and one fdatasync per touched file
 * make the whole batch durable, and only then do callbacks report success. The journal is folded
 * into a checkpoint file every checkpoint_records records, at start and at clean shutdown, so
 * restart reads one checkpoint plus a bounded journal and validates the header of each object
 * written after the checkpoint.
 *
 * Every operation owns a run of 4 KiB staging pages in one registered buffer for its whole life
 * (encode, I/O, verify, decode), sized by what it transfers: a whole object takes its extent's
 * size, a range read only the covering blocks. The pages come from a first-fit allocator over the
 * buffer (the extent allocator again), so the data path never allocates, and operations in flight
 * are bounded by queue_depth and by the pages free.
 *
 * This file holds the public entry points (writes, reads, range reads, removals, syncs, lookups,
 * stats) and create/destroy; the ring, the journal and checkpoint, recovery, the index and the
 * staging pages have files of their own (disk_internal.h lists what they share).
 */

#include "tiers/disk/disk_internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>
#include <liburing.h>

#include "common/alloc.h"
#include "common/time.h"
#include "kvtier/errors.h"
#include "tiers/disk/extent.h"
#include "tiers/disk/object.h"
#include "kernels/quant.h"

/* ---- small helpers ------------------------------------------------------------------------- */

void kvt__disk_set_err(const struct kvt_disk_config *cfg, const char *fmt, ...)
{
    va_list ap;

    if (!cfg->err_buf || cfg->err_buf_bytes == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(cfg->err_buf, cfg->err_buf_bytes, fmt, ap);
    va_end(ap);
}

uint64_t kvt__disk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void kvt__disk_put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint64_t kvt__disk_get_le(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint64_t kvt__disk_blocks_for(uint64_t bytes)
{
    return (bytes + BLOCK - 1) / BLOCK;
}

uint64_t kvt__disk_body_blocks(const struct ient *e)
{
    return kvt__disk_blocks_for(KVT_OBJECT_HEADER_BYTES + e->stored_len);
}

/* The index keeps no length of its own for the section (journal and checkpoint records predate
 * it): whatever the extent holds after the body is the section, and the section names its exact
 * length itself. */
uint64_t kvt__disk_section_bytes(const struct ient *e)
{
    uint64_t body = kvt__disk_body_blocks(e);
    return e->blocks > body ? (e->blocks - body) * BLOCK : 0;
}

/* ---- public operations ---------------------------------------------------------------------- */

int kvt_disk_write_reserve(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                           uint32_t n_tokens, struct kvt_disk_wslot *ws)
{
    return kvt_disk_write_reserve_geom(d, id, len, n_tokens, NULL, ws);
}

int kvt_disk_write_reserve_geom(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                                uint32_t n_tokens, const struct kvt_disk_geom *geom,
                                struct kvt_disk_wslot *ws)
{
    return kvt_disk_write_reserve_meta(d, id, len, n_tokens, geom, 0, ws);
}

int kvt_disk_write_reserve_meta(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                                uint32_t n_tokens, const struct kvt_disk_geom *geom,
                                uint32_t meta_len, struct kvt_disk_wslot *ws)
{
    struct kvt_object_meta m;
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (!d || !id || !ws)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    if (len > d->cfg.object_bytes_max)
        return KVT_E_TOOBIG;
    if (meta_len > KVT_OBJECT_SECTION_BYTES_MAX)
        return KVT_E_INVAL;
    memset(&m, 0, sizeof(m));
    m.ns_seed = id->ns_seed;
    m.key = id->key;
    m.variant = id->variant;
    m.n_tokens = n_tokens;
    m.raw_len = len;
    m.codec = KVT_CODEC_RAW;
    if (geom)
        m.g = geom->g;
    if (kvt_object_layout(&m) != 0)
        return KVT_E_INVAL;
    /* The blocked layout is the largest form (a packed body is at most raw_len bytes). The
     * metadata is worth less than the object: it goes first when both do not fit. */
    if (kvt_object_body_bytes(&m) > d->staging_bytes)
        return KVT_E_TOOBIG;
    m.meta_len = meta_len;
    if (meta_len && kvt_object_bytes(&m) > d->staging_bytes) {
        m.meta_len = 0;
        d->st.meta_skipped++;
    }
    e = kvt__disk_index_find(d, id);
    if (e && e->raw_len == len)
        return KVT_E_EXISTS;
    i = kvt__disk_op_get(d, kvt_object_bytes(&m));
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_WRITE;
    o->state = ST_RESERVED;
    o->id = *id;
    o->n_tokens = n_tokens;
    o->raw_len = len;
    /* The sequence number is taken now, in call order on the owner thread, so it orders
     * writes of the same key however long their encoding takes. */
    o->seq = d->next_seq++;
    m.seq = o->seq;
    d->reserved++;
    memset(ws, 0, sizeof(*ws));
    ws->handle = i;
    ws->buf = kvt__disk_slot_of(d, i);
    ws->cap = (size_t)o->sp_pages * BLOCK;
    ws->m = m;
    ws->sparse = geom ? geom->sparse : 0;
    ws->id = *id;
    ws->n_tokens = n_tokens;
    ws->raw_len = len;
    ws->seq = o->seq;
    ws->meta_len = m.meta_len;
    return 0;
}

/* Writes the chunk at src into ws's body in ws->form, laying m out for it: 0, or KVT_E_INVAL when
 * the form does not apply (unknown form, geometry or group; not smaller), m unchanged. A clustered
 * variant is the bytes as given; q8/q4 quantize every token row into the blocked layout, each
 * 16-token block with its checksum trailer, so that a range read verifies and dequantizes only
 * the blocks that cover it. */
static int lossy_encode(struct kvt_disk_wslot *ws, const void *src, struct kvt_object_meta *m)
{
    struct kvt_quant_chunk qc;
    if (ws->form == KVT_FORM_CLUSTER) {
        memcpy((uint8_t *)ws->buf + KVT_OBJECT_HEADER_BYTES, src, ws->raw_len);
        m->codec = KVT_CODEC_FORM(KVT_CODEC_FORM_CLUSTER, 0);
        m->stored_len = ws->raw_len;
        return 0;
    }
    uint32_t group = kvt_form_group(ws->m.g.head_dim), lg = 0;
    while (group && (1u << lg) < group)
        lg++;
    struct kvt_object_meta q = *m;
    q.codec = KVT_CODEC_FORM(ws->form, lg);
    uint64_t elems = (uint64_t)2 * q.g.n_kv_heads * q.g.head_dim;
    uint64_t piece = elems <= KVT_QUANT_HEAD_DIM_MAX ? elems : KVT_QUANT_HEAD_DIM_MAX;
    if (!group || (ws->form != KVT_FORM_Q8 && ws->form != KVT_FORM_Q4) ||
        kvt_object_form_chunk(&q, q.codec, &qc) != 0 || piece % q.g.head_dim ||
        kvt_object_layout(&q) != 0 || q.stored_len >= ws->raw_len ||
        kvt_object_body_bytes(&q) > ws->cap)
        return KVT_E_INVAL;
    kvt_object_put_rows((uint8_t *)ws->buf + KVT_OBJECT_HEADER_BYTES, &q, src);
    *m = q;
    return 0;
}

int kvt_disk_encode(struct kvt_codec *codec, struct kvt_disk_wslot *ws, const void *src,
                    uint32_t elem_bytes)
{
    unsigned char *slot = ws->buf;
    struct kvt_object_meta m = ws->m;
    size_t stored = 0, total;
    uint32_t id = KVT_CODEC_RAW;
    int rc;

    if (!codec || (!src && ws->raw_len) || (m.meta_len && !ws->meta_write))
        return KVT_E_INVAL;
    /* A lossy form, when asked for and the geometry allows it, replaces compression
     * (docs/lossy.md). */
    if (ws->form && ws->raw_len > 0 && lossy_encode(ws, src, &m) == 0) {
        id = m.codec;
    } else if (!ws->sparse && ws->raw_len > 0) {
        /* Compression applies to the whole object and only when it pays (the codec's
         * min_saving); a sparse namespace never compresses, so that every object of it stays
         * range-readable. */
        rc = kvt_codec_encode(codec, src, ws->raw_len, elem_bytes, slot + KVT_OBJECT_HEADER_BYTES,
                              ws->cap - KVT_OBJECT_HEADER_BYTES, &stored, &id);
        if (rc)
            return rc;
    }
    if (id == KVT_CODEC_RAW) {
        m.codec = KVT_CODEC_RAW;
        rc = kvt_object_layout(&m);
        if (rc)
            return rc;
        kvt_object_put_rows(slot + KVT_OBJECT_HEADER_BYTES, &m, src);
    } else if (!KVT_CODEC_ID_FORM(id)) {
        m.codec = id;
        m.stored_len = stored;
    }
    /* The metadata goes after the body, wherever the body ended; the gap up to it and the tail of
     * the last block are zeroed so no stale staging bytes reach the disk. */
    if (m.meta_len) {
        size_t body = (size_t)kvt_object_body_bytes(&m), sec = (size_t)kvt_object_section_off(&m);
        memset(slot + body, 0, sec - body);
        ws->meta_write(ws->meta_ctx, slot + sec + KVT_OBJECT_SECTION_HEAD_BYTES, m.meta_len);
    }
    total = (size_t)kvt__disk_blocks_for(kvt_object_bytes(&m)) * BLOCK;
    memset(slot + kvt_object_bytes(&m), 0, total - (size_t)kvt_object_bytes(&m));
    kvt_object_seal(slot, &m);
    ws->m = m;
    ws->stored_len = (size_t)m.stored_len;
    ws->codec = m.codec;
    ws->sealed = 1;
    return 0;
}

void kvt_disk_write_cancel(struct kvt_disk *d, struct kvt_disk_wslot *ws)
{
    assert(ws->handle < d->n_ops && d->ops[ws->handle].state == ST_RESERVED &&
           d->ops[ws->handle].seq == ws->seq);
    d->reserved--;
    kvt__disk_op_put(d, ws->handle);
    ws->buf = NULL;
}

int kvt_disk_write_submit(struct kvt_disk *d, struct kvt_disk_wslot *ws, kvt_tier_done_fn done,
                          void *arg)
{
    struct io_uring_sqe *sqe;
    struct op *o;
    uint32_t i = ws->handle;
    int rc;

    /* A handle that is not a live reservation is a programmer error. */
    assert(i < d->n_ops && d->ops[i].state == ST_RESERVED && d->ops[i].seq == ws->seq);
    o = &d->ops[i];
    if (!done || !ws->sealed) {
        rc = KVT_E_INVAL;
        goto err_cancel;
    }
    if (d->failed) {
        rc = KVT_E_TIERFAILED;
        goto err_cancel;
    }
    o->blocks = (uint32_t)kvt__disk_blocks_for(kvt_object_bytes(&ws->m));
    o->m = ws->m;
    o->io_bytes = (uint64_t)o->blocks * BLOCK;
    rc = kvt__disk_extent_alloc(d, o->blocks, &o->file, &o->start);
    if (rc) {
        d->st.full_rejects++;
        goto err_cancel;
    }
    d->reserved--;
    o->state = ST_INFLIGHT;
    o->codec = ws->codec;
    o->stored_len = ws->stored_len;
    o->done = done;
    o->arg = arg;
    sqe = kvt__disk_get_sqe(d);
    kvt__disk_prep_write(d, sqe, o->file, kvt__disk_slot_of(d, i), o->blocks * BLOCK,
                         o->start * BLOCK);
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_OP << 32) | i);
    o->submit_ns = kvt_now_ns();
    d->st.writes++;
    d->st.raw_bytes_written += o->raw_len;
    d->st.stored_bytes_written += o->stored_len;
    if (KVT_CODEC_ID_FORM(o->codec))
        d->st.lossy_writes++;
    else if (o->codec != KVT_CODEC_RAW)
        d->st.compressed_objects++;
    if (ws->m.meta_len)
        d->st.meta_writes++;
    kvt__disk_submit(d);
    return 0;

err_cancel:
    kvt_disk_write_cancel(d, ws);
    return rc;
}

int kvt_disk_write(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf, size_t len,
                   uint32_t n_tokens, uint32_t elem_bytes, kvt_tier_done_fn done, void *arg)
{
    return kvt_disk_write_geom(d, id, buf, len, n_tokens, NULL, elem_bytes, done, arg);
}

int kvt_disk_write_geom(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf,
                        size_t len, uint32_t n_tokens, const struct kvt_disk_geom *geom,
                        uint32_t elem_bytes, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_wslot ws;
    int rc;

    if (!d || !id || (!buf && len) || !done)
        return KVT_E_INVAL;
    rc = kvt_disk_write_reserve_geom(d, id, len, n_tokens, geom, &ws);
    if (rc)
        return rc;
    rc = kvt_disk_encode(d->codec, &ws, buf, elem_bytes);
    if (rc) {
        kvt_disk_write_cancel(d, &ws);
        return rc;
    }
    return kvt_disk_write_submit(d, &ws, done, arg);
}

/* Submits the read of bytes [off, off + bytes) of e's extent into op i's staging pages. */
static void read_go(struct kvt_disk *d, uint32_t i, const struct ient *e, uint64_t off,
                    uint64_t bytes)
{
    struct op *o = &d->ops[i];
    struct io_uring_sqe *sqe;

    o->state = ST_INFLIGHT;
    o->file = e->file;
    o->start = e->start;
    o->blocks = e->blocks;
    o->seq = e->seq;
    o->raw_len = e->raw_len;
    o->io_off = off;
    o->io_bytes = bytes;
    sqe = kvt__disk_get_sqe(d);
    kvt__disk_prep_read(d, sqe, o->file, kvt__disk_slot_of(d, i), (unsigned)bytes,
                        o->start * BLOCK + off);
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_OP << 32) | i);
    o->submit_ns = kvt_now_ns();
    /* Metadata reads are counted apart, so that the payload's counters show a restart that
     * restores metadata reads none of it. */
    if (o->meta) {
        d->st.meta_reads++;
        d->st.meta_bytes_read += bytes;
    } else {
        d->st.reads++;
        d->st.bytes_read += bytes;
    }
    kvt__disk_submit(d);
}

static int read_submit(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                       kvt_tier_done_fn done, kvt_disk_lent_fn lent_done, uint32_t *form_out,
                       void *arg)
{
    struct ient *e;
    struct op *o;
    uint64_t body;
    uint32_t i;

    if (d->failed)
        return KVT_E_TIERFAILED;
    e = kvt__disk_index_find(d, id);
    if (!e) {
        d->st.tier.misses++;
        return KVT_E_NOTFOUND;
    }
    /* A stored read of a quantized object returns the kernels' chunk of its rows: n_layers x
     * n_tokens stored rows without the trailers. */
    int rows = form_out && kvt_object_blocked(e->codec) && e->codec != KVT_CODEC_RAW;
    if (done && cap < (rows ? (uint64_t)e->n_layers * e->n_tokens * e->row_bytes : e->raw_len))
        return KVT_E_SMALLBUF;
    /* The header and the body: a metadata section after them is never read with the object. */
    body = kvt__disk_body_blocks(e) * BLOCK;
    i = kvt__disk_op_get(d, body);
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_READ;
    o->id = *id;
    o->dst = dst;
    o->cap = cap;
    o->done = done;
    o->lent_done = lent_done;
    o->stored = form_out != NULL;
    o->form_out = form_out;
    o->arg = arg;
    read_go(d, i, e, 0, body);
    return 0;
}

/* The layout of e's blocked body as the index knows it (no header read). */
static void ient_meta(const struct ient *e, const struct kvt_obj_id *id, struct kvt_object_meta *m)
{
    memset(m, 0, sizeof(*m));
    m->ns_seed = id->ns_seed;
    m->key = id->key;
    m->variant = id->variant;
    m->n_tokens = e->n_tokens;
    m->raw_len = e->raw_len;
    m->seq = e->seq;
    m->codec = e->codec;
    m->stored_len = e->stored_len;
    m->g.n_layers = e->n_layers;
    m->g.block_tokens = e->block_tokens;
    (void)kvt_object_layout(m);
}

static int range_submit(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                        uint32_t token_first, uint32_t n_tokens, uint32_t head_dim, void *dst,
                        size_t cap, uint32_t *form_out, kvt_tier_done_fn done, void *arg);

int kvt_disk_read_range(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                        uint32_t token_first, uint32_t n_tokens, void *dst, size_t cap,
                        kvt_tier_done_fn done, void *arg)
{
    return range_submit(d, id, layer, token_first, n_tokens, 0, dst, cap, NULL, done, arg);
}

int kvt_disk_read_range_stored(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                               uint32_t token_first, uint32_t n_tokens, uint32_t head_dim,
                               void *dst, size_t cap, uint32_t *form_out, kvt_tier_done_fn done,
                               void *arg)
{
    if (!form_out)
        return KVT_E_INVAL;
    return range_submit(d, id, layer, token_first, n_tokens, head_dim, dst, cap, form_out, done,
                        arg);
}

static int range_submit(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                        uint32_t token_first, uint32_t n_tokens, uint32_t head_dim, void *dst,
                        size_t cap, uint32_t *form_out, kvt_tier_done_fn done, void *arg)
{
    struct kvt_object_meta m;
    uint64_t off = 0, len = 0, a0, a1, need;
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (!d || !id || !done || !dst || n_tokens == 0)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    e = kvt__disk_index_find(d, id);
    if (!e) {
        d->st.tier.misses++;
        return KVT_E_NOTFOUND;
    }
    if (e->row_bytes == 0 || layer >= e->n_layers || token_first > e->n_tokens ||
        n_tokens > e->n_tokens - token_first)
        return KVT_E_INVAL;
    ient_meta(e, id, &m);
    /* A stored read of a quantized object returns the stored rows (gathered by head), whose
     * size is the stored row's; of any other object, the rows as a plain range read does. */
    int stored = form_out && KVT_CODEC_ID_FORM(e->codec) != 0 && kvt_object_blocked(e->codec);
    if (stored && (!head_dim || (kvt_object_out_row_bytes(&m) / 2) % (2ull * head_dim)))
        return KVT_E_INVAL;
    if (cap < (uint64_t)n_tokens * (stored ? m.row_bytes : kvt_object_out_row_bytes(&m)))
        return KVT_E_SMALLBUF;
    if (kvt_object_blocked(e->codec)) {
        /* Only the covering blocks and their trailers, rounded out to whole 4 KiB pages. */
        kvt_object_range(&m, layer, token_first, n_tokens, &off, &len);
        a0 = (KVT_OBJECT_HEADER_BYTES + off) / BLOCK * BLOCK;
        a1 = kvt__disk_blocks_for(KVT_OBJECT_HEADER_BYTES + off + len) * BLOCK;
        need = a1 - a0;
    } else {
        /* A packed object is read whole and decoded behind itself in the same staging run. */
        a0 = 0;
        a1 = kvt__disk_body_blocks(e) * BLOCK;
        need = a1 + e->raw_len;
    }
    i = kvt__disk_op_get(d, need);
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_READ;
    o->range = 1;
    o->stored = (uint8_t)stored;
    o->head_dim = head_dim;
    o->form_out = form_out;
    if (form_out)
        *form_out = stored ? KVT_CODEC_ID_FORM(e->codec) : 0;
    o->m = m;
    o->layer = layer;
    o->t0 = token_first;
    o->n_rows = n_tokens;
    o->id = *id;
    o->dst = dst;
    o->cap = cap;
    o->done = done;
    o->arg = arg;
    d->st.range_reads++;
    read_go(d, i, e, a0, a1 - a0);
    return 0;
}

int kvt_disk_read_meta(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                       kvt_tier_done_fn done, void *arg)
{
    uint64_t sec;
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (!d || !id || !done || !dst)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    e = kvt__disk_index_find(d, id);
    sec = e ? kvt__disk_section_bytes(e) : 0;
    if (!sec)
        return KVT_E_NOTFOUND;
    if (cap < sec - KVT_OBJECT_SECTION_HEAD_BYTES)
        return KVT_E_SMALLBUF;
    i = kvt__disk_op_get(d, sec);
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_READ;
    o->meta = 1;
    o->id = *id;
    o->dst = dst;
    o->cap = cap;
    o->done = done;
    o->arg = arg;
    read_go(d, i, e, kvt__disk_body_blocks(e) * BLOCK, sec);
    return 0;
}

int kvt_disk_read(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                  kvt_tier_done_fn done, void *arg)
{
    if (!d || !id || !done || (!dst && cap))
        return KVT_E_INVAL;
    return read_submit(d, id, dst, cap, done, NULL, NULL, arg);
}

int kvt_disk_read_stored(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                         uint32_t *form_out, kvt_tier_done_fn done, void *arg)
{
    if (!d || !id || !done || !form_out || (!dst && cap))
        return KVT_E_INVAL;
    return read_submit(d, id, dst, cap, done, NULL, form_out, arg);
}

int kvt_disk_read_lend(struct kvt_disk *d, const struct kvt_obj_id *id, kvt_disk_lent_fn done,
                       void *arg)
{
    if (!d || !id || !done)
        return KVT_E_INVAL;
    return read_submit(d, id, NULL, 0, NULL, done, NULL, arg);
}

int kvt__disk_object_matches(const struct kvt_object_meta *m, const struct kvt_obj_id *id,
                             uint64_t seq, uint64_t raw_len)
{
    return m->ns_seed == id->ns_seed && m->key.lo == id->key.lo && m->key.hi == id->key.hi &&
           m->variant == id->variant && m->seq == seq && m->raw_len == raw_len;
}

int kvt_disk_decode(struct kvt_codec *codec, const struct kvt_disk_lent *lent, void *dst,
                    size_t cap)
{
    struct kvt_object_meta m;
    const unsigned char *p = lent->buf;

    if (!codec || (!dst && cap))
        return KVT_E_INVAL;
    if (cap < lent->raw_len)
        return KVT_E_SMALLBUF;
    if (kvt_object_decode(codec, p, lent->bytes, dst, cap, &m) != 0 ||
        !kvt__disk_object_matches(&m, &lent->id, lent->seq, lent->raw_len))
        return KVT_E_CORRUPT;
    return 0;
}

int kvt_disk_decode_stored(struct kvt_codec *codec, const struct kvt_disk_lent *lent, void *dst,
                           size_t cap, uint32_t *form_out, size_t *len_out)
{
    struct kvt_object_meta m;
    size_t len = 0;

    if (!codec || !form_out || !len_out || (!dst && cap))
        return KVT_E_INVAL;
    int rc = kvt_object_decode_stored(codec, lent->buf, lent->bytes, dst, cap, &m, &len);
    if (rc == KVT_E_SMALLBUF)
        return rc;
    if (rc != 0 || !kvt__disk_object_matches(&m, &lent->id, lent->seq, lent->raw_len))
        return KVT_E_CORRUPT;
    *form_out = KVT_CODEC_ID_FORM(m.codec);
    *len_out = len;
    return 0;
}

void kvt_disk_read_release(struct kvt_disk *d, const struct kvt_disk_lent *lent, int status)
{
    uint32_t i = lent->handle;

    /* Releasing anything but a live loan is a programmer error. */
    assert(i < d->n_ops && d->ops[i].state == ST_LENT && d->ops[i].seq == lent->seq);
    if (status == KVT_E_CORRUPT) {
        kvt__disk_drop_corrupt(d, &d->ops[i]);
    } else {
        d->st.tier.hits++;
        d->st.tier.promotions += !lent->stored;
    }
    d->lent--;
    kvt__disk_op_put(d, i);
}

int kvt_disk_remove(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    struct ient *e;
    struct rec r;

    if (!d || !id)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    e = kvt__disk_index_find(d, id);
    if (!e)
        return KVT_E_NOTFOUND;
    if (d->jdels >= DELS_PER_COMMIT) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    kvt__disk_rec_from_ient(e, REC_DEL, (uint32_t)d->ckpt_gen, &r);
    r.seq = d->next_seq++;
    kvt__disk_jstage_rec(d, &r);
    d->jdels++;
    kvt__disk_extent_release(d, e->file, e->start, e->blocks, d->gen_next);
    d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
    kvt__disk_index_delete(d, e);
    d->st.removes++;
    d->st.tier.evictions++;
    kvt__disk_start_commit(d);
    kvt__disk_submit(d);
    return 0;
}

int kvt_disk_sync(struct kvt_disk *d, struct kvt_disk_sync *sy, kvt_tier_done_fn done, void *arg)
{
    if (!d || !sy || !done)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    sy->done = done;
    sy->arg = arg;
    sy->res = 0;
    sy->next = NULL;
    /* Records staged now go out in the next commit, which gets gen_next; otherwise the last
     * commit started covers everything before this call. */
    if (d->jrecs[d->jstage] > 0 || d->ready.n > 0)
        sy->gen = d->gen_next;
    else if (d->commit.inflight)
        sy->gen = d->commit.gen;
    else
        sy->gen = d->gen_durable;
    d->st.syncs++;
    if (d->sync_tail)
        d->sync_tail->next = sy;
    else
        d->sync_head = sy;
    d->sync_tail = sy;
    if (sy->gen <= d->gen_durable) {
        /* Durable already: the callback still runs from poll, never inside this call. */
        kvt__disk_sync_advance(d);
        kvt__disk_wake(d);
        return 0;
    }
    kvt__disk_start_commit(d);
    kvt__disk_submit(d);
    return 0;
}

int kvt_disk_lookup(struct kvt_disk *d, const struct kvt_obj_id *id, struct kvt_disk_obj_info *out)
{
    struct ient *e = kvt__disk_index_find(d, id);

    if (!e)
        return KVT_E_NOTFOUND;
    if (out)
        kvt__disk_ient_info(e, out);
    return 0;
}

size_t kvt_disk_enumerate(struct kvt_disk *d, kvt_disk_enum_fn fn, void *arg)
{
    struct kvt_disk_obj_info info;
    size_t n = 0;

    for (uint64_t i = 0; i <= d->index_mask; i++) {
        if (!d->index[i].used)
            continue;
        kvt__disk_ient_info(&d->index[i], &info);
        n++;
        if (fn(arg, &info))
            break;
    }
    return n;
}

int kvt_disk_event_fd(struct kvt_disk *d)
{
    return d->event_fd;
}

uint32_t kvt_disk_inflight(const struct kvt_disk *d)
{
    return d->inflight;
}

void kvt_disk_tier_stats(const struct kvt_disk *d, struct kvt_tier_stats *out)
{
    *out = d->st.tier;
    out->objects = d->index_count;
    out->failed = (uint64_t)d->failed;
}

void kvt_disk_stats(struct kvt_disk *d, struct kvt_disk_stats *out)
{
    *out = d->st;
    out->tier.objects = d->index_count;
    out->tier.failed = (uint64_t)d->failed;
}

/* ---- create / destroy ----------------------------------------------------------------------- */

void kvt_disk_config_init(struct kvt_disk_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->queue_depth = 64;
    cfg->staging_bytes = 64u << 20;
    cfg->object_bytes_max = 4u << 20;
    cfg->objects_max = 65536;
    cfg->io_errors_max = 8;
    cfg->checkpoint_records = 4096;
    cfg->lock_wait_ms = 5000;
    kvt_codec_config_init(&cfg->codec);
}

static int open_data_file(struct kvt_disk *d, uint32_t k)
{
    const struct kvt_disk_config *cfg = &d->cfg;
    struct dfile *f = &d->files[k];
    const char *path = cfg->paths[k];
    struct stat sb;
    int inject = cfg->faults && cfg->faults->odirect_einval, rc;

    f->fd = inject ? -1 : open(path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (inject)
        errno = EINVAL;
    f->odirect = f->fd >= 0;
    if (f->fd < 0 && errno == EINVAL) {
        if (!cfg->allow_buffered) {
            kvt__disk_set_err(
                cfg,
                "%s: O_DIRECT not supported here; set allow_buffered to accept buffered "
                "I/O",
                path);
            return KVT_E_BADCONFIG;
        }
        f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    }
    if (f->fd < 0) {
        rc = -errno;
        kvt__disk_set_err(cfg, "%s: open: %s", path, strerror(errno));
        return rc;
    }
    if (fstat(f->fd, &sb) != 0) {
        rc = -errno;
        kvt__disk_set_err(cfg, "%s: stat: %s", path, strerror(errno));
        return rc;
    }
    if (S_ISBLK(sb.st_mode)) {
        uint64_t dev_bytes = 0;
        if (ioctl(f->fd, BLKGETSIZE64, &dev_bytes) != 0) {
            rc = -errno;
            kvt__disk_set_err(cfg, "%s: BLKGETSIZE64: %s", path, strerror(errno));
            return rc;
        }
        if (k == 0 && !cfg->meta_dir) {
            kvt__disk_set_err(
                cfg, "%s: a block device needs meta_dir for the checkpoint and journal", path);
            return KVT_E_BADCONFIG;
        }
        f->bytes = cfg->file_bytes ? cfg->file_bytes : dev_bytes / BLOCK * BLOCK;
        if (f->bytes > dev_bytes) {
            kvt__disk_set_err(cfg, "%s: device holds %llu bytes, file_bytes asks for %llu", path,
                              (unsigned long long)dev_bytes, (unsigned long long)f->bytes);
            return KVT_E_BADCONFIG;
        }
        return 0;
    }
    if (!S_ISREG(sb.st_mode)) {
        kvt__disk_set_err(cfg, "%s: neither a regular file nor a block device", path);
        return KVT_E_BADCONFIG;
    }
    f->bytes = cfg->file_bytes;
    rc = posix_fallocate(f->fd, 0, (off_t)f->bytes);
    if (rc) {
        kvt__disk_set_err(cfg, "%s: fallocate %llu bytes: %s", path, (unsigned long long)f->bytes,
                          strerror(rc));
        return rc == ENOSPC || rc == EFBIG ? KVT_E_FULL : -rc;
    }
    return 0;
}

/* A killed previous owner's io_uring keeps the files (and their lock) until its in-flight I/O
 * has drained, so waiting for the lock also waits for that I/O; a live owner keeps it forever. */
static int lock_files(struct kvt_disk *d)
{
    uint64_t deadline = kvt__disk_now_ms() + d->cfg.lock_wait_ms;

    for (;;) {
        if (flock(d->files[0].fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            kvt__disk_set_err(&d->cfg, "%s: flock: %s", d->cfg.paths[0], strerror(errno));
            return -errno;
        }
        if (kvt__disk_now_ms() >= deadline) {
            kvt__disk_set_err(&d->cfg, "%s: locked by another kvtier disk store", d->cfg.paths[0]);
            return KVT_E_BUSY;
        }
        usleep(5000);
    }
}

static int validate(const struct kvt_disk_config *cfg)
{
    if (cfg->n_paths == 0 || cfg->n_paths > KVT_DISK_PATHS_MAX) {
        kvt__disk_set_err(cfg, "n_paths must be 1..%d", KVT_DISK_PATHS_MAX);
        return KVT_E_BADCONFIG;
    }
    for (uint32_t k = 0; k < cfg->n_paths; k++) {
        if (!cfg->paths[k] || !cfg->paths[k][0] || strlen(cfg->paths[k]) >= PATH_MAX) {
            kvt__disk_set_err(cfg, "paths[%u] is empty or too long", k);
            return KVT_E_BADCONFIG;
        }
    }
    if (cfg->file_bytes % BLOCK || cfg->file_bytes / BLOCK > UINT32_MAX * 64ull) {
        kvt__disk_set_err(cfg, "file_bytes must be a multiple of 4096");
        return KVT_E_BADCONFIG;
    }
    if (cfg->queue_depth == 0 || cfg->queue_depth > 4096 || cfg->objects_max == 0 ||
        cfg->objects_max > (1u << 28) || cfg->object_bytes_max == 0 ||
        cfg->object_bytes_max > (1u << 30) || cfg->staging_bytes > (1ull << 30) ||
        cfg->io_errors_max == 0 || cfg->checkpoint_records == 0) {
        kvt__disk_set_err(cfg, "queue_depth, objects_max, object_bytes_max, staging_bytes, "
                               "io_errors_max or checkpoint_records out of range");
        return KVT_E_BADCONFIG;
    }
    return 0;
}

static int setup_memory(struct kvt_disk *d)
{
    uint64_t cap = 1;
    struct kvt_codec_config ccfg = d->cfg.codec;

    struct kvt_extent_config scfg;
    /* Room for one object of object_bytes_max in the blocked layout: its trailers (8 bytes per
     * block, at most 1/64 of the bytes for blocks of 512 bytes or more) and a page of padding. A
     * geometry that needs more (tiny rows, many layers) is refused per write with KVT_E_TOOBIG. */
    uint64_t one = kvt__disk_blocks_for(KVT_OBJECT_HEADER_BYTES + d->cfg.object_bytes_max +
                                        d->cfg.object_bytes_max / 64 + BLOCK) *
                   BLOCK;

    d->staging_bytes = (size_t)(d->cfg.staging_bytes / BLOCK * BLOCK);
    if (d->staging_bytes < one) {
        kvt__disk_set_err(&d->cfg,
                          "staging_bytes %llu cannot hold one object of %llu bytes (needs %llu)",
                          (unsigned long long)d->cfg.staging_bytes,
                          (unsigned long long)d->cfg.object_bytes_max, (unsigned long long)one);
        return KVT_E_BADCONFIG;
    }
    d->n_ops = d->cfg.queue_depth;
    d->staging = kvt_aligned_alloc(KVT_ALLOC_DISK, BLOCK, d->staging_bytes);
    if (!d->staging)
        return KVT_E_NOMEM;
    scfg.blocks = d->staging_bytes / BLOCK;
    scfg.extents_max = d->n_ops;
    if (kvt_extent_create(&scfg, &d->sp) != 0)
        return KVT_E_NOMEM;
    d->ops = kvt_calloc(KVT_ALLOC_DISK, d->n_ops, sizeof(*d->ops));
    d->free_ops = kvt_calloc(KVT_ALLOC_DISK, d->n_ops, sizeof(*d->free_ops));
    while (cap < 2ull * d->cfg.objects_max)
        cap <<= 1;
    d->index = kvt_calloc(KVT_ALLOC_DISK, cap, sizeof(*d->index));
    d->used_bits = kvt_calloc(KVT_ALLOC_DISK, (cap + 63) / 64, sizeof(*d->used_bits));
    d->index_mask = cap - 1;
    d->pfree_max = d->cfg.objects_max;
    d->pfree = kvt_calloc(KVT_ALLOC_DISK, d->pfree_max, sizeof(*d->pfree));
    d->jcap = d->n_ops + DELS_PER_COMMIT;
    d->jbuf[0] = kvt_malloc(KVT_ALLOC_DISK, (size_t)d->jcap * REC_BYTES);
    d->jbuf[1] = kvt_malloc(KVT_ALLOC_DISK, (size_t)d->jcap * REC_BYTES);
    d->ckpt_buf_bytes = CKPT_HEADER_BYTES + (size_t)d->cfg.objects_max * REC_BYTES;
    if (d->ckpt_buf_bytes < RECOVERY_READ_BYTES)
        d->ckpt_buf_bytes = RECOVERY_READ_BYTES;
    d->ckpt_buf = kvt_malloc(KVT_ALLOC_DISK, d->ckpt_buf_bytes);
    d->snap = kvt_calloc(KVT_ALLOC_DISK, d->cfg.objects_max, sizeof(*d->snap));
    if (!d->ops || !d->free_ops || !d->index || !d->pfree || !d->jbuf[0] || !d->jbuf[1] ||
        !d->ckpt_buf || !d->snap || !d->used_bits)
        return KVT_E_NOMEM;
    for (uint32_t i = 0; i < d->n_ops; i++)
        d->free_ops[i] = d->n_ops - 1 - i;
    d->n_free_ops = d->n_ops;
    ccfg.input_bytes_max = d->cfg.object_bytes_max;
    return kvt_codec_create(&ccfg, &d->codec);
}

static void teardown(struct kvt_disk *d)
{
    if (d->ck.started) {
        pthread_mutex_lock(&d->ck.mu);
        d->ck.stop = 1;
        pthread_cond_signal(&d->ck.cv);
        pthread_mutex_unlock(&d->ck.mu);
        pthread_join(d->ck.thread, NULL);
        pthread_cond_destroy(&d->ck.cv);
        pthread_mutex_destroy(&d->ck.mu);
    }
    if (d->ring_ready)
        io_uring_queue_exit(&d->ring);
    if (d->event_fd >= 0)
        close(d->event_fd);
    for (int j = 0; j < 2; j++)
        if (d->journal_fds[j] >= 0)
            close(d->journal_fds[j]);
    for (uint32_t k = 0; k < KVT_DISK_PATHS_MAX; k++) {
        if (d->files[k].fd >= 0)
            close(d->files[k].fd);
        kvt_extent_destroy(d->files[k].ext);
    }
    kvt_codec_destroy(d->codec);
    kvt_free(KVT_ALLOC_DISK, d->ckpt_buf);
    kvt_free(KVT_ALLOC_DISK, d->snap);
    kvt_free(KVT_ALLOC_DISK, d->jbuf[0]);
    kvt_free(KVT_ALLOC_DISK, d->jbuf[1]);
    kvt_free(KVT_ALLOC_DISK, d->pfree);
    kvt_free(KVT_ALLOC_DISK, d->index);
    kvt_free(KVT_ALLOC_DISK, d->used_bits);
    kvt_free(KVT_ALLOC_DISK, d->free_ops);
    kvt_free(KVT_ALLOC_DISK, d->ops);
    kvt_extent_destroy(d->sp);
    kvt_free(KVT_ALLOC_DISK, d->staging);
    kvt_free(KVT_ALLOC_DISK, d);
}

int kvt_disk_create(const struct kvt_disk_config *cfg, struct kvt_disk **out)
{
    struct kvt_disk *d;
    char path[PATH_MAX + 32];
    int rc;

    if (!cfg || !out)
        return KVT_E_INVAL;
    rc = validate(cfg);
    if (rc)
        return rc;
    d = kvt_calloc(KVT_ALLOC_DISK, 1, sizeof(*d));
    if (!d)
        return KVT_E_NOMEM;
    d->cfg = *cfg;
    d->journal_fds[0] = d->journal_fds[1] = -1;
    d->event_fd = -1;
    for (uint32_t k = 0; k < KVT_DISK_PATHS_MAX; k++)
        d->files[k].fd = -1;
    d->n_files = cfg->n_paths;
    d->gen_next = 1;

    if (cfg->meta_dir) {
        snprintf(d->meta_dir, sizeof(d->meta_dir), "%s", cfg->meta_dir);
    } else {
        const char *slash = strrchr(cfg->paths[0], '/');
        if (!slash)
            snprintf(d->meta_dir, sizeof(d->meta_dir), ".");
        else if (slash == cfg->paths[0])
            snprintf(d->meta_dir, sizeof(d->meta_dir), "/");
        else
            snprintf(d->meta_dir, sizeof(d->meta_dir), "%.*s", (int)(slash - cfg->paths[0]),
                     cfg->paths[0]);
    }
    rc = setup_memory(d);
    if (rc)
        goto err_teardown;
    for (uint32_t k = 0; k < d->n_files; k++) {
        struct kvt_extent_config ecfg;
        rc = open_data_file(d, k);
        if (rc)
            goto err_teardown;
        if (d->files[k].bytes < 2 * BLOCK) {
            kvt__disk_set_err(cfg, "%s: capacity below two blocks (set file_bytes)", cfg->paths[k]);
            rc = KVT_E_BADCONFIG;
            goto err_teardown;
        }
        ecfg.blocks = d->files[k].bytes / BLOCK;
        ecfg.extents_max = cfg->objects_max + 1; /* + the superblock */
        rc = kvt_extent_create(&ecfg, &d->files[k].ext);
        if (rc)
            goto err_teardown;
        d->st.tier.bytes_capacity += d->files[k].bytes;
        if (k == 0) {
            rc = lock_files(d);
            if (rc)
                goto err_teardown;
        }
    }
    for (int j = 0; j < 2; j++) {
        snprintf(path, sizeof(path), "%s/%s", d->meta_dir, j ? JOURNAL_NAME_1 : JOURNAL_NAME_0);
        d->journal_fds[j] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (d->journal_fds[j] < 0) {
            rc = -errno;
            kvt__disk_set_err(cfg, "%s: open: %s", path, strerror(errno));
            goto err_teardown;
        }
    }
    rc = kvt__disk_setup_ring(d);
    if (rc)
        goto err_teardown;
    rc = kvt__disk_recover(d);
    if (rc) {
        if (rc != KVT_E_BADCONFIG) /* that one has said why already */
            kvt__disk_set_err(cfg, "recovery in %s: %s", d->meta_dir, kvt_strerror(rc));
        goto err_teardown;
    }
    pthread_mutex_init(&d->ck.mu, NULL);
    pthread_cond_init(&d->ck.cv, NULL);
    rc = -pthread_create(&d->ck.thread, NULL, kvt__disk_ckpt_main, d);
    if (rc) {
        pthread_cond_destroy(&d->ck.cv);
        pthread_mutex_destroy(&d->ck.mu);
        kvt__disk_set_err(cfg, "checkpoint thread: %s", strerror(-rc));
        goto err_teardown;
    }
    d->ck.started = 1;
    *out = d;
    return 0;

err_teardown:
    teardown(d);
    return rc;
}

void kvt_disk_destroy(struct kvt_disk *d)
{
    if (!d)
        return;
    /* Bounded by the I/O in flight: every op completes or fails in the kernel, and poll starts
     * the commits that make completed writes durable. Staged tombstones need no commit: the
     * checkpoint below records their effect. */
    while (d->inflight > d->reserved + d->lent || d->commit.inflight || d->ck.busy) {
        if (io_uring_sq_ready(&d->ring) > 0)
            io_uring_submit(&d->ring);
        kvt_disk_wait(d, 100);
    }
    if (!d->failed)
        kvt__disk_checkpoint_sync(d);
    /* The checkpoint made every removal durable (or the tier failed): barriers complete now. */
    kvt__disk_sync_advance(d);
    kvt__disk_run_syncs(d);
    /* Nothing is in flight: give the files back now rather than when the kernel tears the ring
     * down asynchronously, so that a new store can take the lock at once. */
    io_uring_unregister_files(&d->ring);
    flock(d->files[0].fd, LOCK_UN);
    teardown(d);
}
