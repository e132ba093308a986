/*
 * Byte-shuffle + lz4/zstd codec (see codec.h). The shuffle runs into a scratch buffer owned by
 * the codec so that compression reads one contiguous plane-ordered input; decoding decompresses
 * into the same scratch and unshuffles into the caller's buffer. Compression is attempted with an
 * output limit equal to the largest size worth keeping, so an incompressible chunk costs one
 * failed attempt and a copy, never a second buffer.
 */
#include "common/alloc.h"
#include "tiers/codec.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zstd.h>

#include "kernels/kernels.h"
#include "kvtier/errors.h"

/* Inputs shorter than this are never worth a compressor call. */
#define KVT_CODEC_MIN_INPUT_BYTES 64

struct kvt_codec {
    struct kvt_codec_config cfg;
    unsigned char *scratch; /* input_bytes_max bytes */
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
};

void kvt_codec_config_init(struct kvt_codec_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->algo = KVT_CODEC_LZ4;
    cfg->elem_bytes = 2;
    cfg->level = 1;
    cfg->min_saving_ratio = 0.10;
    cfg->input_bytes_max = 4u << 20;
}

static int width_valid(uint32_t w)
{
    return w == 0 || w == 1 || w == 2 || w == 4;
}

int kvt_codec_create(const struct kvt_codec_config *cfg, struct kvt_codec **out)
{
    struct kvt_codec *c;

    if (!cfg || !out || cfg->algo > KVT_CODEC_ZSTD || !width_valid(cfg->elem_bytes) ||
        cfg->min_saving_ratio < 0.0 || cfg->min_saving_ratio >= 1.0 || cfg->input_bytes_max == 0 ||
        cfg->input_bytes_max > INT_MAX)
        return KVT_E_INVAL;
    c = kvt_calloc(KVT_ALLOC_DISK, 1, sizeof(*c));
    if (!c)
        return KVT_E_NOMEM;
    c->cfg = *cfg;
    if (c->cfg.level < 1)
        c->cfg.level = 1;
    c->scratch = kvt_malloc(KVT_ALLOC_DISK, cfg->input_bytes_max);
    if (!c->scratch)
        goto err_free_codec;
    c->cctx = ZSTD_createCCtx();
    if (!c->cctx)
        goto err_free_scratch;
    c->dctx = ZSTD_createDCtx();
    if (!c->dctx)
        goto err_free_cctx;
    *out = c;
    return 0;

err_free_cctx:
    ZSTD_freeCCtx(c->cctx);
err_free_scratch:
    kvt_free(KVT_ALLOC_DISK, c->scratch);
err_free_codec:
    kvt_free(KVT_ALLOC_DISK, c);
    return KVT_E_NOMEM;
}

void kvt_codec_destroy(struct kvt_codec *c)
{
    if (!c)
        return;
    ZSTD_freeDCtx(c->dctx);
    ZSTD_freeCCtx(c->cctx);
    kvt_free(KVT_ALLOC_DISK, c->scratch);
    kvt_free(KVT_ALLOC_DISK, c);
}

/* The byte-plane transposes are kernels (kernels/kernels.h): AVX2 or AVX-512 where the CPU has
 * them, run at memory speed; the portable reference ran at ~3 GB/s, slower than the disk the
 * codec feeds. Every variant gives the same bytes, so what is stored never depends on the CPU. */
void kvt_codec_shuffle(const void *src, size_t len, uint32_t w, void *dst)
{
    const struct kvt_kernels *k = kvt_kernels();
    if (w == 2)
        k->shuffle2(src, len, dst);
    else if (w == 4)
        k->shuffle4(src, len, dst);
    else if (len)
        memcpy(dst, src, len);
}

void kvt_codec_unshuffle(const void *src, size_t len, uint32_t w, void *dst)
{
    const struct kvt_kernels *k = kvt_kernels();
    if (w == 2)
        k->unshuffle2(src, len, dst);
    else if (w == 4)
        k->unshuffle4(src, len, dst);
    else if (len)
        memcpy(dst, src, len);
}

/* Compresses in into out with at most limit output bytes; returns the compressed size or 0 when
 * it did not fit (or the compressor failed), which the caller treats as "store raw". */
static size_t compress_limited(struct kvt_codec *c, const void *in, size_t len, void *out,
                               size_t limit)
{
    if (c->cfg.algo == KVT_CODEC_LZ4) {
        int n = LZ4_compress_fast(in, out, (int)len, (int)limit, c->cfg.level);
        return n > 0 ? (size_t)n : 0;
    }
    size_t n = ZSTD_compressCCtx(c->cctx, out, limit, in, len, c->cfg.level);
    return ZSTD_isError(n) ? 0 : n;
}

int kvt_codec_encode(struct kvt_codec *c, const void *src, size_t len, uint32_t elem_bytes,
                     void *dst, size_t dst_cap, size_t *out_len, uint32_t *codec_out)
{
    uint32_t w = elem_bytes ? elem_bytes : c->cfg.elem_bytes;
    size_t limit, n;
    const void *in = src;

    if (!width_valid(w) || (!src && len) || !dst || !out_len || !codec_out)
        return KVT_E_INVAL;
    if (len > c->cfg.input_bytes_max)
        return KVT_E_TOOBIG;
    if (dst_cap < len)
        return KVT_E_SMALLBUF;
    if (w == 1)
        w = 0;

    /* The largest compressed size worth keeping: saving at least min_saving_ratio of len. */
    limit = len - (size_t)((double)len * c->cfg.min_saving_ratio + 0.999999);
    if (c->cfg.algo == KVT_CODEC_NONE || len < KVT_CODEC_MIN_INPUT_BYTES || limit == 0)
        goto store_raw;
    if (w) {
        kvt_codec_shuffle(src, len, w, c->scratch);
        in = c->scratch;
    }
    n = compress_limited(c, in, len, dst, limit);
    if (n == 0 || n > limit)
        goto store_raw;
    *out_len = n;
    *codec_out = KVT_CODEC_ID(c->cfg.algo, w);
    return 0;

store_raw:
    if (len)
        memcpy(dst, src, len);
    *out_len = len;
    *codec_out = KVT_CODEC_RAW;
    return 0;
}

static int decompress_exact(struct kvt_codec *c, enum kvt_codec_algo algo, const void *src,
                            size_t len, void *dst, size_t raw_len)
{
    if (algo == KVT_CODEC_LZ4) {
        if (len > INT_MAX)
            return KVT_E_CORRUPT;
        int n = LZ4_decompress_safe(src, dst, (int)len, (int)raw_len);
        return n >= 0 && (size_t)n == raw_len ? 0 : KVT_E_CORRUPT;
    }
    size_t n = ZSTD_decompressDCtx(c->dctx, dst, raw_len, src, len);
    return !ZSTD_isError(n) && n == raw_len ? 0 : KVT_E_CORRUPT;
}

int kvt_codec_decode(struct kvt_codec *c, uint32_t codec, const void *src, size_t len, void *dst,
                     size_t raw_len)
{
    enum kvt_codec_algo algo = KVT_CODEC_ID_ALGO(codec);
    uint32_t w = KVT_CODEC_ID_WIDTH(codec);
    int rc;

    if ((!src && len) || (!dst && raw_len) || codec > 0xffu || algo > KVT_CODEC_ZSTD ||
        !(w == 0 || w == 2 || w == 4) || (algo == KVT_CODEC_NONE && w != 0))
        return KVT_E_INVAL;
    if (raw_len > c->cfg.input_bytes_max)
        return KVT_E_TOOBIG;
    if (algo == KVT_CODEC_NONE) {
        if (len != raw_len)
            return KVT_E_CORRUPT;
        if (len)
            memcpy(dst, src, len);
        return 0;
    }
    if (!w)
        return decompress_exact(c, algo, src, len, dst, raw_len);
    rc = decompress_exact(c, algo, src, len, c->scratch, raw_len);
    if (rc)
        return rc;
    kvt_codec_unshuffle(c->scratch, raw_len, w, dst);
    return 0;
}

const char *kvt_codec_name(uint32_t codec)
{
    if (codec == KVT_CODEC_FORM(KVT_CODEC_FORM_CLUSTER, 0))
        return "cluster";
    if (KVT_CODEC_ID_FORM(codec)) {
        static const char *const q[2][6] = {{"q8g1", "q8g2", "q8g4", "q8g8", "q8g16", "q8g32"},
                                            {"q4g1", "q4g2", "q4g4", "q4g8", "q4g16", "q4g32"}};
        uint32_t f = KVT_CODEC_ID_FORM(codec), l = (codec >> 12) & 0xfu;
        return (codec & 0xffu) == 0 && (f == 1 || f == 2) && l < 6 ? q[f - 1][l] : "unknown";
    }
    switch (codec) {
    case KVT_CODEC_RAW:
        return "raw";
    case KVT_CODEC_ID(KVT_CODEC_LZ4, 0):
        return "lz4";
    case KVT_CODEC_ID(KVT_CODEC_ZSTD, 0):
        return "zstd";
    case KVT_CODEC_ID(KVT_CODEC_LZ4, 2):
        return "shuf2+lz4";
    case KVT_CODEC_ID(KVT_CODEC_ZSTD, 2):
        return "shuf2+zstd";
    case KVT_CODEC_ID(KVT_CODEC_LZ4, 4):
        return "shuf4+lz4";
    case KVT_CODEC_ID(KVT_CODEC_ZSTD, 4):
        return "shuf4+zstd";
    default:
        return "unknown";
    }
}
