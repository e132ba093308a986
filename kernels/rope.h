/*
 * RoPE re-rotation: moving keys computed at one position to another (chunk reuse at any
 * position, docs/reuse.md). RoPE rotates each channel pair of a key by pos * freq_i; rotations
 * compose, so keys computed at p become keys at q by a rotation of (q - p) * freq_i, without
 * the raw keys. The kernel (kvt_kernels rope_shift_f16) takes the cosines and sines of those
 * angles from a table built once per shift by kvt_rope_shift_table.
 */
#ifndef KVT_KERNELS_ROPE_H
#define KVT_KERNELS_ROPE_H

#include <stddef.h>
#include <stdint.h>

enum kvt_rope_style {
    KVT_ROPE_NEOX = 0, /* pairs (i, i + rotary_dims / 2): llama, SmolLM2, Qwen (NeoX halves) */
    KVT_ROPE_GPTJ = 1, /* pairs (2i, 2i + 1): GPT-J, interleaved */
};

/* Longest rotary_dims the kernels take. */
#define KVT_ROPE_DIMS_MAX 1024

/* Fills cs[0 .. rotary_dims) for a shift of delta positions: for i < rotary_dims / 2, with
 * freq_i = theta^(-2i / rotary_dims) and angle = delta * freq_i computed in double precision,
 * cs[i] = (float)cos(angle) and cs[rotary_dims / 2 + i] = (float)sin(angle). rotary_dims is even,
 * 2 .. KVT_ROPE_DIMS_MAX; theta > 0. */
void kvt_rope_shift_table(double theta, size_t rotary_dims, int64_t delta, float *cs);

#endif
