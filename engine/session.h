/*
 * A generation session: one sequence, its token history, the forward-pass scratch and the KV mode
 * that holds its cache. It owns the failure policy of the offload mode: when kvtier fails in the
 * middle of a sequence (daemon killed, timeout, chunk evicted), the session reports the error on
 * its log and, unless told to stop, switches to resident KV and recomputes the tokens seen so far,
 * so the sequence continues with the same logits a resident run would give. libkvtier bounds every
 * call by its timeout, so a session never hangs on a dead daemon.
 */
#ifndef KVT_ENGINE_SESSION_H
#define KVT_ENGINE_SESSION_H

#include <stdio.h>

#include "engine/kv.h"
#include "engine/model.h"
#include "engine/pool.h"

enum kvt_eng_mode {
    KVT_ENG_MODE_RESIDENT,
    KVT_ENG_MODE_OFFLOAD,
    KVT_ENG_MODE_Q8,
    KVT_ENG_MODE_SPARSE,
    KVT_ENG_MODE_QUANT,
    KVT_ENG_MODE_CLUSTER
};

/* The names every mode answers to, for messages. */
#define KVT_ENG_MODE_NAMES "resident, offload, q8, sparse, quant, cluster"

/* "resident" / "offload" / "q8" / "sparse" / "quant" / "cluster" -> mode; -EINVAL for anything
 * else. */
int kvt_eng_mode_parse(const char *s, enum kvt_eng_mode *out);
const char *kvt_eng_mode_name(enum kvt_eng_mode m);

/* Whether a mode takes a selection config (struct kvt_eng_select_config): only modes that
 * restrict attention do: sparse, which needs one, and quant and cluster, which take an optional
 * budget (sparse retrieval over their own rows, engine/kv_lossy.h). */
int kvt_eng_mode_selects(enum kvt_eng_mode m);

struct kvt_eng_session_config {
    enum kvt_eng_mode mode;
    size_t ctx_max;
    size_t batch_max;
    struct kvt_eng_offload_config offload; /* model_id, rope fields filled from the model if 0 */
    struct kvt_eng_select_config select;   /* must be unset for a mode that does not select */
    struct kvt_eng_lossy_config lossy;     /* quant and cluster; ignored by the other modes */
    int stop_on_error;                     /* offload failure: 0 recompute in resident, 1 stop */
    FILE *log;                             /* messages; NULL: silent */
};

struct kvt_eng_session {
    const struct kvt_eng_model *model;
    struct kvt_eng_ctx *ctx;
    struct kvt_eng_kv *kv;
    struct kvt_eng_session_config cfg;
    int32_t *tokens; /* history, ctx_max entries */
    size_t n_past;
    size_t reused;  /* prompt positions taken from kvtier instead of computed */
    int fell_back;  /* the offload mode failed and the session went resident */
    int last_error; /* the kvtier error that caused it */
    struct kvt_eng_kv_stats offload_stats; /* counters of an offload KV that was dropped */
};

/* Creates the session and its KV mode (offload connects to the daemon here: a daemon that cannot
 * be reached is an error, reported before any work is done). A selection config given to a mode
 * that does not select, or out of range, is -EINVAL. */
int kvt_eng_session_create(const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                           const struct kvt_eng_session_config *cfg, struct kvt_eng_session **out);
void kvt_eng_session_destroy(struct kvt_eng_session *s);

/* Called with the logits of every computed position when a caller asks for all of them. */
typedef void (*kvt_eng_logits_fn)(void *arg, size_t pos, size_t n, const float *logits);

/* Starts a new sequence with tokens[0..n) and computes it in steps of batch_max. With all_fn,
 * every computed position's logits go to it; last_logits (n_vocab floats, may be NULL) gets the
 * logits of the last token. allow_reuse lets the KV mode skip a cached prefix. */
int kvt_eng_session_start(struct kvt_eng_session *s, const int32_t *tokens, size_t n,
                          int allow_reuse, float *last_logits, kvt_eng_logits_fn all_fn, void *arg);

/* Appends one token and computes its logits (n_vocab floats). */
int kvt_eng_session_next(struct kvt_eng_session *s, int32_t token, float *logits);

/* KV counters of the session: those of the current mode plus a dropped offload mode's. */
struct kvt_eng_kv_stats kvt_eng_session_kv_stats(const struct kvt_eng_session *s);

#endif
