/*
 * The serialized form of span abstracts alone (daemon/abstract_io.c): fixed and variable
 * abstracts (with NaN keys, whose channels have no bound) come back identical, array for array;
 * every truncation, every single-bit flip and every extension is refused; and each field is
 * validated on its own: a form whose check was recomputed after a field was changed (magic,
 * version, sizes, geometry, reserved bytes, span tiling, NaN or inverted bounds) is refused too.
 * An allocation failure is reported, never a crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <xxhash.h>

#include "common/alloc.h"
#include "daemon/abstract.h"
#include "daemon/abstract_io.h"
#include "kernels/half.h"
#include "kvtier/errors.h"

#define L 3u
#define H 2u
#define HD 8u
#define ROW (2u * H * HD)
#define TOKENS 50u

static uint64_t rng = 7;
static float rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t chunk[L * TOKENS * ROW];

static struct kvt_abs *build(enum kvt_span_kind kind)
{
    struct kvt_span_policy p = {
        .kind = kind, .block_tokens = 8, .max_tokens = 32, .merge_tol = 0.5f, .fine_layers = 1};
    struct kvt_abs_geom g = {L, H, HD, TOKENS};
    for (size_t i = 0; i < sizeof(chunk) / sizeof(chunk[0]); i++)
        chunk[i] = kvt_f32_to_f16((i / ROW) % 16 < 8 ? 0.01f * rnd() : rnd());
    /* Head 1's channel 3 is NaN over the first tokens of layer 0: no bound there. */
    for (uint32_t t = 0; t < 8; t++)
        chunk[(size_t)t * ROW + HD + 3] = 0x7e00;
    struct kvt_abs *a = kvt_abs_alloc(&g, &p);
    assert_non_null(a);
    kvt_abs_build(a, &p, chunk);
    if (kind == KVT_SPANS_VARIABLE) {
        struct kvt_abs *c = kvt_abs_compact(a);
        if (c != a) {
            kvt_abs_unref(a);
            a = c;
        }
    }
    return a;
}

static unsigned char *serialize(const struct kvt_abs *a, size_t *len)
{
    *len = kvt_abs_io_bytes(a);
    assert_true(*len > KVT_ABS_IO_HEADER_BYTES);
    unsigned char *p = malloc(*len + 16);
    assert_non_null(p);
    memset(p, 0xee, *len + 16);
    kvt_abs_io_write(a, p);
    return p;
}

static void assert_same(const struct kvt_abs *a, const struct kvt_abs *b)
{
    size_t per = (size_t)a->g.n_heads * 2u * a->g.head_dim;
    assert_memory_equal(&a->g, &b->g, sizeof(a->g));
    assert_int_equal(a->n_spans, b->n_spans);
    assert_memory_equal(a->layer_first, b->layer_first, (a->g.n_layers + 1) * sizeof(uint32_t));
    assert_memory_equal(a->span_first, b->span_first, a->n_spans * sizeof(uint16_t));
    assert_memory_equal(a->span_len, b->span_len, a->n_spans * sizeof(uint16_t));
    assert_memory_equal(a->bounds, b->bounds, a->n_spans * per * sizeof(uint16_t));
    assert_memory_equal(a->means, b->means, a->n_spans * per * sizeof(uint16_t));
}

static void test_round_trip(void **state)
{
    (void)state;
    const enum kvt_span_kind kinds[] = {KVT_SPANS_FIXED, KVT_SPANS_VARIABLE};
    for (size_t k = 0; k < 2; k++) {
        struct kvt_abs *a = build(kinds[k]), *b = NULL;
        size_t len;
        unsigned char *p = serialize(a, &len);
        assert_int_equal(p[len], 0xee); /* exactly kvt_abs_io_bytes */
        assert_memory_equal(p, "KVTA", 4);
        assert_int_equal(kvt_abs_io_read(p, len, &b), 0);
        assert_int_equal(b->refs, 1);
        assert_same(a, b);
        /* The copy is sized for its spans: never larger than the original. */
        assert_true(b->bytes <= a->bytes);
        if (kinds[k] == KVT_SPANS_VARIABLE)
            assert_true(a->n_spans < L * ((TOKENS + 7) / 8)); /* something merged */
        /* The empty channel survived as (+inf, -inf). */
        const uint16_t *bd = kvt_abs_bounds(b, 0, 1);
        assert_int_equal(bd[3], 0x7c00);
        assert_int_equal(bd[HD + 3], 0xfc00);
        /* Written again, byte for byte the same. */
        size_t len2;
        unsigned char *q = serialize(b, &len2);
        assert_int_equal(len2, len);
        assert_memory_equal(p, q, len);
        free(q);
        free(p);
        kvt_abs_unref(a);
        kvt_abs_unref(b);
    }
}

static void test_truncation_flips_and_extension(void **state)
{
    (void)state;
    struct kvt_abs *a = build(KVT_SPANS_VARIABLE), *b = NULL;
    size_t len;
    unsigned char *p = serialize(a, &len);
    for (size_t n = 0; n < len; n++)
        assert_int_equal(kvt_abs_io_read(p, n, &b), KVT_E_CORRUPT);
    assert_int_equal(kvt_abs_io_read(p, len + 1, &b), KVT_E_CORRUPT);
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            p[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(kvt_abs_io_read(p, len, &b), KVT_E_CORRUPT);
            p[i] ^= (unsigned char)(1u << bit);
        }
    }
    assert_int_equal(kvt_abs_io_read(p, len, &b), 0);
    kvt_abs_unref(b);
    free(p);
    kvt_abs_unref(a);
}

static void put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Seals a form whose fields were changed with a fresh check, so that only field validation can
 * refuse it. */
static void reseal(unsigned char *p, size_t len)
{
    put_le(p + 56, XXH3_64bits_withSeed(p + 64, len - 64, XXH3_64bits(p, 56)), 8);
}

struct layout {
    size_t lf, sf, sl, bounds;
};

static struct layout layout_of(const struct kvt_abs *a)
{
    struct layout o;
    o.lf = 64;
    o.sf = o.lf + 4 * (a->g.n_layers + 1u);
    o.sl = o.sf + 2 * (size_t)a->n_spans;
    o.bounds = o.sl + 2 * (size_t)a->n_spans;
    return o;
}

/* Applies one change to a fresh form, reseals it and expects a refusal. */
static void expect_refused(const struct kvt_abs *a,
                           void (*change)(unsigned char *, size_t, const struct kvt_abs *))
{
    struct kvt_abs *b = NULL;
    size_t len;
    unsigned char *p = serialize(a, &len);
    assert_int_equal(kvt_abs_io_read(p, len, &b), 0);
    kvt_abs_unref(b);
    b = NULL;
    change(p, len, a);
    reseal(p, len);
    assert_int_equal(kvt_abs_io_read(p, len, &b), KVT_E_CORRUPT);
    assert_null(b);
    free(p);
}

#define CHANGE(name, body)                                                                         \
    static void name(unsigned char *p, size_t len, const struct kvt_abs *a)                        \
    {                                                                                              \
        (void)len;                                                                                 \
        (void)a;                                                                                   \
        body;                                                                                      \
    }

CHANGE(bad_magic, p[0] ^= 1)
CHANGE(bad_version, put_le(p + 4, 2, 2))
CHANGE(bad_header_bytes, put_le(p + 6, 63, 2))
CHANGE(bad_total, put_le(p + 8, len - 1, 4))
CHANGE(bad_type, put_le(p + 12, 2, 2))
CHANGE(reserved_14, p[15] = 1)
CHANGE(reserved_36, p[36] = 1)
CHANGE(reserved_55, p[55] = 0x80)
CHANGE(no_layers, put_le(p + 16, 0, 4))
CHANGE(more_layers, put_le(p + 16, L + 1, 4))
CHANGE(no_heads, put_le(p + 20, 0, 4))
CHANGE(other_heads, put_le(p + 20, H + 1, 4))
CHANGE(no_dim, put_le(p + 24, 0, 4))
CHANGE(huge_dim, put_le(p + 24, 1u << 20, 4))
CHANGE(no_tokens, put_le(p + 28, 0, 4))
CHANGE(more_tokens, put_le(p + 28, TOKENS + 1, 4))
CHANGE(too_many_tokens, put_le(p + 28, 65537, 4))
CHANGE(fewer_spans, put_le(p + 32, a->n_spans - 1, 4))
CHANGE(spans_below_layers, put_le(p + 32, L - 1, 4))
CHANGE(first_layer_offset, put_le(p + layout_of(a).lf, 1, 4))
CHANGE(empty_layer, put_le(p + layout_of(a).lf + 4, 0, 4))
CHANGE(last_layer_end, put_le(p + layout_of(a).lf + 4 * L, a->n_spans - 1, 4))
CHANGE(layers_reversed, put_le(p + layout_of(a).lf + 8, a->layer_first[1] - 1, 4))
CHANGE(span_gap, put_le(p + layout_of(a).sf + 2, a->span_first[1] + 1, 2))
CHANGE(span_start_late, put_le(p + layout_of(a).sf, 1, 2))
CHANGE(span_past_end, put_le(p + layout_of(a).sl + 2 * (a->layer_first[1] - 1), 60, 2))
CHANGE(span_short_of_end, put_le(p + layout_of(a).sl + 2 * (a->layer_first[1] - 1),
                                 a->span_len[a->layer_first[1] - 1] - 1u, 2))
CHANGE(nan_min, put_le(p + layout_of(a).bounds + 2 * 5, 0x7e01, 2))
CHANGE(nan_max, put_le(p + layout_of(a).bounds + 2 * (HD + 5), 0xfe00, 2))
CHANGE(min_above_max, {
    /* Span 2, head 1, channel 2: min 1.0, max -1.0. */
    size_t b = layout_of(a).bounds + 2 * (2 * (H * 2 * HD) + 1 * (2 * HD) + 2);
    put_le(p + b, 0x3c00, 2);
    put_le(p + b + 2 * HD, 0xbc00, 2);
})
CHANGE(half_empty_channel, put_le(p + layout_of(a).bounds + 2 * 1, 0x7c00, 2))

static void test_every_field_validated(void **state)
{
    (void)state;
    struct kvt_abs *a = build(KVT_SPANS_VARIABLE);
    void (*changes[])(unsigned char *, size_t, const struct kvt_abs *) = {
        bad_magic,       bad_version,    bad_header_bytes,   bad_total,
        bad_type,        reserved_14,    reserved_36,        reserved_55,
        no_layers,       more_layers,    no_heads,           other_heads,
        no_dim,          huge_dim,       no_tokens,          more_tokens,
        too_many_tokens, fewer_spans,    spans_below_layers, first_layer_offset,
        empty_layer,     last_layer_end, layers_reversed,    span_gap,
        span_start_late, span_past_end,  span_short_of_end,  nan_min,
        nan_max,         min_above_max,  half_empty_channel,
    };
    assert_true(a->layer_first[1] >= 2); /* layer 0 has several spans to play with */
    for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++)
        expect_refused(a, changes[i]);
    kvt_abs_unref(a);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    struct kvt_abs *a = build(KVT_SPANS_FIXED), *b = NULL;
    size_t len;
    unsigned char *p = serialize(a, &len);
    kvt_alloc_fail_nth(1);
    assert_int_equal(kvt_abs_io_read(p, len, &b), KVT_E_NOMEM);
    assert_null(b);
    kvt_alloc_fail_nth(0);
    assert_int_equal(kvt_abs_io_read(p, len, &b), 0);
    kvt_abs_unref(b);
    free(p);
    kvt_abs_unref(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_truncation_flips_and_extension),
        cmocka_unit_test(test_every_field_validated),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
