/*
 * Dynamic lossless codec for KV chunks: an optional byte-shuffle (split elements of 2 or 4 bytes
 * into byte planes, so that the slowly varying sign/exponent bytes of fp16/bf16/fp32 values sit
 * next to each other) followed by lz4 or zstd. The compressed form is kept only when it saves at
 * least a configured fraction of the raw size; otherwise the bytes are stored raw. The codec that
 * was used is returned as a small id that the caller records with the object, so that a reader
 * never has to guess.
 *
 * A struct kvt_codec owns its scratch buffer and compression contexts: it is not thread-safe, use
 * one per thread. Encoding and decoding allocate nothing.
 */
#ifndef KVT_TIERS_CODEC_H
#define KVT_TIERS_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum kvt_codec_algo { KVT_CODEC_NONE = 0, KVT_CODEC_LZ4 = 1, KVT_CODEC_ZSTD = 2 };

/* A codec id packs the algorithm in the low 4 bits and the shuffle element width (0, 2 or 4) in
 * the next 4 bits. Id 0 is raw bytes. Ids are stored on disk and never change meaning. */
#define KVT_CODEC_RAW 0u
#define KVT_CODEC_ID(algo, width) ((uint32_t)(algo) | ((uint32_t)(width) << 4))
#define KVT_CODEC_ID_ALGO(id) ((enum kvt_codec_algo)((id)&0xfu))
#define KVT_CODEC_ID_WIDTH(id) (((id) >> 4) & 0xfu)

/* A lossy form (enum kvt_form of kvtier.h, docs/lossy.md) rides in bits 8..11 of the id and the
 * log2 of its group size along head_dim in bits 12..15; 0 in both is fp16 as stored. An object
 * kept in a quantized form holds its token rows quantized (kernels/quant.h, keys and values in
 * groups along head_dim; tiers/disk/object.h has the layout) and is decoded by dequantizing
 * them, never by this codec: it is not compressed further (quantized codes barely compress). */
/* Form 3 (a clustered variant: merged entries and their counts) is kept as given: its body is the
 * bytes themselves, stored_len = raw_len, checked like a packed body, group bits 0. */
#define KVT_CODEC_FORM_CLUSTER 3u
#define KVT_CODEC_FORM(form, group_log2) (((uint32_t)(form) << 8) | ((uint32_t)(group_log2) << 12))
#define KVT_CODEC_ID_FORM(id) (((id) >> 8) & 0xfu)
#define KVT_CODEC_ID_GROUP(id) (1u << (((id) >> 12) & 0xfu))

struct kvt_codec_config {
    enum kvt_codec_algo algo; /* KVT_CODEC_NONE stores everything raw */
    uint32_t elem_bytes;      /* default shuffle width: 0 or 1 = none, 2 or 4 */
    int level;                /* zstd level (1..19); lz4 acceleration (>= 1) */
    double min_saving_ratio;  /* keep compressed only if it saves at least this fraction */
    size_t input_bytes_max;   /* largest raw input accepted; sizes the scratch buffer */
};

struct kvt_codec;

/* Fills cfg with defaults: lz4, shuffle width 2, level 1, min saving 0.10, 4 MiB inputs. */
void kvt_codec_config_init(struct kvt_codec_config *cfg);

/* Returns 0, KVT_E_INVAL for a bad config, KVT_E_NOMEM. cfg is copied. */
int kvt_codec_create(const struct kvt_codec_config *cfg, struct kvt_codec **out);
void kvt_codec_destroy(struct kvt_codec *c);

/* Encodes len bytes of src into dst (capacity dst_cap, at least len: raw output must fit).
 * elem_bytes overrides the configured shuffle width when nonzero (1 = no shuffle). On success
 * *out_len is the stored length (<= len) and *codec_out the codec id used (KVT_CODEC_RAW when
 * compression did not save enough). Errors: KVT_E_TOOBIG (len over input_bytes_max),
 * KVT_E_SMALLBUF (dst_cap < len), KVT_E_INVAL. src and dst are borrowed for the call and must
 * not overlap. */
int kvt_codec_encode(struct kvt_codec *c, const void *src, size_t len, uint32_t elem_bytes,
                     void *dst, size_t dst_cap, size_t *out_len, uint32_t *codec_out);

/* Decodes len stored bytes written with codec into exactly raw_len bytes at dst. Returns 0,
 * KVT_E_CORRUPT when the stored bytes do not decode to raw_len bytes, KVT_E_TOOBIG, KVT_E_INVAL
 * for an unknown codec id. */
int kvt_codec_decode(struct kvt_codec *c, uint32_t codec, const void *src, size_t len, void *dst,
                     size_t raw_len);

/* Byte-plane shuffle of len bytes with element width w (2 or 4): plane b holds byte b of every
 * element; trailing len % w bytes are copied unchanged (any other w copies). They run the
 * active kernel table's shuffles (kernels/kernels.h). Exposed for tests and benchmarks. */
void kvt_codec_shuffle(const void *src, size_t len, uint32_t w, void *dst);
void kvt_codec_unshuffle(const void *src, size_t len, uint32_t w, void *dst);

/* Human-readable name of a codec id, e.g. "shuf2+lz4", "raw" or "q8g32". Static string. */
const char *kvt_codec_name(uint32_t codec);

#endif
