/*
 * Every variant of every kernel in kernels/kernels.h against the reference, over many sizes and
 * misalignments of both sides, with guard bytes around each destination; the reference itself
 * against the definitions (index formulas for the shuffles, hand-worked cases with NaN, inf,
 * -0.0 and subnormals for the fp16 min/max, the sums and the Quest bound, a sort oracle for
 * top-k); the fp16 conversions of kernels/half.h against an oracle and F16C; the bound's
 * property (never below the true max q.k beyond its own rounding); the selection and the
 * forced-reference switch; and the CUDA versions against the reference when the build has them
 * and a device is present (otherwise that test prints why and is skipped).
 *
 * With KVT_KERNELS_BENCH=1 in the environment, test_bench prints GB/s of each variant of the
 * shuffles, the min/max, the sums and the bound at 64 KiB (cache-resident) and 4 MiB.
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
#include "kernels/half.h"
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

#if defined(__x86_64__)
#include <cpuid.h>
/* F16C from CPUID (clang's __builtin_cpu_supports does not know it). */
static int cpu_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

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
        assert_non_null(t[i]->sum_f16);
        assert_non_null(t[i]->bound_f16);
        assert_non_null(t[i]->topk_f32);
        assert_non_null(t[i]->quant_f16);
        assert_non_null(t[i]->dequant_f16);
        assert_non_null(t[i]->cluster_match_f16);
        assert_non_null(t[i]->cluster_merge_f16);
        print_message("variant %s supported\n", t[i]->name);
    }
#if defined(__x86_64__)
    /* What the CPU reports decides which variants exist: none is silently missing. */
    assert_int_equal(kvt_kernels_variant(KVT_KERNELS_AVX2) != NULL,
                     __builtin_cpu_supports("avx2") && cpu_f16c());
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

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Equal bits, or both NaN: the kernels specify every result bit for bit except the payload of
 * a NaN result (x86 keeps one operand's payload, CUDA makes a canonical NaN). */
static int same_float(float a, float b)
{
    return f32_bits(a) == f32_bits(b) || (isnan(a) && isnan(b));
}

/* ---- fp16 conversions (kernels/half.h) ---------------------------------------------------- */

static int f16_isnan(uint16_t h)
{
    return (h & 0x7fffu) > 0x7c00u;
}

/* The value of fp16 bits h from the definition (sign, exponent, mantissa), in double. */
static double f16_value(uint16_t h)
{
    int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = exp ? ldexp(1024 + man, exp - 25) : ldexp(man, -24);
    return (h & 0x8000) ? -v : v;
}

/* Round-to-nearest-even fp16 of a finite float, found by search over the finite fp16 values of
 * its sign (independent of the bit tricks of kvt_f32_to_f16). */
static uint16_t f16_oracle(float f)
{
    double a = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (a >= 65520.0) /* the midpoint between 65504 and 2^16 rounds to even: infinity */
        return sign | 0x7c00;
    uint16_t lo = 0, hi = 0x7bff; /* the largest value <= a lies in [lo, hi] */
    while (lo < hi) {
        uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
        if (f16_value(mid) <= a)
            lo = mid;
        else
            hi = (uint16_t)(mid - 1);
    }
    if (lo == 0x7bff)
        return sign | lo;
    double below = f16_value(lo), above = f16_value((uint16_t)(lo + 1));
    uint16_t r = lo;
    if (a - below > above - a || (a - below == above - a && (lo & 1)))
        r = (uint16_t)(lo + 1);
    return sign | r;
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c"))) static float f16c_to_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}
__attribute__((target("f16c"))) static uint16_t f16c_from_f32(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void check_to_f16(float f, int have_f16c)
{
    uint16_t got = kvt_f32_to_f16(f);
    if (isnan(f)) {
        assert_true(f16_isnan(got));
        assert_int_equal(got & 0x8000, signbit(f) ? 0x8000 : 0);
    } else if (got != f16_oracle(f)) {
        fail_msg("kvt_f32_to_f16(%a) = %#x, want %#x", (double)f, got, f16_oracle(f));
    }
#if defined(__x86_64__)
    if (have_f16c && got != f16c_from_f32(f))
        fail_msg("kvt_f32_to_f16(%a) = %#x, vcvtps2ph %#x", (double)f, got, f16c_from_f32(f));
#endif
    (void)have_f16c;
}

/* fp16 -> fp32 on all 65536 inputs against the definition (and F16C where the CPU has it);
 * fp32 -> fp16 on every fp16 value, its float neighbours, the midpoints to the next fp16 and
 * their neighbours (where rounding decides), and a sweep of 2^20 bit patterns across all floats,
 * against a search-based oracle and the F16C instruction. */
static void test_half(void **state)
{
    (void)state;
    int have_f16c = 0;
#if defined(__x86_64__)
    have_f16c = cpu_f16c();
#endif
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kvt_f16_to_f32((uint16_t)h);
        if (f16_isnan((uint16_t)h)) {
            /* Sign and payload kept, in the top of the mantissa; made quiet. */
            assert_int_equal(f32_bits(f),
                             ((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x3ffu) << 13));
        } else if ((h & 0x7fffu) == 0x7c00u) {
            assert_true(isinf(f) && (signbit(f) != 0) == ((h & 0x8000u) != 0));
        } else {
            assert_true((double)f == f16_value((uint16_t)h));
            assert_true((signbit(f) != 0) == ((h & 0x8000u) != 0));
        }
#if defined(__x86_64__)
        if (have_f16c)
            assert_int_equal(f32_bits(f), f32_bits(f16c_to_f32((uint16_t)h)));
#endif
        if (!f16_isnan((uint16_t)h))
            assert_int_equal(kvt_f32_to_f16(f), h); /* exact values come back unchanged */
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        if (f16_isnan((uint16_t)h) || (h & 0x7fffu) >= 0x7c00u)
            continue;
        float f = kvt_f16_to_f32((uint16_t)h);
        check_to_f16(nextafterf(f, INFINITY), have_f16c);
        check_to_f16(nextafterf(f, -INFINITY), have_f16c);
        /* The midpoint to the next fp16 of the same sign (exact in fp32) and its neighbours. */
        float next = (h & 0x7fffu) == 0x7bffu ? (signbit(f) ? -65536.0f : 65536.0f)
                                              : kvt_f16_to_f32((uint16_t)(h + 1));
        float mid = (float)(((double)f + (double)next) / 2);
        check_to_f16(mid, have_f16c);
        check_to_f16(nextafterf(mid, INFINITY), have_f16c);
        check_to_f16(nextafterf(mid, -INFINITY), have_f16c);
    }
    for (uint64_t u = 0; u < (1ull << 32); u += 4093)
        check_to_f16(bits_f32((uint32_t)u), have_f16c);
    const float specials[] = {0.0f,       -0.0f,     INFINITY,     -INFINITY,
                              65504.0f,   65519.99f, 65520.0f,     1e30f,
                              -1e-30f,    0x1p-24f,  0x1p-25f,     0x1.000002p-25f,
                              0x1.8p-25f, 0x1p-14f,  0x1.ff8p-15f, 0x1.ffcp-15f};
    for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
        check_to_f16(specials[i], have_f16c);
    /* NaNs: quiet, sign and the top payload bits kept (signalling ones made quiet). */
    assert_int_equal(kvt_f32_to_f16(bits_f32(0x7fc00000u)), 0x7e00);
    assert_int_equal(kvt_f32_to_f16(bits_f32(0xffc00000u)), 0xfe00);
    assert_int_equal(kvt_f32_to_f16(bits_f32(0x7f800001u)), 0x7e00);
    assert_int_equal(kvt_f32_to_f16(bits_f32(0x7fa02000u)), 0x7f01);
    assert_int_equal(kvt_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(kvt_f32_to_f16(0.1f), 0x2e66);
    assert_int_equal(kvt_f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie: to the even mantissa */
    assert_int_equal(kvt_f32_to_f16(1.0f + 0x1.8p-10f), 0x3c02);
}

/* ---- sums ---------------------------------------------------------------------------------- */

static void test_sum_reference_cases(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    float s[4];
    /* Channel 0: 1 + 2 + 0.5. Channel 1: -0 + -0 from +0 is +0. Channel 2: +inf + -inf is a
     * NaN. Channel 3: subnormals add exactly (3 * 2^-24). */
    const uint16_t rows[3][4] = {
        {0x3c00, 0x8000, 0x7c00, 0x0001},
        {0x4000, 0x8000, 0xfc00, 0x0001},
        {0x3800, 0x8000, 0x3c00, 0x0001},
    };
    ref->sum_f16(&rows[0][0], 3, 4, 4, s);
    assert_true(s[0] == 3.5f);
    assert_int_equal(f32_bits(s[1]), 0);
    assert_true(isnan(s[2]));
    assert_true(s[3] == 0x1.8p-23f);
    /* Row order from +0.0: 65504, then four of 0.000999 (each under half an fp32 ulp of 65504,
     * so each addition rounds back to 65504), then -65504: exactly +0. Any other order (the
     * small values first, or pairwise) keeps some of them. */
    const uint16_t order[6][2] = {{0x7bff, 0x1418}, {0x1418, 0x1418}, {0x1418, 0x1418},
                                  {0x1418, 0x1418}, {0x1418, 0x1418}, {0xfbff, 0x1418}};
    ref->sum_f16(&order[0][0], 6, 2, 1, s);
    assert_int_equal(f32_bits(s[0]), 0);
    ref->sum_f16(&order[0][1], 6, 2, 1, s); /* the second column alone, stride 2 */
    assert_true(s[0] == 6.0f * kvt_f16_to_f32(0x1418));
    /* n == 0: every channel is +0.0. */
    s[0] = s[1] = 5.0f;
    ref->sum_f16(NULL, 0, 4, 2, s);
    assert_int_equal(f32_bits(s[0]), 0);
    assert_int_equal(f32_bits(s[1]), 0);
}

static void test_sum_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const size_t ns[] = {0, 1, 2, 3, 16, 33, 257};
    const size_t dims[] = {1,  3,  7,   8,   15,  16,  17,  31,  33,  63,
                           64, 65, 127, 128, 129, 200, 256, 513, 1043};
    enum { DIM_MAX = 1043, N_MAX = 257, PAD = 9 };
    const size_t elems = (size_t)N_MAX * (DIM_MAX + PAD) + 8;
    uint16_t *x = malloc(elems * sizeof(uint16_t));
    static float want[DIM_MAX], got[DIM_MAX + 2];
    assert_non_null(x);
    for (int kind = 0; kind < 2; kind++) {
        /* kind 0: narrow values like real KV (NaN-free sums that must match bit for bit);
         * kind 1: with every special value mixed in. */
        fill_keys(x, elems, kind ? 123 : 321);
        if (!kind)
            for (size_t i = 0; i < elems; i++)
                if ((x[i] & 0x7c00u) == 0x7c00u)
                    x[i] = (uint16_t)(x[i] & 0x83ffu); /* NaN/inf -> a subnormal or zero */
        for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
            for (size_t b = 0; b < sizeof(dims) / sizeof(dims[0]); b++) {
                for (size_t pad = 0; pad <= PAD; pad += 3) {
                    size_t n = ns[a], d = dims[b], stride = d + pad;
                    const uint16_t *base = x + (pad ? 1 : 0);
                    t[0]->sum_f16(base, n, stride, d, want);
                    for (size_t v = 1; v < count; v++) {
                        for (size_t c = 0; c < d + 2; c++)
                            got[c] = 12345.0f;
                        t[v]->sum_f16(base, n, stride, d, got);
                        for (size_t c = 0; c < d; c++)
                            if (!same_float(got[c], want[c]))
                                fail_msg("%s sum n=%zu dim=%zu stride=%zu channel %zu: %a, want %a",
                                         t[v]->name, n, d, stride, c, (double)got[c],
                                         (double)want[c]);
                        assert_true(got[d] == 12345.0f && got[d + 1] == 12345.0f);
                    }
                }
            }
        }
    }
    free(x);
}

/* ---- the Quest bound ----------------------------------------------------------------------- */

/* fp16 bounds of a span of n keys (key r at keys + r*stride) in the layout of bound_f16, from
 * the reference min/max (exact, so converting back to fp16 is exact too). */
static void make_bounds(const uint16_t *keys, size_t n, size_t stride, size_t head_dim,
                        uint16_t *out)
{
    float mn[1100], mx[1100];
    assert_true(head_dim <= 1100);
    kvt_kernels_variant(KVT_KERNELS_REF)->abstract_minmax_f16(keys, n, stride, head_dim, mn, mx);
    for (size_t i = 0; i < head_dim; i++) {
        out[i] = kvt_f32_to_f16(mn[i]);
        out[head_dim + i] = kvt_f32_to_f16(mx[i]);
    }
}

static void test_bound_reference_cases(void **state)
{
    (void)state;
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    float out[4];
    /* head_dim 2, min (-1, 1), max (3, 4). q = (2, -1): max(-2, 6) + max(-1, -4) = 5;
     * q = (-1, 1): max(1, -3) + max(1, 4) = 5; q = (0.5, 0.25): max(-0.5, 1.5) + max(0.25, 1). */
    const uint16_t b2[4] = {0xbc00, 0x3c00, 0x4200, 0x4400}; /* min -1, 1; max 3, 4 */
    const float q2[3][2] = {{2.0f, -1.0f}, {-1.0f, 1.0f}, {0.5f, 0.25f}};
    ref->bound_f16(&q2[0][0], 1, b2, 1, 4, 2, out);
    assert_true(out[0] == 5.0f);
    ref->bound_f16(&q2[1][0], 1, b2, 1, 4, 2, out);
    assert_true(out[0] == 5.0f);
    ref->bound_f16(&q2[2][0], 1, b2, 1, 4, 2, out);
    assert_true(out[0] == 2.5f); /* 1.5 + 1 */
    /* The group's bound is the largest of its queries' bounds: 5, 5, 2.5 -> 5; and q=(0,0)
     * gives +0 (every product a zero). */
    ref->bound_f16(&q2[0][0], 3, b2, 1, 4, 2, out);
    assert_true(out[0] == 5.0f);
    const float qz[2] = {0.0f, -0.0f};
    ref->bound_f16(qz, 1, b2, 1, 4, 2, out);
    assert_int_equal(f32_bits(out[0]), 0);
    /* Two spans at a stride of 6 elements; the second has no keys (min +inf, max -inf), and
     * no queries at all gives -inf everywhere. */
    const uint16_t two[12] = {0xbc00, 0x3c00, 0x4200, 0x4400, 0xdead, 0xbeef,
                              0x7c00, 0x7c00, 0xfc00, 0xfc00, 0,      0};
    ref->bound_f16(&q2[0][0], 2, two, 2, 6, 2, out);
    assert_true(out[0] == 5.0f);
    assert_true(isinf(out[1]) && out[1] < 0);
    ref->bound_f16(&q2[0][0], 0, two, 2, 6, 2, out);
    assert_true(isinf(out[0]) && out[0] < 0 && isinf(out[1]) && out[1] < 0);
    /* The order of kernels.h, worked out for head_dim 18 with q = 1 and min = max = v: lanes 0
     * and 1 take two channels each (0 and 16, 1 and 17), then the tree. The values (65504,
     * -65504 and 2^-10, under half an fp32 ulp of 65504) make a plain left-to-right sum give
     * 9 * 2^-10 where the specified order gives 15 * 2^-10. */
    uint16_t b18[36];
    float q18[18], v[18];
    for (int i = 0; i < 18; i++) {
        uint16_t h = i == 0 ? 0x7bff : i == 8 ? 0xfbff : 0x1400;
        b18[i] = b18[18 + i] = h;
        v[i] = kvt_f16_to_f32(h);
        q18[i] = 1.0f;
    }
    float acc[16];
    for (int k = 0; k < 16; k++)
        acc[k] = 0.0f + v[k];
    acc[0] += v[16];
    acc[1] += v[17];
    float r8[8], r4[4], r2[2];
    for (int k = 0; k < 8; k++)
        r8[k] = acc[k] + acc[k + 8];
    for (int k = 0; k < 4; k++)
        r4[k] = r8[k] + r8[k + 4];
    for (int k = 0; k < 2; k++)
        r2[k] = r4[k] + r4[k + 2];
    float want = r2[0] + r2[1], plain = 0.0f;
    for (int i = 0; i < 18; i++)
        plain += v[i];
    assert_true(want == 15 * 0x1p-10f && plain == 9 * 0x1p-10f); /* the orders differ */
    ref->bound_f16(q18, 1, b18, 1, 36, 18, out);
    assert_int_equal(f32_bits(out[0]), f32_bits(want));
}

/* Query values: mostly N(0,1)-like magnitudes of both signs, some zeros of both signs, some
 * large, some subnormal; with specials != 0, also NaN and infinities. */
static void fill_query(float *q, size_t count, uint64_t seed, int specials)
{
    for (size_t i = 0; i < count; i++) {
        uint64_t r = rng_next(&seed);
        double u = ((double)(r >> 11) + 0.5) / 9007199254740992.0;
        float f = (float)((u - 0.5) * 6.0);
        switch (r % 29) {
        case 0:
            f = (r >> 9) & 1 ? 0.0f : -0.0f;
            break;
        case 1:
            f *= 1000.0f;
            break;
        case 2:
            f = ldexpf(f, -140); /* subnormal */
            break;
        case 3:
            if (specials)
                f = (r >> 9) % 3 == 0 ? NAN : (r >> 9) % 3 == 1 ? INFINITY : -INFINITY;
            break;
        default:
            break;
        }
        q[i] = f;
    }
}

static void test_bound_variants(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const size_t dims[] = {1,  2,  7,   8,   15,  16,  17,  31,  32,
                           33, 64, 100, 127, 128, 129, 200, 256, 1043};
    const size_t nqs[] = {0, 1, 2, 3, 4, 5, 8};
    enum { DIM_MAX = 1043, SPANS = 37, Q_MAX = 8, KEYS_PER_SPAN = 9, PAD = 5 };
    const size_t span_stride_max = 2 * DIM_MAX + PAD;
    uint16_t *bounds = malloc((SPANS * span_stride_max + 8) * sizeof(uint16_t));
    uint16_t *keys = malloc((size_t)KEYS_PER_SPAN * DIM_MAX * sizeof(uint16_t));
    float *q = malloc((size_t)Q_MAX * DIM_MAX * sizeof(float) + 16);
    static float want[SPANS], got[SPANS + 2];
    assert_non_null(bounds);
    assert_non_null(keys);
    assert_non_null(q);
    uint64_t seed = 77;
    for (int kind = 0; kind < 2; kind++) {
        for (size_t b = 0; b < sizeof(dims) / sizeof(dims[0]); b++) {
            size_t d = dims[b];
            for (size_t pad = 0; pad <= PAD; pad += PAD) {
                size_t span_stride = 2 * d + pad;
                /* Spans of real min/max of random keys (kind 1: keys with every special value,
                 * queries with NaN and infinities); some spans empty, some raw random bits. */
                uint16_t *base = bounds + (pad ? 3 : 0);
                for (size_t s = 0; s < SPANS; s++) {
                    uint64_t r = rng_next(&seed);
                    if (kind && r % 11 == 0) {
                        fill_keys(base + s * span_stride, 2 * d, r);
                    } else {
                        size_t n = r % 7 == 0 ? 0 : 1 + r % KEYS_PER_SPAN;
                        fill_keys(keys, n * d, r >> 8);
                        if (!kind)
                            for (size_t i = 0; i < n * d; i++)
                                if ((keys[i] & 0x7c00u) == 0x7c00u)
                                    keys[i] = (uint16_t)(keys[i] & 0x83ffu);
                        make_bounds(keys, n, d, d, base + s * span_stride);
                    }
                }
                for (size_t e = 0; e < sizeof(nqs) / sizeof(nqs[0]); e++) {
                    size_t nq = nqs[e];
                    /* An unaligned query on padded rounds. */
                    float *qb = q + (pad ? 1 : 0);
                    fill_query(qb, nq * d, rng_next(&seed), kind);
                    t[0]->bound_f16(qb, nq, base, SPANS, span_stride, d, want);
                    for (size_t v = 1; v < count; v++) {
                        for (size_t s = 0; s < SPANS + 2; s++)
                            got[s] = 12345.0f;
                        t[v]->bound_f16(qb, nq, base, SPANS, span_stride, d, got);
                        for (size_t s = 0; s < SPANS; s++)
                            if (!same_float(got[s], want[s]))
                                fail_msg("%s bound kind=%d dim=%zu stride=%zu n_q=%zu span %zu: "
                                         "%a, want %a",
                                         t[v]->name, kind, d, span_stride, nq, s, (double)got[s],
                                         (double)want[s]);
                        assert_true(got[SPANS] == 12345.0f);
                        /* Fewer spans (and none) stop where they should. */
                        got[3] = 12345.0f;
                        t[v]->bound_f16(qb, nq, base, 3, span_stride, d, got);
                        assert_true(got[3] == 12345.0f);
                        t[v]->bound_f16(qb, nq, base, 0, span_stride, d, got + 3);
                        assert_true(got[3] == 12345.0f);
                    }
                }
            }
        }
    }
    free(bounds);
    free(keys);
    free(q);
}

/* The bound is an upper bound: for random spans of finite keys (subnormals, zeros of both signs
 * and the largest fp16 values included) and random queries, the kernel's fp32 bound is never
 * below the exact max over the span's keys and the group's queries of q.k, computed in double
 * (each product of an fp32 and an fp16 is exact in double, summed with compensation).
 *
 * The tolerance is only what the bound's own fp32 arithmetic can lose. In exact arithmetic
 * B = sum_i t_i with t_i = max(q_i m_i, q_i M_i) >= q.k for every key k of the span. The kernel
 * rounds each product once (the max picks one rounded product) and each term then goes through
 * at most d = ceil(head_dim / 16) + 4 additions (its lane, then the tree), so by the standard
 * bound on recursive summation |fl(B) - B| <= gamma_(d+1) * sum_i |t_i|, gamma_m = m u / (1 - m u),
 * u = 2^-24; a product in the subnormal range adds at most 2^-150 of absolute error each. The
 * test allows exactly that, computed per span and query; no relative slack on the true maximum
 * itself. (It holds while no product or partial sum overflows fp32, as with real queries.)
 * A wrong bound (sum of q_i M_i, ignoring the sign of q) must fail the same check somewhere, so
 * the check is known to be able to fail. */
/* q.k in double with compensated (Neumaier) summation: each product of an fp32 and an fp16 is
 * exact in double, and the compensation keeps the sum's error near one double rounding. */
static double exact_dot(const float *q, const uint16_t *k, size_t d)
{
    double sum = 0, comp = 0;
    for (size_t i = 0; i < d; i++) {
        double x = (double)q[i] * f16_value(k[i]), t = sum + x;
        comp += fabs(sum) >= fabs(x) ? (sum - t) + x : (x - t) + sum;
        sum = t;
    }
    return sum + comp;
}

static void test_bound_property(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    enum { DIM_MAX = 129, KEYS_MAX = 64, NQ_MAX = 4 };
    const size_t dims[] = {1, 7, 16, 64, 128, 129};
    static uint16_t keys[KEYS_MAX * DIM_MAX], bnd[2 * DIM_MAX];
    static float q[NQ_MAX * DIM_MAX];
    uint64_t seed = 4242;
    size_t wrong_caught = 0, cases = 0;
    for (int round = 0; round < 400; round++) {
        size_t d = dims[round % 6], n = 1 + rng_next(&seed) % KEYS_MAX;
        size_t nq = 1 + rng_next(&seed) % NQ_MAX;
        for (size_t i = 0; i < n * d; i++) {
            uint64_t r = rng_next(&seed);
            uint16_t h;
            if (r % 23 == 0)
                h = (uint16_t)((r >> 8) & 0x83ffu); /* subnormal or zero, either sign */
            else if (r % 31 == 0)
                h = (r >> 8) & 1 ? 0x7bff : 0xfbff; /* +-65504 */
            else
                h = (uint16_t)(((r >> 20) & 0x3ff) | ((8 + (r >> 30) % 10) << 10) |
                               (((r >> 40) & 1) << 15));
            keys[i] = h;
        }
        fill_query(q, nq * d, rng_next(&seed), 0);
        make_bounds(keys, n, d, d, bnd);
        /* Per query j: the exact best q_j.k over the span, the tolerance of the bound's own
         * sum for q_j, and the sign-blind bound. The kernel's result is the max over j of its
         * fp32 sums, so it must be at least best_j - tol_j for every j. */
        float got[8];
        for (size_t v = 0; v < count; v++)
            t[v]->bound_f16(q, nq, bnd, 1, 2 * d, d, &got[v]);
        int caught = 0;
        for (size_t j = 0; j < nq; j++) {
            const float *qj = q + j * d;
            double best = -INFINITY, mag = 0, wrong = 0;
            for (size_t r = 0; r < n; r++) {
                double dot = exact_dot(qj, keys + r * d, d);
                best = dot > best ? dot : best;
            }
            for (size_t i = 0; i < d; i++) {
                double lo = (double)qj[i] * f16_value(bnd[i]);
                double hi = (double)qj[i] * f16_value(bnd[d + i]);
                mag += fabs(lo > hi ? lo : hi);
                wrong += hi;
            }
            double m = (double)((d + 15) / 16 + 5), u = 0x1p-24;
            double tol = m * u / (1 - m * u) * mag + (double)d * 0x1p-150;
            for (size_t v = 0; v < count; v++)
                if ((double)got[v] < best - tol)
                    fail_msg("%s: bound %a below the true max %a of query %zu (tolerance %a), dim "
                             "%zu, %zu keys, %zu queries",
                             t[v]->name, (double)got[v], best, j, tol, d, n, nq);
            caught |= wrong < best - tol;
            /* A span of one key: the bound is q.k itself, up to the same tolerance. */
            if (n == 1 && nq == 1)
                assert_true(fabs((double)got[0] - best) <= tol);
        }
        wrong_caught += (size_t)caught;
        cases++;
    }
    print_message("bound >= true max on %zu cases; the sign-blind bound failed %zu of them\n",
                  cases, wrong_caught);
    assert_true(wrong_caught > cases / 10);
}

/* ---- top-k --------------------------------------------------------------------------------- */

static const float *g_oracle_score;

/* The ranking of kernels.h as a qsort order: larger first, NaN last, ties (-0 == +0 included)
 * by lower index. */
static int oracle_cmp(const void *pa, const void *pb)
{
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    float x = g_oracle_score[a], y = g_oracle_score[b];
    int xn = isnan(x), yn = isnan(y);
    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x != y)
        return x > y ? -1 : 1;
    return a < b ? -1 : a > b;
}

static void fill_scores(float *s, size_t n, uint64_t seed, int kind)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(&seed);
        switch (kind) {
        case 0: /* distinct-ish values */
            s[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 200.0 - 100.0);
            break;
        case 3: /* ascending, then descending ramps with repeats: a quicksort's worst inputs */
            s[i] = (float)(i / 3);
            break;
        case 4:
            s[i] = -(float)(i / 2);
            break;
        case 1: /* few distinct values: many ties, and +0 / -0 */
            s[i] = (float)((int)(r % 7) - 3);
            if (s[i] == 0.0f && (r >> 20) & 1)
                s[i] = -0.0f;
            break;
        default: /* every special */
            switch (r % 9) {
            case 0:
                s[i] = (r >> 9) & 1 ? NAN : -NAN;
                break;
            case 1:
                s[i] = (r >> 9) & 1 ? INFINITY : -INFINITY;
                break;
            case 2:
                s[i] = (r >> 9) & 1 ? 0.0f : -0.0f;
                break;
            case 3:
                s[i] = ldexpf(1.0f, -149) * (float)((r >> 9) % 5);
                break;
            default:
                s[i] = (float)((int)(r % 2001) - 1000) / 8.0f;
                break;
            }
            break;
        }
    }
}

static void test_topk(void **state)
{
    (void)state;
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    const size_t ns[] = {0, 1, 2, 3, 10, 17, 100, 1000, 4096, 100003};
    enum { N_MAX = 100003 };
    float *s = malloc(N_MAX * sizeof(float));
    uint32_t *order = malloc(N_MAX * sizeof(uint32_t)),
             *got = malloc((N_MAX + 4) * sizeof(uint32_t));
    assert_non_null(s);
    assert_non_null(order);
    assert_non_null(got);
    uint64_t seed = 9;
    for (int kind = 0; kind < 5; kind++) {
        for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
            size_t n = ns[a];
            fill_scores(s, n, rng_next(&seed), kind);
            for (size_t i = 0; i < n; i++)
                order[i] = (uint32_t)i;
            g_oracle_score = s;
            qsort(order, n, sizeof(uint32_t), oracle_cmp);
            const size_t ks[] = {0, 1, 2, n / 5, n > 0 ? n - 1 : 0, n, n + 1, n + 1000};
            for (size_t b = 0; b < sizeof(ks) / sizeof(ks[0]); b++) {
                size_t k = ks[b], want = k < n ? k : n;
                for (size_t v = 0; v < count; v++) {
                    for (size_t i = 0; i < want + 4; i++)
                        got[i] = 0xdeadbeef;
                    assert_int_equal(t[v]->topk_f32(s, n, k, got), want);
                    for (size_t i = 0; i < want; i++)
                        if (got[i] != order[i])
                            fail_msg("%s topk kind=%d n=%zu k=%zu: rank %zu is %u (%a), want %u "
                                     "(%a)",
                                     t[v]->name, kind, n, k, i, got[i], (double)s[got[i]], order[i],
                                     (double)s[order[i]]);
                    for (size_t i = want; i < want + 4; i++)
                        assert_int_equal(got[i], 0xdeadbeef);
                }
            }
        }
    }
    /* Hand-worked: NaN below -inf, ties to the lower index, -0 ties with +0. */
    const float h[7] = {1.0f, NAN, -INFINITY, 1.0f, -0.0f, 0.0f, 2.0f};
    uint32_t idx[7];
    assert_int_equal(t[0]->topk_f32(h, 7, 7, idx), 7);
    const uint32_t want_h[7] = {6, 0, 3, 4, 5, 2, 1};
    for (int i = 0; i < 7; i++)
        assert_int_equal(idx[i], want_h[i]);
    assert_int_equal(t[0]->topk_f32(h, 7, 0, NULL), 0);
    free(s);
    free(order);
    free(got);
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

#ifdef HAVE_CUDA
/* The sparse-retrieval kernels on the device against the reference: span abstracts (bounds and
 * sums) for batches of spans of varied sizes (empty ones included) over keys with every special
 * value, the bound on random spans and queries, top-k with ties and NaNs up to 300000 scores. */
static void cuda_sparse_cases(void)
{
    const struct kvt_kernels *ref = kvt_kernels_variant(KVT_KERNELS_REF);
    const size_t dims[] = {1, 7, 16, 64, 128, 129};
    enum { SPANS = 300, DIM_MAX = 129, ROWS_MAX = SPANS * 200 };
    const size_t elems = (size_t)(ROWS_MAX + 1) * (DIM_MAX + 6);
    uint16_t *keys = malloc(elems * sizeof(uint16_t));
    assert_non_null(keys);
    fill_keys(keys, elems, 5);
    uint32_t off[SPANS + 1];
    uint16_t *bnd = malloc((size_t)SPANS * (2 * DIM_MAX + 6) * sizeof(uint16_t));
    float *sums = malloc((size_t)SPANS * DIM_MAX * sizeof(float));
    float *q = malloc(8 * DIM_MAX * sizeof(float)), *want = malloc(SPANS * sizeof(float));
    float *got = malloc(SPANS * sizeof(float)), mn[DIM_MAX], mx[DIM_MAX], sm[DIM_MAX];
    assert_true(bnd && sums && q && want && got);
    uint64_t seed = 31;
    for (size_t b = 0; b < sizeof(dims) / sizeof(dims[0]); b++) {
        for (size_t pad = 0; pad <= 6; pad += 6) {
            size_t d = dims[b], stride = d + pad, span_stride = 2 * d + pad, rows = 0;
            off[0] = 0;
            for (size_t s = 0; s < SPANS; s++) {
                uint64_t r = rng_next(&seed);
                rows += r % 9 == 0 ? 0 : r % 5 == 0 ? 1 + r % 200 : 1 + r % 32;
                off[s + 1] = (uint32_t)rows;
            }
            assert_true((rows + 1) * stride <= elems);
            assert_int_equal(
                kvt_kcuda_abstract_spans_f16(keys, stride, d, off, SPANS, bnd, span_stride, sums),
                0);
            for (size_t s = 0; s < SPANS; s++) {
                const uint16_t *x = keys + (size_t)off[s] * stride;
                size_t n = off[s + 1] - off[s];
                ref->abstract_minmax_f16(x, n, stride, d, mn, mx);
                ref->sum_f16(x, n, stride, d, sm);
                for (size_t c = 0; c < d; c++) {
                    assert_int_equal(bnd[s * span_stride + c], kvt_f32_to_f16(mn[c]));
                    assert_int_equal(bnd[s * span_stride + d + c], kvt_f32_to_f16(mx[c]));
                    if (!same_float(sums[s * d + c], sm[c]))
                        fail_msg("cuda sum dim=%zu span %zu channel %zu: %a, want %a", d, s, c,
                                 (double)sums[s * d + c], (double)sm[c]);
                }
            }
            /* Only the sums, into the same layout. */
            assert_int_equal(
                kvt_kcuda_abstract_spans_f16(keys, stride, d, off, SPANS, NULL, 0, sums), 0);
            /* The bound over those spans (real abstracts, empty spans included), then over raw
             * random bounds with NaN and infinities, for groups of 1 to 8 queries. */
            for (int kind = 0; kind < 2; kind++) {
                if (kind)
                    fill_keys(bnd, (SPANS - 1) * span_stride + 2 * d, rng_next(&seed));
                for (size_t nq = 0; nq <= 8; nq += nq < 5 ? 1 : 3) {
                    fill_query(q, nq * d, rng_next(&seed), kind);
                    ref->bound_f16(q, nq, bnd, SPANS, span_stride, d, want);
                    assert_int_equal(kvt_kcuda_bound_f16(q, nq, bnd, SPANS, span_stride, d, got),
                                     0);
                    for (size_t s = 0; s < SPANS; s++)
                        if (!same_float(got[s], want[s]))
                            fail_msg("cuda bound dim=%zu n_q=%zu span %zu: %a, want %a", d, nq, s,
                                     (double)got[s], (double)want[s]);
                }
            }
        }
    }
    enum { N_MAX = 300000 };
    float *sc = malloc(N_MAX * sizeof(float));
    uint32_t *wi = malloc(N_MAX * sizeof(uint32_t)), *gi = malloc(N_MAX * sizeof(uint32_t));
    assert_true(sc && wi && gi);
    const size_t ns[] = {1, 2, 1000, 65536, N_MAX};
    for (int kind = 0; kind < 3; kind++) {
        for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
            size_t n = ns[a];
            fill_scores(sc, n, rng_next(&seed), kind);
            const size_t ks[] = {0, 1, n / 5, n, n + 3};
            for (size_t b = 0; b < sizeof(ks) / sizeof(ks[0]); b++) {
                size_t k = ks[b], m = ref->topk_f32(sc, n, k, wi);
                assert_int_equal(kvt_kcuda_topk_f32(sc, n, k, gi), 0);
                for (size_t i = 0; i < m; i++)
                    if (gi[i] != wi[i])
                        fail_msg("cuda topk kind=%d n=%zu k=%zu rank %zu: %u, want %u", kind, n, k,
                                 i, gi[i], wi[i]);
            }
        }
    }
    free(sc);
    free(wi);
    free(gi);
    free(keys);
    free(bnd);
    free(sums);
    free(q);
    free(want);
    free(got);
}
#endif

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
        uint32_t off[2] = {0, 1}, idx[1];
        uint16_t bnd[8];
        float q[4] = {0}, sc[1] = {0};
        size_t bytes = 0;
        assert_int_equal(kvt_kcuda_abstract_spans_f16(k, 4, 4, off, 1, bnd, 8, mn), -ENODEV);
        assert_int_equal(kvt_kcuda_bound_f16(q, 1, bnd, 1, 8, 4, sc), -ENODEV);
        assert_int_equal(kvt_kcuda_topk_scratch_bytes(1, &bytes), -ENODEV);
        assert_int_equal(kvt_kcuda_topk_f32(sc, 1, 1, idx), -ENODEV);
        /* Bad arguments are refused before the device is looked for. */
        assert_int_equal(kvt_kcuda_bound_f16(q, 1, bnd, 1, 7, 4, sc), KVT_E_INVAL);
        off[0] = 2;
        assert_int_equal(kvt_kcuda_abstract_spans_f16(k, 4, 4, off, 1, bnd, 8, mn), KVT_E_INVAL);
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
    free(w8);
    free(g8);
    cuda_sparse_cases();
    print_message("CUDA min/max, shuffles, span abstracts, bound and top-k match the reference\n");
    free(keys);
#endif
}

/* The thread's CPU time: on a shared machine it leaves out the time other processes held the
 * core, which wall time would charge to the kernel. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

enum bench_kernel {
    BK_SHUFFLE2,
    BK_UNSHUFFLE2,
    BK_SHUFFLE4,
    BK_UNSHUFFLE4,
    BK_MINMAX,
    BK_SUM,
    BK_BOUND,
    BK_COUNT
};

/* Input GB/s of one kernel on n bytes, over a working set of `set` bytes split into buffers of
 * n (set == n: the same buffer every time, cache-resident when small). Best of 5 runs of about
 * 0.1 s: the machine is shared and the best run is the least disturbed. */
static double bench_one(const struct kvt_kernels *k, enum bench_kernel which, const uint8_t *src,
                        uint8_t *dst, size_t set, size_t n)
{
    double best = 0;
    float mn[128], mx[128];
    static float q[4 * 128], scores[(4u << 20) / 512];
    for (int i = 0; i < 4 * 128; i++)
        q[i] = (float)((i * 37) % 19) - 9.0f;
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
                case BK_SUM:
                    k->sum_f16((const uint16_t *)(const void *)s, n / 256, 128, 128, mn);
                    d[0] = (uint8_t)mn[0];
                    break;
                case BK_BOUND:
                    /* Spans of head_dim 128 bounds (512 bytes each), a group of 4 queries. */
                    k->bound_f16(q, 4, (const uint16_t *)(const void *)s, n / 512, 256, 128,
                                 scores);
                    d[0] = (uint8_t)scores[0];
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
    static const char *const names[BK_COUNT] = {
        "shuffle2", "unshuffle2", "shuffle4", "unshuffle4", "minmax_f16", "sum_f16", "bound_f16"};
    const size_t set = 256u << 20; /* for the 4 MiB case: beyond the last-level cache */
    uint8_t *src = malloc(set), *dst = malloc(set);
    assert_non_null(src);
    assert_non_null(dst);
    fill_keys((uint16_t *)(void *)src, set / 2, 1);
    memset(dst, 0, set);
    const struct kvt_kernels *t[KVT_KERNELS_VARIANT_COUNT];
    size_t count = supported(t);
    printf("# kernel GB/s of input (thread CPU time), best of 5; 64 KiB: one buffer (in cache), "
           "4 MiB: %zu MiB "
           "working set; min/max and sum: head_dim 128; bound: head_dim 128, 4 queries\n",
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
        cmocka_unit_test(test_half),
        cmocka_unit_test(test_sum_reference_cases),
        cmocka_unit_test(test_sum_variants),
        cmocka_unit_test(test_bound_reference_cases),
        cmocka_unit_test(test_bound_variants),
        cmocka_unit_test(test_bound_property),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_force),
        cmocka_unit_test(test_cuda),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
