/*
 * Reuse plans (Cache-Craft; docs/reuse.md has the formulas): how much of a stored version of a
 * passage can be reused after a new prefix, and which of its tokens to recompute. Pure functions
 * of a version record and the new prefix's passage keys, so tests check them on hand-made
 * statistics.
 */
#ifndef KVT_DAEMON_REUSE_H
#define KVT_DAEMON_REUSE_H

#include <stdint.h>

#include "daemon/version.h"

struct kvt_reuse_score {
    float beta;       /* share of the old prefix's attention whose passages are in the new one */
    float gamma;      /* normalized Kendall-tau distance of the common passages' order */
    float beta_prime; /* beta * (1 - gamma) */
    float cci;        /* layer-averaged inter / (inter + intra) attention */
    float cfo;        /* clamp(alpha * cci * (1 - beta'), 0, 1): the share to recompute */
    uint32_t n_recompute; /* ceil(cfo * n_tokens) */
    uint32_t n_novel;     /* passages of the new prefix the version never saw */
};

/* What a namespace's versions computed after other passages showed on average (docs/reuse.md,
 * "Passages the version never saw"): their CCI and the layer-averaged attention mass one prefix
 * passage drew. n == 0: nothing observed yet. */
struct kvt_reuse_prior {
    double cci;
    double passage_mass;
    uint64_t n;
};

/* The CCI and the mean mass per prefix passage of v; 0 (nothing learned) when v had no passage
 * before it. */
int kvt_reuse_observe(const struct kvt_version *v, double *cci, double *passage_mass);

/* Scores reusing v after new_prefix[0..n_new) (passage keys, in order) with alpha; prior (may be
 * NULL: nothing observed) stands in for what v cannot tell about passages it never saw. */
void kvt_reuse_score(const struct kvt_version *v, const struct kvt_key *new_prefix, uint32_t n_new,
                     float alpha, const struct kvt_reuse_prior *prior, struct kvt_reuse_score *out);

/* Whether score a (of a version starting at a_start, last used a_used) is a better choice than
 * b: lower cfo; then the start the request asks for; then the more recently used. */
int kvt_reuse_better(const struct kvt_reuse_score *a, uint64_t a_start, uint64_t a_used,
                     const struct kvt_reuse_score *b, uint64_t b_start, uint64_t b_used,
                     uint64_t want_start);

/* The k tokens of v with the highest token_mass (ties: the lower index), ascending, into idx[0..k)
 * (k <= v->n_tokens). */
void kvt_reuse_tokens(const struct kvt_version *v, uint32_t k, uint32_t *idx);

#endif
