/*
 * Reuse plans. See reuse.h and docs/reuse.md.
 */
#include <math.h>
#include <stdlib.h>

#include "daemon/reuse.h"
#include "kernels/kernels.h"

static int key_eq(const struct kvt_key *a, const struct kvt_key *b)
{
    return a->lo == b->lo && a->hi == b->hi;
}

/* Open-addressing table of the new prefix's keys with their first position: membership in
 * O(1), so a score costs O(n_prefix + n_new), not their product. */
#define KEYTAB_SLOTS 512 /* > 2 x KVT_VERSION_PREFIX_MAX */
struct keytab {
    struct kvt_key key[KEYTAB_SLOTS];
    int32_t pos[KEYTAB_SLOTS]; /* -1: empty */
};

static uint32_t slot_of(const struct kvt_key *k)
{
    return (uint32_t)((k->lo ^ (k->hi * 0x9e3779b97f4a7c15ull)) >> 7) & (KEYTAB_SLOTS - 1);
}

static void keytab_build(struct keytab *t, const struct kvt_key *keys, uint32_t n)
{
    for (uint32_t i = 0; i < KEYTAB_SLOTS; i++)
        t->pos[i] = -1;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = slot_of(&keys[i]);
        while (t->pos[s] >= 0 && !key_eq(&t->key[s], &keys[i]))
            s = (s + 1) & (KEYTAB_SLOTS - 1);
        if (t->pos[s] < 0) { /* the first occurrence wins */
            t->key[s] = keys[i];
            t->pos[s] = (int32_t)i;
        }
    }
}

static int64_t keytab_find(const struct keytab *t, const struct kvt_key *k)
{
    for (uint32_t s = slot_of(k);; s = (s + 1) & (KEYTAB_SLOTS - 1)) {
        if (t->pos[s] < 0)
            return -1;
        if (key_eq(&t->key[s], k))
            return t->pos[s];
    }
}

/* Pairs i < j with a[i] > a[j] in a[0..n), by merge sort (a is sorted on return; tmp has n). */
static uint64_t inversions(int64_t *a, int64_t *tmp, uint32_t n)
{
    if (n < 2)
        return 0;
    uint32_t h = n / 2;
    uint64_t inv = inversions(a, tmp, h) + inversions(a + h, tmp, n - h);
    uint32_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (a[j] < a[i]) {
            inv += h - i;
            tmp[k++] = a[j++];
        } else {
            tmp[k++] = a[i++];
        }
    }
    while (i < h)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    for (k = 0; k < n; k++)
        a[k] = tmp[k];
    return inv;
}

/* Layer-averaged attention of v's tokens to prefix passage j, and v's CCI: the layer average of
 * inter / (inter + intra). */
static double prefix_mass(const struct kvt_version *v, uint32_t j)
{
    double m = 0;
    for (uint32_t l = 0; l < v->layers; l++)
        m += v->layer_mass[(size_t)l * (v->n_prefix + 1u) + j];
    return m / (v->layers ? v->layers : 1);
}

static double version_cci(const struct kvt_version *v)
{
    uint32_t np = v->n_prefix, row = np + 1;
    double cci = 0;
    for (uint32_t l = 0; l < v->layers; l++) {
        double inter = 0, intra = v->layer_mass[(size_t)l * row + np];
        for (uint32_t j = 0; j < np; j++)
            inter += v->layer_mass[(size_t)l * row + j];
        cci += inter + intra > 0 ? inter / (inter + intra) : 0;
    }
    return cci / (v->layers ? v->layers : 1);
}

int kvt_reuse_observe(const struct kvt_version *v, double *cci, double *passage_mass)
{
    if (!v->n_prefix)
        return 0;
    double total = 0;
    for (uint32_t j = 0; j < v->n_prefix; j++)
        total += prefix_mass(v, j);
    *cci = version_cci(v);
    *passage_mass = total / v->n_prefix;
    return 1;
}

void kvt_reuse_score(const struct kvt_version *v, const struct kvt_key *new_prefix, uint32_t n_new,
                     float alpha, const struct kvt_reuse_prior *prior, struct kvt_reuse_score *out)
{
    uint32_t np = v->n_prefix;
    static struct keytab tab, old_tab; /* the loop thread's; too big for its stack twice */
    if (n_new > KVT_VERSION_PREFIX_MAX)
        n_new = KVT_VERSION_PREFIX_MAX;
    keytab_build(&tab, new_prefix, n_new);
    keytab_build(&old_tab, v->prefix, np);
    /* Attention to the old prefix's passages, and how much of it went to those still before. */
    double total = 0, kept = 0;
    int64_t pos_new[KVT_VERSION_PREFIX_MAX], tmp[KVT_VERSION_PREFIX_MAX];
    uint32_t n_common = 0;
    for (uint32_t j = 0; j < np; j++) {
        double m = prefix_mass(v, j);
        total += m;
        int64_t at = keytab_find(&tab, &v->prefix[j]);
        if (at >= 0) {
            kept += m;
            pos_new[n_common++] = at; /* in old-prefix order */
        }
    }
    /* Passages before it now that it never attended to: each would draw about what one prefix
     * passage drew when it was computed (or, with none before it then, what the namespace's
     * versions drew per passage), attention its cached KV lacks. */
    uint32_t novel = 0;
    for (uint32_t i = 0; i < n_new; i++)
        novel += keytab_find(&tab, &new_prefix[i]) == (int64_t)i &&
                 keytab_find(&old_tab, &new_prefix[i]) < 0;
    int known = prior && prior->n > 0;
    double per_passage = np && total > 0 ? total / np : known ? prior->passage_mass : 0;
    double missing = novel * per_passage;
    double cci = np ? version_cci(v) : known ? prior->cci : 0;
    double beta = total + missing > 0 ? kept / (total + missing) : 1.0;
    /* Kendall-tau distance of the common passages: pairs ordered one way in the old prefix and
     * the other way in the new one, over all pairs. A passage named twice in the old prefix maps
     * to one new position: such a pair is a tie, not discordant. */
    uint64_t pairs = (uint64_t)n_common * (n_common - (n_common > 0)) / 2;
    uint64_t discordant = inversions(pos_new, tmp, n_common);
    double gamma = pairs ? (double)discordant / (double)pairs : 0.0;
    double beta_prime = beta * (1.0 - gamma);
    double cfo = (double)alpha * cci * (1.0 - beta_prime);
    cfo = cfo < 0 ? 0 : cfo > 1 ? 1 : cfo;
    out->beta = (float)beta;
    out->gamma = (float)gamma;
    out->beta_prime = (float)beta_prime;
    out->cci = (float)cci;
    out->cfo = (float)cfo;
    out->n_novel = novel;
    double want = ceil(cfo * (double)v->n_tokens - 1e-9);
    out->n_recompute = want <= 0 ? 0 : want >= v->n_tokens ? v->n_tokens : (uint32_t)want;
}

int kvt_reuse_better(const struct kvt_reuse_score *a, uint64_t a_start, uint64_t a_used,
                     const struct kvt_reuse_score *b, uint64_t b_start, uint64_t b_used,
                     uint64_t want_start)
{
    if (a->cfo != b->cfo)
        return a->cfo < b->cfo;
    int a_here = a_start == want_start, b_here = b_start == want_start;
    if (a_here != b_here)
        return a_here;
    return a_used > b_used;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

void kvt_reuse_tokens(const struct kvt_version *v, uint32_t k, uint32_t *idx)
{
    if (!k)
        return;
    size_t got = kvt_kernels()->topk_f32(v->token_mass, v->n_tokens, k, idx);
    qsort(idx, got, sizeof(*idx), cmp_u32);
}
