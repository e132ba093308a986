/*
 * Self-describing disk objects, format v4 (see docs/disk.md, "Object format"). Every object the
 * disk tier writes starts with a 4 KiB header block naming what it holds (namespace seed, 128-bit
 * key, variant, sequence number, lengths, codec) and its full geometry (layers, KV heads, head dim,
 * element size and dtype, tokens, start position, block size), followed by a small metadata frame
 * inside the same block (version info). Two XXH3-64 checks protect it: the header check over bytes
 * 0..127 (identity, lengths, geometry), which is what recovery validates without the body, and the
 * block check over the whole 4 KiB block (metadata frame included), verified by every reader of the
 * whole object.
 *
 * The body comes in one of these layouts, told apart by the codec id:
 *   - blocked (codec RAW): the rows of each layer, in the canonical order [token][k|v][head][dim],
 *     start on a 4 KiB boundary (layer_stride bytes apart). Inside a layer the tokens are cut into
 *     blocks of block_tokens tokens (the last may be shorter); every block is followed directly by
 *     its 8-byte trailer, the XXH3-64 of the block seeded with the object's identity (namespace,
 *     key, sequence, raw length), the layer and the block number. The trailers are the block table,
 *     kept next to the bytes they check so that a read of any token range of one layer is one
 *     contiguous I/O of the covering blocks (rounded out to 4 KiB) and needs neither the header nor
 *     a separate table read; the identity in the seed means a stale or reused extent never
 *     verifies.
 *   - packed (any other codec): the whole raw object compressed (byte shuffle + lz4/zstd) as one
 *     body of stored_len bytes, checked by one XXH3-64 seeded with the identity. A range read of a
 *     packed object reads it whole.
 *   - quantized (form 1 q8 or 2 q4 in bits 8..11 of the codec id, log2 of the group in 12..15,
 *     tiers/codec.h): the blocked layout with quantized rows. Every token row of a layer is the
 *     kernels' one-row block (kernels/quant.h, groups along head_dim) of the whole fp16 row, or of
 *     its 4096-element pieces, so row_bytes is a stored row's; blocks and trailers as above;
 *     layers are not 4 KiB-aligned (layer_stride = rows + trailers). Readers dequantize the rows
 *     they copy (kvt_object_out_row_bytes: fp16 rows). Form 3 (a clustered variant) is packed:
 *     the bytes as given, stored_len = raw_len, with the body check.
 *
 * v4 adds an optional metadata section after the body, 4 KiB-aligned: opaque bytes of the
 * writer's (the daemon keeps a chunk's span abstract there) that are read alone, without the
 * header or the body, so that a restart restores them without reading payloads. It names the
 * object it belongs to and carries its own check, seeded with the identity, so a section of a
 * stale or reused extent never verifies; whole and range reads never touch it. Its length is in
 * the header (byte 124), so the header alone says how far the object extends.
 *
 * Header block (byte offsets, little-endian):
 *    0 magic "KVTO" (u32)   4 version (u16, 4)    6 header bytes (u16, 4096)
 *    8 codec id (u32)      12 n_tokens (u32)     16 namespace seed (u64)
 *   24 key.lo (u64)        32 key.hi (u64)       40 raw length (u64)
 *   48 stored length: body bytes after the header block (u64)
 *   56 sequence (u64)      64 n_layers (u32)     68 n_kv_heads (u32)   72 head_dim (u32)
 *   76 elem_bytes (u16)    78 dtype (u16)        80 block_tokens (u32) 84 row_bytes (u32)
 *   88 start_pos (u64)     96 layer_stride (u64)
 *  104 metadata frame offset (u32, 512)          108 metadata frame bytes (u32)
 *  112 body checksum (u64; packed layout only, else 0)
 *  120 variant (u32)      124 metadata section payload bytes (u32; 0 = no section)
 *  128 header check: XXH3-64 of bytes 0..127
 *  512 metadata frame: "KVTM" (u32), frame version (u16, 1), entries (u16), then entries of
 *      type (u16), length (u16), value; the writer's version string is entry type 1.
 * 4088 block check: XXH3-64 of bytes 0..4087
 *
 * Metadata section, at kvt_object_section_off (the first 4 KiB boundary after the body):
 *    0 magic "KVTX" (u32)   4 section version (u16, 1)   6 head bytes (u16, 64)
 *    8 payload bytes (u32) 12 reserved (u32, 0)         16 namespace seed (u64)
 *   24 key.lo (u64)        32 key.hi (u64)              40 sequence (u64)
 *   48 variant (u32)       52 reserved (u32, 0)
 *   56 check: XXH3-64 of the payload seeded with the XXH3-64 of bytes 0..55 seeded with the
 *      identity
 *   64 payload
 *
 * Format v3 is v4 without the section: byte 124 was reserved (0). Format v2 is v3 without the
 * variant: its header check sits at 120 over bytes 0..119. Objects of both are still read (a v2
 * one as variant 0), so a store upgraded in place keeps serving what it holds; only v4 is
 * written. The identity seed of the body checks leaves the variant out in every format: the
 * sequence number already differs between any two objects of a store, variants of one key
 * included, and a v2 body verifies unchanged.
 */
#ifndef KVT_TIERS_DISK_OBJECT_H
#define KVT_TIERS_DISK_OBJECT_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"
#include "tiers/codec.h"

#define KVT_OBJECT_MAGIC 0x4f54564bu /* "KVTO" read as little-endian u32 */
#define KVT_OBJECT_VERSION 4u
#define KVT_OBJECT_VERSION_V3 3u /* read only: no metadata section */
#define KVT_OBJECT_VERSION_V2 2u /* read only: variant 0, no metadata section */
#define KVT_OBJECT_HEADER_BYTES 4096u
#define KVT_OBJECT_TRAILER_BYTES 8u
#define KVT_OBJECT_BLOCK_TOKENS 16u /* default block size in tokens */
#define KVT_OBJECT_LAYERS_MAX 1024u
#define KVT_OBJECT_META_OFF 512u
#define KVT_OBJECT_META_BYTES_MAX (4088u - KVT_OBJECT_META_OFF)
#define KVT_OBJECT_META_VERSION_INFO 1u      /* metadata entry: writer's version string */
#define KVT_OBJECT_SECTION_MAGIC 0x5854564bu /* "KVTX" */
#define KVT_OBJECT_SECTION_VERSION 1u
#define KVT_OBJECT_SECTION_HEAD_BYTES 64u
/* Largest metadata section payload: far above any abstract of an object the store takes. */
#define KVT_OBJECT_SECTION_BYTES_MAX (256u << 20)

/* What the writer knows of a chunk's shape. Zero fields are unknown; an unknown geometry is one
 * layer covering all bytes (rows of raw_len / n_tokens bytes when that divides, else one block). */
struct kvt_object_geom {
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint16_t elem_bytes;   /* dtype size */
    uint16_t dtype;        /* caller's dtype code, recorded only */
    uint32_t block_tokens; /* 0 = KVT_OBJECT_BLOCK_TOKENS */
    uint64_t start_pos;    /* position of the chunk's first token in its sequence */
};

struct kvt_object_meta {
    uint64_t ns_seed;
    struct kvt_key key;
    uint32_t variant; /* version or representation of the chunk (tiers/tier.h); 0 in v2 */
    uint32_t n_tokens;
    uint32_t codec;      /* codec id from tiers/codec.h; KVT_CODEC_RAW = blocked layout */
    uint64_t raw_len;    /* bytes after decoding */
    uint64_t stored_len; /* body bytes after the header block */
    uint64_t seq;        /* store-wide write sequence number */
    struct kvt_object_geom g;
    uint32_t row_bytes;    /* bytes of one token of one layer; 0 = opaque (one block) */
    uint64_t layer_stride; /* bytes between layer starts in the blocked body (multiple of 4 KiB) */
    uint32_t meta_len;     /* payload bytes of the metadata section after the body; 0 = none */
};

/* Fills the derived fields of m (normalised geometry, row_bytes, layer_stride, and for the blocked
 * layout stored_len) from raw_len, n_tokens, codec and g. Returns 0 or KVT_E_INVAL when the
 * geometry does not describe raw_len bytes. */
int kvt_object_layout(struct kvt_object_meta *m);

/* Bytes of the whole object on disk before padding: header block, body and, when meta_len > 0,
 * the metadata section. */
uint64_t kvt_object_bytes(const struct kvt_object_meta *m);
/* Bytes of the header block and the body: what a whole or lending read needs. */
uint64_t kvt_object_body_bytes(const struct kvt_object_meta *m);
/* Offset of the metadata section in the object: the first 4 KiB boundary after the body. */
uint64_t kvt_object_section_off(const struct kvt_object_meta *m);

/* Whether objects of codec id `codec` have the blocked layout (raw, or quantized rows), and the
 * bytes of one token row of one layer that a read of laid-out m returns (fp16 rows for a quantized
 * object, whose row_bytes is the stored row's). */
int kvt_object_blocked(uint32_t codec);
uint64_t kvt_object_out_row_bytes(const struct kvt_object_meta *m);

/* Blocks per layer of the blocked layout. */
uint32_t kvt_object_layer_blocks(const struct kvt_object_meta *m);

/* Body byte range [*off, *off + *len) of the blocks (with trailers) covering tokens
 * [t0, t0 + n) of layer. Requires a laid-out m with row_bytes > 0 and a valid range. */
void kvt_object_range(const struct kvt_object_meta *m, uint32_t layer, uint32_t t0, uint32_t n,
                      uint64_t *off, uint64_t *len);

/* Writes the blocked body of raw object src (canonical [layer][token] layout) at body, with
 * every trailer and zero padding: kvt_object_layout(m) must have run with codec RAW. */
void kvt_object_put_rows(void *body, const struct kvt_object_meta *m, const void *src);

/* Verifies every block of layers [l0, l1) that covers tokens [t0, t0 + n) and copies those rows
 * to dst (layout [layer][token], n rows per layer), from buf, which holds body bytes
 * [buf_off, buf_off + buf_bytes). dst may be NULL (verify only). Returns 0 or KVT_E_CORRUPT
 * (a checksum failed or a covering block is not in buf). */
int kvt_object_get_rows(const void *buf, uint64_t buf_off, size_t buf_bytes,
                        const struct kvt_object_meta *m, uint32_t l0, uint32_t l1, uint32_t t0,
                        uint32_t n, void *dst);

/* Writes the header block for m at buf (laid out by kvt_object_layout, stored_len final) with a
 * metadata frame holding the version info; for the packed layout the body (stored_len bytes at
 * buf + KVT_OBJECT_HEADER_BYTES) must be in place: its checksum is taken here. With meta_len > 0
 * the section's payload must be in place too, at buf + kvt_object_section_off(m) +
 * KVT_OBJECT_SECTION_HEAD_BYTES: the section's head and check are written here. */
void kvt_object_seal(void *buf, const struct kvt_object_meta *m);

/* Validates the metadata section at sec (bytes readable there) against the object m names
 * (namespace seed, key, variant, sequence, raw length; m->meta_len when known, else 0): 0 with
 * *payload (borrowed from sec) and *len, or KVT_E_CORRUPT. Needs neither the header nor the body.
 */
int kvt_object_section_get(const void *sec, size_t bytes, const struct kvt_object_meta *m,
                           const void **payload, uint32_t *len);

/* Parses and validates a header (magic, version 4, 3 or 2, header check, consistent geometry and
 * lengths; not the block check). Returns 0 and fills *out (variant 0 for v2, meta_len 0 before
 * v4), or KVT_E_CORRUPT. Reads 136 bytes. */
int kvt_object_parse_header(const void *buf, struct kvt_object_meta *out);

/* Validates the header and every checksum of the body (not the metadata section: a torn section
 * costs the object its metadata, never its bytes); buf_bytes is how many bytes are available at
 * buf. Returns 0 and fills *out, or KVT_E_CORRUPT (including a body past buf_bytes). */
int kvt_object_verify(const void *buf, size_t buf_bytes, struct kvt_object_meta *out);

/* Validates and decodes a whole object into dst (cap >= raw_len) in one pass, filling *out.
 * codec is needed only for the packed layout. Returns 0, KVT_E_CORRUPT, KVT_E_SMALLBUF. */
int kvt_object_decode(struct kvt_codec *codec, const void *buf, size_t buf_bytes, void *dst,
                      size_t cap, struct kvt_object_meta *out);

/* Verifies the blocks of layer covering tokens [t0, t0 + n) of a quantized (q8/q4) object m and
 * gathers those rows' codes and parameters, as stored, into the kernels' chunk layout of one
 * layer (kvt_quant_chunk_f16 of those n rows: 2 x n_kv_heads blocks, keys then values per head,
 * each n rows of codes then their groups' parameters) at dst: n x m->row_bytes bytes. buf holds
 * body bytes [buf_off, buf_off + buf_bytes); head_dim is the chunk's (the object's rows do not
 * say where a head ends). Returns 0, KVT_E_CORRUPT (a check failed, a block is not in buf),
 * KVT_E_INVAL (not a quantized object, or a head_dim its rows cannot have). */
int kvt_object_get_rows_stored(const void *buf, uint64_t buf_off, size_t buf_bytes,
                               const struct kvt_object_meta *m, uint32_t layer, uint32_t t0,
                               uint32_t n, uint32_t head_dim, void *dst);

/* kvt_object_decode, except that a quantized object (form q8/q4 in its codec id) is verified and
 * returned as the kernels' quantized chunk (kvt_quant_chunk_f16's layout, gathered from its rows),
 * not dequantized: *len_out gets the bytes written to dst (that chunk's size, n_layers x n_tokens
 * x row_bytes, for a quantized object; raw_len for any other). */
int kvt_object_decode_stored(struct kvt_codec *codec, const void *buf, size_t buf_bytes, void *dst,
                             size_t cap, struct kvt_object_meta *out, size_t *len_out);

struct kvt_quant_chunk;
/* The quantized chunk format that codec id `codec` (a lossy form) gives an object of m's
 * geometry and lengths: 0, or KVT_E_INVAL when the form or group is unknown, the elements are
 * not fp16 or the geometry is incomplete (a lossy object then cannot be written or read). */
int kvt_object_form_chunk(const struct kvt_object_meta *m, uint32_t codec,
                          struct kvt_quant_chunk *out);

/* Finds metadata entry type in a validated header block: 0 with *val (borrowed from hdr) and
 * *len, or KVT_E_NOTFOUND. */
int kvt_object_meta_find(const void *hdr, uint16_t type, const void **val, uint16_t *len);

#endif
