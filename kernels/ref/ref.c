/*
 * The reference kernels: portable C, written for obviousness rather than speed. Every other
 * variant is tested to give the same bytes as these, and the SIMD versions call them for the
 * tails that do not fill a vector.
 */
#include <string.h>

#include "kernels/internal.h"

float kvt__kernels_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (!man) {
        bits = sign;
    } else {
        /* Subnormal: man * 2^-24. Normalise so the leading one becomes the implicit bit. */
        exp = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

void kvt__kernels_copy_ref(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

void kvt__kernels_shuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from, uint8_t *d)
{
    for (size_t i = from; i < n; i++)
        for (uint32_t b = 0; b < w; b++)
            d[b * n + i] = s[i * w + b];
}

void kvt__kernels_unshuffle_ref_from(const uint8_t *s, size_t n, uint32_t w, size_t from,
                                     uint8_t *d)
{
    for (size_t i = from; i < n; i++)
        for (uint32_t b = 0; b < w; b++)
            d[i * w + b] = s[b * n + i];
}

static void shuffle_ref(const void *src, size_t len, uint32_t w, void *dst)
{
    size_t n = len / w;
    kvt__kernels_shuffle_ref_from(src, n, w, 0, dst);
    memcpy((uint8_t *)dst + n * w, (const uint8_t *)src + n * w, len - n * w);
}

static void unshuffle_ref(const void *src, size_t len, uint32_t w, void *dst)
{
    size_t n = len / w;
    kvt__kernels_unshuffle_ref_from(src, n, w, 0, dst);
    memcpy((uint8_t *)dst + n * w, (const uint8_t *)src + n * w, len - n * w);
}

void kvt__kernels_shuffle2_ref(const void *src, size_t len, void *dst)
{
    shuffle_ref(src, len, 2, dst);
}

void kvt__kernels_unshuffle2_ref(const void *src, size_t len, void *dst)
{
    unshuffle_ref(src, len, 2, dst);
}

void kvt__kernels_shuffle4_ref(const void *src, size_t len, void *dst)
{
    shuffle_ref(src, len, 4, dst);
}

void kvt__kernels_unshuffle4_ref(const void *src, size_t len, void *dst)
{
    unshuffle_ref(src, len, 4, dst);
}

/* The minimum and maximum are taken over order keys rather than floats: integer comparison is a
 * total order, so -0.0 against +0.0 and the NaN rule come out the same in every variant, where
 * float min/max instructions differ on both. */
void kvt__kernels_minmax_f16_ref_cols(const uint16_t *keys, size_t n, size_t stride, size_t c0,
                                      size_t c1, float *min_out, float *max_out)
{
    for (size_t c = c0; c < c1; c++) {
        int16_t lo = KVT__KERNELS_KEY_PINF, hi = KVT__KERNELS_KEY_NINF;
        for (size_t r = 0; r < n; r++) {
            uint16_t h = keys[r * stride + c];
            if (kvt__kernels_f16_isnan(h))
                continue;
            int16_t k = kvt__kernels_f16_key(h);
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
        }
        min_out[c] = kvt__kernels_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)lo));
        max_out[c] = kvt__kernels_f16_to_f32((uint16_t)kvt__kernels_f16_key((uint16_t)hi));
    }
}

void kvt__kernels_abstract_minmax_f16_ref(const uint16_t *keys, size_t n, size_t stride,
                                          size_t head_dim, float *min_out, float *max_out)
{
    kvt__kernels_minmax_f16_ref_cols(keys, n, stride, 0, head_dim, min_out, max_out);
}

const struct kvt_kernels kvt__kernels_ref = {
    .variant = KVT_KERNELS_REF,
    .name = "ref",
    .copy = kvt__kernels_copy_ref,
    .copy_stream = kvt__kernels_copy_ref,
    .shuffle2 = kvt__kernels_shuffle2_ref,
    .unshuffle2 = kvt__kernels_unshuffle2_ref,
    .shuffle4 = kvt__kernels_shuffle4_ref,
    .unshuffle4 = kvt__kernels_unshuffle4_ref,
    .abstract_minmax_f16 = kvt__kernels_abstract_minmax_f16_ref,
};
