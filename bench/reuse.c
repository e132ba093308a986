/*
 * kvtier-bench reuse: chunk-cache reuse at any position on the real model (issue 11,
 * EVALUATION.md "Retrieval-augmented (reuse) traces", docs/reuse.md, engine/rag.h).
 *
 * The trace: passages of 100-400 tokens cut from real prose (/usr/share/common-licenses and
 * python3's python-policy.txt), requests of a shared system line, 3-6 passages drawn by Zipf
 * popularity (s = 1) in a random order, then a question of 32-64 tokens (prose too). Every request
 * goes through all arms in turn, against one kvtierd this benchmark starts, each arm with its own
 * namespace so that none profits from another's stores:
 *   full    everything computed (the reference: its greedy continuation is what the others are
 *           scored on, teacher-forced);
 *   prefix  prefix caching: the prompt's chained 16-token chunk keys, kvt_lookup, the cached
 *           leading chunks read and the rest computed (then stored);
 *   naive   every passage found reused re-rotated, nothing recomputed;
 *   static32 found passages reused with their first 32 tokens recomputed (EPIC);
 *   kvtier  ChunkLookup's plan: the planned tokens recomputed (new versions per rag.h's rule).
 * Passages not found are computed in full and stored with their attention statistics by every
 * reuse arm. Per arm: tokens computed (recomputed ones included), time to first token (prefill
 * until the logits, kvtier calls included; stores after it are not), KL of the first 32 (quick:
 * 16) continuation distributions against full prefill, and passkey accuracy on two-passage
 * passkey traces ("The secret code of document NAME is NNNNN." in each passage; the reordered
 * second request of each trial asks about the passage that moved behind the other), once with the
 * question after the passages and once before them.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/evict.h"
#include "engine/fidelity.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/rag.h"
#include "kvtier/kvtier.h"
#include "tests/lib/daemon.h"

#define MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define SYSTEM_LINE                                                                                \
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "         \
    "Face<|im_end|>\n<|im_start|>user\nAnswer the question using the documents below.\n\n"
#define ASSISTANT "<|im_end|>\n<|im_start|>assistant\n"
#define PASSAGE_MIN 100
#define PASSAGE_MAX 400
#define PREFIX_CHUNK 16
#define CTX_MAX 4096
#define BATCH_MAX 512
#define ANSWER_TOKENS 16 /* digits are one token each */
#define PK_NAMES 8

/* kvtier_budget32 is kvtier's plan held to static32's recompute: on average 32 tokens per
 * passage found (kvt_chunk_lookup_budget), no new versions, so the two spend the same. */
enum { A_FULL, A_PREFIX, A_NAIVE, A_STATIC, A_PLAN, A_BUDGET, N_ARMS };

static const char *const arm_label[N_ARMS] = {"full",     "prefix", "naive",
                                              "static32", "kvtier", "kvtier_budget32"};
static const enum kvt_eng_rag_policy arm_policy[N_ARMS] = {KVT_ENG_RAG_FULL,  KVT_ENG_RAG_PREFIX,
                                                           KVT_ENG_RAG_NAIVE, KVT_ENG_RAG_STATIC,
                                                           KVT_ENG_RAG_PLAN,  KVT_ENG_RAG_PLAN};

struct arm {
    struct kvt_ns_info ns;
    double computed, reused, recomputed, found, fresh, stored, prefill_ms, store_ms;
    double kl_sum;
    size_t kl_n;
    size_t pk_ok[2], pk_n[2]; /* [0] question after the passages, [1] before */
};

struct bench {
    struct kvt_eng_model *m;
    struct kvt_eng_pool *pool;
    struct kvt_eng_ctx *ctx;
    struct kvt_eng_kv *kv;
    struct kvt_client *c;
    void *buf;
    size_t buf_bytes;
    struct arm arms[N_ARMS];
    float *ref; /* continuation rows of the full arm */
    float *cur;
    size_t cont;
    uint64_t rng;
};

static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t uniform(uint64_t *s, size_t lo, size_t hi) /* [lo, hi] */
{
    return lo + (size_t)(next_u64(s) % (hi - lo + 1));
}

/* Appends a file's text with every run of whitespace made one space. */
static int append_text(char **buf, size_t *len, size_t *cap, FILE *f)
{
    int ch, space = 0;
    while ((ch = fgetc(f)) != EOF) {
        if (*len + 2 > *cap) {
            size_t nc = *cap ? 2 * *cap : 1 << 20;
            char *nb = realloc(*buf, nc);
            if (!nb)
                return -ENOMEM;
            *buf = nb;
            *cap = nc;
        }
        if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r' || ch == '\f') {
            space = 1;
            continue;
        }
        if (space && *len)
            (*buf)[(*len)++] = ' ';
        space = 0;
        (*buf)[(*len)++] = (char)ch;
    }
    if (*len)
        (*buf)[(*len)++] = ' ';
    return 0;
}

static char *read_corpus(size_t *len_out)
{
    static const char *const files[] = {"GPL-3",   "LGPL-3",   "Apache-2.0", "GPL-2",
                                        "MPL-2.0", "Artistic", "GFDL-1.3",   "LGPL-2.1"};
    char *buf = NULL, path[256];
    size_t len = 0, cap = 0;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "/usr/share/common-licenses/%s", files[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        append_text(&buf, &len, &cap, f);
        fclose(f);
    }
    FILE *p = popen("zcat /usr/share/doc/python3/python-policy.txt.gz 2>/dev/null", "r");
    if (p) {
        append_text(&buf, &len, &cap, p);
        pclose(p);
    }
    *len_out = len;
    return buf;
}

/* Tokens of a text (control tokens parsed) into a new array. */
static int32_t *tokens_of(const struct kvt_eng_model *m, const char *s, size_t len, size_t *n)
{
    size_t need = 0;
    kvt_eng_tok_encode(m->tok, s, len, 1, NULL, 0, &need);
    int32_t *t = malloc((need + 1) * sizeof(*t));
    if (t && kvt_eng_tok_encode(m->tok, s, len, 1, t, need, n) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

struct request {
    const int32_t *head;
    size_t n_head;
    const int32_t *pass[8];
    size_t plen[8];
    size_t k;
    const int32_t *tail;
    size_t n_tail;
};

/* Greedy tokens of the reference rows. */
static void argmax_rows(const float *rows, size_t n, size_t V, int32_t *out)
{
    for (size_t t = 0; t < n; t++) {
        const float *r = rows + t * V;
        int32_t best = 0;
        for (size_t v = 1; v < V; v++)
            best = r[v] > r[best] ? (int32_t)v : best;
        out[t] = best;
    }
}

/* One request through one arm: prefill, then either n_cont rows of logits into rows (the
 * prompt's last, then one per continuation token: tokens, teacher-forced, or with gen the greedy
 * pick of each row, written to tokens) or a greedy answer (answer, at most ANSWER_TOKENS). */
static int run_arm(struct bench *b, int a, const struct request *q, int32_t *tokens, int gen,
                   size_t n_cont, float *rows, char *answer, size_t answer_cap)
{
    size_t V = b->m->hp.n_vocab;
    struct kvt_eng_rag_prompt p = {.head = q->head,
                                   .n_head = q->n_head,
                                   .passages = q->pass,
                                   .passage_len = q->plen,
                                   .n_passages = q->k,
                                   .tail = q->tail,
                                   .n_tail = q->n_tail};
    struct kvt_eng_rag_config cfg = {.policy = arm_policy[a],
                                     .client = b->c,
                                     .ns = &b->arms[a].ns,
                                     .buf = b->buf,
                                     .buf_bytes = b->buf_bytes};
    if (a == A_BUDGET) {
        cfg.recompute_budget = KVT_ENG_RAG_STATIC_TOKENS;
        cfg.new_version_cfo = 2.0f; /* never: the budget is the whole recompute */
    }
    struct kvt_eng_rag_result res;
    float *lg = rows ? rows : b->cur;
    int rc = kvt_eng_rag_prefill(b->ctx, b->kv, b->m, &cfg, &p, lg, &res);
    if (rc)
        return rc;
    struct arm *A = &b->arms[a];
    A->computed += (double)res.computed;
    A->reused += (double)res.reused;
    A->recomputed += (double)res.recomputed;
    A->found += (double)res.passages_found;
    A->fresh += (double)res.passages_computed;
    A->stored += (double)res.versions_stored;
    A->prefill_ms += res.prefill_ms;
    A->store_ms += res.store_ms;
    size_t pos = res.n_tokens;
    if (tokens) {
        for (size_t t = 1; t < n_cont && rc == 0; t++) {
            if (gen)
                argmax_rows(lg + (t - 1) * V, 1, V, &tokens[t - 1]);
            rc = kvt_eng_forward(b->ctx, b->kv, &tokens[t - 1], 1, pos + t - 1, lg + t * V, 0);
        }
        return rc;
    }
    size_t o = 0;
    for (size_t t = 0; t < ANSWER_TOKENS && rc == 0; t++) {
        int32_t best = 0;
        for (size_t v = 1; v < V; v++)
            best = lg[v] > lg[best] ? (int32_t)v : best;
        if (kvt_eng_tok_is_control(b->m->tok, best))
            break;
        int w = kvt_eng_tok_decode(b->m->tok, best, 0, answer + o, answer_cap - 1 - o);
        o += w > 0 ? (size_t)w : 0;
        rc = kvt_eng_forward(b->ctx, b->kv, &best, 1, pos + t, lg, 0);
    }
    answer[o] = 0;
    return rc;
}

/* The first run of 5 digits in s. */
static unsigned first_code(const char *s)
{
    for (; *s; s++) {
        size_t d = 0;
        while (s[d] >= '0' && s[d] <= '9')
            d++;
        if (d >= 5)
            return (unsigned)strtoul(s, NULL, 10) % 100000;
        if (d)
            s += d - 1;
    }
    return UINT32_MAX;
}

/* A passage of about `want` tokens of prose from text at *off with a code sentence in its
 * middle; *off moves past it. */
static int32_t *passkey_passage(const struct kvt_eng_model *m, const char *text, size_t tlen,
                                size_t *off, const char *name, unsigned code, size_t *n)
{
    char buf[4096];
    size_t take = 460, o = *off; /* about 110 tokens of prose */
    if (o + take + 1 > tlen)
        o = 0;
    size_t half = take / 2;
    while (half < take && text[o + half] != ' ')
        half++;
    int w = snprintf(buf, sizeof(buf), "%.*s The secret code of document %s is %05u.%.*s\n\n",
                     (int)half, text + o, name, code, (int)(take - half), text + o + half);
    *off = o + take;
    return tokens_of(m, buf, (size_t)w, n);
}

static int passkey_trace(struct bench *b, const char *text, size_t tlen, size_t trials, int before,
                         size_t *off)
{
    static const char *const names[PK_NAMES] = {"Alpha", "Bravo",  "Cedar",  "Delta",
                                                "Ember", "Falcon", "Garnet", "Harbor"};
    char s[512], answer[256];
    int rc = 0;
    for (size_t tr = 0; tr < trials && rc == 0; tr++) {
        const char *na = names[(2 * tr) % PK_NAMES], *nb = names[(2 * tr + 1) % PK_NAMES];
        unsigned ca = (unsigned)uniform(&b->rng, 10000, 99999);
        unsigned cb = (unsigned)uniform(&b->rng, 10000, 99999);
        size_t la, lb, nh, nt;
        int32_t *pa = passkey_passage(b->m, text, tlen, off, na, ca, &la);
        int32_t *pb = passkey_passage(b->m, text, tlen, off, nb, cb, &lb);
        int32_t *head = NULL, *tail = NULL;
        for (int r = 0; r < 2 && rc == 0 && pa && pb; r++) {
            /* request 0: A, B asking B; request 1 (scored): B, A asking A, which moved */
            const char *ask = r == 0 ? nb : na;
            unsigned want = r == 0 ? cb : ca;
            char q[160];
            snprintf(q, sizeof(q), "Question: What is the secret code of document %s?", ask);
            free(head);
            free(tail);
            int w = snprintf(s, sizeof(s), "%s%s%s", SYSTEM_LINE, before ? q : "",
                             before ? "\n\n" : "");
            head = tokens_of(b->m, s, (size_t)w, &nh);
            /* The answer is primed (this 135M model answers in that form anyway); with the
             * question before the passages the priming does not name the document. */
            char prime[96];
            if (before)
                snprintf(prime, sizeof(prime), "The secret code is");
            else
                snprintf(prime, sizeof(prime), "The secret code of document %s is", ask);
            w = snprintf(s, sizeof(s), "%s%s%s", before ? "" : q, ASSISTANT, prime);
            tail = tokens_of(b->m, s, (size_t)w, &nt);
            if (!head || !tail) {
                rc = -ENOMEM;
                break;
            }
            struct request rq = {.head = head, .n_head = nh, .tail = tail, .n_tail = nt, .k = 2};
            rq.pass[0] = r == 0 ? pa : pb;
            rq.plen[0] = r == 0 ? la : lb;
            rq.pass[1] = r == 0 ? pb : pa;
            rq.plen[1] = r == 0 ? lb : la;
            for (int a = 0; a < N_ARMS && rc == 0; a++) {
                rc = run_arm(b, a, &rq, NULL, 0, 0, NULL, answer, sizeof(answer));
                if (rc == 0 && r == 1) {
                    b->arms[a].pk_n[before]++;
                    b->arms[a].pk_ok[before] += first_code(answer) == want;
                }
            }
        }
        if (!pa || !pb)
            rc = -ENOMEM;
        free(pa);
        free(pb);
        free(head);
        free(tail);
        kvt_bench_progress("reuse: passkey (question %s) trial %zu/%zu: full %zu/%zu, kvtier "
                           "%zu/%zu",
                           before ? "before" : "after", tr + 1, trials,
                           b->arms[A_FULL].pk_ok[before], b->arms[A_FULL].pk_n[before],
                           b->arms[A_PLAN].pk_ok[before], b->arms[A_PLAN].pk_n[before]);
    }
    return rc;
}

static void report(const struct bench *b, struct kvt_bench_report *r, size_t n_req, int trace)
{
    const struct arm *st = &b->arms[A_STATIC];
    for (int a = 0; a < N_ARMS; a++) {
        const struct arm *A = &b->arms[a];
        kvt_bench_row(r, arm_label[a]);
        if (!trace) {
            kvt_bench_null(r, "tokens_recomputed", "trace not run (--only)");
        } else {
            kvt_bench_num(r, "tokens_recomputed", A->computed);
            kvt_bench_num(r, "static32_tokens_recomputed", st->computed);
            kvt_bench_num(r, "tokens_reused", A->reused);
            kvt_bench_num(r, "reused_tokens_recomputed", A->recomputed);
            kvt_bench_num(r, "passages_found", A->found);
            kvt_bench_num(r, "passages_computed", A->fresh);
            kvt_bench_num(r, "versions_stored", A->stored);
            kvt_bench_num(r, "ttft_ms", n_req ? A->prefill_ms / (double)n_req : 0.0);
            kvt_bench_num(r, "store_ms", n_req ? A->store_ms / (double)n_req : 0.0);
            kvt_bench_num(r, "kl_mean", A->kl_n ? A->kl_sum / (double)A->kl_n : 0.0);
        }
        for (int w = 0; w < 2; w++) {
            const char *name = w ? "passkey_before_accuracy" : "passkey_accuracy";
            if (A->pk_n[w])
                kvt_bench_num(r, name, (double)A->pk_ok[w] / (double)A->pk_n[w]);
            else
                kvt_bench_null(r, name, "passkey not run (--only)");
        }
    }
    const struct arm *k = &b->arms[A_PLAN];
    if (b->arms[A_PREFIX].computed > 0)
        kvt_bench_ratio(r, "recompute_vs_prefix_ratio", k->computed / b->arms[A_PREFIX].computed);
    if (b->arms[A_FULL].prefill_ms > 0)
        kvt_bench_ratio(r, "ttft_vs_full_prefill_ratio",
                        k->prefill_ms / b->arms[A_FULL].prefill_ms);
    if (st->kl_sum > 0)
        kvt_bench_ratio(r, "kl_vs_static32_ratio",
                        (k->kl_sum / (double)k->kl_n) / (st->kl_sum / (double)st->kl_n));
    if (st->computed > 0)
        kvt_bench_ratio(r, "recompute_vs_static32_ratio", k->computed / st->computed);
    if (b->arms[A_FULL].prefill_ms > 0)
        kvt_bench_ratio(r, "static32_ttft_vs_full_prefill_ratio",
                        st->prefill_ms / b->arms[A_FULL].prefill_ms);
    const struct arm *kb = &b->arms[A_BUDGET];
    if (st->kl_sum > 0 && kb->kl_n)
        kvt_bench_ratio(r, "budget32_kl_vs_static32_ratio",
                        (kb->kl_sum / (double)kb->kl_n) / (st->kl_sum / (double)st->kl_n));
    if (st->computed > 0)
        kvt_bench_ratio(r, "budget32_recompute_vs_static32_ratio", kb->computed / st->computed);
    if (b->arms[A_PREFIX].computed > 0)
        kvt_bench_ratio(r, "budget32_recompute_vs_prefix_ratio",
                        kb->computed / b->arms[A_PREFIX].computed);
    if (b->arms[A_FULL].prefill_ms > 0)
        kvt_bench_ratio(r, "budget32_ttft_vs_full_prefill_ratio",
                        kb->prefill_ms / b->arms[A_FULL].prefill_ms);
}

static int setup_bench(struct bench *b, const struct kvt_test_daemon *d, const char **why)
{
    char err[256];
    int rc = kvt_eng_model_load(MODEL, &b->m, err, sizeof(err));
    if (rc) {
        *why = "model does not load";
        return rc;
    }
    if ((rc = kvt_eng_pool_create(0, &b->pool)) ||
        (rc = kvt_eng_ctx_create(b->m, b->pool, BATCH_MAX, CTX_MAX, &b->ctx))) {
        *why = "engine context";
        return rc;
    }
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(b->m, CTX_MAX, BATCH_MAX);
    if ((rc = kvt_eng_kv_resident_create(&g, &b->kv))) {
        *why = "engine cache";
        return rc;
    }
    struct kvt_connect_opts co = {.socket_path = d->socket_path, .timeout_ms = 30000};
    if ((rc = kvt_connect(&co, &b->c))) {
        *why = "cannot connect to kvtierd";
        return rc;
    }
    b->buf_bytes = (size_t)PASSAGE_MAX * 2 * b->m->hp.n_layer * b->m->hp.n_head_kv *
                   b->m->hp.head_dim * sizeof(uint16_t);
    if (!(b->buf = kvt_arena_alloc(b->c, b->buf_bytes))) {
        *why = "arena";
        return -ENOMEM;
    }
    for (int a = 1; a < N_ARMS; a++) {
        char id[160];
        snprintf(id, sizeof(id), "%s/bench-reuse-%s", b->m->model_id, arm_label[a]);
        struct kvt_ns_spec sp =
            kvt_eng_rag_ns_spec(b->m, id, a == A_PREFIX ? PREFIX_CHUNK : PASSAGE_MAX);
        if ((rc = kvt_register(b->c, &sp, &b->arms[a].ns))) {
            *why = "register";
            return rc;
        }
    }
    return 0;
}

static void teardown_bench(struct bench *b)
{
    kvt_close(b->c);
    kvt_eng_kv_destroy(b->kv);
    kvt_eng_ctx_destroy(b->ctx);
    kvt_eng_pool_destroy(b->pool);
    kvt_eng_model_free(b->m);
    free(b->ref);
    free(b->cur);
}

/* Zipf(1) over n ranks. */
static size_t zipf(uint64_t *s, size_t n)
{
    double h = 0.0;
    for (size_t i = 0; i < n; i++)
        h += 1.0 / (double)(i + 1);
    double u = (double)(next_u64(s) >> 11) / 9007199254740992.0 * h, acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += 1.0 / (double)(i + 1);
        if (u < acc)
            return i;
    }
    return n - 1;
}

int kvt_bench_reuse(const struct kvt_bench_opts *opts, struct kvt_bench_report *r)
{
    size_t n_pass = opts->quick ? 6 : 16, n_req = opts->quick ? 3 : 16;
    size_t k_max = opts->quick ? 3 : 5, trials = opts->quick ? 1 : 4;
    size_t cont = opts->quick ? 8 : 32;
    for (int i = 0; i < opts->argc; i++) { /* --trials N, --requests N, --passages N */
        const char *a = opts->argv[i], *v = NULL;
        size_t *dst = NULL;
        static const struct {
            const char *name;
            size_t len;
        } names[] = {{"--trials", 8}, {"--requests", 10}, {"--passages", 10}};
        size_t *dsts[] = {&trials, &n_req, &n_pass};
        for (size_t j = 0; j < 3 && !dst; j++) {
            if (!strncmp(a, names[j].name, names[j].len) && a[names[j].len] == '=')
                v = a + names[j].len + 1, dst = dsts[j];
            else if (!strcmp(a, names[j].name) && i + 1 < opts->argc)
                v = opts->argv[++i], dst = dsts[j];
        }
        char *end = NULL;
        unsigned long x = v ? strtoul(v, &end, 10) : 0;
        if (!dst || *end || x == 0 || x > 256) {
            fprintf(stderr,
                    "kvtier-bench reuse: options are --trials N, --requests N and --passages N "
                    "(1 .. 256), not %s\n",
                    a);
            return KVT_BENCH_USAGE;
        }
        *dst = x;
    }
    const char *why = NULL;
    static struct bench b;
    memset(&b, 0, sizeof(b));
    b.rng = 0x5EED2026ull;
    if (access(MODEL, R_OK) && system("./scripts/fetch-model.sh models >/dev/null") != 0)
        why = "model not available (scripts/fetch-model.sh models)";
    size_t tlen = 0;
    char *text = why ? NULL : read_corpus(&tlen);
    if (!why && tlen < 100000)
        why = "prose not found (/usr/share/common-licenses)";
    struct kvt_test_daemon d = {0};
    setenv("KVT_BUILD", opts->bin_dir, 0);
    const char *args[] = {"--cpu.arena_bytes=1G", "--log_level=warn", NULL};
    int started = 0, rc = 0;
    if (!why) {
        if (kvt_test_daemon_start(&d, args) != 0)
            why = "kvtierd did not start";
        else
            started = 1;
    }
    if (!why && setup_bench(&b, &d, &why) != 0 && !why)
        why = "setup";
    size_t V = why ? 0 : b.m->hp.n_vocab;
    int32_t *all = NULL, *nl = NULL, *qpre = NULL, *asst = NULL, *head = NULL;
    int32_t *ref_tok = NULL, *tail = NULL;
    size_t n_all = 0, n_nl = 0, n_qpre = 0, n_asst = 0, n_head = 0;
    int32_t **pass = NULL;
    size_t *plen = NULL;
    if (!why) {
        all = tokens_of(b.m, text, tlen, &n_all);
        nl = tokens_of(b.m, "\n\n", 2, &n_nl);
        qpre = tokens_of(b.m, "Question: ", 10, &n_qpre);
        asst = tokens_of(b.m, ASSISTANT, strlen(ASSISTANT), &n_asst);
        head = tokens_of(b.m, SYSTEM_LINE, strlen(SYSTEM_LINE), &n_head);
        b.cont = cont;
        b.ref = malloc(cont * V * sizeof(float));
        b.cur = malloc(cont * V * sizeof(float));
        ref_tok = malloc(cont * sizeof(int32_t));
        tail = malloc((n_qpre + 64 + n_asst) * sizeof(int32_t));
        pass = calloc(n_pass, sizeof(*pass));
        plen = calloc(n_pass, sizeof(*plen));
        if (!all || !nl || !qpre || !asst || !head || !b.ref || !b.cur || !ref_tok || !tail ||
            !pass || !plen)
            why = "out of memory";
    }
    /* Passages: consecutive windows of the corpus; questions come from after them. */
    size_t off = 0;
    for (size_t i = 0; !why && i < n_pass; i++) {
        size_t L = uniform(&b.rng, PASSAGE_MIN, PASSAGE_MAX - n_nl);
        pass[i] = malloc((L + n_nl) * sizeof(int32_t));
        if (!pass[i] || off + L > n_all) {
            why = "corpus too short";
            break;
        }
        memcpy(pass[i], all + off, L * sizeof(int32_t));
        memcpy(pass[i] + L, nl, n_nl * sizeof(int32_t));
        plen[i] = L + n_nl;
        off += L;
    }
    size_t q_off = off;
    /* The passkey traces run first; their figures are kept apart from the RAG trace's. */
    size_t pk_off = tlen / 2; /* text bytes well past the passages' and questions' tokens */
    for (int before = 0; !why && rc == 0 && before < 2 && kvt_bench_part(opts, "passkey"); before++)
        rc = passkey_trace(&b, text, tlen, trials, before, &pk_off);
    for (int a = 0; a < N_ARMS; a++) {
        struct arm keep = {.ns = b.arms[a].ns};
        memcpy(keep.pk_ok, b.arms[a].pk_ok, sizeof(keep.pk_ok));
        memcpy(keep.pk_n, b.arms[a].pk_n, sizeof(keep.pk_n));
        b.arms[a] = keep;
    }
    /* The passage ids of every request, for the eviction replay after the model's trace. */
    size_t n_evict_req = opts->quick ? 100 : 400;
    uint32_t *order = calloc(n_evict_req * k_max, sizeof(uint32_t));
    uint32_t *req_len = calloc(n_evict_req, sizeof(uint32_t));
    size_t n_order = 0;
    if (!order || !req_len)
        why = why ? why : "out of memory";
    uint64_t t_start = kvt_bench_now_ns();
    int trace = kvt_bench_part(opts, "trace");
    for (size_t q = 0; !why && rc == 0 && q < n_req; q++) {
        struct request rq = {.head = head, .n_head = n_head, .tail = tail};
        rq.k = uniform(&b.rng, 3, k_max);
        size_t picked[8];
        for (size_t i = 0; i < rq.k; i++) {
            size_t p;
            int dup;
            do {
                p = zipf(&b.rng, n_pass);
                dup = 0;
                for (size_t j = 0; j < i; j++)
                    dup |= picked[j] == p;
            } while (dup);
            picked[i] = p;
            order[n_order++] = (uint32_t)p;
            rq.pass[i] = pass[p];
            rq.plen[i] = plen[p];
        }
        req_len[q] = (uint32_t)rq.k;
        size_t ql = uniform(&b.rng, 32, 64);
        if (q_off + ql > n_all)
            q_off = off;
        memcpy(tail, qpre, n_qpre * sizeof(int32_t));
        memcpy(tail + n_qpre, all + q_off, ql * sizeof(int32_t));
        memcpy(tail + n_qpre + ql, asst, n_asst * sizeof(int32_t));
        rq.n_tail = n_qpre + ql + n_asst;
        q_off += ql;
        if (!trace)
            continue; /* the draws still happen: the eviction replay starts with them */
        rc = run_arm(&b, A_FULL, &rq, ref_tok, 1, cont, b.ref, NULL, 0);
        for (int a = 1; a < N_ARMS && rc == 0; a++) {
            rc = run_arm(&b, a, &rq, ref_tok, 0, cont, b.cur, NULL, 0);
            for (size_t t = 0; rc == 0 && t < cont; t++) {
                struct kvt_eng_fid_pos fp;
                kvt_eng_fid_compare(b.ref + t * V, b.cur + t * V, V, -1, &fp);
                b.arms[a].kl_sum += fp.kl;
                b.arms[a].kl_n++;
            }
        }
        kvt_bench_progress(
            "reuse: request %zu/%zu (%zu passages, %.0f s): computed full %.0f, prefix %.0f, "
            "static32 %.0f, kvtier %.0f tokens; KL naive %.4f, static32 %.4f, kvtier %.4f",
            q + 1, n_req, rq.k, (double)(kvt_bench_now_ns() - t_start) * 1e-9,
            b.arms[A_FULL].computed, b.arms[A_PREFIX].computed, b.arms[A_STATIC].computed,
            b.arms[A_PLAN].computed, b.arms[A_NAIVE].kl_sum / (double)b.arms[A_NAIVE].kl_n,
            b.arms[A_STATIC].kl_sum / (double)b.arms[A_STATIC].kl_n,
            b.arms[A_PLAN].kl_sum / (double)b.arms[A_PLAN].kl_n);
    }
    if (!why && rc != 0)
        why = kvt_strerror(rc);
    if (why) {
        kvt_bench_row(r, "reuse");
        kvt_bench_null(r, "tokens_recomputed", why);
    } else {
        report(&b, r, n_req, trace);
        /* Hit ratio and recompute saved under a DRAM limit (25% of the distinct passages), LRU
         * against cost-aware: the model's requests, then more drawn the same way. */
        for (size_t q = n_req; q < n_evict_req && kvt_bench_part(opts, "evict"); q++) {
            req_len[q] = (uint32_t)uniform(&b.rng, 3, k_max);
            for (size_t i = 0; i < req_len[q]; i++) {
                uint32_t p;
                int dup;
                do {
                    p = (uint32_t)zipf(&b.rng, n_pass);
                    dup = 0;
                    for (size_t j = 0; j < i; j++)
                        dup |= order[n_order - 1 - j] == p;
                } while (dup);
                order[n_order++] = p;
            }
        }
        uint32_t *ptoks = calloc(n_pass, sizeof(uint32_t));
        for (size_t i = 0; ptoks && i < n_pass; i++)
            ptoks[i] = (uint32_t)plen[i];
        struct kvt_bench_evict_trace et = {.passage_tokens = ptoks,
                                           .n_passages = n_pass,
                                           .order = order,
                                           .request_len = req_len,
                                           .n_requests = n_evict_req,
                                           .layers = b.m->hp.n_layer,
                                           .kv_heads = b.m->hp.n_head_kv,
                                           .head_dim = b.m->hp.head_dim};
        struct kvt_bench_evict_arm ea[2];
        kvt_bench_progress("reuse: eviction replay (%zu requests, lru and cost)", n_evict_req);
        if (kvt_bench_part(opts, "evict") &&
            (!ptoks || kvt_bench_evict_run(opts, &et, 0.25, r, ea)))
            rc = -1;
        free(ptoks);
    }
    for (size_t i = 0; pass && i < n_pass; i++)
        free(pass[i]);
    free(pass);
    free(plen);
    free(all);
    free(nl);
    free(qpre);
    free(asst);
    free(head);
    free(ref_tok);
    free(tail);
    free(order);
    free(req_len);
    free(text);
    if (b.m)
        teardown_bench(&b);
    if (started) {
        kvt_test_daemon_stop(&d);
        kvt_test_daemon_cleanup(&d);
    }
    return why || rc ? 1 : 0;
}
