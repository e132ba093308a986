/*
 * Benchmark `codec`: compression ratio and GB/s each way of the lossless KV codec, byte-shuffle +
 * lz4 and byte-shuffle + zstd, against plain lz4 and zstd on the unshuffled bytes, for fp16 and
 * bf16 KV chunks.
 *
 * Data, in kvtier's canonical chunk layout [layer][token][k|v][kv_head][head_dim]:
 *  - real: the KV of SmolLM2-135M (30 layers, 3 KV heads, head_dim 64) over the first 512 tokens
 *    of /usr/share/common-licenses/GPL-3, produced by `kvtier-engine dump-kv` in this run, as 4
 *    chunks of 128 tokens (2,949,120 bytes each). The model computes fp16 KV; the bf16 rows
 *    round those values to bf16 (nearest even), which is what a bf16 engine would hold. These rows
 *    are reported as null, with the reason, when the model has not been fetched
 *    (scripts/fetch-model.sh models) or kvtier-engine is not built.
 *  - synthetic: one 4 MiB chunk (4 layers, 256 tokens, 8 KV heads, head_dim 128); each element is
 *    mean + N(0,1) * scale with per-channel parameters: key scales log-normal (sigma 0.8) with 4
 *    outlier channels per head scaled x8 and per-channel means, value scales log-normal
 *    (sigma 0.3) with zero mean, rounded to nearest-even fp16 / bf16.
 * The codec runs with a minimum saving of 0 here so the compressed form is always measured; a
 * "kept_by_default" field says whether the store's default rule (save at least 10%) would keep it.
 */
#include "bench/bench.h"

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/half.h"
#include "kvtier/errors.h"
#include "tiers/codec.h"

#define LAYERS 4u
#define TOKENS 256u
#define HEADS 8u
#define DIM 128u
#define ELEMS ((size_t)LAYERS * TOKENS * 2u * HEADS * DIM)
#define CHUNK_BYTES (ELEMS * 2u)
#define SYNTH_NOTE                                                                                 \
    "synthetic: N(0,1)*per-channel lognormal scale (K sigma .8 + 4 outliers x8, V sigma .3), "     \
    "[4 layers][256 tok][k|v][8 heads][128]"
#define REAL_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define REAL_TEXT "/usr/share/common-licenses/GPL-3"
#define REAL_TOKENS 512u
#define REAL_CHUNK_TOKENS 128u
#define REAL_NOTE                                                                                  \
    "real: SmolLM2-135M KV of the first 512 tokens of GPL-3 (kvtier-engine dump-kv), "             \
    "4 chunks [30 layers][128 tok][k|v][3 heads][64]"

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
                        uint16_t e = bf16 ? to_bf16(v) : kvt_f32_to_f16(v);
                        out[2 * i] = (unsigned char)e;
                        out[2 * i + 1] = (unsigned char)(e >> 8);
                    }
}

struct measured {
    double ratio, comp_gbps, decomp_gbps;
    size_t stored;
    const char *stored_as; /* codec id name of the first chunk: "raw" when it could not shrink */
};

/* Encodes and decodes every chunk of src (n_chunks of chunk bytes) in turn, for at least min_s
 * seconds each way; enc holds n_chunks * chunk bytes, dec one chunk. */
static int measure(enum kvt_codec_algo algo, uint32_t width, const unsigned char *src, size_t chunk,
                   size_t n_chunks, unsigned char *enc, unsigned char *dec, double min_s,
                   struct measured *out)
{
    struct kvt_codec_config cfg;
    struct kvt_codec *c = NULL;
    size_t n[8] = {0};
    uint32_t id[8] = {0};
    uint64_t t0, el, iters;
    int rc;

    if (n_chunks > 8)
        return KVT_E_INVAL;
    kvt_codec_config_init(&cfg);
    cfg.algo = algo;
    cfg.elem_bytes = width;
    cfg.level = 1;
    cfg.min_saving_ratio = 0.0;
    cfg.input_bytes_max = chunk;
    rc = kvt_codec_create(&cfg, &c);
    if (rc)
        return rc;
    iters = 0;
    t0 = kvt_bench_now_ns();
    do {
        for (size_t k = 0; k < n_chunks && rc == 0; k++)
            rc = kvt_codec_encode(c, src + k * chunk, chunk, 0, enc + k * chunk, chunk, &n[k],
                                  &id[k]);
        iters++;
        el = kvt_bench_now_ns() - t0;
    } while (rc == 0 && (double)el < min_s * 1e9);
    out->comp_gbps = (double)(iters * n_chunks * chunk) / (double)el;
    out->stored = 0;
    for (size_t k = 0; k < n_chunks; k++)
        out->stored += n[k];
    out->stored_as = kvt_codec_name(id[0]);
    out->ratio = (double)(n_chunks * chunk) / (double)out->stored;
    iters = 0;
    t0 = kvt_bench_now_ns();
    do {
        for (size_t k = 0; k < n_chunks && rc == 0; k++)
            rc = kvt_codec_decode(c, id[k], enc + k * chunk, n[k], dec, chunk);
        iters++;
        el = kvt_bench_now_ns() - t0;
    } while (rc == 0 && (double)el < min_s * 1e9);
    out->decomp_gbps = (double)(iters * n_chunks * chunk) / (double)el;
    /* The last decode left the last chunk in dec; check every chunk once more. */
    for (size_t k = 0; k < n_chunks && rc == 0; k++) {
        rc = kvt_codec_decode(c, id[k], enc + k * chunk, n[k], dec, chunk);
        if (rc == 0 && memcmp(src + k * chunk, dec, chunk) != 0)
            rc = KVT_E_CORRUPT;
    }
    kvt_codec_destroy(c);
    return rc;
}

/* fp16 (little-endian) to bf16, in place: exact widening to f32, then round to nearest even. */
static void fp16_to_bf16(unsigned char *p, size_t bytes)
{
    for (size_t i = 0; i + 1 < bytes; i += 2) {
        uint32_t h = (uint32_t)p[i] | (uint32_t)p[i + 1] << 8, sign = (h & 0x8000u) << 16;
        uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, f;
        if (e == 0 && m == 0) {
            f = sign;
        } else if (e == 0) { /* subnormal: normalize */
            e = 127 - 15 + 1;
            while (!(m & 0x400u)) {
                m <<= 1;
                e--;
            }
            f = sign | e << 23 | (m & 0x3ffu) << 13;
        } else if (e == 31) {
            f = sign | 0x7f800000u | m << 13;
        } else {
            f = sign | (e + 127 - 15) << 23 | m << 13;
        }
        float v;
        memcpy(&v, &f, sizeof(v));
        uint16_t b = to_bf16(v);
        p[i] = (unsigned char)b;
        p[i + 1] = (unsigned char)(b >> 8);
    }
}

/* Runs kvtier-engine dump-kv into work_dir and reads the chunks back; NULL with *why set when the
 * model or the engine is missing or the dump fails. */
static unsigned char *real_kv(const struct kvt_bench_opts *opts, size_t *chunk, size_t *n_chunks,
                              const char **why)
{
    char engine[512], out[512], cmd[2048];
    struct stat st;
    const char *bin = opts->bin_dir && *opts->bin_dir ? opts->bin_dir : "build";

    snprintf(engine, sizeof(engine), "%s/kvtier-engine", bin);
    snprintf(out, sizeof(out), "%s/kv-real.f16", opts->work_dir);
    if (stat(REAL_MODEL, &st) != 0) {
        *why = "model not fetched (run scripts/fetch-model.sh models)";
        return NULL;
    }
    if (stat(engine, &st) != 0) {
        *why = "kvtier-engine not built";
        return NULL;
    }
    snprintf(cmd, sizeof(cmd),
             "'%s' dump-kv --model '%s' --text '%s' --tokens %u --chunk-tokens %u --out '%s' "
             "2>/dev/null",
             engine, REAL_MODEL, REAL_TEXT, REAL_TOKENS, REAL_CHUNK_TOKENS, out);
    int status = system(cmd);
    FILE *f = status == 0 ? fopen(out, "rb") : NULL;
    if (!f) {
        *why = "kvtier-engine dump-kv failed";
        return NULL;
    }
    unsigned char *buf = NULL;
    long bytes = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        bytes = ftell(f);
    *n_chunks = REAL_TOKENS / REAL_CHUNK_TOKENS;
    *chunk = bytes > 0 ? (size_t)bytes / *n_chunks : 0;
    if (*chunk == 0 || (size_t)bytes != *chunk * *n_chunks || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)bytes)) || fread(buf, 1, (size_t)bytes, f) != (size_t)bytes) {
        free(buf);
        buf = NULL;
        *why = "kvtier-engine dump-kv wrote an unexpected file";
    }
    fclose(f);
    remove(out);
    return buf;
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

struct dataset {
    const char *name; /* row label prefix */
    const char *note;
    const char *dtype;
    unsigned char *src;
    size_t chunk, n_chunks;
    uint32_t width;
};

static int run_dataset(const struct dataset *d, double min_s, struct kvt_bench_report *r)
{
    enum { NM = sizeof(METHODS) / sizeof(METHODS[0]) };
    struct measured m[NM];
    char label[96], rname[128];
    unsigned char *enc = malloc(d->chunk * d->n_chunks), *dec = malloc(d->chunk);
    int rc = enc && dec ? 0 : KVT_E_NOMEM;

    for (size_t k = 0; k < NM && !rc; k++) {
        kvt_bench_progress("codec %s %s %s", d->name, d->dtype, METHODS[k].name);
        rc = measure(METHODS[k].algo, METHODS[k].width, d->src, d->chunk, d->n_chunks, enc, dec,
                     min_s, &m[k]);
        if (rc)
            break;
        snprintf(label, sizeof(label), "%s %s %s", d->name, d->dtype, METHODS[k].name);
        kvt_bench_row(r, label);
        kvt_bench_str(r, "path", "codec direct (not through daemon)");
        kvt_bench_str(r, "data", d->note);
        kvt_bench_num(r, "chunk_bytes", (double)d->chunk);
        kvt_bench_num(r, "chunks", (double)d->n_chunks);
        kvt_bench_str(r, "stored_as", m[k].stored_as);
        kvt_bench_num(r, "stored_bytes", (double)m[k].stored);
        kvt_bench_num(r, "compression_ratio", m[k].ratio);
        kvt_bench_num(r, "compress_gbps", m[k].comp_gbps);
        kvt_bench_num(r, "decompress_gbps", m[k].decomp_gbps);
        kvt_bench_num(r, "kept_by_default", m[k].ratio >= 1.0 / 0.9 ? 1 : 0);
    }
    /* Headline ratios: what the shuffle buys over the plain compressor of the same kind. */
    for (size_t k = 0; k + 1 < NM && !rc; k += 2) {
        snprintf(rname, sizeof(rname), "%s_%s_%s_size_gain_ratio", d->name, d->dtype,
                 METHODS[k + 1].name);
        kvt_bench_ratio(r, rname, m[k + 1].ratio / m[k].ratio);
        snprintf(rname, sizeof(rname), "%s_%s_%s_compress_speed_ratio", d->name, d->dtype,
                 METHODS[k + 1].name);
        kvt_bench_ratio(r, rname, m[k + 1].comp_gbps / m[k].comp_gbps);
        snprintf(rname, sizeof(rname), "%s_%s_%s_decompress_speed_ratio", d->name, d->dtype,
                 METHODS[k + 1].name);
        kvt_bench_ratio(r, rname, m[k + 1].decomp_gbps / m[k].decomp_gbps);
    }
    free(enc);
    free(dec);
    return rc;
}

int kvt_bench_codec(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    double min_s = opts->quick ? 0.25 : 1.5;
    const char *why = NULL;
    size_t real_chunk = 0, real_n = 0;
    unsigned char *real = real_kv(opts, &real_chunk, &real_n, &why);
    unsigned char *synth = malloc(CHUNK_BYTES);
    int rc = synth ? 0 : KVT_E_NOMEM;

    for (int dt = 0; dt < 2 && !rc; dt++) {
        const char *dtype = dt ? "bf16" : "fp16";
        if (real) {
            if (dt)
                fp16_to_bf16(real, real_chunk * real_n);
            struct dataset d = {"real", REAL_NOTE, dtype, real, real_chunk, real_n, 2};
            rc = run_dataset(&d, min_s, r);
        } else {
            char label[64];
            snprintf(label, sizeof(label), "real %s", dtype);
            kvt_bench_row(r, label);
            kvt_bench_null(r, "compression_ratio", why);
        }
        if (rc)
            break;
        gen_kv(synth, dt, 0x5eed + (uint64_t)dt);
        struct dataset d = {"synthetic", SYNTH_NOTE, dtype, synth, CHUNK_BYTES, 1, 2};
        rc = run_dataset(&d, min_s, r);
    }
    free(real);
    free(synth);
    if (rc)
        fprintf(stderr, "codec bench: %s\n", kvt_strerror(rc));
    return rc;
}
