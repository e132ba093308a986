/*
 * Encoding and verification of self-describing disk objects, format v4 with its metadata section,
 * and reading of v3 and v2 (see object.h). Fields are written byte by byte in little-endian order
 * so that the format does not depend on the host or on struct padding. Every layout computation
 * lives here, so the store, the recovery scan and the range reader agree on where each block and
 * trailer sits.
 */
#include "tiers/disk/object.h"

#include <assert.h>
#include <string.h>

#include <xxhash.h>
#if defined(__x86_64__)
/* The run-time dispatched XXH3 (AVX2/AVX-512 where present), as in common/checksum.c: the same
 * values, about twice as fast on the blocks a range read verifies. */
#include <xxh_x86dispatch.h>
#endif

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "kvtier/errors.h"

#define HDR KVT_OBJECT_HEADER_BYTES
#define TRL KVT_OBJECT_TRAILER_BYTES
#define ALIGN 4096u

#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_HDR_BYTES 6
#define OFF_CODEC 8
#define OFF_NTOKENS 12
#define OFF_NS 16
#define OFF_KEY_LO 24
#define OFF_KEY_HI 32
#define OFF_RAW 40
#define OFF_STORED 48
#define OFF_SEQ 56
#define OFF_LAYERS 64
#define OFF_HEADS 68
#define OFF_DIM 72
#define OFF_ELEM 76
#define OFF_DTYPE 78
#define OFF_BTOKENS 80
#define OFF_ROW 84
#define OFF_START 88
#define OFF_STRIDE 96
#define OFF_META_OFF 104
#define OFF_META_BYTES 108
#define OFF_BODYSUM 112
#define OFF_VARIANT 120
#define OFF_META_LEN 124 /* v4: metadata section payload bytes (reserved, 0, in v3) */
#define OFF_HCHECK 128
#define OFF_HCHECK_V2 120 /* v2: the header check followed the body checksum */
#define OFF_BCHECK 4088

/* The metadata section's head. */
#define SEC_MAGIC 0
#define SEC_VERSION 4
#define SEC_HEAD_BYTES 6
#define SEC_LEN 8
#define SEC_NS 16
#define SEC_KEY_LO 24
#define SEC_KEY_HI 32
#define SEC_SEQ 40
#define SEC_VARIANT 48
#define SEC_CHECK 56
#define SEC_HEAD KVT_OBJECT_SECTION_HEAD_BYTES

static const char VERSION_INFO[] = "kvtier object format 4";

static void put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t align_up(uint64_t v)
{
    return (v + ALIGN - 1) / ALIGN * ALIGN;
}

/* The identity every body checksum is seeded with: a block or body from another object, or from
 * an older version of this key, never verifies. */
static uint64_t identity_seed(const struct kvt_object_meta *m)
{
    unsigned char b[40];
    put_le(b, m->ns_seed, 8);
    put_le(b + 8, m->key.lo, 8);
    put_le(b + 16, m->key.hi, 8);
    put_le(b + 24, m->seq, 8);
    put_le(b + 32, m->raw_len, 8);
    return XXH3_64bits(b, sizeof(b));
}

static uint64_t block_sum(uint64_t seed, uint32_t layer, uint32_t b, const void *p, size_t len)
{
    uint64_t s = seed ^ ((((uint64_t)layer << 32) | b) * 0x9e3779b97f4a7c15ull);
    return XXH3_64bits_withSeed(p, len, s);
}

/* How a lossy (q8/q4) object's token rows are stored: each fp16 row of in_row bytes quantized on
 * its own, cut into pieces of `piece` elements (the whole row, or 4096-element parts of a longer
 * one: the kernels' limit), each a one-row block of the kernels' format (codes, then the groups'
 * scale and minimum), q_row bytes in all. Groups of `group` channels never straddle a KV head
 * (the writer's group divides head_dim), so the groups are exactly those of per-head blocks. */
struct rowfmt {
    struct kvt_quant_fmt f; /* head_dim = piece */
    uint32_t pieces;
    uint64_t in_row, piece_q, q_row;
};

static int lossy_rows(uint32_t codec, uint64_t in_row, struct rowfmt *rf)
{
    uint32_t form = KVT_CODEC_ID_FORM(codec), group = KVT_CODEC_ID_GROUP(codec);
    uint64_t elems = in_row / 2;
    if ((form != 1 && form != 2) || (codec & 0xffu) || (codec >> 16) || in_row % 2 || !elems)
        return KVT_E_INVAL;
    uint64_t piece = elems <= KVT_QUANT_HEAD_DIM_MAX ? elems : KVT_QUANT_HEAD_DIM_MAX;
    rf->f =
        (struct kvt_quant_fmt){form == 1 ? 8u : 4u, KVT_QUANT_AXIS_TOKEN, group, (uint32_t)piece};
    if (elems % piece || kvt_quant_fmt_check(&rf->f) != 0)
        return KVT_E_INVAL;
    rf->pieces = (uint32_t)(elems / piece);
    rf->in_row = in_row;
    rf->piece_q = kvt_quant_bytes(&rf->f, 1);
    rf->q_row = rf->piece_q * rf->pieces;
    return 0;
}

static int is_lossy_rows(uint32_t codec)
{
    uint32_t form = KVT_CODEC_ID_FORM(codec);
    return form == 1 || form == 2;
}

int kvt_object_blocked(uint32_t codec)
{
    return codec == KVT_CODEC_RAW || is_lossy_rows(codec);
}

uint64_t kvt_object_out_row_bytes(const struct kvt_object_meta *m)
{
    uint64_t rows = (uint64_t)(m->g.n_layers ? m->g.n_layers : 1) * m->n_tokens;
    return is_lossy_rows(m->codec) && rows ? m->raw_len / rows : m->row_bytes;
}

int kvt_object_layout(struct kvt_object_meta *m)
{
    struct kvt_object_geom *g = &m->g;
    uint64_t rows;

    if (g->n_layers == 0)
        g->n_layers = 1;
    if (g->block_tokens == 0)
        g->block_tokens = KVT_OBJECT_BLOCK_TOKENS;
    if (g->n_layers > KVT_OBJECT_LAYERS_MAX || g->block_tokens > UINT16_MAX)
        return KVT_E_INVAL;
    rows = (uint64_t)g->n_layers * m->n_tokens;
    if (rows > 0 && m->raw_len > 0 && m->raw_len % rows == 0 && m->raw_len / rows <= UINT32_MAX) {
        m->row_bytes = (uint32_t)(m->raw_len / rows);
    } else if (g->n_layers == 1) {
        m->row_bytes = 0; /* opaque bytes: one block */
    } else {
        return KVT_E_INVAL;
    }
    /* When the shape is given it must describe the rows: [k|v][kv_head][head_dim] elements. */
    if (g->n_kv_heads && g->head_dim && g->elem_bytes &&
        (uint64_t)2 * g->n_kv_heads * g->head_dim * g->elem_bytes != m->row_bytes)
        return KVT_E_INVAL;
    uint64_t layer_bytes = m->raw_len / g->n_layers;
    if (is_lossy_rows(m->codec)) {
        /* Quantized rows in the same blocks: row_bytes is what one stored row takes. Layers are
         * not 4 KiB-aligned (a range read rounds its I/O out to pages anyway): the padding would
         * cost a lossy chunk of few tokens most of its saving. */
        struct rowfmt rf;
        if (!m->row_bytes || (g->elem_bytes && g->elem_bytes != 2) ||
            lossy_rows(m->codec, m->row_bytes, &rf) != 0)
            return KVT_E_INVAL;
        m->row_bytes = (uint32_t)rf.q_row;
        m->layer_stride = rf.q_row * m->n_tokens + (uint64_t)kvt_object_layer_blocks(m) * TRL;
        m->stored_len = m->layer_stride * g->n_layers;
        return 0;
    }
    m->layer_stride = align_up(layer_bytes + (uint64_t)kvt_object_layer_blocks(m) * TRL);
    if (kvt_object_blocked(m->codec))
        m->stored_len = m->layer_stride * g->n_layers;
    return 0;
}

int kvt_object_form_chunk(const struct kvt_object_meta *m, uint32_t codec,
                          struct kvt_quant_chunk *out)
{
    uint32_t form = KVT_CODEC_ID_FORM(codec), bits = form == 1 ? 8 : form == 2 ? 4 : 0;
    const struct kvt_object_geom *g = &m->g;

    /* A quantized object has no lossless stage, and fp16 elements of a known shape that the rows
     * describe (its stored-form read returns the kernels' chunk of this format). */
    if (!bits || (codec & 0xffu) || ((codec >> 16) != 0) || g->elem_bytes != 2 || !g->n_kv_heads ||
        !g->head_dim || !m->n_tokens ||
        (uint64_t)2 * g->n_kv_heads * g->head_dim * 2 * m->n_tokens * g->n_layers != m->raw_len)
        return KVT_E_INVAL;
    struct kvt_quant_fmt f = {bits, KVT_QUANT_AXIS_TOKEN, KVT_CODEC_ID_GROUP(codec), g->head_dim};
    *out = (struct kvt_quant_chunk){g->n_layers, g->n_kv_heads, f, f};
    return kvt_quant_chunk_check(out);
}

uint64_t kvt_object_body_bytes(const struct kvt_object_meta *m)
{
    return HDR + m->stored_len;
}

uint64_t kvt_object_section_off(const struct kvt_object_meta *m)
{
    return align_up(HDR + m->stored_len);
}

uint64_t kvt_object_bytes(const struct kvt_object_meta *m)
{
    if (m->meta_len == 0)
        return kvt_object_body_bytes(m);
    return kvt_object_section_off(m) + SEC_HEAD + m->meta_len;
}

uint32_t kvt_object_layer_blocks(const struct kvt_object_meta *m)
{
    if (m->row_bytes == 0 || m->n_tokens == 0)
        return 1;
    return (m->n_tokens + m->g.block_tokens - 1) / m->g.block_tokens;
}

/* Block b of a layer: offset in the layer (data then trailer) and data bytes. */
static void block_span(const struct kvt_object_meta *m, uint32_t b, uint64_t *off, size_t *len)
{
    uint64_t full = (uint64_t)m->g.block_tokens * m->row_bytes;
    uint32_t left;

    if (m->row_bytes == 0) {
        *off = 0;
        *len = (size_t)m->raw_len;
        return;
    }
    left = m->n_tokens - b * m->g.block_tokens;
    *off = (uint64_t)b * (full + TRL);
    *len = (size_t)((left < m->g.block_tokens ? left : m->g.block_tokens) * (uint64_t)m->row_bytes);
}

void kvt_object_range(const struct kvt_object_meta *m, uint32_t layer, uint32_t t0, uint32_t n,
                      uint64_t *off, uint64_t *len)
{
    uint32_t b0 = t0 / m->g.block_tokens, b1 = (t0 + n - 1) / m->g.block_tokens;
    uint64_t o0, o1;
    size_t l1;

    block_span(m, b0, &o0, &l1);
    block_span(m, b1, &o1, &l1);
    *off = (uint64_t)layer * m->layer_stride + o0;
    *len = o1 + l1 + TRL - o0;
}

/* Quantizes n fp16 rows (in_row bytes apart) into n stored rows at out. */
static void quant_rows(const struct rowfmt *rf, const unsigned char *in, size_t n,
                       unsigned char *out)
{
    const struct kvt_kernels *k = kvt_kernels();
    for (size_t r = 0; r < n; r++)
        for (uint32_t p = 0; p < rf->pieces; p++)
            k->quant_f16(&rf->f,
                         (const uint16_t *)(in + r * rf->in_row) + (size_t)p * rf->f.head_dim, 1,
                         rf->f.head_dim, out + r * rf->q_row + p * rf->piece_q);
}

/* Dequantizes n stored rows at in into n fp16 rows (in_row bytes apart) at out. */
static void dequant_rows(const struct rowfmt *rf, const unsigned char *in, size_t n,
                         unsigned char *out)
{
    const struct kvt_kernels *k = kvt_kernels();
    for (size_t r = 0; r < n; r++)
        for (uint32_t p = 0; p < rf->pieces; p++)
            k->dequant_f16(&rf->f, in + r * rf->q_row + p * rf->piece_q, 1,
                           (uint16_t *)(out + r * rf->in_row) + (size_t)p * rf->f.head_dim,
                           rf->f.head_dim);
}

/* The row format of a laid-out lossy object m (row_bytes already the stored row's). */
static int lossy_rows_of(const struct kvt_object_meta *m, struct rowfmt *rf)
{
    return lossy_rows(m->codec, kvt_object_out_row_bytes(m), rf) == 0 && rf->q_row == m->row_bytes
               ? 0
               : KVT_E_INVAL;
}

void kvt_object_put_rows(void *body, const struct kvt_object_meta *m, const void *src)
{
    unsigned char *out = body;
    const unsigned char *in = src;
    uint64_t seed = identity_seed(m), layer_raw = m->raw_len / m->g.n_layers;
    uint32_t nb = kvt_object_layer_blocks(m);
    struct rowfmt rf;
    int lossy = is_lossy_rows(m->codec);
    uint64_t in_row = m->row_bytes;
    if (lossy) {
        int rc = lossy_rows_of(m, &rf);
        (void)rc;
        assert(rc == 0); /* laid out by kvt_object_layout: a programmer error otherwise */
        in_row = rf.in_row;
    }

    for (uint32_t l = 0; l < m->g.n_layers; l++) {
        unsigned char *lp = out + (size_t)l * m->layer_stride;
        const unsigned char *ls = in + (size_t)l * layer_raw;
        uint64_t off = 0;
        size_t len = 0, used = 0;
        for (uint32_t b = 0; b < nb; b++) {
            block_span(m, b, &off, &len);
            const unsigned char *bs = ls + (size_t)b * m->g.block_tokens * in_row;
            if (len && lossy)
                quant_rows(&rf, bs, len / m->row_bytes, lp + off);
            else if (len)
                memcpy(lp + off, bs, len);
            put_le(lp + off + len, block_sum(seed, l, b, lp + off, len), TRL);
            used = (size_t)off + len + TRL;
        }
        memset(lp + used, 0, (size_t)m->layer_stride - used);
    }
}

int kvt_object_get_rows(const void *buf, uint64_t buf_off, size_t buf_bytes,
                        const struct kvt_object_meta *m, uint32_t l0, uint32_t l1, uint32_t t0,
                        uint32_t n, void *dst)
{
    const unsigned char *p = buf;
    unsigned char *out = dst;
    uint64_t seed = identity_seed(m);
    uint32_t bt = m->g.block_tokens, b0, b1;
    struct rowfmt rf;
    int lossy = is_lossy_rows(m->codec);
    uint64_t out_row = m->row_bytes;
    if (lossy) {
        if (lossy_rows_of(m, &rf) != 0)
            return KVT_E_CORRUPT;
        out_row = rf.in_row;
    }

    if (m->row_bytes == 0) {
        b0 = 0;
        b1 = 0;
    } else {
        if (n == 0)
            return 0;
        b0 = t0 / bt;
        b1 = (t0 + n - 1) / bt;
    }
    for (uint32_t l = l0; l < l1; l++) {
        for (uint32_t b = b0; b <= b1; b++) {
            uint64_t off, at;
            size_t len;
            block_span(m, b, &off, &len);
            at = (uint64_t)l * m->layer_stride + off;
            if (at < buf_off || at + len + TRL > buf_off + buf_bytes)
                return KVT_E_CORRUPT;
            const unsigned char *bp = p + (at - buf_off);
            if (get_le(bp + len, TRL) != block_sum(seed, l, b, bp, len))
                return KVT_E_CORRUPT;
            if (!out)
                continue;
            if (m->row_bytes == 0) {
                memcpy(out, bp, len);
                continue;
            }
            /* Copy the part of this block inside [t0, t0 + n). */
            uint32_t first = b * bt, lo = t0 > first ? t0 : first;
            uint32_t hi = first + (uint32_t)(len / m->row_bytes);
            if (hi > t0 + n)
                hi = t0 + n;
            unsigned char *to = out + ((uint64_t)(l - l0) * n + (lo - t0)) * out_row;
            const unsigned char *from = bp + (uint64_t)(lo - first) * m->row_bytes;
            if (lossy)
                dequant_rows(&rf, from, hi - lo, to);
            else
                memcpy(to, from, (size_t)(hi - lo) * m->row_bytes);
        }
    }
    return 0;
}

static uint64_t body_sum(const struct kvt_object_meta *m, const unsigned char *body)
{
    return XXH3_64bits_withSeed(body, (size_t)m->stored_len, identity_seed(m));
}

/* The check of a metadata section: its head (identity, length) and its payload, seeded with the
 * identity so that a section left in a reused extent by another object never verifies. */
static uint64_t section_sum(const struct kvt_object_meta *m, const unsigned char *sec, uint32_t len)
{
    uint64_t head = XXH3_64bits_withSeed(sec, SEC_CHECK, identity_seed(m));
    return XXH3_64bits_withSeed(sec + SEC_HEAD, len, head);
}

static void section_seal(unsigned char *sec, const struct kvt_object_meta *m)
{
    memset(sec, 0, SEC_HEAD);
    put_le(sec + SEC_MAGIC, KVT_OBJECT_SECTION_MAGIC, 4);
    put_le(sec + SEC_VERSION, KVT_OBJECT_SECTION_VERSION, 2);
    put_le(sec + SEC_HEAD_BYTES, SEC_HEAD, 2);
    put_le(sec + SEC_LEN, m->meta_len, 4);
    put_le(sec + SEC_NS, m->ns_seed, 8);
    put_le(sec + SEC_KEY_LO, m->key.lo, 8);
    put_le(sec + SEC_KEY_HI, m->key.hi, 8);
    put_le(sec + SEC_SEQ, m->seq, 8);
    put_le(sec + SEC_VARIANT, m->variant, 4);
    put_le(sec + SEC_CHECK, section_sum(m, sec, m->meta_len), 8);
}

int kvt_object_section_get(const void *buf, size_t bytes, const struct kvt_object_meta *m,
                           const void **payload, uint32_t *len)
{
    const unsigned char *sec = buf;
    uint64_t n;

    if (bytes < SEC_HEAD || get_le(sec + SEC_MAGIC, 4) != KVT_OBJECT_SECTION_MAGIC ||
        get_le(sec + SEC_VERSION, 2) != KVT_OBJECT_SECTION_VERSION ||
        get_le(sec + SEC_HEAD_BYTES, 2) != SEC_HEAD || get_le(sec + 12, 4) != 0 ||
        get_le(sec + 52, 4) != 0)
        return KVT_E_CORRUPT;
    n = get_le(sec + SEC_LEN, 4);
    if (n == 0 || n > KVT_OBJECT_SECTION_BYTES_MAX || n > bytes - SEC_HEAD ||
        (m->meta_len && n != m->meta_len))
        return KVT_E_CORRUPT;
    if (get_le(sec + SEC_NS, 8) != m->ns_seed || get_le(sec + SEC_KEY_LO, 8) != m->key.lo ||
        get_le(sec + SEC_KEY_HI, 8) != m->key.hi || get_le(sec + SEC_SEQ, 8) != m->seq ||
        get_le(sec + SEC_VARIANT, 4) != m->variant ||
        get_le(sec + SEC_CHECK, 8) != section_sum(m, sec, (uint32_t)n))
        return KVT_E_CORRUPT;
    *payload = sec + SEC_HEAD;
    *len = (uint32_t)n;
    return 0;
}

void kvt_object_seal(void *buf, const struct kvt_object_meta *m)
{
    unsigned char *p = buf, *f = p + KVT_OBJECT_META_OFF;
    uint32_t meta_bytes = 8 + 4 + (uint32_t)sizeof(VERSION_INFO);

    memset(p, 0, HDR);
    put_le(p + OFF_MAGIC, KVT_OBJECT_MAGIC, 4);
    put_le(p + OFF_VERSION, KVT_OBJECT_VERSION, 2);
    put_le(p + OFF_HDR_BYTES, HDR, 2);
    put_le(p + OFF_CODEC, m->codec, 4);
    put_le(p + OFF_NTOKENS, m->n_tokens, 4);
    put_le(p + OFF_NS, m->ns_seed, 8);
    put_le(p + OFF_KEY_LO, m->key.lo, 8);
    put_le(p + OFF_KEY_HI, m->key.hi, 8);
    put_le(p + OFF_RAW, m->raw_len, 8);
    put_le(p + OFF_STORED, m->stored_len, 8);
    put_le(p + OFF_SEQ, m->seq, 8);
    put_le(p + OFF_LAYERS, m->g.n_layers, 4);
    put_le(p + OFF_HEADS, m->g.n_kv_heads, 4);
    put_le(p + OFF_DIM, m->g.head_dim, 4);
    put_le(p + OFF_ELEM, m->g.elem_bytes, 2);
    put_le(p + OFF_DTYPE, m->g.dtype, 2);
    put_le(p + OFF_BTOKENS, m->g.block_tokens, 4);
    put_le(p + OFF_ROW, m->row_bytes, 4);
    put_le(p + OFF_START, m->g.start_pos, 8);
    put_le(p + OFF_STRIDE, m->layer_stride, 8);
    put_le(p + OFF_META_OFF, KVT_OBJECT_META_OFF, 4);
    put_le(p + OFF_META_BYTES, meta_bytes, 4);
    if (!kvt_object_blocked(m->codec))
        put_le(p + OFF_BODYSUM, body_sum(m, p + HDR), 8);
    put_le(p + OFF_VARIANT, m->variant, 4);
    put_le(p + OFF_META_LEN, m->meta_len, 4);
    if (m->meta_len)
        section_seal(p + kvt_object_section_off(m), m);
    /* The metadata frame: one entry for now; later formats add theirs after it. */
    memcpy(f, "KVTM", 4);
    put_le(f + 4, 1, 2);
    put_le(f + 6, 1, 2);
    put_le(f + 8, KVT_OBJECT_META_VERSION_INFO, 2);
    put_le(f + 10, sizeof(VERSION_INFO), 2);
    memcpy(f + 12, VERSION_INFO, sizeof(VERSION_INFO));
    put_le(p + OFF_HCHECK, XXH3_64bits(p, OFF_HCHECK), 8);
    put_le(p + OFF_BCHECK, XXH3_64bits(p, OFF_BCHECK), 8);
}

/* The check over the whole header block (metadata frame included), verified by every reader of
 * the whole object; recovery, which only compares identity and lengths, needs just the first. */
static int block_check_ok(const unsigned char *p)
{
    return get_le(p + OFF_BCHECK, 8) == XXH3_64bits(p, OFF_BCHECK);
}

/* A form must fit the object: a clustered variant is its bytes; a quantized one needs a geometry
 * whose KV heads its groups divide (the layout checked its rows). */
static int form_len_ok(const struct kvt_object_meta *m)
{
    struct kvt_quant_chunk qc;
    if (!KVT_CODEC_ID_FORM(m->codec))
        return 1;
    if (KVT_CODEC_ID_FORM(m->codec) == KVT_CODEC_FORM_CLUSTER)
        return m->codec == KVT_CODEC_FORM(KVT_CODEC_FORM_CLUSTER, 0) && m->stored_len == m->raw_len;
    return kvt_object_form_chunk(m, m->codec, &qc) == 0;
}

int kvt_object_parse_header(const void *buf, struct kvt_object_meta *out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m, want;
    uint64_t version = get_le(p + OFF_VERSION, 2);
    unsigned check = version == KVT_OBJECT_VERSION_V2 ? OFF_HCHECK_V2 : OFF_HCHECK;

    if (get_le(p + OFF_MAGIC, 4) != KVT_OBJECT_MAGIC ||
        (version != KVT_OBJECT_VERSION && version != KVT_OBJECT_VERSION_V3 &&
         version != KVT_OBJECT_VERSION_V2) ||
        get_le(p + OFF_HDR_BYTES, 2) != HDR || get_le(p + check, 8) != XXH3_64bits(p, check))
        return KVT_E_CORRUPT;
    memset(&m, 0, sizeof(m));
    /* A v2 object predates variants: it is the chunk as first stored. Only v4 has a section. */
    if (version != KVT_OBJECT_VERSION_V2)
        m.variant = (uint32_t)get_le(p + OFF_VARIANT, 4);
    if (version == KVT_OBJECT_VERSION)
        m.meta_len = (uint32_t)get_le(p + OFF_META_LEN, 4);
    m.codec = (uint32_t)get_le(p + OFF_CODEC, 4);
    m.n_tokens = (uint32_t)get_le(p + OFF_NTOKENS, 4);
    m.ns_seed = get_le(p + OFF_NS, 8);
    m.key.lo = get_le(p + OFF_KEY_LO, 8);
    m.key.hi = get_le(p + OFF_KEY_HI, 8);
    m.raw_len = get_le(p + OFF_RAW, 8);
    m.stored_len = get_le(p + OFF_STORED, 8);
    m.seq = get_le(p + OFF_SEQ, 8);
    m.g.n_layers = (uint32_t)get_le(p + OFF_LAYERS, 4);
    m.g.n_kv_heads = (uint32_t)get_le(p + OFF_HEADS, 4);
    m.g.head_dim = (uint32_t)get_le(p + OFF_DIM, 4);
    m.g.elem_bytes = (uint16_t)get_le(p + OFF_ELEM, 2);
    m.g.dtype = (uint16_t)get_le(p + OFF_DTYPE, 2);
    m.g.block_tokens = (uint32_t)get_le(p + OFF_BTOKENS, 4);
    m.row_bytes = (uint32_t)get_le(p + OFF_ROW, 4);
    m.g.start_pos = get_le(p + OFF_START, 8);
    m.layer_stride = get_le(p + OFF_STRIDE, 8);
    /* The geometry must reproduce the recorded layout exactly, and a codec never expands. */
    want = m;
    if (m.g.n_layers == 0 || m.g.block_tokens == 0 || kvt_object_layout(&want) != 0 ||
        want.row_bytes != m.row_bytes || want.layer_stride != m.layer_stride ||
        want.stored_len != m.stored_len ||
        (!kvt_object_blocked(m.codec) && m.stored_len > m.raw_len) || !form_len_ok(&m) ||
        get_le(p + OFF_META_OFF, 4) != KVT_OBJECT_META_OFF ||
        get_le(p + OFF_META_BYTES, 4) > KVT_OBJECT_META_BYTES_MAX ||
        m.meta_len > KVT_OBJECT_SECTION_BYTES_MAX)
        return KVT_E_CORRUPT;
    *out = m;
    return 0;
}

int kvt_object_verify(const void *buf, size_t buf_bytes, struct kvt_object_meta *out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m;

    if (buf_bytes < HDR || kvt_object_parse_header(p, &m) != 0 || !block_check_ok(p))
        return KVT_E_CORRUPT;
    if (m.stored_len > buf_bytes - HDR)
        return KVT_E_CORRUPT;
    if (!kvt_object_blocked(m.codec)) {
        if (get_le(p + OFF_BODYSUM, 8) != body_sum(&m, p + HDR))
            return KVT_E_CORRUPT;
    } else if (kvt_object_get_rows(p + HDR, 0, (size_t)m.stored_len, &m, 0, m.g.n_layers, 0,
                                   m.n_tokens, NULL) != 0) {
        return KVT_E_CORRUPT;
    }
    *out = m;
    return 0;
}

int kvt_object_decode(struct kvt_codec *codec, const void *buf, size_t buf_bytes, void *dst,
                      size_t cap, struct kvt_object_meta *out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m;

    if (buf_bytes < HDR || kvt_object_parse_header(p, &m) != 0 || !block_check_ok(p) ||
        m.stored_len > buf_bytes - HDR)
        return KVT_E_CORRUPT;
    if (cap < m.raw_len)
        return KVT_E_SMALLBUF;
    if (KVT_CODEC_ID_FORM(m.codec) == KVT_CODEC_FORM_CLUSTER) {
        /* Kept as given: verified, then copied. */
        if (get_le(p + OFF_BODYSUM, 8) != body_sum(&m, p + HDR))
            return KVT_E_CORRUPT;
        memcpy(dst, p + HDR, (size_t)m.raw_len);
    } else if (!kvt_object_blocked(m.codec)) {
        if (!codec || get_le(p + OFF_BODYSUM, 8) != body_sum(&m, p + HDR) ||
            kvt_codec_decode(codec, m.codec, p + HDR, (size_t)m.stored_len, dst,
                             (size_t)m.raw_len) != 0)
            return KVT_E_CORRUPT;
    } else if (kvt_object_get_rows(p + HDR, 0, (size_t)m.stored_len, &m, 0, m.g.n_layers, 0,
                                   m.n_tokens, dst) != 0) {
        return KVT_E_CORRUPT;
    }
    *out = m;
    return 0;
}

int kvt_object_get_rows_stored(const void *buf, uint64_t buf_off, size_t buf_bytes,
                               const struct kvt_object_meta *m, uint32_t layer, uint32_t t0,
                               uint32_t n, uint32_t head_dim, void *dst)
{
    struct rowfmt rf;
    if (!is_lossy_rows(m->codec) || lossy_rows_of(m, &rf) != 0 || !head_dim ||
        rf.f.head_dim % head_dim || head_dim % rf.f.group || (rf.in_row / 2) % (2 * head_dim))
        return KVT_E_INVAL;
    if (layer >= m->g.n_layers || t0 > m->n_tokens || n > m->n_tokens - t0 || !n)
        return KVT_E_INVAL;
    int rc = kvt_object_get_rows(buf, buf_off, buf_bytes, m, layer, layer + 1, t0, n, NULL);
    if (rc)
        return rc;
    /* A head's hd channels lie inside one piece of a row (its codes one byte run, its groups'
     * parameters another), since pieces are whole multiples of head_dim. */
    const unsigned char *p = buf;
    const uint32_t hd = head_dim, kh_n = (uint32_t)(rf.in_row / 2 / hd), bt = m->g.block_tokens;
    const uint32_t bits = rf.f.bits, G = rf.f.group;
    const size_t code_h = (size_t)hd * bits / 8, par_h = (size_t)hd / G * KVT_QUANT_PARAM_BYTES;
    const size_t blk = (code_h + par_h) * n, piece = rf.f.head_dim;
    const size_t piece_codes = piece * bits / 8;
    unsigned char *o = dst;
    for (uint32_t t = t0; t < t0 + n; t++) {
        uint32_t b = t / bt;
        uint64_t off;
        size_t len;
        block_span(m, b, &off, &len);
        const unsigned char *row = p + ((uint64_t)layer * m->layer_stride + off - buf_off) +
                                   (uint64_t)(t - b * bt) * m->row_bytes;
        for (uint32_t kh = 0; kh < kh_n; kh++) {
            size_t e0 = (size_t)kh * hd, pc = e0 / piece, in = e0 % piece;
            const unsigned char *pp = row + pc * rf.piece_q;
            unsigned char *bd = o + (size_t)kh * blk;
            memcpy(bd + (size_t)(t - t0) * code_h, pp + in * bits / 8, code_h);
            memcpy(bd + (size_t)n * code_h + (size_t)(t - t0) * par_h,
                   pp + piece_codes + in / G * KVT_QUANT_PARAM_BYTES, par_h);
        }
    }
    return 0;
}

int kvt_object_decode_stored(struct kvt_codec *codec, const void *buf, size_t buf_bytes, void *dst,
                             size_t cap, struct kvt_object_meta *out, size_t *len_out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m;

    if (buf_bytes < HDR || kvt_object_parse_header(p, &m) != 0 || !block_check_ok(p) ||
        m.stored_len > buf_bytes - HDR)
        return KVT_E_CORRUPT;
    if (!is_lossy_rows(m.codec)) {
        int rc = kvt_object_decode(codec, buf, buf_bytes, dst, cap, out);
        if (rc == 0)
            *len_out = (size_t)out->raw_len;
        return rc;
    }
    struct kvt_quant_chunk qc;
    struct rowfmt rf;
    if (kvt_object_form_chunk(&m, m.codec, &qc) != 0 || lossy_rows_of(&m, &rf) != 0 ||
        rf.f.head_dim % m.g.head_dim)
        return KVT_E_CORRUPT;
    size_t bytes = kvt_quant_chunk_bytes(&qc, m.n_tokens);
    if (cap < bytes)
        return KVT_E_SMALLBUF;
    /* Every layer's (k|v, KV head) blocks, gathered from its stored rows once they verified. */
    for (uint32_t l = 0; l < m.g.n_layers; l++) {
        int rc = kvt_object_get_rows_stored(
            p + HDR, 0, (size_t)m.stored_len, &m, l, 0, m.n_tokens, m.g.head_dim,
            (unsigned char *)dst + (size_t)l * m.n_tokens * m.row_bytes);
        if (rc)
            return KVT_E_CORRUPT;
    }
    *out = m;
    *len_out = bytes;
    return 0;
}

int kvt_object_meta_find(const void *hdr, uint16_t type, const void **val, uint16_t *len)
{
    const unsigned char *p = hdr, *f = p + KVT_OBJECT_META_OFF;
    uint32_t bytes = (uint32_t)get_le(p + OFF_META_BYTES, 4), n, at = 8;

    if (bytes < 8 || bytes > KVT_OBJECT_META_BYTES_MAX || memcmp(f, "KVTM", 4) != 0)
        return KVT_E_NOTFOUND;
    n = (uint32_t)get_le(f + 6, 2);
    for (uint32_t i = 0; i < n && at + 4 <= bytes; i++) {
        uint16_t t = (uint16_t)get_le(f + at, 2), l = (uint16_t)get_le(f + at + 2, 2);
        if (at + 4 + l > bytes)
            break;
        if (t == type) {
            *val = f + at + 4;
            *len = l;
            return 0;
        }
        at += 4u + l;
    }
    return KVT_E_NOTFOUND;
}
