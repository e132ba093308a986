/*
 * Model loading and the forward pass. Work is split over the thread pool in three shapes: matmuls
 * by output rows (each thread owns whole rows, so results do not depend on the thread count),
 * attention by (token, head) pairs dealt round-robin (later tokens see more keys, so contiguous
 * blocks would be unbalanced), and the cheap element-wise steps stay on the calling thread.
 */
#include "engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/quant.h"

#define MM_MAX_MATS 3
#define MM_ROW_ALIGN 8
#define KVT_ENG_HEAD_DIM_MAX 256
/* Weight rows prefetched ahead of the one being multiplied: the hardware prefetcher of the VMs
 * this runs on does not keep up with a 360-byte-row stream (measured: decode 17 -> 8 ms/token). */
#define MM_PREFETCH_ROWS 8

struct kvt_eng_ctx {
    const struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    size_t batch_max;
    size_t ctx_max;
    float *x, *xn, *q, *k, *v, *attn, *g, *u, *tmp;
    uint8_t *act;
    size_t act_stride;
    uint16_t *rows;
    float *rope_cos, *rope_sin;
    float *scores; /* [thread][ctx_max] */
    float *lanes;  /* [thread][8][head_dim] */
    struct kvt_eng_kv_span *spans;
    size_t spans_cap;
    struct kvt_eng_kv_span *sel; /* select(): [row][spans_max] */
    size_t sel_cap;
    size_t *sel_counts; /* [batch_max] */
};

__attribute__((format(printf, 4, 5))) static int load_fail(char *errbuf, size_t errcap, int rc,
                                                           const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (errbuf && errcap)
        vsnprintf(errbuf, errcap, fmt, ap);
    va_end(ap);
    return rc;
}

static const struct kvt_eng_tensor *get_mat(const struct kvt_eng_gguf *g, const char *name,
                                            uint64_t ne0, uint64_t ne1)
{
    const struct kvt_eng_tensor *t = kvt_eng_gguf_tensor(g, name);
    if (!t || t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return NULL;
    return t;
}

static const float *get_vec(const struct kvt_eng_gguf *g, const char *name, uint64_t n)
{
    const struct kvt_eng_tensor *t = kvt_eng_gguf_tensor(g, name);
    if (!t || t->type != KVT_ENG_TYPE_F32 || t->ne[0] != n || t->ne[1] != 1 ||
        ((uintptr_t)t->data & 3))
        return NULL;
    return t->data;
}

int kvt_eng_model_load(const char *path, struct kvt_eng_model **out, char *errbuf, size_t errcap)
{
    struct kvt_eng_model *m = calloc(1, sizeof(*m));
    struct kvt_eng_str arch;
    char name[96];
    int rc;
    if (!m)
        return -ENOMEM;
    kvt_eng_quant_init(0);
    rc = kvt_eng_gguf_open(path, &m->gguf);
    if (rc) {
        load_fail(errbuf, errcap, rc, "cannot read GGUF %s", path);
        goto err_free;
    }
    const struct kvt_eng_gguf *g = m->gguf;
    if (kvt_eng_gguf_str(g, "general.architecture", &arch) != 0 || arch.len != 5 ||
        memcmp(arch.ptr, "llama", 5) != 0) {
        rc = load_fail(errbuf, errcap, -EPROTONOSUPPORT, "%s: architecture is not llama", path);
        goto err_free;
    }
    struct kvt_eng_hparams *hp = &m->hp;
    if (kvt_eng_gguf_u32(g, "llama.block_count", &hp->n_layer) ||
        kvt_eng_gguf_u32(g, "llama.embedding_length", &hp->n_embd) ||
        kvt_eng_gguf_u32(g, "llama.attention.head_count", &hp->n_head) ||
        kvt_eng_gguf_u32(g, "llama.feed_forward_length", &hp->n_ff) ||
        kvt_eng_gguf_f32(g, "llama.attention.layer_norm_rms_epsilon", &hp->rms_eps)) {
        rc = load_fail(errbuf, errcap, -EINVAL, "%s: missing llama hyperparameters", path);
        goto err_free;
    }
    if (kvt_eng_gguf_u32(g, "llama.attention.head_count_kv", &hp->n_head_kv))
        hp->n_head_kv = hp->n_head;
    if (kvt_eng_gguf_f32(g, "llama.rope.freq_base", &hp->rope_base))
        hp->rope_base = 10000.0f;
    if (kvt_eng_gguf_u32(g, "llama.context_length", &hp->ctx_train))
        hp->ctx_train = 2048;
    if (hp->n_head == 0 || hp->n_head_kv == 0 || hp->n_embd % hp->n_head ||
        hp->n_head % hp->n_head_kv || hp->n_layer == 0 || hp->n_layer > 1024) {
        rc = load_fail(errbuf, errcap, -EINVAL, "%s: inconsistent head counts", path);
        goto err_free;
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    if (kvt_eng_gguf_u32(g, "llama.rope.dimension_count", &hp->n_rot))
        hp->n_rot = hp->head_dim;
    if (hp->head_dim % 32 || hp->head_dim > KVT_ENG_HEAD_DIM_MAX || hp->n_rot > hp->head_dim ||
        hp->n_rot % 2 || hp->n_embd % 32 || hp->n_ff % 32) {
        rc = load_fail(errbuf, errcap, -EPROTONOSUPPORT, "%s: unsupported head geometry", path);
        goto err_free;
    }

    m->tok_embd = kvt_eng_gguf_tensor(g, "token_embd.weight");
    if (!m->tok_embd || m->tok_embd->ne[0] != hp->n_embd || m->tok_embd->ne[2] != 1) {
        rc = load_fail(errbuf, errcap, -EINVAL, "%s: bad token_embd.weight", path);
        goto err_free;
    }
    hp->n_vocab = (uint32_t)m->tok_embd->ne[1];
    m->output = kvt_eng_gguf_tensor(g, "output.weight");
    if (!m->output)
        m->output = m->tok_embd; /* tied embeddings, as in SmolLM2 */
    m->output_norm = get_vec(g, "output_norm.weight", hp->n_embd);
    if (m->output->ne[0] != hp->n_embd || m->output->ne[1] != hp->n_vocab || !m->output_norm) {
        rc = load_fail(errbuf, errcap, -EINVAL, "%s: bad output tensors", path);
        goto err_free;
    }

    m->layers = calloc(hp->n_layer, sizeof(*m->layers));
    if (!m->layers) {
        rc = -ENOMEM;
        goto err_free;
    }
    uint32_t q_dim = hp->n_head * hp->head_dim, kv_dim = hp->n_head_kv * hp->head_dim;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        struct kvt_eng_layer *L = &m->layers[l];
#define NM(s) (snprintf(name, sizeof(name), "blk.%u." s, l), name)
        L->attn_norm = get_vec(g, NM("attn_norm.weight"), hp->n_embd);
        L->ffn_norm = get_vec(g, NM("ffn_norm.weight"), hp->n_embd);
        L->wq = get_mat(g, NM("attn_q.weight"), hp->n_embd, q_dim);
        L->wk = get_mat(g, NM("attn_k.weight"), hp->n_embd, kv_dim);
        L->wv = get_mat(g, NM("attn_v.weight"), hp->n_embd, kv_dim);
        L->wo = get_mat(g, NM("attn_output.weight"), q_dim, hp->n_embd);
        L->w_gate = get_mat(g, NM("ffn_gate.weight"), hp->n_embd, hp->n_ff);
        L->w_up = get_mat(g, NM("ffn_up.weight"), hp->n_embd, hp->n_ff);
        L->w_down = get_mat(g, NM("ffn_down.weight"), hp->n_ff, hp->n_embd);
#undef NM
        if (!L->attn_norm || !L->ffn_norm || !L->wq || !L->wk || !L->wv || !L->wo || !L->w_gate ||
            !L->w_up || !L->w_down) {
            rc = load_fail(errbuf, errcap, -EINVAL, "%s: missing or misshapen tensor in layer %u",
                           path, l);
            goto err_free;
        }
    }

    rc = kvt_eng_tok_create(g, &m->tok);
    if (rc) {
        load_fail(errbuf, errcap, rc, "%s: unsupported or broken tokenizer", path);
        goto err_free;
    }

    struct kvt_eng_str gname = {.ptr = "llama", .len = 5};
    uint32_t ftype = 0;
    kvt_eng_gguf_str(g, "general.name", &gname);
    kvt_eng_gguf_u32(g, "general.file_type", &ftype);
    snprintf(m->model_id, sizeof(m->model_id), "%.*s/ftype%u/L%u",
             (int)(gname.len > 96 ? 96 : gname.len), gname.ptr, ftype, hp->n_layer);
    *out = m;
    return 0;

err_free:
    kvt_eng_model_free(m);
    return rc;
}

void kvt_eng_model_free(struct kvt_eng_model *m)
{
    if (!m)
        return;
    kvt_eng_tok_destroy(m->tok);
    free(m->layers);
    kvt_eng_gguf_close(m->gguf);
    free(m);
}

struct kvt_eng_kv_geom kvt_eng_model_kv_geom(const struct kvt_eng_model *m, size_t ctx_max,
                                             size_t batch_max)
{
    struct kvt_eng_kv_geom g = {
        .n_layer = m->hp.n_layer,
        .n_head_kv = m->hp.n_head_kv,
        .head_dim = m->hp.head_dim,
        .ctx_max = ctx_max,
        .batch_max = batch_max,
    };
    return g;
}

int kvt_eng_ctx_create(const struct kvt_eng_model *m, struct kvt_eng_pool *pool, size_t batch_max,
                       size_t ctx_max, struct kvt_eng_ctx **out)
{
    const struct kvt_eng_hparams *hp = &m->hp;
    if (batch_max == 0 || ctx_max == 0)
        return -EINVAL;
    struct kvt_eng_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->m = m;
    c->pool = pool;
    c->batch_max = batch_max;
    c->ctx_max = ctx_max;
    size_t b = batch_max, q_dim = (size_t)hp->n_head * hp->head_dim;
    size_t kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    size_t in_max = hp->n_ff > q_dim ? hp->n_ff : q_dim;
    in_max = in_max > hp->n_embd ? in_max : hp->n_embd;
    c->act_stride = kvt_eng_act_row_bytes(KVT_ENG_ACT_F32, in_max); /* the widest form */
    c->x = malloc(b * hp->n_embd * sizeof(float));
    c->xn = malloc(b * hp->n_embd * sizeof(float));
    c->tmp = malloc(b * hp->n_embd * sizeof(float));
    c->q = malloc(b * q_dim * sizeof(float));
    c->attn = malloc(b * q_dim * sizeof(float));
    c->k = malloc(b * kv_dim * sizeof(float));
    c->v = malloc(b * kv_dim * sizeof(float));
    c->g = malloc(b * hp->n_ff * sizeof(float));
    c->u = malloc(b * hp->n_ff * sizeof(float));
    c->act = malloc(b * c->act_stride);
    c->rows = malloc(b * 2 * kv_dim * sizeof(uint16_t));
    c->rope_cos = malloc(b * hp->n_rot / 2 * sizeof(float));
    c->rope_sin = malloc(b * hp->n_rot / 2 * sizeof(float));
    c->scores = malloc((size_t)kvt_eng_pool_size(pool) * (ctx_max + 8) * sizeof(float));
    c->lanes = malloc((size_t)kvt_eng_pool_size(pool) * 8 * hp->head_dim * sizeof(float));
    c->sel_counts = malloc(b * sizeof(size_t));
    if (!c->x || !c->xn || !c->tmp || !c->q || !c->attn || !c->k || !c->v || !c->g || !c->u ||
        !c->act || !c->rows || !c->rope_cos || !c->rope_sin || !c->scores || !c->lanes ||
        !c->sel_counts) {
        kvt_eng_ctx_destroy(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void kvt_eng_ctx_destroy(struct kvt_eng_ctx *c)
{
    if (!c)
        return;
    free(c->x);
    free(c->xn);
    free(c->tmp);
    free(c->q);
    free(c->attn);
    free(c->k);
    free(c->v);
    free(c->g);
    free(c->u);
    free(c->act);
    free(c->rows);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c->scores);
    free(c->lanes);
    free(c->spans);
    free(c->sel);
    free(c->sel_counts);
    free(c);
}

/* ---- matmul -----------------------------------------------------------------------------------
 */

struct mm_job {
    const struct kvt_eng_tensor *w[MM_MAX_MATS];
    float *y[MM_MAX_MATS];
    size_t n_mats;
    size_t total_rows;
    const uint8_t *act;
    size_t act_stride;
    size_t n_tok;
    size_t chunk_rows;
    atomic_size_t next_chunk; /* threads take chunks of rows until none is left */
};

/* Rows [r0, r1) of the concatenated matrices of a job. */
static void mm_rows(const struct mm_job *j, size_t r0, size_t r1)
{
    size_t base = 0;
    for (size_t mi = 0; mi < j->n_mats && base < r1; mi++) {
        const struct kvt_eng_tensor *w = j->w[mi];
        size_t rows = (size_t)w->ne[1], n_in = (size_t)w->ne[0];
        size_t lo = r0 > base ? r0 - base : 0, hi = r1 - base < rows ? r1 - base : rows;
        for (size_t r = lo; r < hi; r++) {
            const uint8_t *wr = (const uint8_t *)w->data + r * w->row_bytes;
            if (r + MM_PREFETCH_ROWS < rows)
                for (size_t o = 0; o < w->row_bytes; o += 64)
                    __builtin_prefetch(wr + MM_PREFETCH_ROWS * w->row_bytes + o);
            size_t t = 0;
            /* Eight, then four tokens per weight row pass: the row's blocks are unpacked once. */
            for (; t + 8 <= j->n_tok; t += 8) {
                const void *x8[8];
                float o8[8];
                for (int k = 0; k < 8; k++)
                    x8[k] = j->act + (t + (size_t)k) * j->act_stride;
                if (kvt_eng_dot_x8(w->type, wr, x8, n_in, o8) != 0)
                    break;
                for (int k = 0; k < 8; k++)
                    j->y[mi][(t + (size_t)k) * rows + r] = o8[k];
            }
            for (; t + 4 <= j->n_tok; t += 4) {
                const void *x4[4];
                float o4[4];
                for (int k = 0; k < 4; k++)
                    x4[k] = j->act + (t + (size_t)k) * j->act_stride;
                kvt_eng_dot_x4(w->type, wr, x4, n_in, o4);
                for (int k = 0; k < 4; k++)
                    j->y[mi][(t + (size_t)k) * rows + r] = o4[k];
            }
            for (; t < j->n_tok; t++)
                j->y[mi][t * rows + r] = kvt_eng_dot(w->type, wr, j->act + t * j->act_stride, n_in);
        }
        base += rows;
    }
}

/* Threads take chunks dynamically: on a shared machine one thread may get less CPU than the
 * other, and a fixed split would make the whole step wait for it. Each output is computed by
 * one thread with the same arithmetic, so results do not depend on who takes what. */
static void mm_worker(void *arg, unsigned ith, unsigned nth)
{
    struct mm_job *j = arg;
    (void)ith;
    (void)nth;
    for (;;) {
        size_t c = atomic_fetch_add_explicit(&j->next_chunk, 1, memory_order_relaxed);
        size_t r0 = c * j->chunk_rows;
        if (r0 >= j->total_rows)
            break;
        size_t r1 = r0 + j->chunk_rows < j->total_rows ? r0 + j->chunk_rows : j->total_rows;
        mm_rows(j, r0, r1);
    }
}

/* y_i = W_i x for up to three matrices sharing the input x (n_tok rows of ne[0] floats). The input
 * is quantized once, to the activation type of the first matrix; the others must agree. */
static void matmul(struct kvt_eng_ctx *c, const float *x, size_t n_tok,
                   const struct kvt_eng_tensor *const *w, float *const *y, size_t n_mats)
{
    struct mm_job j = {
        .n_mats = n_mats, .act = c->act, .act_stride = c->act_stride, .n_tok = n_tok};
    size_t n_in = (size_t)w[0]->ne[0];
    enum kvt_eng_act_type at = kvt_eng_act_type_for(w[0]->type);
    for (size_t i = 0; i < n_mats; i++) {
        j.w[i] = w[i];
        j.y[i] = y[i];
        j.total_rows += (size_t)w[i]->ne[1];
    }
    for (size_t t = 0; t < n_tok; t++)
        kvt_eng_quantize_act(at, x + t * n_in, c->act + t * c->act_stride, n_in);
    /* About 16 chunks per thread, whole multiples of MM_ROW_ALIGN rows. */
    size_t per = j.total_rows / (16 * (size_t)kvt_eng_pool_size(c->pool) + 1);
    j.chunk_rows = (per / MM_ROW_ALIGN + 1) * MM_ROW_ALIGN;
    atomic_init(&j.next_chunk, 0);
    kvt_eng_pool_run(c->pool, mm_worker, &j);
}

/* ---- element-wise steps ------------------------------------------------------------------------
 */

static void rms_norm(const float *x, const float *w, float *y, size_t n, float eps)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    float mean = (float)(sum / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (size_t i = 0; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

/* Position of token t of a step: pos + t, or positions[t] for a selective step. */
static inline size_t tok_pos(const size_t *positions, size_t pos, size_t t)
{
    return positions ? positions[t] : pos + t;
}

static void rope_tables(struct kvt_eng_ctx *c, const size_t *positions, size_t pos, size_t n)
{
    const struct kvt_eng_hparams *hp = &c->m->hp;
    size_t half = hp->n_rot / 2;
    float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
    for (size_t t = 0; t < n; t++) {
        float theta = (float)tok_pos(positions, pos, t);
        for (size_t i = 0; i < half; i++) {
            c->rope_cos[t * half + i] = cosf(theta);
            c->rope_sin[t * half + i] = sinf(theta);
            theta *= theta_scale;
        }
    }
}

static void rope_apply(const struct kvt_eng_ctx *c, float *vec, size_t n_heads, size_t t)
{
    const struct kvt_eng_hparams *hp = &c->m->hp;
    size_t half = hp->n_rot / 2;
    const float *cs = c->rope_cos + t * half, *sn = c->rope_sin + t * half;
    for (size_t h = 0; h < n_heads; h++) {
        float *v = vec + h * hp->head_dim;
        for (size_t i = 0; i < half; i++) {
            /* Fused like the compiled llama.cpp kernel: one product rounded, the other fused. */
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = fmaf(x0, cs[i], -(x1 * sn[i]));
            v[2 * i + 1] = fmaf(x0, sn[i], x1 * cs[i]);
        }
    }
}

/* ---- attention --------------------------------------------------------------------------------
 */

struct attn_job {
    struct kvt_eng_ctx *c;
    size_t n_tok;
    size_t pos;
    const struct kvt_eng_kv_span *spans; /* row t's spans start at spans + t * stride */
    size_t stride;                       /* 0: every row reads the same list */
    const size_t *counts;                /* spans of each row; NULL: n_spans for every row */
    size_t n_spans;
    const size_t *positions; /* NULL: row t is at pos + t */
    const size_t *bounds;    /* statistics: n_seg + 1 segment bounds, or NULL */
    size_t n_seg;
    float *seg_mass;    /* [token][head][n_seg] */
    atomic_size_t next; /* next (token, head) pair to compute */
};

/* Sum of 8 lanes in the order of an AVX horizontal add (halves, then pairs), the order llama.cpp's
 * CPU kernels use; keeping it makes the attention numerics follow the reference closely. */
static inline float hsum8(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* Sums the probabilities p (packed over the rows the spans cover up to last) of the rows in each
 * segment [bounds[g], bounds[g + 1]) into out[g]. */
static void segment_mass(const struct kvt_eng_kv_span *spans, size_t n_spans, size_t last,
                         const float *p, const size_t *bounds, size_t n_seg, float *out)
{
    size_t covered = 0;
    for (size_t g = 0; g < n_seg; g++)
        out[g] = 0.0f;
    for (size_t s = 0; s < n_spans && spans[s].pos <= last; s++) {
        const struct kvt_eng_kv_span *sp = &spans[s];
        size_t n = sp->pos + sp->n_tokens > last + 1 ? last + 1 - sp->pos : sp->n_tokens;
        for (size_t g = 0; g < n_seg; g++) {
            size_t lo = bounds[g] > sp->pos ? bounds[g] : sp->pos;
            size_t hi = bounds[g + 1] < sp->pos + n ? bounds[g + 1] : sp->pos + n;
            double acc = 0.0;
            for (size_t i = lo; i < hi; i++)
                acc += p[covered + (i - sp->pos)];
            out[g] += (float)acc;
        }
        covered += n;
    }
}

/* One query head against the rows its spans cover among positions [0, last]. Mirrors llama.cpp's
 * non-flash attention on an fp16 cache: scores from fp16 queries and keys (8-lane dot), softmax
 * with a double sum of 8-row partial sums, probabilities rounded to fp16, and the value sum kept
 * in 8 lanes by position before a final horizontal add. The scores of the covered rows are packed
 * one after the other, so the softmax runs over those rows only; spans that cover all of [0, last]
 * fill the array exactly as a single span would, with the same 8-row blocks, hence the same bits
 * whatever their number. A span's bias (kv.h: log of merged entries' counts) is added to its
 * scaled scores before the maximum is taken. */
static void attn_head(const struct kvt_eng_ctx *c, const struct kvt_eng_kv_span *spans,
                      size_t n_spans, const float *q, size_t kvh, size_t last, float *scores,
                      float *lanes, float *out, const size_t *bounds, size_t n_seg, float *seg_out)
{
    const struct kvt_eng_hparams *hp = &c->m->hp;
    size_t hd = hp->head_dim;
    size_t row = 2 * (size_t)hp->n_head_kv * hd, v_off = (size_t)hp->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float qh[KVT_ENG_HEAD_DIM_MAX];

    for (size_t d = 0; d < hd; d++)
        qh[d] = kvt_eng_fp16_to_fp32(kvt_eng_fp32_to_fp16(q[d]));

    float mx = -INFINITY;
    size_t covered = 0;
    for (size_t s = 0; s < n_spans && spans[s].pos <= last; s++) {
        const struct kvt_eng_kv_span *sp = &spans[s];
        size_t n = sp->pos + sp->n_tokens > last + 1 ? last + 1 - sp->pos : sp->n_tokens;
        float *sc = scores + covered;
        kvt_eng_attn_scores(qh, sp->rows + kvh * hd, row, n, hd, scale, sc);
        if (sp->bias) /* merged entries: + log(count) (kv.h) */
            for (size_t i = 0; i < n; i++)
                sc[i] += sp->bias[i * hp->n_head_kv + kvh];
        for (size_t i = 0; i < n; i++)
            mx = sc[i] > mx ? sc[i] : mx;
        covered += n;
    }
    double sum = kvt_eng_softmax_exp(scores, covered, mx);
    /* Normalized probabilities, rounded to fp16 as llama.cpp feeds them to the value product. */
    kvt_eng_scale_round_f16(scores, covered, (float)(1.0 / sum));
    if (seg_out)
        segment_mass(spans, n_spans, last, scores, bounds, n_seg, seg_out);

    memset(lanes, 0, 8 * hd * sizeof(float));
    covered = 0;
    for (size_t s = 0; s < n_spans && spans[s].pos <= last; s++) {
        const struct kvt_eng_kv_span *sp = &spans[s];
        size_t n = sp->pos + sp->n_tokens > last + 1 ? last + 1 - sp->pos : sp->n_tokens;
        kvt_eng_attn_values(scores + covered, sp->rows + v_off + kvh * hd, row, n, sp->pos, hd,
                            lanes);
        covered += n;
    }
    for (size_t d = 0; d < hd; d++) {
        float l8[8];
        for (int k = 0; k < 8; k++)
            l8[k] = lanes[k * hd + d];
        out[d] = hsum8(l8);
    }
}

static void attn_worker(void *arg, unsigned ith, unsigned nth)
{
    struct attn_job *j = arg;
    struct kvt_eng_ctx *c = j->c;
    const struct kvt_eng_hparams *hp = &c->m->hp;
    size_t hd = hp->head_dim, n_head = hp->n_head, group = hp->n_head / hp->n_head_kv;
    float *scores = c->scores + (size_t)ith * (c->ctx_max + 8);
    float *lanes = c->lanes + (size_t)ith * 8 * hd;

    (void)nth;
    for (;;) {
        size_t job = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (job >= j->n_tok * n_head)
            break;
        size_t t = job / n_head, h = job % n_head;
        float *seg = j->seg_mass ? j->seg_mass + (t * n_head + h) * j->n_seg : NULL;
        attn_head(c, j->spans + t * j->stride, j->counts ? j->counts[t] : j->n_spans,
                  c->q + (t * n_head + h) * hd, h / group, tok_pos(j->positions, j->pos, t), scores,
                  lanes, c->attn + (t * n_head + h) * hd, j->bounds, j->n_seg, seg);
    }
}

/* ---- forward ----------------------------------------------------------------------------------
 */

/* A selection for the query at position last must list disjoint, non-empty spans in position
 * order within [0, last]; attention trusts that (its scores array holds last + 1 rows). */
static int check_selection(const struct kvt_eng_kv_span *sp, size_t n, size_t max, size_t last)
{
    size_t next = 0;
    if (n == 0 || n > max)
        return -EINVAL;
    for (size_t s = 0; s < n; s++) {
        if (!sp[s].rows || sp[s].n_tokens == 0 || sp[s].pos < next || sp[s].pos > last ||
            sp[s].n_tokens > last + 1 - sp[s].pos)
            return -EINVAL;
        next = sp[s].pos + sp[s].n_tokens;
    }
    return 0;
}

/* Lets the mode choose the rows each query of this layer attends to (kv.h, select). Returns 1
 * when it did (the job reads c->sel), 0 when it declined or has no select, or an error. */
static int select_rows(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, uint32_t layer, size_t pos,
                       size_t n, struct attn_job *aj)
{
    const struct kvt_eng_hparams *hp = &c->m->hp;
    if (!kv->ops->select)
        return 0;
    struct kvt_eng_kv_query kq = {
        .q = c->q, .pos = pos, .n_tokens = n, .n_head = hp->n_head, .head_dim = hp->head_dim};
    memset(c->sel, 0, n * kv->spans_max * sizeof(*c->sel)); /* bias NULL unless set */
    int rc = kv->ops->select(kv, layer, &kq, c->sel, kv->spans_max, c->sel_counts);
    if (rc < 0)
        return rc;
    if (rc == KVT_ENG_KV_DECLINE)
        return 0;
    if (rc != 0)
        return -EINVAL;
    for (size_t t = 0; t < n; t++)
        if (check_selection(c->sel + t * kv->spans_max, c->sel_counts[t], kv->spans_max, pos + t))
            return -EINVAL;
    aj->spans = c->sel;
    aj->stride = kv->spans_max;
    aj->counts = c->sel_counts;
    return 1;
}

/* Appends the rows of the step: one call per run of consecutive positions. */
static int append_rows(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, uint32_t layer,
                       const size_t *positions, size_t pos, size_t n, size_t row_halfs)
{
    if (!positions)
        return kv->ops->append(kv, layer, pos, n, c->rows);
    for (size_t t = 0; t < n;) {
        size_t e = t + 1;
        while (e < n && positions[e] == positions[e - 1] + 1)
            e++;
        int rc = kv->ops->append(kv, layer, positions[t], e - t, c->rows + t * row_halfs);
        if (rc)
            return rc;
        t = e;
    }
    return 0;
}

/* Head-averaged segment shares of layer l from the per-(token, head) sums of the job. */
static void reduce_stats(const struct attn_job *aj, size_t n, uint32_t n_head, uint32_t layer,
                         struct kvt_eng_attn_stats *st)
{
    for (size_t t = 0; t < n; t++) {
        float *out = st->mass + ((size_t)layer * n + t) * st->n_seg;
        for (size_t g = 0; g < st->n_seg; g++) {
            double acc = 0.0;
            for (uint32_t h = 0; h < n_head; h++)
                acc += aj->seg_mass[(t * n_head + h) * st->n_seg + g];
            out[g] = (float)(acc / n_head);
        }
    }
}

static int forward_impl(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens,
                        size_t n, size_t pos, const size_t *positions, float *logits,
                        int all_logits, struct kvt_eng_attn_stats *stats)
{
    const struct kvt_eng_model *m = c->m;
    const struct kvt_eng_hparams *hp = &m->hp;
    size_t E = hp->n_embd, hd = hp->head_dim;
    size_t q_dim = (size_t)hp->n_head * hd, kv_dim = (size_t)hp->n_head_kv * hd;
    int rc;

    if (n == 0 || n > c->batch_max || tok_pos(positions, pos, n - 1) + 1 > c->ctx_max)
        return -EINVAL;
    for (size_t t = 1; positions && t < n; t++)
        if (positions[t] <= positions[t - 1])
            return -EINVAL;
    if (stats) {
        if (stats->n_seg == 0 || !stats->bounds || !stats->mass)
            return -EINVAL;
        for (size_t g = 0; g < stats->n_seg; g++)
            if (stats->bounds[g + 1] < stats->bounds[g])
                return -EINVAL;
    }
    for (size_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return -EINVAL;
    if (kv->spans_max > c->spans_cap) {
        struct kvt_eng_kv_span *s = realloc(c->spans, kv->spans_max * sizeof(*s));
        if (!s)
            return -ENOMEM;
        c->spans = s;
        c->spans_cap = kv->spans_max;
    }
    if (kv->ops->select && kv->spans_max * c->batch_max > c->sel_cap) {
        size_t cap = kv->spans_max * c->batch_max;
        struct kvt_eng_kv_span *s = realloc(c->sel, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        c->sel = s;
        c->sel_cap = cap;
    }
    rc = kv->ops->prepare(kv, tok_pos(positions, pos, 0), n);
    if (rc)
        return rc;
    float *seg_mass = NULL;
    if (stats) {
        seg_mass = malloc(n * hp->n_head * stats->n_seg * sizeof(float));
        if (!seg_mass)
            return -ENOMEM;
    }

    for (size_t t = 0; t < n; t++) {
        const uint8_t *row =
            (const uint8_t *)m->tok_embd->data + (size_t)tokens[t] * m->tok_embd->row_bytes;
        kvt_eng_dequantize_row(m->tok_embd->type, row, c->x + t * E, E);
    }
    rope_tables(c, positions, pos, n);

    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const struct kvt_eng_layer *L = &m->layers[l];
        for (size_t t = 0; t < n; t++)
            rms_norm(c->x + t * E, L->attn_norm, c->xn + t * E, E, hp->rms_eps);
        const struct kvt_eng_tensor *wqkv[3] = {L->wq, L->wk, L->wv};
        float *yqkv[3] = {c->q, c->k, c->v};
        if (L->wk->type == L->wq->type && L->wv->type == L->wq->type) {
            matmul(c, c->xn, n, wqkv, yqkv, 3);
        } else {
            for (int i = 0; i < 3; i++)
                matmul(c, c->xn, n, &wqkv[i], &yqkv[i], 1);
        }
        for (size_t t = 0; t < n; t++) {
            rope_apply(c, c->q + t * q_dim, hp->n_head, t);
            rope_apply(c, c->k + t * kv_dim, hp->n_head_kv, t);
            uint16_t *r = c->rows + t * 2 * kv_dim;
            for (size_t i = 0; i < kv_dim; i++) {
                r[i] = kvt_eng_fp32_to_fp16(c->k[t * kv_dim + i]);
                r[kv_dim + i] = kvt_eng_fp32_to_fp16(c->v[t * kv_dim + i]);
            }
        }
        rc = append_rows(c, kv, l, positions, pos, n, 2 * kv_dim);
        if (rc)
            goto out;
        struct attn_job aj = {.c = c, .n_tok = n, .pos = pos, .positions = positions};
        if (stats) {
            aj.bounds = stats->bounds;
            aj.n_seg = stats->n_seg;
            aj.seg_mass = seg_mass;
        }
        rc = positions ? 0 : select_rows(c, kv, l, pos, n, &aj);
        if (rc < 0)
            goto out;
        if (rc == 0) {
            memset(c->spans, 0, c->spans_cap * sizeof(*c->spans));
            rc = kv->ops->spans(kv, l, tok_pos(positions, pos, n - 1) + 1, c->spans, c->spans_cap);
            if (rc < 0)
                goto out;
            aj.spans = c->spans;
            aj.n_spans = (size_t)rc;
        }
        atomic_init(&aj.next, 0);
        kvt_eng_pool_run(c->pool, attn_worker, &aj);
        if (stats)
            reduce_stats(&aj, n, hp->n_head, l, stats);

        matmul(c, c->attn, n, &L->wo, &c->tmp, 1);
        for (size_t i = 0; i < n * E; i++)
            c->x[i] += c->tmp[i];

        for (size_t t = 0; t < n; t++)
            rms_norm(c->x + t * E, L->ffn_norm, c->xn + t * E, E, hp->rms_eps);
        const struct kvt_eng_tensor *wgu[2] = {L->w_gate, L->w_up};
        float *ygu[2] = {c->g, c->u};
        if (L->w_up->type == L->w_gate->type) {
            matmul(c, c->xn, n, wgu, ygu, 2);
        } else {
            matmul(c, c->xn, n, &wgu[0], &ygu[0], 1);
            matmul(c, c->xn, n, &wgu[1], &ygu[1], 1);
        }
        kvt_eng_swiglu(c->g, c->u, c->g, n * hp->n_ff);
        matmul(c, c->g, n, &L->w_down, &c->tmp, 1);
        for (size_t i = 0; i < n * E; i++)
            c->x[i] += c->tmp[i];
    }

    rc = 0;
    if (logits) {
        size_t first = all_logits ? 0 : n - 1, n_out = n - first;
        for (size_t t = first; t < n; t++)
            rms_norm(c->x + t * E, m->output_norm, c->xn + (t - first) * E, E, hp->rms_eps);
        matmul(c, c->xn, n_out, &m->output, &logits, 1);
    }
out:
    free(seg_mass);
    return rc;
}

int kvt_eng_forward(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens, size_t n,
                    size_t pos, float *logits, int all_logits)
{
    return forward_impl(c, kv, tokens, n, pos, NULL, logits, all_logits, NULL);
}

int kvt_eng_forward_stats(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens,
                          size_t n, size_t pos, float *logits, int all_logits,
                          struct kvt_eng_attn_stats *stats)
{
    return forward_impl(c, kv, tokens, n, pos, NULL, logits, all_logits, stats);
}

int kvt_eng_forward_at(struct kvt_eng_ctx *c, struct kvt_eng_kv *kv, const int32_t *tokens,
                       const size_t *positions, size_t n, float *logits, int all_logits)
{
    if (!positions)
        return -EINVAL;
    return forward_impl(c, kv, tokens, n, 0, positions, logits, all_logits, NULL);
}
