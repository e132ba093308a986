/*
 * IEEE binary16 (fp16) <-> binary32 conversion, one definition for the whole tree: the kernels,
 * the daemon (abstracts, queries) and the engine (engine/quant.c's kvt_eng_fp16_to_fp32 and
 * kvt_eng_fp32_to_fp16 are these) all convert with it, so a value converted anywhere has the
 * same bits. Header-only and dependency-free, so a module that links no kernel archive (the
 * engine) can use it too.
 *
 * Both directions give what the F16C instructions give (vcvtph2ps, and vcvtps2ph with round to
 * nearest even); tests/unit/test_kernels.c checks that against the instructions.
 */
#ifndef KVT_KERNELS_HALF_H
#define KVT_KERNELS_HALF_H

#include <stdint.h>
#include <string.h>

/* Exact: every fp16 value, subnormals and infinities included, is an fp32 value. A NaN keeps
 * its sign and payload (the payload moves to the top of the fp32 mantissa) and is made quiet. */
static inline float kvt_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        /* A NaN is made quiet, as vcvtph2ps does; infinities have no mantissa bits. */
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
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

/* Round to nearest, ties to even. Magnitudes from 65520 on become infinity; below 2^-14 the
 * result is a subnormal or zero (rounded the same way); infinities stay infinities. A NaN stays
 * a NaN of the same sign, made quiet, with the top 9 bits of its payload (as vcvtps2ph does). */
static inline uint16_t kvt_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((absx & 0x7fffffu) >> 13));
    if (absx >= 0x477ff000u) /* 65520 and above, and infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) {    /* below 2^-14: an fp16 subnormal or zero */
        if (absx <= 0x33000000u) /* at most 2^-25: ties to even gives zero */
            return sign;
        uint32_t e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e, r = m >> shift, rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u)))
            r++;
        return (uint16_t)(sign | r);
    }
    /* Normal: rebias the exponent and round the 13 dropped mantissa bits; a carry out of the
     * mantissa correctly bumps the exponent (up to infinity at the top). */
    uint32_t r = (((absx >> 23) - 112u) << 10) | ((absx & 0x7fffffu) >> 13), rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
        r++;
    return (uint16_t)(sign | r);
}

#endif
