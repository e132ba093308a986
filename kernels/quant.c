/*
 * The quantization format's helpers (kernels/quant.h): checking a format, the sizes of a packed
 * block, and the one definition of a group's scale, which every variant's quantize calls.
 */
#include "kernels/quant.h"
#include "kernels/half.h"
#include "kvtier/errors.h"

int kvt_quant_fmt_check(const struct kvt_quant_fmt *f)
{
    if (!f || (f->bits != 8 && f->bits != 4) ||
        (f->axis != KVT_QUANT_AXIS_TOKEN && f->axis != KVT_QUANT_AXIS_CHANNEL))
        return KVT_E_INVAL;
    if (f->head_dim < 2 || f->head_dim > KVT_QUANT_HEAD_DIM_MAX || f->head_dim % 2)
        return KVT_E_INVAL;
    if (f->group < 2 || f->group > KVT_QUANT_GROUP_MAX || f->group % 2)
        return KVT_E_INVAL;
    if (f->axis == KVT_QUANT_AXIS_TOKEN && f->head_dim % f->group)
        return KVT_E_INVAL;
    return 0;
}

size_t kvt_quant_groups(const struct kvt_quant_fmt *f, size_t n)
{
    if (f->axis == KVT_QUANT_AXIS_TOKEN)
        return n * (f->head_dim / f->group);
    return (n + f->group - 1) / f->group * f->head_dim;
}

size_t kvt_quant_code_bytes(const struct kvt_quant_fmt *f, size_t n)
{
    return n * f->head_dim * f->bits / 8;
}

size_t kvt_quant_bytes(const struct kvt_quant_fmt *f, size_t n)
{
    return kvt_quant_code_bytes(f, n) + kvt_quant_groups(f, n) * KVT_QUANT_PARAM_BYTES;
}

/* hi - lo is exact in double (two fp16 values: at most 41 significant bits), and so is s * L for
 * an fp16 s and L <= 255, so the comparisons below are exact: the result is the smallest fp16
 * whose multiple covers the range, whatever the starting guess. Positive fp16 bit patterns are
 * ordered like their values, so stepping the bits steps the value. */
uint16_t kvt_quant_scale_f16(uint16_t lo, uint16_t hi, uint32_t bits)
{
    const double range = (double)kvt_f16_to_f32(hi) - (double)kvt_f16_to_f32(lo);
    const double levels = (double)((1u << bits) - 1u);
    if (!(range > 0.0))
        return 0;
    uint16_t s = kvt_f32_to_f16((float)(range / levels));
    while ((double)kvt_f16_to_f32(s) * levels < range)
        s++;
    while (s > 0 && (double)kvt_f16_to_f32((uint16_t)(s - 1)) * levels >= range)
        s--;
    return s;
}
