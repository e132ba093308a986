/*
 * Writing and reading the serialized form of version info and the version log's records (see
 * version_io.h). The reader checks the head before it allocates anything, then every value, so
 * that a damaged or foreign form is refused whole and an accepted one is as sound as one that
 * kvt_version_set accepted.
 */
#include "daemon/version_io.h"

#include <math.h>
#include <string.h>

#include <xxhash.h>

#include "common/alloc.h"
#include "kvtier/errors.h"

#define HDR KVT_VERSION_IO_HEADER_BYTES
#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_HDR_BYTES 6
#define OFF_TOTAL 8
#define OFF_RESERVED0 12
#define OFF_START 16
#define OFF_PREFIX 24
#define OFF_LAYERS 28
#define OFF_TOKENS 32
#define OFF_RESERVED1 36
#define OFF_CHECK 48
#define OFF_RESERVED2 56
/* A chunk has at most this many tokens (a namespace's tokens_per_chunk, daemon/ns.c). */
#define TOKENS_MAX 65536u

#define LOG_HEAD KVT_VERSION_LOG_HEAD_BYTES
#define LOFF_BYTES 8
#define LOFF_RESERVED0 12
#define LOFF_SEED 16
#define LOFF_KEY_LO 24
#define LOFF_KEY_HI 32
#define LOFF_VARIANT 40
#define LOFF_RESERVED1 44
#define LOFF_STAMP 48
#define LOFF_CHECK 56

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

static void put_f32(unsigned char *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    put_le(p, u, 4);
}

static float get_f32(const unsigned char *p)
{
    uint32_t u = (uint32_t)get_le(p, 4);
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static int zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

size_t kvt_version_io_form_bytes(uint32_t n_prefix, uint32_t layers, uint32_t n_tokens)
{
    uint64_t total = HDR + (uint64_t)n_prefix * 16u +
                     ((uint64_t)layers * (n_prefix + 1u) + n_tokens) * sizeof(float);
    return total > UINT32_MAX ? 0 : (size_t)total;
}

size_t kvt_version_io_bytes(const struct kvt_version *v)
{
    return kvt_version_io_form_bytes(v->n_prefix, v->layers, v->n_tokens);
}

static uint64_t form_check(const unsigned char *p, size_t total)
{
    return XXH3_64bits_withSeed(p + HDR, total - HDR, XXH3_64bits(p, OFF_CHECK));
}

void kvt_version_io_write(const struct kvt_version *v, void *dst)
{
    unsigned char *p = dst;
    size_t total = kvt_version_io_bytes(v), masses = (size_t)v->layers * (v->n_prefix + 1u);
    memset(p, 0, HDR);
    put_le(p + OFF_MAGIC, KVT_VERSION_IO_MAGIC, 4);
    put_le(p + OFF_VERSION, KVT_VERSION_IO_VERSION, 2);
    put_le(p + OFF_HDR_BYTES, HDR, 2);
    put_le(p + OFF_TOTAL, total, 4);
    put_le(p + OFF_START, v->start_pos, 8);
    put_le(p + OFF_PREFIX, v->n_prefix, 4);
    put_le(p + OFF_LAYERS, v->layers, 4);
    put_le(p + OFF_TOKENS, v->n_tokens, 4);
    unsigned char *at = p + HDR;
    for (uint32_t i = 0; i < v->n_prefix; i++, at += 16) {
        put_le(at, v->prefix[i].lo, 8);
        put_le(at + 8, v->prefix[i].hi, 8);
    }
    for (size_t i = 0; i < masses; i++, at += 4)
        put_f32(at, v->layer_mass[i]);
    for (uint32_t i = 0; i < v->n_tokens; i++, at += 4)
        put_f32(at, v->token_mass[i]);
    put_le(p + OFF_CHECK, form_check(p, total), 8);
}

static int share_ok(float x)
{
    return isfinite(x) && x >= 0.0f && x <= 1.0f;
}

int kvt_version_io_read(const void *src, size_t len, struct kvt_version **out)
{
    const unsigned char *p = src;
    if (len < HDR || get_le(p + OFF_MAGIC, 4) != KVT_VERSION_IO_MAGIC ||
        get_le(p + OFF_VERSION, 2) != KVT_VERSION_IO_VERSION ||
        get_le(p + OFF_HDR_BYTES, 2) != HDR || get_le(p + OFF_TOTAL, 4) != len ||
        !zero(p + OFF_RESERVED0, 4) || !zero(p + OFF_RESERVED1, OFF_CHECK - OFF_RESERVED1) ||
        !zero(p + OFF_RESERVED2, HDR - OFF_RESERVED2))
        return KVT_E_CORRUPT;
    uint32_t n_prefix = (uint32_t)get_le(p + OFF_PREFIX, 4);
    uint32_t layers = (uint32_t)get_le(p + OFF_LAYERS, 4);
    uint32_t n_tokens = (uint32_t)get_le(p + OFF_TOKENS, 4);
    if (n_prefix > KVT_VERSION_PREFIX_MAX || !layers || layers > KVT_VERSION_LAYERS_MAX ||
        !n_tokens || n_tokens > TOKENS_MAX ||
        kvt_version_io_form_bytes(n_prefix, layers, n_tokens) != len ||
        get_le(p + OFF_CHECK, 8) != form_check(p, len))
        return KVT_E_CORRUPT;

    /* Every share as kvt_version_set checks it, before anything is allocated. */
    const unsigned char *lm = p + HDR + (size_t)n_prefix * 16u;
    const unsigned char *tm = lm + (size_t)layers * (n_prefix + 1u) * 4u;
    for (uint32_t l = 0; l < layers; l++) {
        double row = 0;
        for (uint32_t j = 0; j <= n_prefix; j++) {
            float x = get_f32(lm + ((size_t)l * (n_prefix + 1u) + j) * 4u);
            if (!share_ok(x))
                return KVT_E_CORRUPT;
            row += x;
        }
        if (row > 1.0 + 1e-3)
            return KVT_E_CORRUPT;
    }
    for (uint32_t i = 0; i < n_tokens; i++)
        if (!share_ok(get_f32(tm + (size_t)i * 4u)))
            return KVT_E_CORRUPT;

    struct kvt_version *v = kvt_version_alloc(n_prefix, layers, n_tokens);
    if (!v)
        return KVT_E_NOMEM;
    v->start_pos = get_le(p + OFF_START, 8);
    const unsigned char *at = p + HDR;
    for (uint32_t i = 0; i < n_prefix; i++, at += 16)
        v->prefix[i] = (struct kvt_key){.lo = get_le(at, 8), .hi = get_le(at + 8, 8)};
    size_t masses = (size_t)layers * (n_prefix + 1u);
    for (size_t i = 0; i < masses; i++, at += 4)
        v->layer_mass[i] = get_f32(at);
    for (uint32_t i = 0; i < n_tokens; i++, at += 4)
        v->token_mass[i] = get_f32(at);
    *out = v;
    return 0;
}

/* ---- log records ------------------------------------------------------------------------------
 */

static size_t pad8(size_t n)
{
    return (n + 7u) & ~(size_t)7u;
}

size_t kvt_version_log_record_bytes(const struct kvt_version *v)
{
    return pad8(LOG_HEAD + kvt_version_io_bytes(v));
}

static uint64_t record_check(const unsigned char *p, size_t bytes)
{
    return XXH3_64bits_withSeed(p + LOG_HEAD, bytes - LOG_HEAD, XXH3_64bits(p, LOFF_CHECK));
}

void kvt_version_log_record_write(const struct kvt_version *v, const struct kvt_obj_id *id,
                                  uint64_t stamp, void *dst)
{
    unsigned char *p = dst;
    size_t form = kvt_version_io_bytes(v), bytes = LOG_HEAD + form;
    memset(p, 0, LOG_HEAD);
    put_le(p + OFF_MAGIC, KVT_VERSION_LOG_MAGIC, 4);
    put_le(p + OFF_VERSION, KVT_VERSION_LOG_VERSION, 2);
    put_le(p + OFF_HDR_BYTES, LOG_HEAD, 2);
    put_le(p + LOFF_BYTES, bytes, 4);
    put_le(p + LOFF_SEED, id->ns_seed, 8);
    put_le(p + LOFF_KEY_LO, id->key.lo, 8);
    put_le(p + LOFF_KEY_HI, id->key.hi, 8);
    put_le(p + LOFF_VARIANT, id->variant, 4);
    put_le(p + LOFF_STAMP, stamp, 8);
    kvt_version_io_write(v, p + LOG_HEAD);
    memset(p + bytes, 0, pad8(bytes) - bytes);
    put_le(p + LOFF_CHECK, record_check(p, bytes), 8);
}

int kvt_version_log_record_read(const void *src, size_t len, struct kvt_obj_id *id, uint64_t *stamp,
                                const void **form, size_t *form_len, size_t *step)
{
    const unsigned char *p = src;
    if (len < LOG_HEAD || get_le(p + OFF_MAGIC, 4) != KVT_VERSION_LOG_MAGIC ||
        get_le(p + OFF_VERSION, 2) != KVT_VERSION_LOG_VERSION ||
        get_le(p + OFF_HDR_BYTES, 2) != LOG_HEAD || !zero(p + LOFF_RESERVED0, 4) ||
        !zero(p + LOFF_RESERVED1, 4))
        return KVT_E_CORRUPT;
    size_t bytes = (size_t)get_le(p + LOFF_BYTES, 4);
    uint64_t st = get_le(p + LOFF_STAMP, 8);
    if (bytes < LOG_HEAD + HDR || bytes > KVT_VERSION_LOG_RECORD_MAX || pad8(bytes) > len || !st ||
        !zero(p + bytes, pad8(bytes) - bytes) ||
        get_le(p + LOFF_CHECK, 8) != record_check(p, bytes))
        return KVT_E_CORRUPT;
    id->ns_seed = get_le(p + LOFF_SEED, 8);
    id->key.lo = get_le(p + LOFF_KEY_LO, 8);
    id->key.hi = get_le(p + LOFF_KEY_HI, 8);
    id->variant = (uint32_t)get_le(p + LOFF_VARIANT, 4);
    *stamp = st;
    *form = p + LOG_HEAD;
    *form_len = bytes - LOG_HEAD;
    *step = pad8(bytes);
    return 0;
}
