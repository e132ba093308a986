/*
 * Writing and reading the serialized form of a span abstract (see abstract_io.h). The writer
 * copies the abstract's arrays in their in-memory order without the alignment padding; the
 * reader checks every field before it allocates anything, then every span and bound, so that a
 * damaged or foreign form is refused whole and an accepted one is as sound as one just built.
 */
#include "daemon/abstract_io.h"

#include <string.h>

#include <xxhash.h>

#include "kernels/half.h"
#include "kvtier/errors.h"

#define HDR KVT_ABS_IO_HEADER_BYTES
#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_HDR_BYTES 6
#define OFF_TOTAL 8
#define OFF_TYPE 12
#define OFF_LAYERS 16
#define OFF_HEADS 20
#define OFF_DIM 24
#define OFF_TOKENS 28
#define OFF_SPANS 32
#define OFF_RESERVED 36
#define OFF_CHECK 56
/* Each dimension is at most what a namespace may have (daemon/ns.c). */
#define DIM_MAX 65536u

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

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

/* Arrays in little-endian order: a copy on the hosts kvtier runs on. */
static void put_u16s(unsigned char *dst, const uint16_t *src, size_t n)
{
    if (HOST_LE) {
        memcpy(dst, src, n * sizeof(*src));
        return;
    }
    for (size_t i = 0; i < n; i++)
        put_le(dst + 2 * i, src[i], 2);
}

static void get_u16s(uint16_t *dst, const unsigned char *src, size_t n)
{
    if (HOST_LE) {
        memcpy(dst, src, n * sizeof(*dst));
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint16_t)get_le(src + 2 * i, 2);
}

static uint16_t u16_at(const unsigned char *p, size_t i)
{
    return (uint16_t)(p[2 * i] | (unsigned)p[2 * i + 1] << 8);
}

/* Bytes of the form for a geometry and span count, or 0 when it would not fit in 32 bits. Each
 * factor is at most 2^16 (spans at most 2^32), so no product below overflows 64 bits before the
 * check that follows it. */
static uint64_t form_bytes(const struct kvt_abs_geom *g, uint64_t spans)
{
    uint64_t per_span = (uint64_t)g->n_heads * 2u * g->head_dim * 2u; /* fp16 values */
    uint64_t arrays = 0;
    if (__builtin_mul_overflow(per_span, spans, &arrays) || arrays > UINT32_MAX)
        return 0;
    uint64_t total = HDR + ((uint64_t)g->n_layers + 1) * 4 + spans * 4 + 2 * arrays;
    return total > UINT32_MAX ? 0 : total;
}

static uint64_t form_check(const unsigned char *p, size_t total)
{
    return XXH3_64bits_withSeed(p + HDR, total - HDR, XXH3_64bits(p, OFF_CHECK));
}

size_t kvt_abs_io_bytes(const struct kvt_abs *a)
{
    if (!a->n_spans)
        return 0;
    return (size_t)form_bytes(&a->g, a->n_spans);
}

void kvt_abs_io_write(const struct kvt_abs *a, void *dst)
{
    const struct kvt_abs_geom *g = &a->g;
    unsigned char *p = dst;
    size_t total = kvt_abs_io_bytes(a), values = (size_t)a->n_spans * g->n_heads * 2u * g->head_dim;

    memset(p, 0, HDR);
    put_le(p + OFF_MAGIC, KVT_ABS_IO_MAGIC, 4);
    put_le(p + OFF_VERSION, KVT_ABS_IO_VERSION, 2);
    put_le(p + OFF_HDR_BYTES, HDR, 2);
    put_le(p + OFF_TOTAL, total, 4);
    put_le(p + OFF_TYPE, KVT_ABS_IO_FP16, 2);
    put_le(p + OFF_LAYERS, g->n_layers, 4);
    put_le(p + OFF_HEADS, g->n_heads, 4);
    put_le(p + OFF_DIM, g->head_dim, 4);
    put_le(p + OFF_TOKENS, g->n_tokens, 4);
    put_le(p + OFF_SPANS, a->n_spans, 4);
    unsigned char *at = p + HDR;
    for (uint32_t l = 0; l <= g->n_layers; l++, at += 4)
        put_le(at, a->layer_first[l], 4);
    put_u16s(at, a->span_first, a->n_spans);
    at += 2 * (size_t)a->n_spans;
    put_u16s(at, a->span_len, a->n_spans);
    at += 2 * (size_t)a->n_spans;
    put_u16s(at, a->bounds, values);
    at += 2 * values;
    put_u16s(at, a->means, values);
    put_le(p + OFF_CHECK, form_check(p, total), 8);
}

static int is_nan16(uint16_t h)
{
    return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0;
}

/* fp16 bits as an unsigned number in the order of their values (not NaN; -0 just below +0). */
static uint16_t order16(uint16_t h)
{
    return (uint16_t)(h & 0x8000u ? ~(unsigned)h : (unsigned)h | 0x8000u);
}

/* A channel's bounds as the builder makes them: never NaN, the minimum at most the maximum, or
 * the empty pair (+inf, -inf) of a channel whose keys were all NaN. The integer order decides
 * almost always; only a minimum above its maximum is looked at as values (+0 above -0 is fine). */
static int bounds_ok(const unsigned char *b, size_t hd)
{
    for (size_t c = 0; c < hd; c++) {
        uint16_t lo = u16_at(b, c), hi = u16_at(b, hd + c);
        if (is_nan16(lo) || is_nan16(hi))
            return 0;
        if (order16(lo) <= order16(hi) || (lo == 0x7c00u && hi == 0xfc00u))
            continue;
        if (kvt_f16_to_f32(lo) > kvt_f16_to_f32(hi))
            return 0;
    }
    return 1;
}

int kvt_abs_io_read(const void *src, size_t len, struct kvt_abs **out)
{
    const unsigned char *p = src;
    struct kvt_abs_geom g;

    if (len < HDR || get_le(p + OFF_MAGIC, 4) != KVT_ABS_IO_MAGIC ||
        get_le(p + OFF_VERSION, 2) != KVT_ABS_IO_VERSION || get_le(p + OFF_HDR_BYTES, 2) != HDR ||
        get_le(p + OFF_TOTAL, 4) != len || get_le(p + OFF_TYPE, 2) != KVT_ABS_IO_FP16 ||
        get_le(p + 14, 2) != 0)
        return KVT_E_CORRUPT;
    for (unsigned i = OFF_RESERVED; i < OFF_CHECK; i++)
        if (p[i])
            return KVT_E_CORRUPT;
    g.n_layers = (uint32_t)get_le(p + OFF_LAYERS, 4);
    g.n_heads = (uint32_t)get_le(p + OFF_HEADS, 4);
    g.head_dim = (uint32_t)get_le(p + OFF_DIM, 4);
    g.n_tokens = (uint32_t)get_le(p + OFF_TOKENS, 4);
    uint32_t n_spans = (uint32_t)get_le(p + OFF_SPANS, 4);
    if (!g.n_layers || g.n_layers > DIM_MAX || !g.n_heads || g.n_heads > DIM_MAX || !g.head_dim ||
        g.head_dim > DIM_MAX || !g.n_tokens || g.n_tokens > DIM_MAX || n_spans < g.n_layers ||
        (uint64_t)n_spans > (uint64_t)g.n_layers * g.n_tokens)
        return KVT_E_CORRUPT;
    if (form_bytes(&g, n_spans) != len || get_le(p + OFF_CHECK, 8) != form_check(p, len))
        return KVT_E_CORRUPT;

    /* The spans: every layer has at least one, and its spans tile its tokens in order. */
    const unsigned char *lf = p + HDR, *sf = lf + 4 * ((size_t)g.n_layers + 1);
    const unsigned char *sl = sf + 2 * (size_t)n_spans, *bounds = sl + 2 * (size_t)n_spans;
    size_t hd = g.head_dim, per_span = (size_t)g.n_heads * 2u * hd;
    if (get_le(lf, 4) != 0 || get_le(lf + 4 * (size_t)g.n_layers, 4) != n_spans)
        return KVT_E_CORRUPT;
    for (uint32_t l = 0; l < g.n_layers; l++) {
        uint64_t s0 = get_le(lf + 4 * (size_t)l, 4), s1 = get_le(lf + 4 * ((size_t)l + 1), 4);
        if (s1 <= s0 || s1 > n_spans)
            return KVT_E_CORRUPT;
        uint64_t next = 0;
        for (uint64_t s = s0; s < s1; s++) {
            if (u16_at(sf, s) != next)
                return KVT_E_CORRUPT;
            next += (uint64_t)u16_at(sl, s) + 1;
            if (next > g.n_tokens)
                return KVT_E_CORRUPT;
        }
        if (next != g.n_tokens)
            return KVT_E_CORRUPT;
    }
    for (size_t s = 0; s < n_spans; s++)
        for (size_t h = 0; h < g.n_heads; h++)
            if (!bounds_ok(bounds + 2 * (s * per_span + h * 2 * hd), hd))
                return KVT_E_CORRUPT;

    struct kvt_abs *a = kvt_abs_alloc_spans(&g, n_spans);
    if (!a)
        return KVT_E_NOMEM;
    for (uint32_t l = 0; l <= g.n_layers; l++)
        a->layer_first[l] = (uint32_t)get_le(lf + 4 * (size_t)l, 4);
    get_u16s(a->span_first, sf, n_spans);
    get_u16s(a->span_len, sl, n_spans);
    get_u16s(a->bounds, bounds, (size_t)n_spans * per_span);
    get_u16s(a->means, bounds + 2 * (size_t)n_spans * per_span, (size_t)n_spans * per_span);
    *out = a;
    return 0;
}
