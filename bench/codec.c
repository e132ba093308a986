/*
 * Benchmark `codec`: compression ratio and GB/s each way of the lossless KV codec, byte-shuffle +
 * lz4 and byte-shuffle + zstd, against plain lz4 and zstd on the unshuffled bytes, for fp16 and
 * bf16 KV-like chunks.
 *
 * Data: one 4 MiB chunk in the canonical layout [layer][token][k|v][kv_head][head_dim] (4 layers,
 * 256 tokens, 8 KV heads, head_dim 128 for fp16; the same element count for bf16). Each element
 * is mean + N(0,1) * scale with per-channel (layer, k|v, head, dim) parameters: key scales are
 * log-normal (sigma 0.8) with 4 outlier channels per head scaled x8 and per-channel means, value
 * scales log-normal (sigma 0.3) with zero mean, which mimics the channel outliers of real keys.
 * Values are rounded to nearest-even fp16 / bf16. The codec runs with a minimum saving of 0 here so
 * the compressed form is always measured; a "kept_by_default" field says whether the store's
 * default rule (save at least 10%) would keep it.
 */
#include "bench/bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtier/errors.h"
#include "tiers/codec.h"

#define LAYERS 4u
#define TOKENS 256u
#define HEADS 8u
#define DIM 128u
#define ELEMS ((size_t)LAYERS * TOKENS * 2u * HEADS * DIM)
#define CHUNK_BYTES (ELEMS * 2u)
#define DATA_NOTE                                                                                  \
    "N(0,1)*per-channel lognormal scale (K sigma .8 + 4 outliers x8, V sigma .3), "                \
    "[4 layers][256 tok][k|v][8 heads][128]"

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double uniform01(uint64_t *s)
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(uint64_t *s)
{
    return sqrt(-2.0 * log(uniform01(s))) * cos(6.283185307179586 * uniform01(s));
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

/* IEEE binary16 with round to nearest even; values here are far from overflow and subnormals
 * are flushed, which real KV tensors rarely reach. */
static uint16_t to_fp16(float f)
{
    uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    int32_t exp = (int32_t)((x >> 23) & 0xffu) - 127 + 15;

    if (exp <= 0)
        return (uint16_t)sign;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

static uint16_t to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static void gen_kv(unsigned char *out, int bf16, uint64_t seed)
{
    static float scale[LAYERS][2][HEADS][DIM], mean[LAYERS][2][HEADS][DIM];
    uint64_t s = seed | 1;
    size_t i = 0;

    for (unsigned l = 0; l < LAYERS; l++)
        for (unsigned kv = 0; kv < 2; kv++)
            for (unsigned h = 0; h < HEADS; h++)
                for (unsigned c = 0; c < DIM; c++) {
                    double sigma = kv == 0 ? 0.8 : 0.3;
                    double sc = exp(sigma * normal(&s));
                    if (kv == 0 && c % (DIM / 4) == 7)
                        sc *= 8.0;
                    scale[l][kv][h][c] = (float)sc;
                    mean[l][kv][h][c] = kv == 0 ? (float)(0.5 * normal(&s)) : 0.0f;
                }
    for (unsigned l = 0; l < LAYERS; l++)
        for (unsigned t = 0; t < TOKENS; t++)
            for (unsigned kv = 0; kv < 2; kv++)
                for (unsigned h = 0; h < HEADS; h++)
                    for (unsigned c = 0; c < DIM; c++, i++) {
                        float v = mean[l][kv][h][c] + (float)normal(&s) * scale[l][kv][h][c];
                        uint16_t e = bf16 ? to_bf16(v) : to_fp16(v);
                        out[2 * i] = (unsigned char)e;
                        out[2 * i + 1] = (unsigned char)(e >> 8);
                    }
}

struct measured {
    double ratio, comp_gbps, decomp_gbps;
    size_t stored;
    const char *stored_as; /* codec id name: "raw" when the compressor could not shrink it */
};

static int measure(enum kvt_codec_algo algo, uint32_t width, const unsigned char *src,
                   unsigned char *enc, unsigned char *dec, double min_s, struct measured *out)
{
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;
    uint64_t t0, el, iters;
    size_t n = 0;
    uint32_t id = 0;
    int rc;

    kvt_codec_config_init(&cfg);
    cfg.algo = algo;
    cfg.elem_bytes = width;
    cfg.level = 1;
    cfg.min_saving_ratio = 0.0;
    cfg.input_bytes_max = CHUNK_BYTES;
    rc = kvt_codec_create(&cfg, &c);
    if (rc)
        return rc;
    iters = 0;
    t0 = kvt_bench_now_ns();
    do {
        rc = kvt_codec_encode(c, src, CHUNK_BYTES, 0, enc, CHUNK_BYTES, &n, &id);
        iters++;
        el = kvt_bench_now_ns() - t0;
    } while (rc == 0 && (double)el < min_s * 1e9);
    out->comp_gbps = (double)(iters * CHUNK_BYTES) / (double)el;
    out->stored = n;
    out->stored_as = kvt_codec_name(id);
    out->ratio = (double)CHUNK_BYTES / (double)n;
    iters = 0;
    t0 = kvt_bench_now_ns();
    do {
        if (rc == 0)
            rc = kvt_codec_decode(c, id, enc, n, dec, CHUNK_BYTES);
        iters++;
        el = kvt_bench_now_ns() - t0;
    } while (rc == 0 && (double)el < min_s * 1e9);
    out->decomp_gbps = (double)(iters * CHUNK_BYTES) / (double)el;
    if (rc == 0 && memcmp(src, dec, CHUNK_BYTES) != 0)
        rc = KVT_E_CORRUPT;
    kvt_codec_destroy(c);
    return rc;
}

struct method {
    const char *name;
    enum kvt_codec_algo algo;
    uint32_t width;
};

static const struct method METHODS[] = {
    {"lz4", KVT_CODEC_LZ4, 1},
    {"shuf2+lz4", KVT_CODEC_LZ4, 2},
    {"zstd-1", KVT_CODEC_ZSTD, 1},
    {"shuf2+zstd-1", KVT_CODEC_ZSTD, 2},
};

int kvt_bench_codec(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    static const char *const DTYPES[] = {"fp16", "bf16"};
    double min_s = opts->quick ? 0.25 : 1.5;
    unsigned char *src = malloc(CHUNK_BYTES), *enc = malloc(CHUNK_BYTES),
                  *dec = malloc(CHUNK_BYTES);
    char label[64], rname[96];
    int rc = 0;

    if (!src || !enc || !dec) {
        rc = KVT_E_NOMEM;
        goto out_free;
    }
    for (int dt = 0; dt < 2 && !rc; dt++) {
        struct measured m[sizeof(METHODS) / sizeof(METHODS[0])];
        gen_kv(src, dt, 0x5eed + (uint64_t)dt);
        for (size_t k = 0; k < sizeof(METHODS) / sizeof(METHODS[0]) && !rc; k++) {
            kvt_bench_progress("codec %s %s", DTYPES[dt], METHODS[k].name);
            rc = measure(METHODS[k].algo, METHODS[k].width, src, enc, dec, min_s, &m[k]);
            if (rc)
                break;
            snprintf(label, sizeof(label), "%s %s", DTYPES[dt], METHODS[k].name);
            kvt_bench_row(r, label);
            kvt_bench_str(r, "path", "codec direct (not through daemon)");
            kvt_bench_str(r, "data", DATA_NOTE);
            kvt_bench_num(r, "chunk_bytes", (double)CHUNK_BYTES);
            kvt_bench_str(r, "stored_as", m[k].stored_as);
            kvt_bench_num(r, "stored_bytes", (double)m[k].stored);
            kvt_bench_num(r, "compression_ratio", m[k].ratio);
            kvt_bench_num(r, "compress_gbps", m[k].comp_gbps);
            kvt_bench_num(r, "decompress_gbps", m[k].decomp_gbps);
            kvt_bench_num(r, "kept_by_default", m[k].ratio >= 1.0 / 0.9 ? 1 : 0);
        }
        if (rc)
            break;
        /* Headline ratios: what the shuffle buys over the plain compressor of the same kind. */
        for (size_t k = 0; k + 1 < sizeof(METHODS) / sizeof(METHODS[0]); k += 2) {
            snprintf(rname, sizeof(rname), "%s_%s_size_gain_ratio", DTYPES[dt],
                     METHODS[k + 1].name);
            kvt_bench_ratio(r, rname, m[k + 1].ratio / m[k].ratio);
            snprintf(rname, sizeof(rname), "%s_%s_compress_speed_ratio", DTYPES[dt],
                     METHODS[k + 1].name);
            kvt_bench_ratio(r, rname, m[k + 1].comp_gbps / m[k].comp_gbps);
            snprintf(rname, sizeof(rname), "%s_%s_decompress_speed_ratio", DTYPES[dt],
                     METHODS[k + 1].name);
            kvt_bench_ratio(r, rname, m[k + 1].decomp_gbps / m[k].decomp_gbps);
        }
    }
out_free:
    free(src);
    free(enc);
    free(dec);
    if (rc)
        fprintf(stderr, "codec bench: %s\n", kvt_strerror(rc));
    return rc;
}
