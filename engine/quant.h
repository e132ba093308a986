/*
 * Number formats of the engine: IEEE half conversion, the GGML block types found in the model
 * (Q4_1, Q8_0) and the activation block Q8_1, with dequantization and the dot products the
 * matmuls are built from. Matmuls follow llama.cpp's scheme: activations are quantized to the
 * weight type's partner (Q8_1 for Q4_1, Q8_0 for Q8_0) and dotted in integers, which is both the
 * fastest portable form and the closest to the reference numerics.
 *
 * Each dot product has a portable C version and, on x86-64, an AVX2 version chosen once at run
 * time (kvt_eng_quant_init). The choice is process-wide, so every KV mode computes with the same
 * code and the modes stay bit-exact with each other.
 */
#ifndef KVT_ENGINE_QUANT_H
#define KVT_ENGINE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

#define KVT_ENG_QK 32

struct kvt_eng_block_q4_1 {
    uint16_t d;     /* scale, fp16 */
    uint16_t m;     /* minimum, fp16 */
    uint8_t qs[16]; /* element j in the low nibble of qs[j], element j+16 in the high one */
};

struct kvt_eng_block_q8_0 {
    uint16_t d; /* scale, fp16 */
    int8_t qs[32];
};

struct kvt_eng_block_q8_1 {
    uint16_t d; /* scale, fp16 */
    uint16_t s; /* d * sum(qs), fp16 */
    int8_t qs[32];
};

_Static_assert(sizeof(struct kvt_eng_block_q4_1) == 20, "q4_1 block is 20 bytes");
_Static_assert(sizeof(struct kvt_eng_block_q8_0) == 34, "q8_0 block is 34 bytes");
_Static_assert(sizeof(struct kvt_eng_block_q8_1) == 36, "q8_1 block is 36 bytes");

/* Selects the SIMD paths supported by this CPU; safe to call more than once. force_generic != 0
 * keeps the portable C code (tests compare both). Returns the name of the chosen path. */
const char *kvt_eng_quant_init(int force_generic);

float kvt_eng_fp16_to_fp32(uint16_t h);
/* Round to nearest even, like the F16C instruction; overflow gives infinity. */
uint16_t kvt_eng_fp32_to_fp16(float f);

/* Dequantizes n elements (a multiple of the type's block size) of row data of type t. */
int kvt_eng_dequantize_row(enum kvt_eng_type t, const void *row, float *out, size_t n);

/* Activation type used with weights of type t, and its bytes for a row of n elements. */
enum kvt_eng_act_type { KVT_ENG_ACT_F32, KVT_ENG_ACT_Q8_0, KVT_ENG_ACT_Q8_1 };
enum kvt_eng_act_type kvt_eng_act_type_for(enum kvt_eng_type weight_type);
size_t kvt_eng_act_row_bytes(enum kvt_eng_act_type a, size_t n);
void kvt_eng_quantize_act(enum kvt_eng_act_type a, const float *x, void *out, size_t n);

/* y = w_row . x_row for n elements, w of type t, x quantized as kvt_eng_act_type_for(t). */
float kvt_eng_dot(enum kvt_eng_type t, const void *w_row, const void *x_act, size_t n);

/* Attention helpers on fp16 rows: dot of an fp32 vector with an fp16 vector, and
 * acc += a * fp16 vector. n is a multiple of 8. */
float kvt_eng_dot_f32_f16(const float *x, const uint16_t *h, size_t n);
void kvt_eng_axpy_f16(float a, const uint16_t *h, float *acc, size_t n);

/* exp(x) with the polynomial approximation llama.cpp's x86 kernels use for softmax and SiLU (a
 * Cody-Waite reduction to 2^n * e^b and a degree-5 polynomial; within ~1.5 ulp of expf). The
 * engine uses it where llama.cpp does, so probabilities and gates round the same way. */
float kvt_eng_expf_approx(float x);

/* In place: x[i] = exp(x[i] - mx) for i < n. Returns the sum accumulated like llama.cpp's softmax:
 * one float partial per aligned block of 8 (lanes past n count as 0), summed in double. */
double kvt_eng_softmax_exp(float *x, size_t n, float mx);

/* out[i] = silu(g[i]) * u[i] with silu(x) = x / (1 + exp(-x)); n is a multiple of 8. */
void kvt_eng_swiglu(const float *g, const float *u, float *out, size_t n);

/* Four dot products of one weight row with four activation rows: out[i] = w_row . x[i]. Gives
 * the same bits as four kvt_eng_dot calls; the weight blocks are unpacked once. */
void kvt_eng_dot_x4(enum kvt_eng_type t, const void *w_row, const void *const x[4], size_t n,
                    float out[4]);

/* x[i] = fp16 rounding of (x[i] * s), as llama.cpp converts softmax probabilities. */
void kvt_eng_scale_round_f16(float *x, size_t n, float s);

/* Eight rows at once where a kernel exists for type t (0), else -1 and nothing is computed. Same
 * bits as eight kvt_eng_dot calls. */
int kvt_eng_dot_x8(enum kvt_eng_type t, const void *w_row, const void *const x[8], size_t n,
                   float out[8]);

/* Attention over a span of n rows (row i at rows + i * stride, fp16): out[i] = (q . k_i) * scale,
 * and lanes[((pos0 + i) % 8) * hd + d] += p[i] * v_i[d]. Same bits as per-row calls of
 * kvt_eng_dot_f32_f16 and kvt_eng_axpy_f16. hd is a multiple of 8. */
void kvt_eng_attn_scores(const float *q, const uint16_t *rows, size_t stride, size_t n, size_t hd,
                         float scale, float *out);
void kvt_eng_attn_values(const float *p, const uint16_t *rows, size_t stride, size_t n, size_t pos0,
                         size_t hd, float *lanes);

#endif
