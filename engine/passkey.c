/*
 * The passkey retention test (see passkey.h): prompt builder, keys and depths, and one trial.
 */
#include "engine/passkey.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/fidelity.h"
#include "engine/sampler.h"

#define KEY_LINE_FMT "The pass key is %u. Remember it. %u is the pass key."
#define KEY_LINE_MAX 96

struct text {
    char *buf;
    size_t len, cap;
};

static int put(struct text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            return -ENOMEM;
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
    return 0;
}

static int put_fillers(struct text *t, size_t n)
{
    static const char f[] = KVT_ENG_PASSKEY_FILLER;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (i)
            rc = put(t, " ", 1);
        if (!rc)
            rc = put(t, f, sizeof(f) - 1);
    }
    return rc;
}

/* The prompt's text with `before` fillers ahead of the key line and `after` behind it; key_off
 * and q_off get the byte offsets where the key line and the question start. */
static int build_text(struct text *t, size_t before, size_t after, uint32_t key, size_t *key_off,
                      size_t *q_off)
{
    static const char opening[] = KVT_ENG_PASSKEY_OPENING, question[] = KVT_ENG_PASSKEY_QUESTION;
    char line[KEY_LINE_MAX];
    int ll = snprintf(line, sizeof(line), KEY_LINE_FMT, key, key);
    int rc = put(t, opening, sizeof(opening) - 1) || put(t, "\n", 1);
    if (!rc && before)
        rc = put_fillers(t, before) || put(t, "\n", 1);
    *key_off = t->len;
    if (!rc)
        rc = put(t, line, (size_t)ll) || put(t, "\n", 1);
    if (!rc && after)
        rc = put_fillers(t, after) || put(t, "\n", 1);
    *q_off = t->len;
    if (!rc)
        rc = put(t, question, sizeof(question) - 1);
    return rc ? -ENOMEM : 0;
}

static int count_tokens(const struct kvt_eng_tokenizer *tok, const char *s, size_t len, size_t *n)
{
    int rc = kvt_eng_tok_encode(tok, s, len, 0, NULL, 0, n);
    return rc == -ENOSPC ? 0 : rc;
}

/* Tokens of the whole prompt with `fillers` fillers split at depth. */
static int prompt_tokens(const struct kvt_eng_tokenizer *tok, size_t fillers, double depth,
                         uint32_t key, size_t *n)
{
    struct text t = {0};
    size_t before = (size_t)llround(depth * (double)fillers), ko, qo;
    int rc = build_text(&t, before, fillers - before, key, &ko, &qo);
    if (!rc)
        rc = count_tokens(tok, t.buf, t.len, n);
    free(t.buf);
    return rc;
}

int kvt_eng_passkey_build(const struct kvt_eng_tokenizer *tok, size_t n_tokens, double depth,
                          uint32_t key, struct kvt_eng_passkey_prompt *out)
{
    struct text t = {0};
    size_t n = 0, ko, qo;
    int rc;
    memset(out, 0, sizeof(*out));
    if (!(depth >= 0.0 && depth <= 1.0) || key == 0 || key > KVT_ENG_PASSKEY_KEY_MAX)
        return -EINVAL;
    /* The most fillers that fit: the token count grows with them, so bisect. lo always fits. */
    if ((rc = prompt_tokens(tok, 1, depth, key, &n)))
        return rc;
    if (n > n_tokens)
        return -EINVAL;
    size_t lo = 1, hi = n_tokens + 1;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((rc = prompt_tokens(tok, mid, depth, key, &n)))
            return rc;
        if (n <= n_tokens)
            lo = mid;
        else
            hi = mid;
    }
    out->key = key;
    out->fillers = lo;
    out->fillers_before = (size_t)llround(depth * (double)lo);
    if ((rc = build_text(&t, out->fillers_before, lo - out->fillers_before, key, &ko, &qo)))
        goto out;
    if ((rc = count_tokens(tok, t.buf, t.len, &n)))
        goto out;
    out->ids = malloc(n * sizeof(*out->ids));
    if (!out->ids) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = kvt_eng_tok_encode(tok, t.buf, t.len, 0, out->ids, n, &out->n)))
        goto out;
    /* Each part ends at a newline, a word boundary of the pre-tokenizer, so the tokens of the
     * text before an offset are a prefix of the prompt's tokens. */
    if ((rc = count_tokens(tok, t.buf, ko, &out->key_pos)) ||
        (rc = count_tokens(tok, t.buf, qo, &out->question_pos)))
        goto out;
    /* The key line ends at the newline after it. */
    size_t line_end = (size_t)(strchr(t.buf + ko, '\n') - t.buf), after_line = 0;
    if ((rc = count_tokens(tok, t.buf, line_end, &after_line)))
        goto out;
    out->key_len = after_line - out->key_pos;
out:
    free(t.buf);
    if (rc)
        kvt_eng_passkey_prompt_free(out);
    return rc;
}

void kvt_eng_passkey_prompt_free(struct kvt_eng_passkey_prompt *p)
{
    free(p->ids);
    memset(p, 0, sizeof(*p));
}

uint32_t kvt_eng_passkey_key(uint64_t *rng)
{
    uint64_t z = (*rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    /* The high 32 bits scaled to [0, KEY_MAX): bias below 1e-5, irrelevant here. */
    return 1 + (uint32_t)(((z >> 32) * KVT_ENG_PASSKEY_KEY_MAX) >> 32);
}

double kvt_eng_passkey_depth(size_t i, size_t n)
{
    if (n <= 1)
        return 0.5;
    return 0.1 + 0.8 * (double)i / (double)(n - 1);
}

int kvt_eng_passkey_first_int(const char *s, size_t len, uint64_t *out)
{
    size_t i = 0;
    while (i < len && !(s[i] >= '0' && s[i] <= '9'))
        i++;
    if (i == len)
        return 0;
    uint64_t v = 0;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
        v = v > UINT64_MAX / 100 ? UINT64_MAX : v * 10 + (uint64_t)(s[i] - '0');
    *out = v;
    return 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Prefills the prompt before its question, then feeds the question token by token; logits get
 * the prediction after the last prompt token. */
static int feed_prompt(struct kvt_eng_session *s, const struct kvt_eng_passkey_prompt *p,
                       float *logits)
{
    int rc = kvt_eng_session_start(s, p->ids, p->question_pos, 0, NULL, NULL, NULL);
    for (size_t t = p->question_pos; rc == 0 && t < p->n; t++)
        rc = kvt_eng_session_next(s, p->ids[t], logits);
    return rc;
}

int kvt_eng_passkey_trial(struct kvt_eng_session *s, const struct kvt_eng_passkey_prompt *p,
                          struct kvt_eng_passkey_result *out)
{
    const struct kvt_eng_tokenizer *tok = s->model->tok;
    size_t V = s->model->hp.n_vocab;
    int32_t kt[KVT_ENG_PASSKEY_KEY_TOKENS_MAX];
    char ks[16], answer[KVT_ENG_PASSKEY_ANSWER_TOKENS * 64];
    size_t m = 0, alen = 0, matched = 0;
    double t0 = now_s();
    int rc;

    memset(out, 0, sizeof(*out));
    out->key = p->key;
    out->prompt_tokens = p->n;
    out->key_depth = p->n ? (double)p->key_pos / (double)p->n : 0.0;
    if (p->question_pos == 0 || p->question_pos >= p->n)
        return -EINVAL;
    int kl = snprintf(ks, sizeof(ks), " %u", p->key);
    if ((rc = kvt_eng_tok_encode(tok, ks, (size_t)kl, 0, kt, KVT_ENG_PASSKEY_KEY_TOKENS_MAX, &m)))
        return rc;
    float *logits = malloc(V * sizeof(float));
    if (!logits)
        return -ENOMEM;
    if ((rc = feed_prompt(s, p, logits)))
        goto out;

    /* Greedy answer. While it follows K's tokens, the log-probability of each of them is read on
     * the way (the context is then the prompt plus K's earlier tokens, as teacher forcing has). */
    double lp = 0.0;
    for (size_t i = 0; i < KVT_ENG_PASSKEY_ANSWER_TOKENS; i++) {
        int32_t id = kvt_eng_argmax(logits, V);
        if (i < m && matched == i) {
            lp += (double)logits[kt[i]] - kvt_eng_logsumexp(logits, V);
            matched += id == kt[i];
        }
        if (id == kvt_eng_tok_eos(tok) || kvt_eng_tok_is_control(tok, id))
            break;
        char piece[64];
        int l = kvt_eng_tok_decode(tok, id, 0, piece, sizeof(piece));
        if (l > 0 && alen + (size_t)l <= sizeof(answer)) {
            memcpy(answer + alen, piece, (size_t)l);
            alen += (size_t)l;
        }
        if (i + 1 == KVT_ENG_PASSKEY_ANSWER_TOKENS)
            break;
        if ((rc = kvt_eng_session_next(s, id, logits)))
            goto out;
    }
    size_t shown = alen < sizeof(out->answer_text) - 1 ? alen : sizeof(out->answer_text) - 1;
    memcpy(out->answer_text, answer, shown);
    out->answer_text[shown] = '\0';
    out->found = kvt_eng_passkey_first_int(answer, alen, &out->answer);
    out->correct = out->found && out->answer == p->key;

    if (matched < m) {
        /* The answer left K's tokens: feed them after the prompt to score them. */
        out->logprob_rerun = 1;
        lp = 0.0;
        if ((rc = feed_prompt(s, p, logits)))
            goto out;
        for (size_t i = 0; i < m; i++) {
            lp += (double)logits[kt[i]] - kvt_eng_logsumexp(logits, V);
            if (i + 1 < m && (rc = kvt_eng_session_next(s, kt[i], logits)))
                goto out;
        }
    }
    out->key_logprob = lp;
out:
    out->seconds = now_s() - t0;
    free(logits);
    return rc;
}
