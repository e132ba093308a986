/*
 * Unit tests for self-describing disk objects, format v4 (and v3, and v2 read as variant 0): the
 * header block's byte layout (little-endian fields at fixed offsets) and metadata frame, the
 * blocked layout's geometry (layers 4 KiB-aligned, blocks with trailers, the range arithmetic),
 * seal/verify/decode round trips of both layouts, detection of a flipped bit anywhere in header
 * or body, refusal of truncated objects and inconsistent geometry, and the metadata section after
 * the body (where it lies, read alone, every flipped bit and every truncation refused, never
 * accepted for another object), and lossy objects (a q8/q4 form in the codec id: the packed
 * quantized chunk as the body, its exact size checked, decoded by dequantizing or returned as
 * stored, every flipped bit refused).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/half.h"
#include "kernels/quant.h"
#include "kvtier/errors.h"
#include "tiers/codec.h"
#include "tiers/disk/object.h"

#include <xxhash.h>

/* 3 layers of 40 tokens of 64-byte rows: blocks of 16, 16 and 8 tokens. */
#define LAYERS 3u
#define TOKENS 40u
#define ROW 64u
#define RAW (LAYERS * TOKENS * ROW)

static unsigned char raw[RAW], out[RAW];
static unsigned char buf[KVT_OBJECT_HEADER_BYTES + LAYERS * 4096u];

static struct kvt_object_meta sample(void)
{
    struct kvt_object_meta m;
    memset(&m, 0, sizeof(m));
    m.ns_seed = 0x1122334455667788ull;
    m.key.lo = 0xa1a2a3a4a5a6a7a8ull;
    m.key.hi = 0xb1b2b3b4b5b6b7b8ull;
    m.n_tokens = TOKENS;
    m.codec = KVT_CODEC_RAW;
    m.raw_len = RAW;
    m.seq = 77;
    m.g.n_layers = LAYERS;
    m.g.n_kv_heads = 2;
    m.g.head_dim = 8;
    m.g.elem_bytes = 2;
    m.g.dtype = 5;
    m.g.start_pos = 4096;
    return m;
}

static void seal_sample(void)
{
    struct kvt_object_meta m = sample();
    for (unsigned i = 0; i < RAW; i++)
        raw[i] = (unsigned char)(i * 7 + (i >> 8));
    assert_int_equal(kvt_object_layout(&m), 0);
    kvt_object_put_rows(buf + KVT_OBJECT_HEADER_BYTES, &m, raw);
    kvt_object_seal(buf, &m);
}

static void test_layout(void **state)
{
    (void)state;
    struct kvt_object_meta m = sample();
    uint64_t off, len;
    const void *v;
    uint16_t vlen;

    assert_int_equal(kvt_object_layout(&m), 0);
    assert_int_equal(m.row_bytes, ROW);
    assert_int_equal(m.g.block_tokens, KVT_OBJECT_BLOCK_TOKENS);
    assert_int_equal(m.layer_stride, 4096);
    assert_int_equal(m.stored_len, LAYERS * 4096u);
    assert_int_equal(kvt_object_layer_blocks(&m), 3);
    /* Tokens 20..35 of layer 2: blocks 1 and 2, 1032 + 520 bytes with trailers. */
    kvt_object_range(&m, 2, 20, 16, &off, &len);
    assert_int_equal(off, 2 * 4096 + 1032);
    assert_int_equal(len, 1032 + 520);

    seal_sample();
    assert_memory_equal(buf, "KVTO", 4);
    assert_int_equal(buf[4], 4);
    assert_int_equal(buf[6] | buf[7] << 8, 4096);
    assert_int_equal(buf[8], 0);
    assert_int_equal(buf[12], TOKENS);
    assert_int_equal(buf[16], 0x88);
    assert_int_equal(buf[24], 0xa8);
    assert_int_equal(buf[39], 0xb1);
    assert_int_equal(buf[56], 77);
    assert_int_equal(buf[64], LAYERS);
    assert_int_equal(buf[68], 2);
    assert_int_equal(buf[72], 8);
    assert_int_equal(buf[76], 2);
    assert_int_equal(buf[78], 5);
    assert_int_equal(buf[80], 16);
    assert_int_equal(buf[84], ROW);
    assert_int_equal(buf[89], 0x10); /* start_pos 4096 */
    assert_int_equal(buf[105], 2);   /* metadata frame at 512 */
    assert_memory_equal(buf + 512, "KVTM", 4);
    assert_int_equal(kvt_object_meta_find(buf, KVT_OBJECT_META_VERSION_INFO, &v, &vlen), 0);
    assert_non_null(strstr((const char *)v, "format 4"));
    /* No metadata section: the object ends with its body. */
    assert_int_equal(buf[124] | buf[125] | buf[126] | buf[127], 0);
    assert_int_equal(kvt_object_bytes(&m), KVT_OBJECT_HEADER_BYTES + m.stored_len);
    assert_int_equal(kvt_object_meta_find(buf, 999, &v, &vlen), KVT_E_NOTFOUND);
    /* Layer 1 starts 4 KiB-aligned in the body with token 0's row. */
    assert_memory_equal(buf + KVT_OBJECT_HEADER_BYTES + 4096, raw + TOKENS * ROW, ROW);

    /* Unknown geometry: one layer; one opaque block when the rows do not divide. */
    m = sample();
    memset(&m.g, 0, sizeof(m.g));
    m.raw_len = 1001;
    assert_int_equal(kvt_object_layout(&m), 0);
    assert_int_equal(m.g.n_layers, 1);
    assert_int_equal(m.row_bytes, 0);
    assert_int_equal(m.stored_len, 4096);
    /* A shape that does not describe the rows, or layers that do not divide, is refused. */
    m = sample();
    m.g.head_dim = 16;
    assert_int_equal(kvt_object_layout(&m), KVT_E_INVAL);
    m = sample();
    m.raw_len = RAW - 1;
    assert_int_equal(kvt_object_layout(&m), KVT_E_INVAL);
}

static void test_roundtrip_blocked_and_ranges(void **state)
{
    (void)state;
    struct kvt_object_meta in = sample(), m;
    uint64_t off, len;

    seal_sample();
    assert_int_equal(kvt_object_layout(&in), 0);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &m), 0);
    assert_memory_equal(&in, &m, sizeof(in));
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, sizeof(out), &m), 0);
    assert_memory_equal(out, raw, RAW);
    /* Every range of every layer, from only the bytes kvt_object_range names. */
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (uint32_t t0 = 0; t0 < TOKENS; t0 += 3) {
            for (uint32_t n = 1; t0 + n <= TOKENS; n += 5) {
                kvt_object_range(&in, l, t0, n, &off, &len);
                memset(out, 0, sizeof(out));
                assert_int_equal(kvt_object_get_rows(buf + KVT_OBJECT_HEADER_BYTES + off, off,
                                                     (size_t)len, &in, l, l + 1, t0, n, out),
                                 0);
                assert_memory_equal(out, raw + ((size_t)l * TOKENS + t0) * ROW, n * ROW);
                /* One byte short of the covering blocks is refused, not read past. */
                assert_int_equal(kvt_object_get_rows(buf + KVT_OBJECT_HEADER_BYTES + off, off,
                                                     (size_t)len - 1, &in, l, l + 1, t0, n, out),
                                 KVT_E_CORRUPT);
            }
        }
    }
    /* The same bytes under another sequence number (a reused extent) never verify. */
    in.seq = 78;
    kvt_object_range(&in, 0, 0, 16, &off, &len);
    assert_int_equal(
        kvt_object_get_rows(buf + KVT_OBJECT_HEADER_BYTES, 0, (size_t)len, &in, 0, 1, 0, 16, out),
        KVT_E_CORRUPT);
}

static void test_roundtrip_packed(void **state)
{
    (void)state;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;
    struct kvt_object_meta m = sample(), got;
    size_t stored = 0;
    uint32_t id = 0;

    memset(raw, 3, sizeof(raw));
    kvt_codec_config_init(&cfg);
    assert_int_equal(kvt_codec_create(&cfg, &c), 0);
    assert_int_equal(kvt_codec_encode(c, raw, RAW, 2, buf + KVT_OBJECT_HEADER_BYTES,
                                      sizeof(buf) - KVT_OBJECT_HEADER_BYTES, &stored, &id),
                     0);
    assert_true(id != KVT_CODEC_RAW);
    m.codec = id;
    assert_int_equal(kvt_object_layout(&m), 0);
    m.stored_len = stored;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_verify(buf, KVT_OBJECT_HEADER_BYTES + stored, &got), 0);
    assert_int_equal(got.stored_len, stored);
    memset(out, 0, sizeof(out));
    assert_int_equal(
        kvt_object_decode(c, buf, KVT_OBJECT_HEADER_BYTES + stored, out, sizeof(out), &got), 0);
    assert_memory_equal(out, raw, RAW);
    assert_int_equal(
        kvt_object_decode(c, buf, KVT_OBJECT_HEADER_BYTES + stored, out, RAW - 1, &got),
        KVT_E_SMALLBUF);
    buf[KVT_OBJECT_HEADER_BYTES + stored / 2] ^= 1;
    assert_int_equal(kvt_object_verify(buf, KVT_OBJECT_HEADER_BYTES + stored, &got), KVT_E_CORRUPT);
    assert_int_equal(
        kvt_object_decode(c, buf, KVT_OBJECT_HEADER_BYTES + stored, out, sizeof(out), &got),
        KVT_E_CORRUPT);
    kvt_codec_destroy(c);
}

/* Every single-bit flip must be caught: in the header block by the header check, in the body by
 * the block's trailer (while the header alone still parses), in a trailer by itself. */
static void test_every_bit_flip_detected(void **state)
{
    (void)state;
    struct kvt_object_meta out_m;
    size_t used = KVT_OBJECT_HEADER_BYTES + 2 * 4096u + TOKENS * ROW + 3 * 8;

    seal_sample();
    for (size_t byte = 0; byte < used; byte += 5) {
        /* Padding after a layer's last trailer is not data: skip it. */
        size_t in_layer =
            byte >= KVT_OBJECT_HEADER_BYTES ? (byte - KVT_OBJECT_HEADER_BYTES) % 4096 : 0;
        if (byte >= KVT_OBJECT_HEADER_BYTES && in_layer >= TOKENS * ROW + 3 * 8)
            continue;
        for (int bit = 0; bit < 8; bit += 3) {
            buf[byte] ^= (unsigned char)(1u << bit);
            assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out_m), KVT_E_CORRUPT);
            assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, sizeof(out), &out_m),
                             KVT_E_CORRUPT);
            if (byte >= KVT_OBJECT_HEADER_BYTES)
                assert_int_equal(kvt_object_parse_header(buf, &out_m), 0);
            buf[byte] ^= (unsigned char)(1u << bit);
        }
    }
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &out_m), 0);
}

static void test_truncation_and_lengths(void **state)
{
    (void)state;
    struct kvt_object_meta m = sample(), out_m;

    seal_sample();
    assert_int_equal(kvt_object_verify(buf, sizeof(buf) - 1, &out_m), KVT_E_CORRUPT);
    assert_int_equal(kvt_object_verify(buf, 100, &out_m), KVT_E_CORRUPT);
    assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, RAW - 1, &out_m),
                     KVT_E_SMALLBUF);

    /* A sealed header whose lengths disagree with its geometry is refused. */
    assert_int_equal(kvt_object_layout(&m), 0);
    m.stored_len += 4096;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &out_m), KVT_E_CORRUPT);
    m = sample();
    assert_int_equal(kvt_object_layout(&m), 0);
    m.codec = KVT_CODEC_ID(KVT_CODEC_LZ4, 2);
    m.stored_len = RAW + 1; /* a codec never expands */
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &out_m), KVT_E_CORRUPT);
    m = sample();
    assert_int_equal(kvt_object_layout(&m), 0);
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &out_m), 0);
    buf[4] = 1; /* a v1 header is not read */
    assert_int_equal(kvt_object_parse_header(buf, &out_m), KVT_E_CORRUPT);

    memset(buf, 0, KVT_OBJECT_HEADER_BYTES);
    assert_int_equal(kvt_object_parse_header(buf, &out_m), KVT_E_CORRUPT);
}

static uint64_t le_at(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void le_put(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* The variant is part of the checked header: written at 120, read back by every parser, and a
 * header whose variant was changed behind the checks' back is refused. */
static void test_variant_in_header(void **state)
{
    (void)state;
    struct kvt_object_meta m = sample(), got;

    for (unsigned i = 0; i < RAW; i++)
        raw[i] = (unsigned char)(i * 13 + 1);
    m.variant = 0x01020304u;
    assert_int_equal(kvt_object_layout(&m), 0);
    kvt_object_put_rows(buf + KVT_OBJECT_HEADER_BYTES, &m, raw);
    kvt_object_seal(buf, &m);
    assert_int_equal(le_at(buf + 120, 4), 0x01020304u);
    assert_int_equal(le_at(buf + 124, 4), 0);
    assert_int_equal(le_at(buf + 128, 8), XXH3_64bits(buf, 128));
    assert_int_equal(kvt_object_parse_header(buf, &got), 0);
    assert_int_equal(got.variant, 0x01020304u);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &got), 0);
    assert_memory_equal(&got, &m, sizeof(m));
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, sizeof(out), &got), 0);
    assert_int_equal(got.variant, 0x01020304u);
    assert_memory_equal(out, raw, RAW);
    /* Another variant of the same object, sealed anew, differs only in its header. */
    m.variant = 1;
    kvt_object_seal(buf, &m);
    assert_int_equal(kvt_object_parse_header(buf, &got), 0);
    assert_int_equal(got.variant, 1);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &got), 0);
    buf[120] ^= 2; /* variant 1 -> 3 without resealing */
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &got), KVT_E_CORRUPT);
}

/* Rewrites the sealed v3 header at b as the v2 build wrote it: version 2, no variant, the header
 * check at 120 over bytes 0..119, the block check recomputed. */
static void header_to_v2(unsigned char *b)
{
    le_put(b + 4, 2, 2);
    memset(b + 120, 0, 16);
    le_put(b + 120, XXH3_64bits(b, 120), 8);
    memcpy(b + 512 + 12 + 21, "2", 1); /* "kvtier object format 2" */
    le_put(b + 4088, XXH3_64bits(b, 4088), 8);
}

/* An object written by the v2 build (before variants) is still read, as variant 0, by every
 * parser, blocked and packed alike; a v2 header is checked where v2 put its check. */
static void test_v2_header_read_as_variant_0(void **state)
{
    (void)state;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;
    struct kvt_object_meta m = sample(), got;
    const void *v;
    uint16_t vlen;
    size_t stored = 0;
    uint32_t id = 0;

    seal_sample();
    header_to_v2(buf);
    assert_int_equal(kvt_object_meta_find(buf, KVT_OBJECT_META_VERSION_INFO, &v, &vlen), 0);
    assert_non_null(strstr((const char *)v, "format 2"));
    assert_int_equal(kvt_object_parse_header(buf, &got), 0);
    assert_int_equal(got.variant, 0);
    assert_int_equal(got.seq, 77);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &got), 0);
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, sizeof(out), &got), 0);
    assert_memory_equal(out, raw, RAW);
    /* Bytes 120..127 are the check in v2: a flipped bit there is caught. */
    buf[121] ^= 1;
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
    buf[121] ^= 1;
    /* A v3 header relabelled v2 (or the reverse) fails the check of the version it claims. */
    seal_sample();
    buf[4] = 2;
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
    header_to_v2(buf);
    buf[4] = 3;
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);

    /* Packed: the body checksum is seeded the same way in both formats. */
    memset(raw, 3, sizeof(raw));
    kvt_codec_config_init(&cfg);
    assert_int_equal(kvt_codec_create(&cfg, &c), 0);
    assert_int_equal(kvt_codec_encode(c, raw, RAW, 2, buf + KVT_OBJECT_HEADER_BYTES,
                                      sizeof(buf) - KVT_OBJECT_HEADER_BYTES, &stored, &id),
                     0);
    m.codec = id;
    assert_int_equal(kvt_object_layout(&m), 0);
    m.stored_len = stored;
    kvt_object_seal(buf, &m);
    header_to_v2(buf);
    memset(out, 0, sizeof(out));
    assert_int_equal(
        kvt_object_decode(c, buf, KVT_OBJECT_HEADER_BYTES + stored, out, sizeof(out), &got), 0);
    assert_int_equal(got.variant, 0);
    assert_memory_equal(out, raw, RAW);
    kvt_codec_destroy(c);
}

/* Rewrites the sealed v4 header at b (without a section) as the v3 build wrote it: version 3,
 * byte 124 reserved, both checks recomputed. */
static void header_to_v3(unsigned char *b)
{
    assert_int_equal(le_at(b + 124, 4), 0);
    le_put(b + 4, 3, 2);
    le_put(b + 128, XXH3_64bits(b, 128), 8);
    memcpy(b + 512 + 12 + 21, "3", 1); /* "kvtier object format 3" */
    le_put(b + 4088, XXH3_64bits(b, 4088), 8);
}

/* An object the v3 build wrote (no metadata section) is read by every parser, blocked and packed,
 * and says it has no section. */
static void test_v3_header_read(void **state)
{
    (void)state;
    struct kvt_object_meta got;

    seal_sample();
    header_to_v3(buf);
    assert_int_equal(kvt_object_parse_header(buf, &got), 0);
    assert_int_equal(got.meta_len, 0);
    assert_int_equal(got.seq, 77);
    assert_int_equal(kvt_object_verify(buf, sizeof(buf), &got), 0);
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_decode(NULL, buf, sizeof(buf), out, sizeof(out), &got), 0);
    assert_memory_equal(out, raw, RAW);
    /* Byte 124 is checked in v3 too: a flipped bit there is caught. */
    buf[124] ^= 1;
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
}

#define META 5000u
static unsigned char mbuf[KVT_OBJECT_HEADER_BYTES + LAYERS * 4096u + 2 * 4096u];
static unsigned char meta[META];

/* Seals the sample object with a metadata section of META bytes in mbuf; returns its offset. */
static size_t seal_with_meta(struct kvt_object_meta *m)
{
    *m = sample();
    for (unsigned i = 0; i < RAW; i++)
        raw[i] = (unsigned char)(i * 7 + (i >> 8));
    for (unsigned i = 0; i < META; i++)
        meta[i] = (unsigned char)(i * 31 + 5);
    assert_int_equal(kvt_object_layout(m), 0);
    m->meta_len = META;
    memset(mbuf, 0xa5, sizeof(mbuf));
    kvt_object_put_rows(mbuf + KVT_OBJECT_HEADER_BYTES, m, raw);
    size_t sec = (size_t)kvt_object_section_off(m);
    memcpy(mbuf + sec + KVT_OBJECT_SECTION_HEAD_BYTES, meta, META);
    kvt_object_seal(mbuf, m);
    return sec;
}

/* The section lies at the first 4 KiB boundary after the body, named in the header; it is read
 * alone against the identity the index knows, and the object reads as before without it. */
static void test_metadata_section(void **state)
{
    (void)state;
    struct kvt_object_meta m, got, who;
    const void *payload;
    uint32_t len;
    size_t sec = seal_with_meta(&m);

    assert_int_equal(sec, KVT_OBJECT_HEADER_BYTES + LAYERS * 4096u);
    assert_int_equal(kvt_object_bytes(&m), sec + KVT_OBJECT_SECTION_HEAD_BYTES + META);
    assert_int_equal(kvt_object_body_bytes(&m), KVT_OBJECT_HEADER_BYTES + LAYERS * 4096u);
    assert_int_equal(le_at(mbuf + 124, 4), META);
    assert_memory_equal(mbuf + sec, "KVTX", 4);
    assert_int_equal(le_at(mbuf + sec + 8, 4), META);
    assert_int_equal(le_at(mbuf + sec + 40, 8), 77);
    assert_int_equal(kvt_object_parse_header(mbuf, &got), 0);
    assert_int_equal(got.meta_len, META);
    /* Whole reads need the header and the body only. */
    assert_int_equal(kvt_object_verify(mbuf, (size_t)kvt_object_body_bytes(&m), &got), 0);
    memset(out, 0, sizeof(out));
    assert_int_equal(
        kvt_object_decode(NULL, mbuf, (size_t)kvt_object_body_bytes(&m), out, sizeof(out), &got),
        0);
    assert_memory_equal(out, raw, RAW);

    /* The section alone, with what an index entry knows (no length) or the header's length. */
    memset(&who, 0, sizeof(who));
    who.ns_seed = m.ns_seed;
    who.key = m.key;
    who.seq = m.seq;
    who.raw_len = m.raw_len;
    size_t avail = sizeof(mbuf) - sec;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &who, &payload, &len), 0);
    assert_int_equal(len, META);
    assert_ptr_equal(payload, mbuf + sec + KVT_OBJECT_SECTION_HEAD_BYTES);
    assert_memory_equal(payload, meta, META);
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &got, &payload, &len), 0);
    got.meta_len = META - 1;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &got, &payload, &len),
                     KVT_E_CORRUPT);

    /* Another object's section, or this key's older version's, never verifies. */
    struct kvt_object_meta other = who;
    other.seq = 78;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &other, &payload, &len),
                     KVT_E_CORRUPT);
    other = who;
    other.variant = 1;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &other, &payload, &len),
                     KVT_E_CORRUPT);
    other = who;
    other.raw_len++;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &other, &payload, &len),
                     KVT_E_CORRUPT);
    other = who;
    other.key.hi ^= 1;
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &other, &payload, &len),
                     KVT_E_CORRUPT);

    /* Every truncation is refused, never read past. */
    for (size_t n = 0; n < KVT_OBJECT_SECTION_HEAD_BYTES + META; n++)
        assert_int_equal(kvt_object_section_get(mbuf + sec, n, &who, &payload, &len),
                         KVT_E_CORRUPT);
    assert_int_equal(kvt_object_section_get(mbuf + sec, KVT_OBJECT_SECTION_HEAD_BYTES + META, &who,
                                            &payload, &len),
                     0);
}

/* Every flipped bit of the section (head or payload) is caught by the section alone, and costs
 * the object nothing: its header and body still verify. */
static void test_metadata_section_bit_flips(void **state)
{
    (void)state;
    struct kvt_object_meta m, got;
    const void *payload;
    uint32_t len;
    size_t sec = seal_with_meta(&m), avail = sizeof(mbuf) - sec;

    for (size_t byte = 0; byte < KVT_OBJECT_SECTION_HEAD_BYTES + META; byte++) {
        int bit = (int)(byte % 8);
        mbuf[sec + byte] ^= (unsigned char)(1u << bit);
        assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &m, &payload, &len),
                         KVT_E_CORRUPT);
        if (byte % 97 == 0)
            assert_int_equal(kvt_object_verify(mbuf, (size_t)kvt_object_body_bytes(&m), &got), 0);
        mbuf[sec + byte] ^= (unsigned char)(1u << bit);
    }
    assert_int_equal(kvt_object_section_get(mbuf + sec, avail, &m, &payload, &len), 0);
    /* The header's length is checked with the header. */
    mbuf[125] ^= 1;
    assert_int_equal(kvt_object_parse_header(mbuf, &got), KVT_E_CORRUPT);
}

/* A packed body ends where its compressed bytes end: the section follows at the next 4 KiB. */
static void test_metadata_section_packed(void **state)
{
    (void)state;
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;
    struct kvt_object_meta m = sample(), got;
    const void *payload;
    uint32_t len;
    size_t stored = 0;
    uint32_t id = 0;

    memset(raw, 3, sizeof(raw));
    for (unsigned i = 0; i < META; i++)
        meta[i] = (unsigned char)(i * 17);
    kvt_codec_config_init(&cfg);
    assert_int_equal(kvt_codec_create(&cfg, &c), 0);
    assert_int_equal(kvt_codec_encode(c, raw, RAW, 2, mbuf + KVT_OBJECT_HEADER_BYTES,
                                      sizeof(mbuf) - KVT_OBJECT_HEADER_BYTES, &stored, &id),
                     0);
    assert_true(id != KVT_CODEC_RAW && stored < 4096);
    m.codec = id;
    assert_int_equal(kvt_object_layout(&m), 0);
    m.stored_len = stored;
    m.meta_len = META;
    size_t sec = (size_t)kvt_object_section_off(&m);
    assert_int_equal(sec, 2 * 4096);
    memcpy(mbuf + sec + KVT_OBJECT_SECTION_HEAD_BYTES, meta, META);
    kvt_object_seal(mbuf, &m);
    assert_int_equal(kvt_object_parse_header(mbuf, &got), 0);
    assert_int_equal(got.meta_len, META);
    memset(out, 0, sizeof(out));
    assert_int_equal(
        kvt_object_decode(c, mbuf, KVT_OBJECT_HEADER_BYTES + stored, out, sizeof(out), &got), 0);
    assert_memory_equal(out, raw, RAW);
    assert_int_equal(kvt_object_section_get(mbuf + sec, KVT_OBJECT_SECTION_HEAD_BYTES + META, &m,
                                            &payload, &len),
                     0);
    assert_memory_equal(payload, meta, META);
    kvt_codec_destroy(c);
}

/* A q8 object of sample()'s geometry (head_dim 8: groups of 8): every token row quantized in the
 * blocked layout. Read whole it is the kernels' dequantization of their chunk quantization; read
 * as stored it is that chunk quantization, bit for bit; a range reads only its blocks. */
static void test_lossy_object(void **state)
{
    (void)state;
    struct kvt_object_meta m = sample(), got;
    uint16_t *x = (uint16_t *)raw;
    for (unsigned i = 0; i < RAW / 2; i++)
        x[i] = kvt_f32_to_f16((float)((int)(i * 37 % 101) - 50) / 16.0f);
    uint32_t cid = KVT_CODEC_FORM(KVT_FORM_Q8, 3);
    struct kvt_quant_chunk qc;
    assert_int_equal(kvt_object_form_chunk(&m, cid, &qc), 0);
    assert_int_equal(qc.keys.group, 8);
    size_t qbytes = kvt_quant_chunk_bytes(&qc, TOKENS);
    assert_int_equal(qbytes, (size_t)LAYERS * TOKENS * 2 * 2 * (8 + 4)); /* 8 codes + 1 group */
    static uint8_t want_block[RAW];
    static uint16_t want[RAW / 2];
    assert_int_equal(kvt_quant_chunk_f16(NULL, &qc, x, TOKENS, want_block, sizeof(want_block)), 0);
    assert_int_equal(kvt_dequant_chunk_f16(NULL, &qc, want_block, qbytes, TOKENS, want), 0);
    m.codec = cid;
    assert_int_equal(kvt_object_layout(&m), 0);
    assert_int_equal(m.row_bytes, 2 * 2 * (8 + 4)); /* a stored row: 4 heads' codes and params */
    assert_int_equal(kvt_object_out_row_bytes(&m), ROW);
    assert_true(kvt_object_blocked(cid));
    unsigned char *body = buf + KVT_OBJECT_HEADER_BYTES;
    assert_true(m.stored_len <= sizeof(buf) - KVT_OBJECT_HEADER_BYTES);
    kvt_object_put_rows(body, &m, x);
    kvt_object_seal(buf, &m);
    size_t used = KVT_OBJECT_HEADER_BYTES + (size_t)m.stored_len, len = 0;
    assert_int_equal(kvt_object_verify(buf, used, &got), 0);
    assert_int_equal(got.codec, cid);
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_decode(NULL, buf, used, out, sizeof(out), &got), 0);
    assert_memory_equal(out, want, RAW);
    assert_int_equal(kvt_object_decode(NULL, buf, used, out, RAW - 1, &got), KVT_E_SMALLBUF);
    /* As stored: the kernels' chunk layout, gathered from the rows. */
    static uint8_t st[RAW];
    memset(st, 0, sizeof(st));
    assert_int_equal(kvt_object_decode_stored(NULL, buf, used, st, qbytes, &got, &len), 0);
    assert_int_equal(len, qbytes);
    assert_memory_equal(st, want_block, qbytes);
    assert_int_equal(kvt_object_decode_stored(NULL, buf, used, st, qbytes - 1, &got, &len),
                     KVT_E_SMALLBUF);
    /* Rows 20..29 of layer 1 from only the bytes of their blocks: fp16, dequantized. */
    uint64_t off, rlen;
    kvt_object_range(&m, 1, 20, 10, &off, &rlen);
    memset(out, 0, sizeof(out));
    assert_int_equal(kvt_object_get_rows(body + off, off, (size_t)rlen, &m, 1, 2, 20, 10, out), 0);
    assert_memory_equal(out, (const uint8_t *)want + ((size_t)TOKENS + 20) * ROW, 10 * ROW);
    /* The same rows as stored (a stored-form GetRange): the kernels' quantization of those rows
     * alone as a one-layer chunk, from the same bytes; a head_dim the rows cannot have is
     * refused, and so are rows the object does not have. */
    struct kvt_quant_chunk q1 = qc;
    q1.n_layer = 1;
    static uint8_t want_rows[RAW], rows_st[RAW];
    assert_int_equal(kvt_quant_chunk_f16(NULL, &q1, x + ((size_t)TOKENS + 20) * (ROW / 2), 10,
                                         want_rows, sizeof(want_rows)),
                     0);
    assert_int_equal(kvt_quant_chunk_bytes(&q1, 10), 10 * (size_t)m.row_bytes);
    memset(rows_st, 0, sizeof(rows_st));
    assert_int_equal(
        kvt_object_get_rows_stored(body + off, off, (size_t)rlen, &m, 1, 20, 10, 8, rows_st), 0);
    assert_memory_equal(rows_st, want_rows, 10 * (size_t)m.row_bytes);
    assert_int_equal(
        kvt_object_get_rows_stored(body + off, off, (size_t)rlen, &m, 1, 20, 10, 6, rows_st),
        KVT_E_INVAL);
    assert_int_equal(
        kvt_object_get_rows_stored(body + off, off, (size_t)rlen, &m, 1, 35, 10, 8, rows_st),
        KVT_E_INVAL);
    assert_int_equal(
        kvt_object_get_rows_stored(body + off, off, (size_t)rlen, &m, 3, 20, 10, 8, rows_st),
        KVT_E_INVAL);
    /* A flipped bit in the covering blocks (their rows or trailers) is refused too. */
    for (size_t byte = 0; byte < rlen; byte += 5) {
        body[off + byte] ^= 0x10;
        assert_int_equal(
            kvt_object_get_rows_stored(body + off, off, (size_t)rlen, &m, 1, 20, 10, 8, rows_st),
            KVT_E_CORRUPT);
        body[off + byte] ^= 0x10;
    }
    /* Every flipped bit, header or body (not the padding after a layer's last trailer), is refused
     * by every reader. */
    size_t layer_used = (size_t)TOKENS * m.row_bytes + 3 * 8;
    for (size_t byte = 0; byte < used; byte += 7) {
        if (byte >= KVT_OBJECT_HEADER_BYTES &&
            (byte - KVT_OBJECT_HEADER_BYTES) % m.layer_stride >= layer_used)
            continue;
        for (int bit = 0; bit < 8; bit += 5) {
            buf[byte] ^= (unsigned char)(1u << bit);
            assert_int_equal(kvt_object_verify(buf, used, &got), KVT_E_CORRUPT);
            assert_int_equal(kvt_object_decode(NULL, buf, used, out, sizeof(out), &got),
                             KVT_E_CORRUPT);
            assert_int_equal(kvt_object_decode_stored(NULL, buf, used, st, sizeof(st), &got, &len),
                             KVT_E_CORRUPT);
            buf[byte] ^= (unsigned char)(1u << bit);
        }
    }
    assert_int_equal(kvt_object_verify(buf, used, &got), 0);
    /* A body length other than the layout's, or a group the geometry cannot have, never parses. */
    struct kvt_object_meta bad = m;
    bad.stored_len = m.stored_len - 4096;
    kvt_object_seal(buf, &bad);
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
    bad = m;
    bad.codec = KVT_CODEC_FORM(KVT_FORM_Q8, 4); /* groups of 16 in head_dim 8 */
    kvt_object_seal(buf, &bad);
    assert_int_equal(kvt_object_parse_header(buf, &got), KVT_E_CORRUPT);
    /* Forms the helper refuses: unknown form, a lossless stage with it, 4-byte elements, no
     * geometry. */
    assert_int_equal(kvt_object_form_chunk(&m, KVT_CODEC_FORM(3, 3), &qc), KVT_E_INVAL);
    assert_int_equal(kvt_object_form_chunk(&m, cid | KVT_CODEC_ID(KVT_CODEC_LZ4, 2), &qc),
                     KVT_E_INVAL);
    bad = m;
    bad.g.elem_bytes = 4;
    assert_int_equal(kvt_object_form_chunk(&bad, cid, &qc), KVT_E_INVAL);
    bad = m;
    bad.g.n_kv_heads = 0;
    assert_int_equal(kvt_object_form_chunk(&bad, cid, &qc), KVT_E_INVAL);
    assert_string_equal(kvt_codec_name(cid), "q8g8");
    assert_string_equal(kvt_codec_name(KVT_CODEC_FORM(KVT_FORM_Q4, 5)), "q4g32");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lossy_object),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_roundtrip_blocked_and_ranges),
        cmocka_unit_test(test_roundtrip_packed),
        cmocka_unit_test(test_every_bit_flip_detected),
        cmocka_unit_test(test_truncation_and_lengths),
        cmocka_unit_test(test_variant_in_header),
        cmocka_unit_test(test_v2_header_read_as_variant_0),
        cmocka_unit_test(test_v3_header_read),
        cmocka_unit_test(test_metadata_section),
        cmocka_unit_test(test_metadata_section_bit_flips),
        cmocka_unit_test(test_metadata_section_packed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
