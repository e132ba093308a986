/*
 * Every variant of every kernel in kernels/kernels.h against the reference, over many sizes and
 * misalignments of both sides, with guard bytes around each destination; the reference itself
 * against the definitions (index formulas for the shuffles, hand-worked cases with NaN, inf,
 * -0.0 and subnormals for the fp16 min/max); the selection and the forced-reference switch; and
 * the CUDA versions against the reference when the build has them and a device is present
 * (otherwise that test prints why and is skipped).
 *
 * With KVT_KERNELS_BENCH=1 in the environment, test_bench prints GB/s of each variant of the
 * shuffles and the min/max at 64 KiB (cache-resident) and 4 MiB.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "kernels/copy.h"
#include "kernels/kernels.h"
#include "kvtier/errors.h"
#include "tiers/codec.h"
#ifdef HAVE_CUDA
#include "kernels/cuda/kcuda.h"
#endif

#define GUARD_BYTES 64
#define GUARD_FILL 0xa5

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fill_random(uint8_t *b, size_t len, uint64_t seed)
{
    for (size_t i = 0; i < len; i++)
        b[i] = (uint8_t)rng_next(&seed);
}

/* The tables of the variants this CPU can run, reference first. */
static size_t supported(const struct kvt_kernels **out)
{
    size_t count = 0;
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++) {
        const struct kvt_kernels *t = kvt_kernels_variant((enum kvt_kernels_variant)v);
        if (t)
            out[count++] = t;
    }
    return count;
}

static void assert_guards(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < GUARD_BYTES; i++) {
        assert_int_equal(buf[i], GUARD_FILL);
        assert_int_equal(buf[GUARD_BYTES + len + i], GUARD_FILL);
    }
}

static void test_tables(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    assert_true(count >= 1);
    assert_ptr_equal(t[0], kvt_kernels_variant(KVT_KERNELS_REF));
    for (size_t i = 0; i < count; i++) {
        assert_string_equal(t[i]->name, kvt_kernels_variant_name(t[i]->variant));
        assert_non_null(t[i]->copy);
        assert_non_null(t[i]->copy_stream);
        assert_non_null(t[i]->shuffle2);
        assert_non_null(t[i]->unshuffle2);
        assert_non_null(t[i]->shuffle4);
        assert_non_null(t[i]->unshuffle4);
        assert_non_null(t[i]->abstract_minmax_f16);
        print_message("variant %s supported\n", t[i]->name);
    }
#if defined(__x86_64__)
    /* What the CPU reports decides which variants exist: none is silently missing. */
    assert_int_equal(kvt_kernels_variant(KVT_KERNELS_AVX2) != NULL,
                     __builtin_cpu_supports("avx2") != 0);
    assert_int_equal(kvt_kernels_variant(KVT_KERNELS_AVX512) != NULL,
                     __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"));
#endif
    assert_null(kvt_kernels_variant(KVT_KERNELS_VARIANT_COUNT));
    assert_string_equal(kvt_kernels_variant_name(KVT_KERNELS_VARIANT_COUNT), "unknown");
}

static void test_copy_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const size_t sizes[] = {0,    1,    31,   32,   63,   64,    127,          4095,
                            4096, 4097, 4200, 8191, 8192, 65549, (1 << 20) + 7};
    const size_t max = (1 << 20) + 64 + 2 * GUARD_BYTES;
    uint8_t *src = malloc(max), *got = malloc(max);
    assert_non_null(src);
    assert_non_null(got);
    fill_random(src, max, 3);
    for (size_t v = 0; v < count; v++) {
        for (int stream = 0; stream < 2; stream++) {
            void (*fn)(void *, const void *, size_t) = stream ? t[v]->copy_stream : t[v]->copy;
            for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                for (size_t so = 0; so < 3; so++) {
                    for (size_t doff = 0; doff < 64; doff += 13) {
                        size_t n = sizes[s];
                        uint8_t *d = got + doff;
                        memset(d, GUARD_FILL, n + 2 * GUARD_BYTES);
                        fn(d + GUARD_BYTES, src + so, n);
                        assert_memory_equal(d + GUARD_BYTES, src + so, n);
                        assert_guards(d, n);
                    }
                }
            }
        }
    }
    free(src);
    free(got);
}

/* The reference against the definition of the shuffle, then every variant against the
 * reference, each way, on every length up to 600 and on larger ones, at several misalignments
 * of source and destination. */
static void test_shuffle_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const struct kvt_kernels *ref = t[0];
    enum { MAXLEN = 70000 };
    const size_t buf = MAXLEN + 8 + 2 * GUARD_BYTES;
    uint8_t *src = malloc(buf), *want = malloc(buf), *got = malloc(buf), *back = malloc(buf);
    assert_non_null(src);
    assert_non_null(want);
    assert_non_null(got);
    assert_non_null(back);
    fill_random(src, buf, 17);
    for (size_t len = 0; len <= MAXLEN; len += (len < 600 ? 1 : len < 5000 ? 211 : 9973)) {
        for (uint32_t w = 2; w <= 4; w += 2) {
            void (*sh_ref)(const void *, size_t, void *) = w == 2 ? ref->shuffle2 : ref->shuffle4;
            size_t n = len / w;
            sh_ref(src, len, want);
            for (size_t i = 0; i < n; i++)
                for (uint32_t b = 0; b < w; b++)
                    assert_int_equal(want[b * n + i], src[i * w + b]);
            assert_memory_equal(want + n * w, src + n * w, len - n * w);
            for (size_t v = 0; v < count; v++) {
                void (*sh)(const void *, size_t, void *) = w == 2 ? t[v]->shuffle2 : t[v]->shuffle4;
                void (*un)(const void *, size_t, void *) =
                    w == 2 ? t[v]->unshuffle2 : t[v]->unshuffle4;
                size_t mis = (len * 7 + v) % 5; /* 0..4 bytes off each side, varying */
                uint8_t *g = got + mis, *b = back + 4 - mis;
                sh_ref(src + mis + 1, len, want);
                memset(g, GUARD_FILL, len + 2 * GUARD_BYTES);
                sh(src + mis + 1, len, g + GUARD_BYTES);
                assert_memory_equal(g + GUARD_BYTES, want, len);
                assert_guards(g, len);
                memset(b, GUARD_FILL, len + 2 * GUARD_BYTES);
                un(g + GUARD_BYTES, len, b + GUARD_BYTES);
                assert_memory_equal(b + GUARD_BYTES, src + mis + 1, len);
                assert_guards(b, len);
            }
        }
    }
    free(src);
    free(want);
    free(got);
    free(back);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

/* The reference on cases worked by hand: each row of `rows` is one vector of 4 channels. */
static void test_minmax_reference_cases(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    /* Channel 0: ordinary values 1.0, -2.0, 0.5. Channel 1: +0.0 and -0.0 (and a NaN).
     * Channel 2: only NaNs of both signs. Channel 3: -inf, the smallest subnormal, +inf. */
    const uint16_t rows[3][4] = {
        {0x3c00, 0x0000, 0x7e00, 0xfc00},
        {0xc000, 0x8000, 0xfe01, 0x0001},
        {0x3800, 0x7c01, 0xffff, 0x7c00},
    };
    float mn[4], mx[4];
    ref->abstract_minmax_f16(&rows[0][0], 3, 4, 4, mn, mx);
    assert_true(mn[0] == -2.0f && mx[0] == 1.0f);
    assert_int_equal(f32_bits(mn[1]), 0x80000000u); /* -0.0 orders below +0.0 */
    assert_int_equal(f32_bits(mx[1]), 0x00000000u);
    assert_true(isinf(mn[2]) && mn[2] > 0); /* no non-NaN value: +inf, -inf */
    assert_true(isinf(mx[2]) && mx[2] < 0);
    assert_true(isinf(mn[3]) && mn[3] < 0);
    assert_true(isinf(mx[3]) && mx[3] > 0);
    /* Channel 3 without its first row: the subnormal 2^-24 is the minimum, exactly. */
    ref->abstract_minmax_f16(&rows[1][0], 1, 4, 4, mn, mx);
    assert_true(mn[3] == ldexpf(1.0f, -24) && mx[3] == mn[3]);
    assert_true(mn[0] == -2.0f && mx[0] == -2.0f);
    /* The largest finite fp16 and the largest subnormal, through a stride of 6. */
    const uint16_t strided[2][6] = {{0x7bff, 0x03ff, 0, 0, 0xdead, 0xbeef},
                                    {0xfbff, 0x83ff, 0, 0, 0xdead, 0xbeef}};
    ref->abstract_minmax_f16(&strided[0][0], 2, 6, 2, mn, mx);
    assert_true(mx[0] == 65504.0f && mn[0] == -65504.0f);
    assert_true(mx[1] == ldexpf(1023.0f, -24) && mn[1] == -mx[1]);
    /* No vectors at all. */
    ref->abstract_minmax_f16(NULL, 0, 4, 4, mn, mx);
    for (int c = 0; c < 4; c++)
        assert_true(isinf(mn[c]) && mn[c] > 0 && isinf(mx[c]) && mx[c] < 0);
}

/* fp16 keys: mostly values of a narrow range like real keys, with some of every special kind
 * (NaNs of both signs, infinities, zeros of both signs, subnormals, the extremes). */
static void fill_keys(uint16_t *k, size_t count, uint64_t seed)
{
    static const uint16_t special[] = {0x7e00, 0xfe00, 0x7c01, 0xffff, 0x7c00, 0xfc00,
                                       0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff};
    for (size_t i = 0; i < count; i++) {
        uint64_t r = rng_next(&seed);
        if (r % 17 == 0)
            k[i] = special[(r >> 8) % (sizeof(special) / sizeof(special[0]))];
        else if (r % 5 == 0)
            k[i] = (uint16_t)(r >> 16); /* any bit pattern */
        else
            k[i] = (uint16_t)(((r >> 20) & 0x3ff) | ((10 + (r >> 30) % 8) << 10) |
                              (((r >> 40) & 1) << 15));
    }
}

static void test_minmax_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const size_t ns[] = {0, 1, 2, 3, 7, 31, 64, 257};
    /* Up to past 512: the AVX2 version works in windows of 512 channels. */
    const size_t dims[] = {1,  3,  15,  16,  17,  31,  32,  33,  63,  64,
                           65, 96, 127, 128, 130, 192, 256, 512, 528, 1043};
    enum { DIM_MAX = 1043, N_MAX = 257, PAD = 9 };
    const size_t elems = (size_t)N_MAX * (DIM_MAX + PAD) + 8;
    uint16_t *keys = malloc(elems * sizeof(uint16_t));
    static float want_mn[DIM_MAX], want_mx[DIM_MAX], got[2][DIM_MAX + 2];
    assert_non_null(keys);
    fill_keys(keys, elems, 99);
    for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
        for (size_t b = 0; b < sizeof(dims) / sizeof(dims[0]); b++) {
            for (size_t pad = 0; pad <= PAD; pad += 3) {
                size_t n = ns[a], d = dims[b], stride = d + pad;
                /* Start one element in when the row is padded: unaligned vectors. */
                const uint16_t *base = keys + (pad ? 1 : 0);
                t[0]->abstract_minmax_f16(base, n, stride, d, want_mn, want_mx);
                for (size_t v = 1; v < count; v++) {
                    for (int k = 0; k < 2; k++)
                        for (size_t c = 0; c < d + 2; c++)
                            got[k][c] = 12345.0f; /* guards past the outputs */
                    t[v]->abstract_minmax_f16(base, n, stride, d, got[0], got[1]);
                    for (size_t c = 0; c < d; c++) {
                        if (f32_bits(got[0][c]) != f32_bits(want_mn[c]) ||
                            f32_bits(got[1][c]) != f32_bits(want_mx[c]))
                            fail_msg("%s n=%zu dim=%zu stride=%zu channel %zu: min %a/%a max "
                                     "%a/%a",
                                     t[v]->name, n, d, stride, c, (double)got[0][c],
                                     (double)want_mn[c], (double)got[1][c], (double)want_mx[c]);
                    }
                    assert_true(got[0][d] == 12345.0f && got[1][d + 1] == 12345.0f);
                }
            }
        }
    }
    /* A channel whose extremes sit in the very last row, where a partial vector ends. */
    for (size_t v = 0; v < count; v++) {
        uint16_t rows[3 * 37];
        for (size_t i = 0; i < 3 * 37; i++)
            rows[i] = 0x3c00;       /* 1.0 */
        rows[2 * 37 + 36] = 0xc400; /* -4.0 in the last channel of the last row */
        rows[2 * 37 + 35] = 0x4400; /* +4.0 next to it */
        float mn[37], mx[37];
        t[v]->abstract_minmax_f16(rows, 3, 37, 37, mn, mx);
        assert_true(mn[36] == -4.0f && mx[36] == 1.0f);
        assert_true(mn[35] == 1.0f && mx[35] == 4.0f);
        assert_true(mn[0] == 1.0f && mx[0] == 1.0f);
    }
    free(keys);
}

/* kvt_kernels_force switches what the entry points outside the table use (kvt_copy_stream, the
 * codec's shuffles), KVT_KERNELS is honoured, and refusals leave the active table as it was. */
static void test_force(void **state)
{
    (void)state;
    const struct kvt_kernels *best = kvt_kernels_variant(KVT_KERNELS_AUTO);
    assert_non_null(best);
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_REF), 0);
    assert_int_equal(kvt_kernels()->variant, KVT_KERNELS_REF);
    assert_string_equal(kvt_kernels()->name, "ref");

    /* The codec's stored bytes are the same under every variant. */
    enum { LEN = 10007 };
    static uint8_t src[LEN], a[LEN], b[LEN];
    fill_random(src, LEN, 5);
    kvt_codec_shuffle(src, LEN, 4, a);
    kvt_copy_stream(b, src, LEN);
    assert_memory_equal(b, src, LEN);
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    for (size_t v = 0; v < count; v++) {
        assert_int_equal(kvt_kernels_force(t[v]->variant), 0);
        assert_ptr_equal(kvt_kernels(), t[v]);
        memset(b, 0, LEN);
        kvt_codec_shuffle(src, LEN, 4, b);
        assert_memory_equal(a, b, LEN);
    }

    /* Unsupported or invalid choices are refused and change nothing. */
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_REF), 0);
    for (int v = KVT_KERNELS_REF; v < KVT_KERNELS_VARIANT_COUNT; v++)
        if (!kvt_kernels_variant((enum kvt_kernels_variant)v))
            assert_int_equal(kvt_kernels_force((enum kvt_kernels_variant)v), -ENOTSUP);
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_VARIANT_COUNT), KVT_E_INVAL);
    assert_int_equal(kvt_kernels_force((enum kvt_kernels_variant) - 1), KVT_E_INVAL);
    assert_int_equal(kvt_kernels()->variant, KVT_KERNELS_REF);

    /* Names. */
    enum kvt_kernels_variant p;
    assert_int_equal(kvt_kernels_parse("avx512", &p), 0);
    assert_int_equal(p, KVT_KERNELS_AVX512);
    assert_int_equal(kvt_kernels_parse("ref", &p), 0);
    assert_int_equal(p, KVT_KERNELS_REF);
    assert_int_equal(kvt_kernels_parse("auto", &p), KVT_E_INVAL);
    assert_int_equal(kvt_kernels_parse("sse9", &p), KVT_E_INVAL);

    /* The environment variable, through AUTO (what start-up does on the first call). */
    const char *old = getenv("KVT_KERNELS");
    char *saved = old ? strdup(old) : NULL;
    assert_int_equal(setenv("KVT_KERNELS", "ref", 1), 0);
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_AUTO), 0);
    assert_int_equal(kvt_kernels()->variant, KVT_KERNELS_REF);
    assert_int_equal(setenv("KVT_KERNELS", "bogus", 1), 0);
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_AUTO), KVT_E_INVAL);
    assert_int_equal(unsetenv("KVT_KERNELS"), 0);
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_AUTO), 0);
    assert_ptr_equal(kvt_kernels(), kvt_kernels_variant(KVT_KERNELS_AUTO));
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        assert_int_not_equal(kvt_kernels()->variant, KVT_KERNELS_REF); /* the best, not ref */
#endif
    if (saved) {
        setenv("KVT_KERNELS", saved, 1);
        free(saved);
    }
    assert_int_equal(kvt_kernels_force(KVT_KERNELS_AUTO), 0);
    (void)best;
}

static void test_cuda(void **state)
{
    (void)state;
#ifndef HAVE_CUDA
    print_message("skip: CUDA kernels not built (no nvcc at build time)\n");
    skip();
#else
    char why[256] = "";
    if (kvt_kcuda_probe(why, sizeof(why)) != 0) {
        print_message("skip: CUDA kernels built, but no usable device: %s\n", why);
        uint16_t k[4] = {0};
        float mn[4], mx[4];
        uint8_t buf[8] = {0}, out[8];
        /* Without a device every entry point says so instead of failing in some other way. */
        assert_int_equal(kvt_kcuda_abstract_minmax_f16(k, 1, 4, 4, mn, mx), -ENODEV);
        assert_int_equal(kvt_kcuda_shuffle(buf, 8, 2, out), -ENODEV);
        skip();
        return;
    }
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    enum { DIM_MAX = 256, N_MAX = 5000, PAD = 8 };
    const size_t ns[] = {0, 1, 3, 63, 64, 65, 1000, N_MAX};
    const size_t dims[] = {1, 17, 64, 128, 130, 256};
    const size_t elems = (size_t)N_MAX * (DIM_MAX + PAD);
    uint16_t *keys = malloc(elems * sizeof(uint16_t));
    assert_non_null(keys);
    fill_keys(keys, elems, 7);
    float want[2][DIM_MAX], got[2][DIM_MAX];
    for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
        for (size_t b = 0; b < sizeof(dims) / sizeof(dims[0]); b++) {
            for (size_t pad = 0; pad <= PAD; pad += PAD) {
                size_t n = ns[a], d = dims[b], stride = d + pad;
                ref->abstract_minmax_f16(keys, n, stride, d, want[0], want[1]);
                assert_int_equal(kvt_kcuda_abstract_minmax_f16(keys, n, stride, d, got[0], got[1]),
                                 0);
                for (size_t c = 0; c < d; c++) {
                    assert_int_equal(f32_bits(got[0][c]), f32_bits(want[0][c]));
                    assert_int_equal(f32_bits(got[1][c]), f32_bits(want[1][c]));
                }
            }
        }
    }
    assert_int_equal(kvt_kcuda_abstract_minmax_f16(keys, 1, 3, 4, got[0], got[1]), KVT_E_INVAL);
    const size_t lens[] = {0, 1, 2, 3, 5, 4096, 65537, 1 << 20};
    uint8_t *src = (uint8_t *)keys, *w8 = malloc(1 << 20), *g8 = malloc(1 << 20);
    assert_non_null(w8);
    assert_non_null(g8);
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (uint32_t w = 2; w <= 4; w += 2) {
            size_t len = lens[i];
            (w == 2 ? ref->shuffle2 : ref->shuffle4)(src, len, w8);
            assert_int_equal(kvt_kcuda_shuffle(src, len, w, g8), 0);
            assert_memory_equal(g8, w8, len);
            assert_int_equal(kvt_kcuda_unshuffle(w8, len, w, g8), 0);
            assert_memory_equal(g8, src, len);
        }
    }
    assert_int_equal(kvt_kcuda_shuffle(src, 8, 3, g8), KVT_E_INVAL);
    print_message("CUDA min/max and shuffles match the reference\n");
    free(w8);
    free(g8);
    free(keys);
#endif
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

enum bench_kernel { BK_SHUFFLE2, BK_UNSHUFFLE2, BK_SHUFFLE4, BK_UNSHUFFLE4, BK_MINMAX, BK_COUNT };

/* Input GB/s of one kernel on n bytes, over a working set of `set` bytes split into buffers of
 * n (set == n: the same buffer every time, cache-resident when small). Best of 5 runs of about
 * 0.1 s: the machine is shared and the best run is the least disturbed. */
static double bench_one(const struct kvt_kernels *k, enum bench_kernel which, const uint8_t *src,
                        uint8_t *dst, size_t set, size_t n)
{
    double best = 0;
    float mn[128], mx[128];
    for (int run = 0; run < 5; run++) {
        size_t done = 0, slots = set / n;
        double t0 = now_s(), t;
        do {
            for (size_t i = 0; i < slots; i++) {
                const uint8_t *s = src + i * n;
                uint8_t *d = dst + i * n;
                switch (which) {
                case BK_SHUFFLE2:
                    k->shuffle2(s, n, d);
                    break;
                case BK_UNSHUFFLE2:
                    k->unshuffle2(s, n, d);
                    break;
                case BK_SHUFFLE4:
                    k->shuffle4(s, n, d);
                    break;
                case BK_UNSHUFFLE4:
                    k->unshuffle4(s, n, d);
                    break;
                case BK_MINMAX:
                    /* head_dim 128 keys: n / 256 vectors. */
                    k->abstract_minmax_f16((const uint16_t *)(const void *)s, n / 256, 128, 128, mn,
                                           mx);
                    d[0] = (uint8_t)mn[0];
                    break;
                case BK_COUNT:
                    break;
                }
            }
            done += slots * n;
            t = now_s() - t0;
        } while (t < 0.1);
        double g = (double)done / t / 1e9;
        best = g > best ? g : best;
    }
    return best;
}

static void test_bench(void **state)
{
    (void)state;
    if (!getenv("KVT_KERNELS_BENCH")) {
        skip();
        return;
    }
    static const char *const names[BK_COUNT] = {"shuffle2", "unshuffle2", "shuffle4", "unshuffle4",
                                                "minmax_f16"};
    const size_t set = 256u << 20; /* for the 4 MiB case: beyond the last-level cache */
    uint8_t *src = malloc(set), *dst = malloc(set);
    assert_non_null(src);
    assert_non_null(dst);
    fill_keys((uint16_t *)(void *)src, set / 2, 1);
    memset(dst, 0, set);
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    printf("# kernel GB/s of input, best of 5; 64 KiB: one buffer (in cache), 4 MiB: %zu MiB "
           "working set; min/max: head_dim 128\n",
           set >> 20);
    printf("%-12s %-6s", "kernel", "size");
    for (size_t v = 0; v < count; v++)
        printf(" %9s", t[v]->name);
    printf("\n");
    const size_t sizes[] = {64u << 10, 4u << 20};
    for (int kk = 0; kk < BK_COUNT; kk++) {
        for (size_t s = 0; s < 2; s++) {
            printf("%-12s %-6s", names[kk], s ? "4M" : "64K");
            for (size_t v = 0; v < count; v++)
                printf(" %9.2f", bench_one(t[v], (enum bench_kernel)kk, src, dst,
                                           s ? set : sizes[s], sizes[s]));
            printf("\n");
        }
    }
    free(src);
    free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_copy_variants),
        cmocka_unit_test(test_shuffle_variants),
        cmocka_unit_test(test_minmax_reference_cases),
        cmocka_unit_test(test_minmax_variants),
        cmocka_unit_test(test_force),
        cmocka_unit_test(test_cuda),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
