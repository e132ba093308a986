/*
 * Token selection: greedy (temperature 0) or sampled with temperature, top-k and top-p from a
 * seeded generator, so that a run is reproducible from its seed.
 */
#ifndef KVT_ENGINE_SAMPLER_H
#define KVT_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct kvt_eng_sampler_config {
    float temp;     /* <= 0: greedy */
    uint32_t top_k; /* 0: no limit */
    float top_p;    /* >= 1: no limit */
    uint64_t seed;
};

struct kvt_eng_sampler;

int kvt_eng_sampler_create(const struct kvt_eng_sampler_config *cfg, size_t n_vocab,
                           struct kvt_eng_sampler **out);
void kvt_eng_sampler_destroy(struct kvt_eng_sampler *s);

/* Picks the next token from n_vocab logits. */
int32_t kvt_eng_sampler_pick(struct kvt_eng_sampler *s, const float *logits);

/* Index of the largest value (the lowest index among equals). */
int32_t kvt_eng_argmax(const float *v, size_t n);

#endif
