/*
 * The passkey retention test (EVALUATION.md): a key hidden in filler text at a chosen depth, and
 * a question at the end that the model answers only if attention still reaches the key.
 *
 * Prompt (no chat template, no BOS), lines joined by '\n':
 *   KVT_ENG_PASSKEY_OPENING
 *   filler x a        (KVT_ENG_PASSKEY_FILLER repeated, joined by spaces)
 *   The pass key is K. Remember it. K is the pass key.
 *   filler x b
 *   What is the pass key? The pass key is
 * with a + b the most repetitions that keep the prompt within the target token count and
 * a = round(depth * (a + b)). A trial prefills everything before the question in batches, feeds
 * the question one token at a time (decode steps, where a sparse mode selects), then answers
 * greedily for up to KVT_ENG_PASSKEY_ANSWER_TOKENS tokens; it is right when the first integer of
 * the answer equals K. The log-probability of K's tokens (" " and its digits, one token each) is
 * read off the answer when the answer starts with them, else from a second run that feeds them
 * after the prompt (teacher forcing).
 */
#ifndef KVT_ENGINE_PASSKEY_H
#define KVT_ENGINE_PASSKEY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/session.h"
#include "engine/tokenizer.h"

#define KVT_ENG_PASSKEY_OPENING                                                                    \
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. " \
    "I will quiz you about the important information there."
#define KVT_ENG_PASSKEY_FILLER                                                                     \
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
#define KVT_ENG_PASSKEY_QUESTION "What is the pass key? The pass key is"
#define KVT_ENG_PASSKEY_KEY_MAX 50000
#define KVT_ENG_PASSKEY_ANSWER_TOKENS 10
/* Digits of a key plus its leading space: the most tokens a key takes. */
#define KVT_ENG_PASSKEY_KEY_TOKENS_MAX 8

struct kvt_eng_passkey_prompt {
    int32_t *ids;
    size_t n;
    size_t key_pos;      /* first token of the key line */
    size_t key_len;      /* tokens of the key line */
    size_t question_pos; /* first token of the question; [question_pos, n) is the question */
    size_t fillers;      /* filler repetitions in all */
    size_t fillers_before;
    uint32_t key;
};

/* Builds the prompt of about n_tokens tokens (at most n_tokens) with the key line after
 * round(depth * fillers) fillers, depth in [0, 1]. -EINVAL when n_tokens is too small to hold
 * the opening, the key line, the question and one filler. */
int kvt_eng_passkey_build(const struct kvt_eng_tokenizer *tok, size_t n_tokens, double depth,
                          uint32_t key, struct kvt_eng_passkey_prompt *out);
void kvt_eng_passkey_prompt_free(struct kvt_eng_passkey_prompt *p);

/* The key of the next trial, uniform in [1, KVT_ENG_PASSKEY_KEY_MAX], from a splitmix64 stream
 * whose state is *rng (seed it with the run's seed). */
uint32_t kvt_eng_passkey_key(uint64_t *rng);

/* Depth of trial i of n: spread evenly over 10%..90% (50% for a single trial). */
double kvt_eng_passkey_depth(size_t i, size_t n);

/* The first run of decimal digits in s[0..len) as a number: 1 and *out when there is one (a run
 * too long for a key counts, as a number that is never a key: UINT64_MAX), else 0. */
int kvt_eng_passkey_first_int(const char *s, size_t len, uint64_t *out);

struct kvt_eng_passkey_result {
    uint32_t key;
    double depth;     /* asked */
    double key_depth; /* key_pos / prompt tokens */
    size_t prompt_tokens;
    int correct;
    int found;             /* the answer holds an integer */
    uint64_t answer;       /* that integer */
    double key_logprob;    /* sum of log p over K's tokens after the prompt */
    int logprob_rerun;     /* it needed the teacher-forced second run */
    char answer_text[160]; /* the decoded answer, NUL-terminated (cut if longer) */
    double seconds;
};

/* Runs one trial on s (its ctx_max must hold the prompt, the answer and the key's tokens).
 * Session errors pass through. */
int kvt_eng_passkey_trial(struct kvt_eng_session *s, const struct kvt_eng_passkey_prompt *p,
                          struct kvt_eng_passkey_result *out);

#endif
