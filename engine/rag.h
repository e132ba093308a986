/*
 * Retrieval-augmented prompts and chunk-cache reuse at any position (issue 11, docs/engine.md
 * "reuse", docs/reuse.md). A prompt is a head (system line, perhaps a question: computed
 * normally), passages (token arrays retrieved for this request) and a tail (the question and the
 * chat template's assistant start: computed normally). kvt_eng_rag_prefill computes its KV into a
 * resident cache under one of the policies below and returns the last token's logits; the caller
 * then decodes on the same cache.
 *
 * Reuse policies keep every passage in kvtier under kvt_passage_key, one chunk of its tokens (the
 * namespace from kvt_eng_rag_ns_spec), and the head too (a version at start 0 with no prefix: its
 * KV depends on its tokens alone, so a request with the same head reads it instead of computing
 * it, as prefix caching would). Per request: ChunkLookup plans every passage; a found one
 * is read with its keys re-rotated to its new start (kvt_get_rotated; kvt_get_v when it is
 * already there) into the cache, and the tokens the policy names are recomputed by the selective
 * forward (kvt_eng_forward_at), which replaces their rows in every layer. A passage not found is
 * computed in full after what precedes it, with attention statistics (kvt_eng_forward_stats), and
 * stored with kvt_put_v + kvt_version_set once the logits are out. Recomputes of several reused
 * passages and the tail are batched into one selective step; a passage computed in full first
 * flushes what is pending before it, so that it attends to final rows.
 */
#ifndef KVT_ENGINE_RAG_H
#define KVT_ENGINE_RAG_H

#include <stddef.h>
#include <stdint.h>

#include "engine/kv.h"
#include "engine/model.h"
#include "kvtier/kvtier.h"

enum kvt_eng_rag_policy {
    KVT_ENG_RAG_FULL,   /* everything computed: the reference */
    KVT_ENG_RAG_PREFIX, /* prefix caching: chained keys of the whole prompt, kvt_lookup */
    KVT_ENG_RAG_NAIVE,  /* every found passage reused re-rotated, nothing recomputed */
    KVT_ENG_RAG_STATIC, /* found passages reused with their first static_tokens recomputed (EPIC) */
    KVT_ENG_RAG_PLAN,   /* found passages reused with the tokens of kvtier's plan recomputed */
};

/* A plan whose recompute fraction (cfo) is at least this is recomputed in full instead and stored
 * as a new version (next_variant) with the statistics measured: the stored versions then cover
 * the contexts the passage keeps coming back in, and the next request in such a context reuses
 * it with little recompute. */
#define KVT_ENG_RAG_NEW_VERSION_CFO 0.4f
#define KVT_ENG_RAG_STATIC_TOKENS 32

struct kvt_eng_rag_prompt {
    const int32_t *head;
    size_t n_head;
    const int32_t *const *passages;
    const size_t *passage_len;
    size_t n_passages; /* at most 256 */
    const int32_t *tail;
    size_t n_tail; /* >= 1: its last token gives the logits */
};

struct kvt_eng_rag_config {
    enum kvt_eng_rag_policy policy;
    struct kvt_client *client; /* every policy but FULL */
    const struct kvt_ns_info *ns;
    float alpha;               /* ChunkLookup's; 0: the daemon's reuse.alpha */
    uint32_t static_tokens;    /* STATIC; 0: KVT_ENG_RAG_STATIC_TOKENS */
    float new_version_cfo;     /* PLAN; 0: KVT_ENG_RAG_NEW_VERSION_CFO, > 1: never */
    uint32_t recompute_budget; /* PLAN; tokens per passage found on average (0: none), as
                                * kvt_chunk_lookup_budget takes it */
    void *buf; /* an arena buffer of buf_bytes for Gets and Puts: at least one chunk */
    size_t buf_bytes;
};

struct kvt_eng_rag_result {
    size_t n_tokens;    /* the prompt's */
    size_t computed;    /* positions the prefill computed, recomputed ones included */
    size_t reused;      /* positions read from kvtier (the head's included) */
    size_t head_reused; /* the head's positions, when its cached copy was read (reuse policies) */
    size_t recomputed;  /* positions read from kvtier and then recomputed */
    size_t passages_found;
    size_t passages_computed; /* computed in full (not found, or a new version) */
    size_t versions_stored;
    double prefill_ms; /* until the logits: kvtier calls and forward passes */
    double store_ms;   /* Puts and version reports after the logits */
};

/* The namespace of the reuse policies for model m: tokens_per_chunk (>= the longest passage),
 * fp16, and the model's RoPE: rope_theta, rotary_dims n_rot, style GPT-J (this engine's RoPE, like
 * llama.cpp's "normal" mode on a llama GGUF, rotates adjacent pairs: the converter permuted Q and
 * K for it). model_id is borrowed. */
struct kvt_ns_spec kvt_eng_rag_ns_spec(const struct kvt_eng_model *m, const char *model_id,
                                       uint32_t tokens_per_chunk);

/* Computes the prompt into kv (a resident cache, begun here; ctx_max at least the prompt) and the
 * last token's logits (n_vocab floats). kvtier errors pass through (negative kvt codes); the
 * cache is then unusable. Prompt positions: head at 0, passages one after the other, the tail. */
int kvt_eng_rag_prefill(struct kvt_eng_ctx *ctx, struct kvt_eng_kv *kv,
                        const struct kvt_eng_model *m, const struct kvt_eng_rag_config *cfg,
                        const struct kvt_eng_rag_prompt *p, float *logits,
                        struct kvt_eng_rag_result *res);

/* What struct kvt_version_info wants, from the statistics of a passage computed in full.
 * mass: [layer][token][n_prefix + 2] head-averaged shares of each passage token's attention to
 * segment 0 (everything before the first prefix passage: the head), the n_prefix prefix passages,
 * then the passage itself (kvt_eng_forward_stats with those bounds). layer_mass (n_layer x
 * (n_prefix + 1)) gets, per layer, the token average of the shares of each prefix passage and of
 * the passage; token_mass (n_tok) gets each token's layer average of its share before the passage
 * (head and prefix passages). Shares are clamped to [0, 1] and a row scaled down to sum to 1 when
 * the fp16 rounding of the probabilities took it past 1. */
void kvt_eng_rag_version_stats(const float *mass, uint32_t n_layer, size_t n_tok, size_t n_prefix,
                               float *layer_mass, float *token_mass);

#endif
