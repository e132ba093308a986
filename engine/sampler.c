/*
 * Sampler. Candidates are the top-k logits (all of them when k is 0), sorted; temperature scales
 * them, softmax turns them into probabilities, top-p keeps the smallest head whose mass reaches p,
 * and a splitmix64 stream draws from what is left.
 */
#include "engine/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

struct cand {
    float logit;
    int32_t id;
};

struct kvt_eng_sampler {
    struct kvt_eng_sampler_config cfg;
    size_t n_vocab;
    uint64_t state;
    struct cand *c;
};

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int kvt_eng_sampler_create(const struct kvt_eng_sampler_config *cfg, size_t n_vocab,
                           struct kvt_eng_sampler **out)
{
    if (n_vocab == 0)
        return -EINVAL;
    struct kvt_eng_sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = *cfg;
    s->n_vocab = n_vocab;
    s->state = cfg->seed;
    s->c = malloc(n_vocab * sizeof(*s->c));
    if (!s->c) {
        free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

void kvt_eng_sampler_destroy(struct kvt_eng_sampler *s)
{
    if (!s)
        return;
    free(s->c);
    free(s);
}

int32_t kvt_eng_argmax(const float *v, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return (int32_t)best;
}

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Sift-down for a min-heap on logit (the root is the weakest of the kept top k). */
static void heap_down(struct cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_cmp(&h[l], &h[m]) > 0)
            m = l;
        if (r < n && cand_cmp(&h[r], &h[m]) > 0)
            m = r;
        if (m == i)
            return;
        struct cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

int32_t kvt_eng_sampler_pick(struct kvt_eng_sampler *s, const float *logits)
{
    if (s->cfg.temp <= 0.0f)
        return kvt_eng_argmax(logits, s->n_vocab);
    size_t k = s->cfg.top_k && s->cfg.top_k < s->n_vocab ? s->cfg.top_k : s->n_vocab;
    struct cand *c = s->c;
    /* Keep the k best in a min-heap, then sort them best first. */
    for (size_t i = 0; i < k; i++)
        c[i] = (struct cand){logits[i], (int32_t)i};
    for (size_t i = k / 2; i-- > 0;)
        heap_down(c, k, i);
    for (size_t i = k; i < s->n_vocab; i++) {
        struct cand x = {logits[i], (int32_t)i};
        if (cand_cmp(&x, &c[0]) < 0) {
            c[0] = x;
            heap_down(c, k, 0);
        }
    }
    qsort(c, k, sizeof(*c), cand_cmp);

    double sum = 0.0;
    float mx = c[0].logit;
    double *p = malloc(k * sizeof(*p));
    if (!p)
        return c[0].id;
    for (size_t i = 0; i < k; i++) {
        p[i] = exp(((double)c[i].logit - mx) / s->cfg.temp);
        sum += p[i];
    }
    size_t keep = k;
    if (s->cfg.top_p < 1.0f) {
        double acc = 0.0;
        for (size_t i = 0; i < k; i++) {
            acc += p[i] / sum;
            if (acc >= s->cfg.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double mass = 0.0;
    for (size_t i = 0; i < keep; i++)
        mass += p[i];
    double r = (double)(splitmix64(&s->state) >> 11) * 0x1p-53 * mass;
    int32_t id = c[keep - 1].id;
    for (size_t i = 0; i < keep; i++) {
        if (r < p[i]) {
            id = c[i].id;
            break;
        }
        r -= p[i];
    }
    free(p);
    return id;
}
