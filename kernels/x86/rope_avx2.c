/*
 * AVX2 (+F16C) RoPE re-rotation, NeoX pairs 8 at a time; interleaved (GPT-J) pairs and the tail
 * of each vector go to the reference. Same operations in the same order as the reference (fp32
 * products, then one subtraction or addition, no fused multiply-add, round to nearest even to
 * fp16), so the results are bit-identical.
 */
#if defined(__x86_64__)
#include <immintrin.h>

#include "kernels/internal.h"
#include "kernels/rope.h"

#define KVT_AVX2 __attribute__((target("avx2,f16c")))

KVT_AVX2 void kvt__kernels_rope_shift_f16_avx2(uint16_t *keys, size_t n, size_t stride,
                                               size_t n_heads, size_t head_dim, size_t rotary_dims,
                                               int style, const float *cs)
{
    if (style != KVT_ROPE_NEOX) {
        kvt__kernels_rope_shift_f16_ref(keys, n, stride, n_heads, head_dim, rotary_dims, style, cs);
        return;
    }
    size_t half = rotary_dims / 2, vec = half / 8 * 8;
    for (size_t r = 0; r < n; r++) {
        for (size_t h = 0; h < n_heads; h++) {
            uint16_t *v = keys + r * stride + h * head_dim;
            for (size_t i = 0; i < vec; i += 8) {
                __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
                __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + half + i)));
                __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(cs + half + i);
                __m256 xo = _mm256_sub_ps(_mm256_mul_ps(x, c), _mm256_mul_ps(y, s));
                __m256 yo = _mm256_add_ps(_mm256_mul_ps(x, s), _mm256_mul_ps(y, c));
                _mm_storeu_si128((__m128i *)(v + i),
                                 _mm256_cvtps_ph(xo, _MM_FROUND_TO_NEAREST_INT));
                _mm_storeu_si128((__m128i *)(v + half + i),
                                 _mm256_cvtps_ph(yo, _MM_FROUND_TO_NEAREST_INT));
            }
            kvt__kernels_rope_pairs_ref(v, vec, half, style, cs);
        }
    }
}
#endif
