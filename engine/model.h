/*
 * The llama-architecture model: hyperparameters and weights read from a GGUF (pointers into the
 * mapping, nothing copied), and the batched forward pass. The forward pass keeps no KV itself: it
 * writes and reads attention keys and values through the KV seam (kv.h), so the same arithmetic
 * runs whatever mode holds the cache, and modes stay bit-exact with each other.
 *
 * Numerics follow llama.cpp's CPU backend for this model: activations quantized to Q8_1 (Q4_1
 * weights) or Q8_0 (Q8_0 weights) before integer dot products, RMSNorm summed in double, RoPE in
 * llama.cpp's "normal" style (adjacent pairs; the GGUF converter already permuted Q and K for it)
 * with angles from repeated multiplication by base^(-2/n_rot), queries rounded to fp16 before the
 * dot with the fp16 keys, fp16 KV.
 */
#ifndef KVT_ENGINE_MODEL_H
#define KVT_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/kv.h"
#include "engine/pool.h"
#include "engine/tokenizer.h"

struct kvt_eng_hparams {
    uint32_t n_layer;
    uint32_t n_embd;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t n_ff;
    uint32_t n_vocab;
    uint32_t n_rot;
    uint32_t ctx_train;
    float rope_base;
    float rms_eps;
};

struct kvt_eng_layer {
    const float *attn_norm;
    const struct kvt_eng_tensor *wq, *wk, *wv, *wo;
    const float *ffn_norm;
    const struct kvt_eng_tensor *w_gate, *w_up, *w_down;
};

struct kvt_eng_model {
    struct kvt_eng_gguf *gguf;
    struct kvt_eng_tokenizer *tok;
    struct kvt_eng_hparams hp;
    const struct kvt_eng_tensor *tok_embd;
    const struct kvt_eng_tensor *output; /* tok_embd when the embeddings are tied */
    const float *output_norm;
    struct kvt_eng_layer *layers;
    char model_id[128]; /* names the KV namespace: model name, size, quantization */
};

/* Loads a llama-architecture GGUF and its tokenizer. On error, a line saying why goes to errbuf
 * (when not NULL) and a negative code is returned. */
int kvt_eng_model_load(const char *path, struct kvt_eng_model **out, char *errbuf, size_t errcap);
void kvt_eng_model_free(struct kvt_eng_model *m);

/* The KV geometry the model needs for a context of ctx_max and steps of at most batch_max. */
struct kvt_eng_kv_geom kvt_eng_model_kv_geom(const struct kvt_eng_model *m, size_t ctx_max,
                                             size_t batch_max);

struct kvt_eng_ctx;

/* Scratch for forward passes of up to batch_max tokens over contexts up to ctx_max. */
int kvt_eng_ctx_create(const struct kvt_eng_model *m, struct kvt_eng_pool *pool, size_t batch_max,
                       size_t ctx_max, struct kvt_eng_ctx **out);
void kvt_eng_ctx_destroy(struct kvt_eng_ctx *c);

/* Computes tokens[0..n) at positions [pos, pos + n) (n <= batch_max), reading and writing KV
 * through kv (prepare, append, spans; the caller commits). Writes logits for every token
 * (all_logits, n * n_vocab floats) or for the last one only (n_vocab floats). logits may be NULL
 * when only the KV is wanted. KV errors pass through unchanged. */
int kvt_eng_forward(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens, size_t n,
                    size_t pos, float *logits, int all_logits);

/* Attention statistics of one step, gathered by kvt_eng_forward_stats: the positions are cut into
 * n_seg segments [bounds[g], bounds[g + 1]) (n_seg + 1 non-decreasing bounds; positions outside
 * every segment count in none), and mass[(layer * n + t) * n_seg + g] gets the share of token t's
 * attention probabilities in that layer, averaged over query heads, that went to segment g (the
 * fp16-rounded probabilities the value product uses). A row sums to at most 1 (about 1 when the
 * segments cover [0, its position]). */
struct kvt_eng_attn_stats {
    size_t n_seg;
    const size_t *bounds;
    float *mass; /* n_layer * n * n_seg floats, written */
};

/* kvt_eng_forward, also filling stats (same logits and KV bits). */
int kvt_eng_forward_stats(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens,
                          size_t n, size_t pos, float *logits, int all_logits,
                          struct kvt_eng_attn_stats *stats);

/* Selective forward (CacheBlend / Cache-Craft recompute): computes tokens[t] at positions[t]
 * (strictly ascending, any gaps), n <= batch_max, while attending to the KV already held for
 * every other position. In every layer the step's rows replace the held rows at its positions
 * before attention, so a token at position p attends to all of [0, p], recomputed rows where the
 * step has them and held rows elsewhere. The mode must keep every row of [0, last position]
 * readable and accept appends over rows already written: resident does (prepare(positions[0], n)
 * is called; select() is not). Every position below positions[n - 1] that the step does not
 * compute must have been written before. With positions[t] = pos + t it computes exactly what
 * kvt_eng_forward does (same bits). */
int kvt_eng_forward_at(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens,
                       const size_t *positions, size_t n, float *logits, int all_logits);

#endif
