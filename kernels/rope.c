/*
 * RoPE re-rotation: the shift table and the reference kernel. See rope.h and kernels.h.
 */
#include <math.h>

#include "kernels/internal.h"
#include "kernels/rope.h"

void kvt_rope_shift_table(double theta, size_t rotary_dims, int64_t delta, float *cs)
{
    size_t half = rotary_dims / 2;
    for (size_t i = 0; i < half; i++) {
        double freq = pow(theta, -2.0 * (double)i / (double)rotary_dims);
        double angle = (double)delta * freq;
        cs[i] = (float)cos(angle);
        cs[half + i] = (float)sin(angle);
    }
}

/* One vector's pairs [p0, half): x at v[a(i)], y at v[b(i)]. */
void kvt__kernels_rope_pairs_ref(uint16_t *v, size_t p0, size_t half, int style, const float *cs)
{
    for (size_t i = p0; i < half; i++) {
        size_t a = style == KVT_ROPE_GPTJ ? 2 * i : i;
        size_t b = style == KVT_ROPE_GPTJ ? 2 * i + 1 : i + half;
        float x = kvt_f16_to_f32(v[a]), y = kvt_f16_to_f32(v[b]);
        float c = cs[i], s = cs[half + i];
        float xc = x * c, ys = y * s, xs = x * s, yc = y * c;
        v[a] = kvt_f32_to_f16(xc - ys);
        v[b] = kvt_f32_to_f16(xs + yc);
    }
}

void kvt__kernels_rope_shift_f16_ref(uint16_t *keys, size_t n, size_t stride, size_t n_heads,
                                     size_t head_dim, size_t rotary_dims, int style,
                                     const float *cs)
{
    for (size_t r = 0; r < n; r++)
        for (size_t h = 0; h < n_heads; h++)
            kvt__kernels_rope_pairs_ref(keys + r * stride + h * head_dim, 0, rotary_dims / 2, style,
                                        cs);
}
