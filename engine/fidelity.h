/*
 * Logit fidelity: how far a KV method's next-token distributions are from full attention's
 * (EVALUATION.md, "the primary gate"), and the decode evaluation that measures it one token at a
 * time.
 *
 * Per scored position: KL(p_full || p_method) over the whole vocabulary, whether the argmax
 * agrees, and the negative log-likelihood of the true next token under both. Everything is
 * computed in double from the float logits, with log-softmax done stably (the maximum subtracted
 * before exp). Summaries over a range of positions give the mean, p99 and max of KL, the top-1
 * agreement and both perplexities.
 *
 * The decode evaluation runs a reference session (resident) and the method's session side by
 * side over the same tokens: both prefill [0, N) in batches, then feed every later position alone
 * with its real token (teacher forcing), and each step's two logit rows are compared at once, so
 * no logits are stored. Each session's time is measured on its own.
 */
#ifndef KVT_ENGINE_FIDELITY_H
#define KVT_ENGINE_FIDELITY_H

#include <stddef.h>
#include <stdint.h>

#include "engine/session.h"

/* max + log(sum exp(l[i] - max)) over n logits, in double. */
double kvt_eng_logsumexp(const float *l, size_t n);

struct kvt_eng_fid_pos {
    double kl;      /* KL(p_ref || p_cur) in nats; exactly 0 for identical rows */
    double nll_ref; /* -log p_ref(next); 0 when next < 0 */
    double nll;     /* -log p_cur(next); 0 when next < 0 */
    int agree;      /* argmax of both rows is the same token */
};

/* Compares two logit rows of V entries; next is the true next token, or -1 when there is none. */
void kvt_eng_fid_compare(const float *ref, const float *cur, size_t V, int32_t next,
                         struct kvt_eng_fid_pos *out);

/* Per-position results, in the order added (caller-owned storage; _init / _deinit). */
struct kvt_eng_fid {
    size_t cap;
    size_t n;
    size_t *pos;
    struct kvt_eng_fid_pos *r;
};

int kvt_eng_fid_init(struct kvt_eng_fid *f, size_t cap);
void kvt_eng_fid_deinit(struct kvt_eng_fid *f);
/* -ENOSPC past cap. */
int kvt_eng_fid_add(struct kvt_eng_fid *f, size_t pos, const struct kvt_eng_fid_pos *r);

struct kvt_eng_fid_summary {
    size_t n; /* positions in the range; the rest is 0 when none */
    double kl_mean;
    double kl_p99; /* nearest rank: the ceil(0.99 n)-th smallest */
    double kl_max;
    double top1;    /* share of positions whose argmax agrees */
    double ppl;     /* exp(mean nll) */
    double ppl_ref; /* exp(mean nll_ref) */
};

/* Summary of the positions p with lo <= p < hi. -ENOMEM when the sort buffer cannot be had. */
int kvt_eng_fid_summarize(const struct kvt_eng_fid *f, size_t lo, size_t hi,
                          struct kvt_eng_fid_summary *out);

/* Position buckets of the reports: [0, 1K), [1K, 2K), [2K, 4K), [4K, 8K) and [8K, inf). */
#define KVT_ENG_FID_BUCKETS 5
struct kvt_eng_fid_bucket {
    const char *name; /* "0-1K", "1-2K", "2-4K", "4-8K", "8K-" */
    size_t lo, hi;
};
extern const struct kvt_eng_fid_bucket kvt_eng_fid_buckets[KVT_ENG_FID_BUCKETS];

/* One side of a decode evaluation. */
struct kvt_eng_decode_side {
    double prefill_s;
    double decode_s;
    struct kvt_eng_kv_stats kv_decode; /* counters of the decode steps only */
    size_t token_bytes;                /* the mode's bytes per position of KV */
    uint64_t bytes_kept; /* KV bytes the mode keeps at the end (kv.h; token_bytes per position
                          * for a mode that does not report it) */
    size_t positions;    /* positions in its cache at the end */
    int fell_back;       /* an offload session went resident */
};

struct kvt_eng_decode_eval {
    size_t decode_from;
    size_t steps; /* positions scored: decode_from .. n - 2 */
    struct kvt_eng_fid fid;
    struct kvt_eng_decode_side ref, cur;
};

/* Runs the decode evaluation of tokens[0..n) with ref_cfg (the reference) and cur_cfg (the
 * method): 1 <= decode_from <= n - 2, positions [decode_from, n - 1) scored. out->fid is
 * initialized here and the caller deinitializes it (also after an error). Session and KV errors
 * pass through, after a line on cur_cfg->log (when not NULL) saying which side failed where. */
int kvt_eng_decode_eval_run(const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                            const struct kvt_eng_session_config *ref_cfg,
                            const struct kvt_eng_session_config *cur_cfg, const int32_t *tokens,
                            size_t n, size_t decode_from, struct kvt_eng_decode_eval *out);

#endif
