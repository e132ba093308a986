/*
 * Byte-level BPE tokenizer built from a GGUF vocabulary (tokenizer.ggml.tokens, .token_type and
 * .merges), behaving like llama.cpp's tokenizer for the "gpt2" model with the "smollm"
 * pre-tokenizer: digits are split one by one, then the GPT-2 regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * cuts words, each word is byte-encoded and merged by rank. No BOS is added (the model says
 * add_bos_token = false); control tokens such as <|im_start|> are recognised only on request.
 */
#ifndef KVT_ENGINE_TOKENIZER_H
#define KVT_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

struct kvt_eng_tokenizer;

/* Builds the tokenizer; the GGUF must stay open while it is used (token strings point into it).
 * -EINVAL when the vocabulary is missing or not a gpt2/smollm BPE. */
int kvt_eng_tok_create(const struct kvt_eng_gguf *g, struct kvt_eng_tokenizer **out);
void kvt_eng_tok_destroy(struct kvt_eng_tokenizer *t);

/* Tokenizes len bytes of text into out (capacity max). *n_out gets the number of tokens the text
 * needs even when it is larger than max (then only max are written and -ENOSPC is returned).
 * parse_special != 0 turns control-token strings in the text into their ids. */
int kvt_eng_tok_encode(const struct kvt_eng_tokenizer *t, const char *text, size_t len,
                       int parse_special, int32_t *out, size_t max, size_t *n_out);

/* Writes the bytes of token id into buf (capacity cap, no NUL) and returns their count, or a
 * negative error. Control tokens decode to their text only when show_special != 0. */
int kvt_eng_tok_decode(const struct kvt_eng_tokenizer *t, int32_t id, int show_special, char *buf,
                       size_t cap);

uint32_t kvt_eng_tok_n_vocab(const struct kvt_eng_tokenizer *t);
int32_t kvt_eng_tok_eos(const struct kvt_eng_tokenizer *t);
int32_t kvt_eng_tok_bos(const struct kvt_eng_tokenizer *t);
/* Looks a token string up; -1 when absent. */
int32_t kvt_eng_tok_find(const struct kvt_eng_tokenizer *t, const char *s, size_t len);
int kvt_eng_tok_is_control(const struct kvt_eng_tokenizer *t, int32_t id);

#endif
