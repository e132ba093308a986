/*
 * Sparse retrieval inside the lossy modes (kv_lossy.h): per-block key bounds and the top blocks
 * of a decode query.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kv_lossy.h"
#include "engine/quant.h"

size_t kvt__eng_lsel_spans_max(const struct kvt_eng_kv_geom *g)
{
    return g->ctx_max / KVT__ENG_LSEL_BLOCK + 4;
}

int kvt__eng_lsel_init(struct kvt__eng_lsel *s, const struct kvt_eng_kv_geom *g, double budget)
{
    memset(s, 0, sizeof(*s));
    if (!(budget > 0.0 && budget <= 1.0))
        return -EINVAL;
    s->geom = *g;
    s->budget = budget;
    s->blocks_max = g->ctx_max / KVT__ENG_LSEL_BLOCK + 1;
    s->blocks = calloc(g->n_layer, sizeof(*s->blocks));
    s->minmax =
        malloc((size_t)g->n_layer * s->blocks_max * g->n_head_kv * 2 * g->head_dim * sizeof(float));
    s->score = malloc(s->blocks_max * sizeof(float));
    s->order = malloc(s->blocks_max * sizeof(uint32_t));
    if (!s->blocks || !s->minmax || !s->score || !s->order) {
        kvt__eng_lsel_deinit(s);
        return -ENOMEM;
    }
    return 0;
}

void kvt__eng_lsel_deinit(struct kvt__eng_lsel *s)
{
    free(s->blocks);
    free(s->minmax);
    free(s->score);
    free(s->order);
    memset(s, 0, sizeof(*s));
}

void kvt__eng_lsel_reset(struct kvt__eng_lsel *s)
{
    memset(s->blocks, 0, s->geom.n_layer * sizeof(*s->blocks));
}

static float *block_minmax(struct kvt__eng_lsel *s, uint32_t layer, size_t b)
{
    size_t per = (size_t)s->geom.n_head_kv * 2 * s->geom.head_dim;
    return s->minmax + ((size_t)layer * s->blocks_max + b) * per;
}

void kvt__eng_lsel_update(struct kvt__eng_lsel *s, uint32_t layer, const uint16_t *rows,
                          size_t frozen)
{
    size_t hd = s->geom.head_dim, nh = s->geom.n_head_kv, rh = kvt_eng_kv_row_halfs(&s->geom);
    for (size_t b = s->blocks[layer]; b < frozen / KVT__ENG_LSEL_BLOCK; b++) {
        float *mm = block_minmax(s, layer, b);
        for (size_t h = 0; h < nh; h++) {
            float *lo = mm + h * 2 * hd, *hi = lo + hd;
            for (size_t d = 0; d < hd; d++) {
                lo[d] = INFINITY;
                hi[d] = -INFINITY;
            }
            for (size_t i = 0; i < KVT__ENG_LSEL_BLOCK; i++) {
                const uint16_t *k = rows + (b * KVT__ENG_LSEL_BLOCK + i) * rh + h * hd;
                for (size_t d = 0; d < hd; d++) {
                    float x = kvt_eng_fp16_to_fp32(k[d]);
                    lo[d] = x < lo[d] ? x : lo[d];
                    hi[d] = x > hi[d] ? x : hi[d];
                }
            }
        }
        s->blocks[layer] = b + 1;
    }
}

static int cmp_desc(const void *a, const void *b, void *arg)
{
    const float *sc = arg;
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    if (sc[i] != sc[j])
        return sc[i] > sc[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

int kvt__eng_lsel_select(struct kvt__eng_lsel *s, uint32_t layer, const struct kvt_eng_kv_query *q,
                         const uint16_t *rows, const float *bias, size_t frozen,
                         const uint16_t *rest, size_t rest_pos, size_t rest_n,
                         struct kvt_eng_kv_span *out, size_t max)
{
    size_t hd = s->geom.head_dim, nh = s->geom.n_head_kv, rh = kvt_eng_kv_row_halfs(&s->geom);
    size_t nb = s->blocks[layer], group = q->n_head / nh, ns = 0;
    if (q->n_tokens != 1 || nb > frozen / KVT__ENG_LSEL_BLOCK || max < nb + 3)
        return -EINVAL;
    for (size_t b = 0; b < nb; b++) {
        const float *mm = block_minmax(s, layer, b);
        float best = -INFINITY;
        for (size_t hq = 0; hq < q->n_head; hq++) {
            const float *qv = q->q + hq * hd, *lo = mm + (hq / group) * 2 * hd, *hi = lo + hd;
            float bound = 0.0f;
            for (size_t d = 0; d < hd; d++) {
                float a = qv[d] * lo[d], c = qv[d] * hi[d];
                bound += a > c ? a : c;
            }
            /* Merged entries weigh log(count) more; a block's bias is at most that of its
             * heaviest entry, so the bound stays an upper bound of the logit. */
            best = bound > best ? bound : best;
        }
        if (bias) {
            float bmax = 0.0f;
            for (size_t i = 0; i < KVT__ENG_LSEL_BLOCK * nh; i++) {
                float x = bias[b * KVT__ENG_LSEL_BLOCK * nh + i];
                bmax = x > bmax ? x : bmax;
            }
            best += bmax * sqrtf((float)hd); /* the bias is added after the 1/sqrt(hd) scale */
        }
        s->score[b] = best;
        s->order[b] = (uint32_t)b;
    }
    size_t keep = (size_t)ceil(s->budget * (double)nb);
    if (nb > 1) {
        /* Block 0 (the sinks) always: rank the others. */
        qsort_r(s->order + 1, nb - 1, sizeof(uint32_t), cmp_desc, s->score);
        size_t k = keep > 1 ? keep - 1 : 0;
        /* Back in position order. */
        for (size_t i = 1; i <= k; i++)
            for (size_t j = i + 1; j <= k; j++)
                if (s->order[j] < s->order[i]) {
                    uint32_t t = s->order[i];
                    s->order[i] = s->order[j];
                    s->order[j] = t;
                }
        keep = k + 1;
    }
    for (size_t i = 0; i < keep && i < nb; i++) {
        size_t b = s->order[i], first = b * KVT__ENG_LSEL_BLOCK;
        if (ns && out[ns - 1].pos + out[ns - 1].n_tokens == first) {
            out[ns - 1].n_tokens += KVT__ENG_LSEL_BLOCK;
            continue;
        }
        out[ns].rows = rows + first * rh;
        out[ns].pos = first;
        out[ns].n_tokens = KVT__ENG_LSEL_BLOCK;
        out[ns].bias = bias ? bias + first * nh : NULL;
        ns++;
    }
    size_t tail = nb * KVT__ENG_LSEL_BLOCK;
    if (frozen > tail) {
        if (ns && out[ns - 1].pos + out[ns - 1].n_tokens == tail) {
            out[ns - 1].n_tokens += frozen - tail;
        } else {
            out[ns].rows = rows + tail * rh;
            out[ns].pos = tail;
            out[ns].n_tokens = frozen - tail;
            out[ns].bias = bias ? bias + tail * nh : NULL;
            ns++;
        }
    }
    if (rest_n) {
        if (ns && !bias && rest == rows + frozen * rh && rest_pos == frozen &&
            out[ns - 1].pos + out[ns - 1].n_tokens == frozen) {
            out[ns - 1].n_tokens += rest_n;
        } else {
            out[ns].rows = rest;
            out[ns].pos = rest_pos;
            out[ns].n_tokens = rest_n;
            out[ns].bias = NULL;
            ns++;
        }
    }
    return (int)ns;
}
