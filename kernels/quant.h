/*
 * Group quantization of fp16 KV rows (the lossy form of issue 12): the format, its packed
 * layout and its sizes. The kernels themselves are quant_f16 and dequant_f16 of the kernel table
 * (kernels/kernels.h), one implementation per variant, all bit-identical; docs/kernels.md has
 * the layout byte by byte, the formulas and the error bound.
 *
 * A block of n rows of head_dim fp16 values (one KV head's keys or values of n tokens) is
 * quantized in groups, each group with its own fp16 scale s and minimum m, codes q in
 * [0, 2^bits - 1] and value m + q*s:
 *  - KVT_QUANT_AXIS_TOKEN: a group is `group` consecutive channels of one row (groups along
 *    head_dim: "values per token"); head_dim % group == 0;
 *  - KVT_QUANT_AXIS_CHANNEL: a group is `group` consecutive rows of one channel (KIVI's keys per
 *    channel); the last group of a block may be shorter (n % group rows).
 *
 * Packed block of n rows: the codes, n * head_dim * bits / 8 bytes, row after row (8-bit: one
 * byte an element; 4-bit: element e = r*head_dim + c in byte e / 2, the low nibble when e is
 * even), then the groups' (scale, minimum) pairs, two little-endian fp16 each (4 bytes):
 * TOKEN group (r, g) at index r * (head_dim / group) + g; CHANNEL group (g, c) at index
 * g * head_dim + c. No padding anywhere; the pairs need no alignment (read with memcpy).
 */
#ifndef KVT_KERNELS_QUANT_H
#define KVT_KERNELS_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum kvt_quant_axis {
    KVT_QUANT_AXIS_TOKEN = 0,   /* groups along head_dim, within one row */
    KVT_QUANT_AXIS_CHANNEL = 1, /* groups along the tokens, within one channel */
};

/* Limits of a format: head_dim and group up to 4096 (a group of one token axis spans at most
 * 4096 rows; longer blocks have several groups). */
#define KVT_QUANT_HEAD_DIM_MAX 4096u
#define KVT_QUANT_GROUP_MAX 4096u

/* The (scale, minimum) of a group that held a NaN or an infinity: both the fp16 quiet NaN, codes
 * 0; such a group dequantizes to 0x7e00 in every element. */
#define KVT_QUANT_NONFINITE 0x7e00u

/* Bytes of one group's parameters: fp16 scale, then fp16 minimum. */
#define KVT_QUANT_PARAM_BYTES 4u

struct kvt_quant_fmt {
    uint32_t bits;     /* 8 or 4 */
    uint32_t axis;     /* enum kvt_quant_axis */
    uint32_t group;    /* G: even, 2..KVT_QUANT_GROUP_MAX (TOKEN: divides head_dim) */
    uint32_t head_dim; /* even, 2..KVT_QUANT_HEAD_DIM_MAX */
};

/* 0 when f is a format the kernels accept, else KVT_E_INVAL. The kernels assert it. */
int kvt_quant_fmt_check(const struct kvt_quant_fmt *f);

/* Groups of a block of n rows: n * head_dim / group (TOKEN), ceil(n / group) * head_dim
 * (CHANNEL). */
size_t kvt_quant_groups(const struct kvt_quant_fmt *f, size_t n);

/* Bytes of the codes of n rows (where the parameters start): n * head_dim * bits / 8. */
size_t kvt_quant_code_bytes(const struct kvt_quant_fmt *f, size_t n);

/* Bytes of a packed block of n rows: codes plus 4 bytes a group. For example head_dim 128,
 * 8-bit, TOKEN, group 32: 144 bytes a row (against 256 in fp16); 4-bit: 80. */
size_t kvt_quant_bytes(const struct kvt_quant_fmt *f, size_t n);

/* The fp16 scale of a group whose finite minimum and maximum are the fp16 values lo and hi
 * (lo <= hi): the smallest fp16 s with s * (2^bits - 1) >= hi - lo, exactly (0 when hi == lo).
 * It is never below (hi - lo) / (2^bits - 1) and exceeds it by less than one fp16 step. */
uint16_t kvt_quant_scale_f16(uint16_t lo, uint16_t hi, uint32_t bits);

/*
 * A whole chunk in kvtier's canonical layout [layer][token][k|v][kv_head][head_dim] (fp16), as the
 * tiers store it: every (layer, k|v, KV head) block of n_tokens rows quantized with the keys' or
 * the values' format, the blocks one after the other in the order layer, then k|v (keys first),
 * then KV head, each kvt_quant_bytes(fmt, n_tokens) bytes with nothing between them. So block
 * (l, kv, h) starts at  l * (n_kv_head * (Bk + Bv)) + kv * n_kv_head * Bk + h * (kv ? Bv : Bk),
 * Bk/Bv the block sizes of the keys'/values' formats. The format of a chunk is this struct: a
 * stored quantized variant records it beside the bytes.
 */
struct kvt_quant_chunk {
    uint32_t n_layer, n_kv_head;
    struct kvt_quant_fmt keys, values; /* same head_dim */
};

struct kvt_kernels;

/* 0 when c describes a chunk the helpers accept (both formats valid, the same head_dim, at least
 * one layer and one KV head), else KVT_E_INVAL. */
int kvt_quant_chunk_check(const struct kvt_quant_chunk *c);

/* Bytes of a quantized chunk of n_tokens tokens (0 when c is invalid). */
size_t kvt_quant_chunk_bytes(const struct kvt_quant_chunk *c, size_t n_tokens);

/* Quantizes the canonical chunk `chunk` (n_tokens tokens) into out[out_cap] with the kernels of
 * kt (NULL: the active table). 0, or KVT_E_INVAL (bad format, out_cap below
 * kvt_quant_chunk_bytes; nothing written). */
int kvt_quant_chunk_f16(const struct kvt_kernels *kt, const struct kvt_quant_chunk *c,
                        const uint16_t *chunk, size_t n_tokens, uint8_t *out, size_t out_cap);

/* Dequantizes in[in_len] (exactly kvt_quant_chunk_bytes(c, n_tokens) bytes, else KVT_E_INVAL
 * and nothing written) back into the canonical chunk layout. */
int kvt_dequant_chunk_f16(const struct kvt_kernels *kt, const struct kvt_quant_chunk *c,
                          const uint8_t *in, size_t in_len, size_t n_tokens, uint16_t *chunk);

#endif
