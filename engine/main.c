/*
 * kvtier-engine: the reference inference engine's command line.
 *
 *   kvtier-engine generate --model M --prompt P [--max-tokens N] [--mode MODE]
 *                 [--socket S] [--temp T --top-k K --top-p P --seed S] [--raw]
 *   kvtier-engine eval --model M --text FILE --mode MODE --json OUT [--tokens N] [--socket S]
 *                 [--decode-from N] [--budget F] [--top-p P] [--spans fixed|variable]
 *                 [--estimates N]
 *                 [--bits 8|4 --group G --kivi --ratio F --window C --sinks N --recent N]
 *   kvtier-engine passkey --model M --mode MODE --tokens N --trials K --json OUT [--seed S]
 *   kvtier-engine rag --model M --passage FILE [--passage FILE ...] --prompt Q [--policy P]
 *   kvtier-engine dump-kv --model M --text FILE --out FILE [--tokens N]
 *
 * Common options: --threads N (0: all cores), --ctx N, --batch N, --chunk-tokens N,
 * --timeout-ms N, --on-error recompute|stop, --tenant T.
 * generate wraps the prompt in the model's chat template unless --raw; eval scores a text with no
 * BOS (like llama.cpp for this model) and, for a mode other than resident, also runs resident in
 * the same process to report top-1 agreement and whether the logits are bit-identical. With
 * --decode-from it scores one token at a time against resident (fidelity.h); passkey runs the
 * retention test (passkey.h). --budget, --top-p, --spans and --estimates configure a selecting
 * mode (in
 * generate, --top-p is the sampler's). --bits, --group and --kivi configure the quant mode,
 * --ratio and --window the cluster mode, --sinks and --recent both (kv.h, kvt_eng_lossy_config).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/fidelity.h"
#include "engine/model.h"
#include "engine/passkey.h"
#include "engine/pool.h"
#include "engine/quant.h"
#include "engine/rag.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "kvtier/kvtier.h"

#define DEFAULT_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

struct opts {
    const char *cmd;
    const char *model;
    const char *prompt;
    const char *text;
    const char *json;
    const char *out; /* dump-kv output file */
    const char *socket;
    const char *tenant;
    const char *system;
    enum kvt_eng_mode mode;
    size_t max_tokens;
    size_t eval_tokens;
    size_t ctx;
    size_t batch;
    unsigned threads;
    uint32_t chunk_tokens;
    uint32_t timeout_ms;
    int stop_on_error;
    int raw;
    int compare;
    size_t decode_from;      /* eval: 0 scores in batches, else one token at a time from here */
    size_t trials;           /* passkey */
    const char *passages[8]; /* rag: passage files, in order */
    size_t n_passages;
    const char *policy; /* rag */
    struct kvt_eng_sampler_config sampling;
    struct kvt_eng_select_config select; /* top_p here is the selection's, not the sampler's */
    struct kvt_eng_lossy_config lossy;
    int lossy_set; /* a quant or cluster option was given */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  kvtier-engine generate --model M --prompt P [--max-tokens N] [--mode MODE]\n"
            "                [--socket S] [--temp T] [--top-k K] [--top-p P] [--seed S] [--raw]\n"
            "  kvtier-engine eval --model M --text FILE --mode MODE --json OUT [--tokens N] "
            "[--socket S]\n"
            "                [--no-compare] [--decode-from N]\n"
            "  kvtier-engine passkey --model M --mode MODE --tokens N --trials K --json OUT "
            "[--seed S]\n"
            "  kvtier-engine rag --model M --passage FILE [--passage FILE ...] --prompt Q\n"
            "                [--policy full|prefix|naive|static|plan] [--max-tokens N] "
            "[--socket S]\n"
            "  kvtier-engine dump-kv --model M --text FILE --out FILE [--tokens N]\n"
            "                (real KV in kvtier's canonical chunk layout, fp16, for benchmarks)\n"
            "modes: " KVT_ENG_MODE_NAMES "\n"
            "selection (eval, passkey; selecting modes only): --prefetch --budget F --top-p P "
            "--spans fixed|variable\n"
            "        --estimates N (sparse: also attend to the N best unselected spans by their "
            "means)\n"
            "lossy (quant, cluster): --bits 8|4 --group G --kivi (keys per channel) --ratio F "
            "--window C\n"
            "        --sinks N --recent N (kept fp16; defaults 4 and 128)\n"
            "common: --threads N --ctx N --batch N --chunk-tokens N --timeout-ms N\n"
            "        --on-error recompute|stop --tenant T\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_size(const char *v, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || end == v)
        return -EINVAL;
    *out = (size_t)x;
    return 0;
}

/* A fraction in (0, 1], written in full (no trailing junk). */
static int parse_fraction(const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x > 0.0 && x <= 1.0))
        return -EINVAL;
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    size_t v;
    if (argc < 2)
        return -EINVAL;
    o->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        char *a = argv[i];
        const char *val = NULL;
        if (strncmp(a, "--", 2) != 0)
            goto bad;
        char *eq = strchr(a, '=');
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        a += 2;
        /* Flags without a value. */
        if (!strcmp(a, "raw") || !strcmp(a, "no-compare") || !strcmp(a, "prefetch") ||
            !strcmp(a, "kivi")) {
            if (!strcmp(a, "raw"))
                o->raw = 1;
            else if (!strcmp(a, "kivi"))
                o->lossy.keys_per_channel = o->lossy_set = 1;
            else if (!strcmp(a, "prefetch"))
                o->select.prefetch = 1;
            else
                o->compare = 0;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc)
                goto bad;
            val = argv[++i];
        }
        if (!strcmp(a, "model"))
            o->model = val;
        else if (!strcmp(a, "prompt"))
            o->prompt = val;
        else if (!strcmp(a, "text"))
            o->text = val;
        else if (!strcmp(a, "json"))
            o->json = val;
        else if (!strcmp(a, "out"))
            o->out = val;
        else if (!strcmp(a, "socket"))
            o->socket = val;
        else if (!strcmp(a, "tenant"))
            o->tenant = val;
        else if (!strcmp(a, "system"))
            o->system = val;
        else if (!strcmp(a, "policy"))
            o->policy = val;
        else if (!strcmp(a, "passage") && o->n_passages < 8)
            o->passages[o->n_passages++] = val;
        else if (!strcmp(a, "mode")) {
            if (kvt_eng_mode_parse(val, &o->mode)) {
                fprintf(stderr, "kvtier-engine: unknown mode '%s' (modes: %s)\n", val,
                        KVT_ENG_MODE_NAMES);
                return -EINVAL;
            }
        } else if (!strcmp(a, "budget")) {
            if (parse_fraction(val, &o->select.budget)) {
                fprintf(stderr, "kvtier-engine: --budget must be a fraction in (0, 1], not '%s'\n",
                        val);
                return -EINVAL;
            }
        } else if (!strcmp(a, "top-p")) {
            if (parse_fraction(val, &o->select.top_p)) {
                fprintf(stderr, "kvtier-engine: --top-p must be a fraction in (0, 1], not '%s'\n",
                        val);
                return -EINVAL;
            }
            o->sampling.top_p = (float)o->select.top_p;
        } else if (!strcmp(a, "spans")) {
            if (!strcmp(val, "fixed"))
                o->select.spans = KVT_ENG_SPANS_FIXED;
            else if (!strcmp(val, "variable"))
                o->select.spans = KVT_ENG_SPANS_VARIABLE;
            else {
                fprintf(stderr, "kvtier-engine: --spans is fixed or variable, not '%s'\n", val);
                return -EINVAL;
            }
        } else if (!strcmp(a, "ratio")) {
            char *end;
            errno = 0;
            double x = strtod(val, &end);
            if (errno || *end || end == val || !(x >= 0.0 && x < 1.0)) {
                fprintf(stderr, "kvtier-engine: --ratio must be in [0, 1), not '%s'\n", val);
                return -EINVAL;
            }
            o->lossy.ratio = x;
            o->lossy_set = 1;
        } else if (!strcmp(a, "bits") && !parse_size(val, &v) && (v == 8 || v == 4)) {
            o->lossy.bits = (uint32_t)v;
            o->lossy_set = 1;
        } else if (!strcmp(a, "estimates")) {
            if (parse_size(val, &v) || v > KVT_ENG_ESTIMATES_MAX) {
                fprintf(stderr, "kvtier-engine: --estimates must be 0 to %u, not '%s'\n",
                        KVT_ENG_ESTIMATES_MAX, val);
                return -EINVAL;
            }
            o->select.estimates = (uint32_t)v;
        } else if (!strcmp(a, "group") && !parse_size(val, &v) && v >= 2 && v <= 4096) {
            o->lossy.group = (uint32_t)v;
            o->lossy_set = 1;
        } else if (!strcmp(a, "window") && !parse_size(val, &v) && v >= 2 && v <= 4096) {
            o->lossy.window = (uint32_t)v;
            o->lossy_set = 1;
        } else if (!strcmp(a, "sinks") && !parse_size(val, &v) && v <= UINT32_MAX) {
            o->lossy.sinks = (uint32_t)v;
            o->lossy_set = 1;
        } else if (!strcmp(a, "recent") && !parse_size(val, &v) && v <= UINT32_MAX) {
            o->lossy.recent = (uint32_t)v;
            o->lossy_set = 1;
        } else if (!strcmp(a, "on-error")) {
            if (!strcmp(val, "stop"))
                o->stop_on_error = 1;
            else if (!strcmp(val, "recompute"))
                o->stop_on_error = 0;
            else
                goto bad;
        } else if (!strcmp(a, "temp"))
            o->sampling.temp = strtof(val, NULL);
        else if (!strcmp(a, "max-tokens") && !parse_size(val, &v))
            o->max_tokens = v;
        else if (!strcmp(a, "tokens") && !parse_size(val, &v))
            o->eval_tokens = v;
        else if (!strcmp(a, "decode-from") && !parse_size(val, &v) && v > 0)
            o->decode_from = v;
        else if (!strcmp(a, "trials") && !parse_size(val, &v) && v > 0 && v <= 100000)
            o->trials = v;
        else if (!strcmp(a, "ctx") && !parse_size(val, &v) && v > 0)
            o->ctx = v;
        else if (!strcmp(a, "batch") && !parse_size(val, &v) && v > 0)
            o->batch = v;
        else if (!strcmp(a, "threads") && !parse_size(val, &v) && v < 1024)
            o->threads = (unsigned)v;
        else if (!strcmp(a, "chunk-tokens") && !parse_size(val, &v) && v > 0 && v <= 65536)
            o->chunk_tokens = (uint32_t)v;
        else if (!strcmp(a, "timeout-ms") && !parse_size(val, &v) && v <= 3600000)
            o->timeout_ms = (uint32_t)v;
        else if (!strcmp(a, "top-k") && !parse_size(val, &v) && v <= UINT32_MAX)
            o->sampling.top_k = (uint32_t)v;
        else if (!strcmp(a, "seed") && !parse_size(val, &v))
            o->sampling.seed = v;
        else
            goto bad;
        continue;
    bad:
        fprintf(stderr, "kvtier-engine: bad or incomplete option '%s'\n", argv[i]);
        return -EINVAL;
    }
    return 0;
}

static int read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf)
        return -ENOMEM;
    if (err) {
        free(buf);
        return -EIO;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int tokenize(const struct kvt_eng_model *m, const char *text, size_t len, int special,
                    int32_t **out, size_t *n_out)
{
    size_t n = 0;
    int rc = kvt_eng_tok_encode(m->tok, text, len, special, NULL, 0, &n);
    if (rc && rc != -ENOSPC)
        return rc;
    int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids)
        return -ENOMEM;
    rc = kvt_eng_tok_encode(m->tok, text, len, special, ids, n, &n);
    if (rc) {
        free(ids);
        return rc;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

static struct kvt_eng_session_config session_config(const struct opts *o, enum kvt_eng_mode mode,
                                                    size_t ctx)
{
    struct kvt_eng_session_config c = {
        .mode = mode,
        .ctx_max = ctx,
        .batch_max = o->batch,
        .stop_on_error = o->stop_on_error,
        .log = stderr,
    };
    c.offload.socket_path = o->socket;
    c.offload.tenant = o->tenant;
    c.offload.tokens_per_chunk = o->chunk_tokens;
    c.offload.timeout_ms = o->timeout_ms;
    c.select = o->select;
    c.lossy = o->lossy;
    if (!strcmp(o->cmd, "generate"))
        c.select.top_p = 0.0; /* there it is the sampler's */
    return c;
}

static void print_kv_stats(FILE *f, const struct kvt_eng_kv_stats *st, size_t tokens)
{
    static const char *const tier[KVT_ENG_KV_TIERS] = {"local", "gpu", "dram", "disk", "remote"};
    uint64_t total = 0;
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        total += st->fetch_bytes[i];
    fprintf(f, "kv: fetched %llu bytes in %llu chunks (", (unsigned long long)total,
            (unsigned long long)st->fetch_chunks);
    for (int i = 1; i < KVT_ENG_KV_TIERS; i++)
        fprintf(f, "%s%s %llu", i > 1 ? ", " : "", tier[i], (unsigned long long)st->fetch_bytes[i]);
    fprintf(f,
            "), stored %llu bytes in %llu chunks, %.0f bytes fetched per token; "
            "fetch %.1f ms, store %.1f ms\n",
            (unsigned long long)st->store_bytes, (unsigned long long)st->store_chunks,
            tokens ? (double)total / (double)tokens : 0.0, (double)st->fetch_ns / 1e6,
            (double)st->store_ns / 1e6);
}

/* ---- generate ----------------------------------------------------------------------------------
 */

static int cmd_generate(const struct opts *o, const struct kvt_eng_model *m,
                        struct kvt_eng_pool *pool)
{
    char *text = NULL;
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    float *logits = NULL;
    struct kvt_eng_session *s = NULL;
    struct kvt_eng_sampler *smp = NULL;
    int rc;

    if (!o->prompt) {
        fprintf(stderr, "kvtier-engine: generate needs --prompt\n");
        return -EINVAL;
    }
    if (o->raw) {
        rc = tokenize(m, o->prompt, strlen(o->prompt), 0, &prompt, &n_prompt);
    } else {
        const char *sys = o->system ? o->system : DEFAULT_SYSTEM;
        size_t cap = strlen(sys) + strlen(o->prompt) + 128;
        text = malloc(cap);
        if (!text)
            return -ENOMEM;
        int len = snprintf(text, cap,
                           "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
                           "<|im_start|>assistant\n",
                           sys, o->prompt);
        rc = tokenize(m, text, (size_t)len, 1, &prompt, &n_prompt);
    }
    if (rc) {
        fprintf(stderr, "kvtier-engine: cannot tokenize the prompt: %s\n", strerror(-rc));
        goto out;
    }
    size_t ctx = o->ctx ? o->ctx : n_prompt + o->max_tokens + 1;
    if (ctx > m->hp.ctx_train) {
        fprintf(stderr,
                "kvtier-engine: context of %zu tokens exceeds the model's %u (lower --max-tokens "
                "or --ctx)\n",
                ctx, m->hp.ctx_train);
        rc = -EINVAL;
        goto out;
    }
    if (n_prompt + o->max_tokens > ctx) {
        fprintf(stderr, "kvtier-engine: prompt (%zu tokens) + --max-tokens exceed --ctx %zu\n",
                n_prompt, ctx);
        rc = -EINVAL;
        goto out;
    }
    struct kvt_eng_session_config sc = session_config(o, o->mode, ctx);
    rc = kvt_eng_session_create(m, pool, &sc, &s);
    if (rc) {
        fprintf(stderr, "kvtier-engine: cannot start the %s session: %s\n",
                kvt_eng_mode_name(o->mode), kvt_strerror(rc));
        goto out;
    }
    rc = kvt_eng_sampler_create(&o->sampling, m->hp.n_vocab, &smp);
    logits = malloc(m->hp.n_vocab * sizeof(float));
    if (rc || !logits) {
        rc = rc ? rc : -ENOMEM;
        goto out;
    }

    double t0 = now_s();
    rc = kvt_eng_session_start(s, prompt, n_prompt, 1, logits, NULL, NULL);
    double t1 = now_s();
    if (rc) {
        fprintf(stderr, "kvtier-engine: prompt failed: %s\n", kvt_strerror(rc));
        goto out;
    }
    size_t produced = 0;
    char piece[256];
    for (; produced < o->max_tokens; produced++) {
        int32_t id = kvt_eng_sampler_pick(smp, logits);
        if (id == kvt_eng_tok_eos(m->tok) || kvt_eng_tok_is_control(m->tok, id))
            break;
        int l = kvt_eng_tok_decode(m->tok, id, 0, piece, sizeof(piece));
        if (l > 0)
            fwrite(piece, 1, (size_t)l, stdout);
        fflush(stdout);
        if (produced + 1 == o->max_tokens)
            break;
        rc = kvt_eng_session_next(s, id, logits);
        if (rc) {
            fprintf(stderr, "\nkvtier-engine: generation stopped: %s\n", kvt_strerror(rc));
            goto out;
        }
    }
    double t2 = now_s();
    fputc('\n', stdout);
    fflush(stdout);
    struct kvt_eng_kv_stats st = kvt_eng_session_kv_stats(s);
    fprintf(stderr,
            "mode %s%s: prompt %zu tokens (%zu reused from kvtier) in %.1f ms, %zu tokens "
            "generated, %.2f ms/token\n",
            kvt_eng_mode_name(o->mode), s->fell_back ? " (fell back to resident)" : "", n_prompt,
            s->reused, (t1 - t0) * 1e3, produced, produced ? (t2 - t1) * 1e3 / produced : 0.0);
    print_kv_stats(stderr, &st, s->n_past);

out:
    kvt_eng_sampler_destroy(smp);
    kvt_eng_session_destroy(s);
    free(logits);
    free(prompt);
    free(text);
    return rc;
}

/* ---- eval --------------------------------------------------------------------------------------
 */

struct eval_acc {
    const int32_t *tokens;
    size_t n;
    size_t V;
    double nll;
    size_t scored;
    int32_t *argmax;  /* per position */
    uint64_t *digest; /* per position: FNV-1a of the logits' bytes */
};

static void eval_cb(void *arg, size_t pos, size_t n, const float *logits)
{
    struct eval_acc *a = arg;
    for (size_t i = 0; i < n; i++) {
        const float *l = logits + i * a->V;
        size_t p = pos + i;
        a->argmax[p] = kvt_eng_argmax(l, a->V);
        uint64_t h = 1469598103934665603ull;
        const unsigned char *b = (const unsigned char *)l;
        for (size_t k = 0; k < a->V * sizeof(float); k++)
            h = (h ^ b[k]) * 1099511628211ull;
        a->digest[p] = h;
        if (p + 1 < a->n) {
            double mx = l[a->argmax[p]], sum = 0.0;
            for (size_t k = 0; k < a->V; k++)
                sum += exp((double)l[k] - mx);
            a->nll += mx + log(sum) - (double)l[a->tokens[p + 1]];
            a->scored++;
        }
    }
}

struct eval_run {
    double seconds;
    double ppl;
    struct kvt_eng_kv_stats kv;
    int fell_back;
    int last_error;
};

static int eval_one(const struct opts *o, const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                    enum kvt_eng_mode mode, struct eval_acc *acc, struct eval_run *run)
{
    struct kvt_eng_session *s = NULL;
    struct kvt_eng_session_config sc = session_config(o, mode, acc->n);
    int rc = kvt_eng_session_create(m, pool, &sc, &s);
    if (rc) {
        fprintf(stderr, "kvtier-engine: cannot start the %s session: %s\n", kvt_eng_mode_name(mode),
                kvt_strerror(rc));
        return rc;
    }
    acc->nll = 0.0;
    acc->scored = 0;
    double t0 = now_s();
    /* Every position needs its logits, so a cached prefix is not reused here. */
    rc = kvt_eng_session_start(s, acc->tokens, acc->n, 0, NULL, eval_cb, acc);
    run->seconds = now_s() - t0;
    if (rc)
        fprintf(stderr, "kvtier-engine: %s eval failed: %s\n", kvt_eng_mode_name(mode),
                kvt_strerror(rc));
    run->ppl = acc->scored ? exp(acc->nll / (double)acc->scored) : 0.0;
    run->kv = kvt_eng_session_kv_stats(s);
    run->fell_back = s->fell_back;
    run->last_error = s->last_error;
    kvt_eng_session_destroy(s);
    return rc;
}

/* Reads --text and tokenizes it (no BOS); on error says why and returns it, with *text and *ids
 * left for the caller to free. */
static int text_tokens(const struct opts *o, const struct kvt_eng_model *m, char **text,
                       int32_t **ids, size_t *n_all)
{
    size_t len = 0;
    int rc = read_file(o->text, text, &len);
    if (rc) {
        fprintf(stderr, "kvtier-engine: cannot read %s: %s\n", o->text, strerror(-rc));
        return rc;
    }
    return tokenize(m, *text, len, 0, ids, n_all);
}

/* A JSON string of len bytes: quotes, backslashes and control characters escaped, bytes past
 * ASCII written as \u00XX so that a token cut in the middle of a character stays valid JSON. */
static void json_str(FILE *f, const char *s, size_t len)
{
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_kv_bytes(FILE *f, const char *name, const struct kvt_eng_kv_stats *st,
                          size_t steps)
{
    double d = steps ? (double)steps : 1.0;
    uint64_t fetched = 0;
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        fetched += st->fetch_bytes[i];
    fprintf(f,
            "  \"%s\": {\"fetched\": %.1f, \"dram\": %.1f, \"disk\": %.1f, \"gpu\": %.1f, "
            "\"remote\": %.1f, \"stored\": %.1f, \"read_ahead_used\": %.1f},\n",
            name, (double)fetched / d, (double)st->fetch_bytes[KVT_TIER_CPU] / d,
            (double)st->fetch_bytes[KVT_TIER_DISK] / d, (double)st->fetch_bytes[KVT_TIER_GPU] / d,
            (double)st->fetch_bytes[KVT_TIER_REMOTE] / d, (double)st->store_bytes / d,
            (double)st->prefetch_hit_bytes / d);
}

static void json_summary(FILE *f, const struct kvt_eng_fid_summary *sm, const char *indent)
{
    fprintf(f,
            "%s\"positions\": %zu,\n%s\"kl_mean\": %.9g,\n%s\"kl_p99\": %.9g,\n"
            "%s\"kl_max\": %.9g,\n%s\"top1_agreement_with_resident\": %.6f,\n"
            "%s\"perplexity\": %.6f,\n%s\"resident_perplexity\": %.6f",
            indent, sm->n, indent, sm->kl_mean, indent, sm->kl_p99, indent, sm->kl_max, indent,
            sm->top1, indent, sm->ppl, indent, sm->ppl_ref);
}

static const char *spans_name(enum kvt_eng_span_policy p)
{
    return p == KVT_ENG_SPANS_FIXED      ? "fixed"
           : p == KVT_ENG_SPANS_VARIABLE ? "variable"
                                         : "default";
}

/* The lossy modes' parameters as given (or their defaults), one line. */
static void json_lossy(FILE *f, const struct opts *o)
{
    const struct kvt_eng_lossy_config *l = &o->lossy;
    if (o->mode != KVT_ENG_MODE_QUANT && o->mode != KVT_ENG_MODE_CLUSTER)
        return;
    fprintf(f,
            "  \"lossy\": {\"bits\": %u, \"group\": %u, \"keys\": \"%s\", \"ratio\": %.6g, "
            "\"window\": %u, \"sinks\": %u, \"recent\": %u},\n",
            l->bits ? l->bits : 8, l->group ? l->group : 32,
            l->keys_per_channel ? "per_channel" : "per_token", l->ratio, l->window ? l->window : 32,
            l->sinks, l->recent);
}

/* eval --decode-from N: prefill [0, N), then one position at a time against resident. */
static int eval_decode(const struct opts *o, const struct kvt_eng_model *m,
                       struct kvt_eng_pool *pool, const char *simd, const int32_t *ids, size_t n)
{
    struct kvt_eng_session_config ref_cfg = session_config(o, KVT_ENG_MODE_RESIDENT, n);
    struct kvt_eng_session_config cur_cfg = session_config(o, o->mode, n);
    struct kvt_eng_decode_eval ev;
    struct kvt_eng_fid_summary all, bk[KVT_ENG_FID_BUCKETS];
    ref_cfg.select = (struct kvt_eng_select_config){0};
    int rc = kvt_eng_decode_eval_run(m, pool, &ref_cfg, &cur_cfg, ids, n, o->decode_from, &ev);
    if (rc)
        goto out;
    if ((rc = kvt_eng_fid_summarize(&ev.fid, 0, SIZE_MAX, &all)))
        goto out;
    for (int b = 0; b < KVT_ENG_FID_BUCKETS; b++)
        if ((rc = kvt_eng_fid_summarize(&ev.fid, kvt_eng_fid_buckets[b].lo,
                                        kvt_eng_fid_buckets[b].hi, &bk[b])))
            goto out;
    double steps = (double)ev.steps;
    FILE *f = fopen(o->json, "w");
    if (!f) {
        rc = -errno;
        fprintf(stderr, "kvtier-engine: cannot write %s: %s\n", o->json, strerror(errno));
        goto out;
    }
    fprintf(f, "{\n  \"model\": \"%s\",\n  \"text\": ", m->model_id);
    json_str(f, o->text, strlen(o->text));
    fprintf(f, ",\n  \"mode\": \"%s\",\n  \"eval\": \"decode\",\n", kvt_eng_mode_name(o->mode));
    fprintf(f, "  \"tokens\": %zu,\n  \"decode_from\": %zu,\n", n, o->decode_from);
    json_summary(f, &all, "  ");
    fprintf(f, ",\n  \"ms_per_token\": %.3f,\n  \"resident_ms_per_token\": %.3f,\n",
            ev.cur.decode_s * 1e3 / steps, ev.ref.decode_s * 1e3 / steps);
    fprintf(f, "  \"prefill_ms\": %.1f,\n  \"resident_prefill_ms\": %.1f,\n",
            ev.cur.prefill_s * 1e3, ev.ref.prefill_s * 1e3);
    json_kv_bytes(f, "kv_bytes_per_token", &ev.cur.kv_decode, ev.steps);
    json_kv_bytes(f, "resident_kv_bytes_per_token", &ev.ref.kv_decode, ev.steps);
    fprintf(f, "  \"kv_token_bytes\": %zu,\n  \"resident_kv_token_bytes\": %zu,\n",
            ev.cur.token_bytes, ev.ref.token_bytes);
    fprintf(f, "  \"kv_bytes_kept\": %llu,\n  \"resident_kv_bytes_kept\": %llu,\n",
            (unsigned long long)ev.cur.bytes_kept, (unsigned long long)ev.ref.bytes_kept);
    fprintf(f, "  \"kv_bytes_kept_ratio\": %.6f,\n",
            ev.ref.bytes_kept ? (double)ev.cur.bytes_kept / (double)ev.ref.bytes_kept : 0.0);
    json_lossy(f, o);
    fprintf(f, "  \"buckets\": {");
    int first = 1;
    for (int b = 0; b < KVT_ENG_FID_BUCKETS; b++) {
        if (!bk[b].n)
            continue;
        fprintf(f, "%s\n    \"%s\": {\n", first ? "" : ",", kvt_eng_fid_buckets[b].name);
        json_summary(f, &bk[b], "      ");
        fprintf(f, "\n    }");
        first = 0;
    }
    fprintf(f, "\n  },\n");
    fprintf(f,
            "  \"select\": {\"budget\": %.6g, \"top_p\": %.6g, \"spans\": \"%s\", "
            "\"estimates\": %u},\n",
            o->select.budget, o->select.top_p, spans_name(o->select.spans), o->select.estimates);
    fprintf(f, "  \"fell_back_to_resident\": %s,\n", ev.cur.fell_back ? "true" : "false");
    fprintf(f, "  \"batch\": %zu,\n  \"threads\": %u,\n  \"simd\": \"%s\"\n}\n", o->batch,
            kvt_eng_pool_size(pool), simd);
    if (fclose(f) != 0) {
        rc = -EIO;
        fprintf(stderr, "kvtier-engine: cannot write %s\n", o->json);
        goto out;
    }
    fprintf(stderr,
            "%s decode eval: positions %zu..%zu, KL mean %.6g p99 %.6g max %.6g, top-1 %.4f, "
            "perplexity %.4f (resident %.4f), %.2f ms/token (resident %.2f)\n",
            kvt_eng_mode_name(o->mode), o->decode_from, n - 2, all.kl_mean, all.kl_p99, all.kl_max,
            all.top1, all.ppl, all.ppl_ref, ev.cur.decode_s * 1e3 / steps,
            ev.ref.decode_s * 1e3 / steps);
out:
    kvt_eng_fid_deinit(&ev.fid);
    return rc;
}

static int cmd_eval(const struct opts *o, const struct kvt_eng_model *m, struct kvt_eng_pool *pool,
                    const char *simd)
{
    char *text = NULL;
    size_t n_all = 0;
    int32_t *ids = NULL;
    struct eval_acc ref = {0}, cur = {0};
    struct eval_run ref_run = {0}, cur_run = {0};
    int rc;
    if (!o->text || !o->json) {
        fprintf(stderr, "kvtier-engine: eval needs --text and --json\n");
        return -EINVAL;
    }
    if ((rc = text_tokens(o, m, &text, &ids, &n_all)))
        goto out;
    size_t n = o->eval_tokens && o->eval_tokens < n_all ? o->eval_tokens : n_all;
    if (n > m->hp.ctx_train) {
        fprintf(stderr,
                "kvtier-engine: %zu tokens exceed the model's context of %u; use --tokens\n", n,
                m->hp.ctx_train);
        rc = -EINVAL;
        goto out;
    }
    if (n < 2) {
        fprintf(stderr, "kvtier-engine: the text has fewer than 2 tokens\n");
        rc = -EINVAL;
        goto out;
    }
    if (o->decode_from) {
        /* One position at least is scored: [decode_from, n - 1) must not be empty. */
        if (o->decode_from + 2 > n) {
            fprintf(stderr,
                    "kvtier-engine: --decode-from %zu leaves nothing to score in %zu tokens (it "
                    "must be below --tokens - 1)\n",
                    o->decode_from, n);
            rc = -EINVAL;
        } else if (!o->compare) {
            fprintf(stderr, "kvtier-engine: --decode-from always compares with resident; drop "
                            "--no-compare\n");
            rc = -EINVAL;
        } else {
            rc = eval_decode(o, m, pool, simd, ids, n);
        }
        free(ids);
        free(text);
        return rc;
    }
    int compare = o->compare && o->mode != KVT_ENG_MODE_RESIDENT;
    struct eval_acc *accs[2] = {&ref, &cur};
    for (int i = 0; i < 2; i++) {
        *accs[i] = (struct eval_acc){.tokens = ids, .n = n, .V = m->hp.n_vocab};
        accs[i]->argmax = calloc(n, sizeof(int32_t));
        accs[i]->digest = calloc(n, sizeof(uint64_t));
        if (!accs[i]->argmax || !accs[i]->digest) {
            rc = -ENOMEM;
            goto out;
        }
    }
    if (compare && (rc = eval_one(o, m, pool, KVT_ENG_MODE_RESIDENT, &ref, &ref_run)))
        goto out;
    if ((rc = eval_one(o, m, pool, o->mode, &cur, &cur_run)))
        goto out;

    size_t agree = 0, exact = 0;
    for (size_t p = 0; compare && p < n; p++) {
        agree += ref.argmax[p] == cur.argmax[p];
        exact += ref.digest[p] == cur.digest[p];
    }
    uint64_t fetched = 0;
    for (int i = 0; i < KVT_ENG_KV_TIERS; i++)
        fetched += cur_run.kv.fetch_bytes[i];

    FILE *f = fopen(o->json, "w");
    if (!f) {
        rc = -errno;
        fprintf(stderr, "kvtier-engine: cannot write %s: %s\n", o->json, strerror(errno));
        goto out;
    }
    fprintf(f, "{\n  \"model\": \"%s\",\n  \"text\": \"%s\",\n  \"mode\": \"%s\",\n", m->model_id,
            o->text, kvt_eng_mode_name(o->mode));
    fprintf(f, "  \"tokens\": %zu,\n  \"positions_scored\": %zu,\n  \"perplexity\": %.6f,\n", n,
            cur.scored, cur_run.ppl);
    fprintf(f, "  \"ms_per_token\": %.3f,\n", cur_run.seconds * 1e3 / (double)n);
    if (compare) {
        fprintf(f, "  \"resident_perplexity\": %.6f,\n  \"resident_ms_per_token\": %.3f,\n",
                ref_run.ppl, ref_run.seconds * 1e3 / (double)n);
        fprintf(f, "  \"top1_agreement_with_resident\": %.6f,\n", (double)agree / (double)n);
        fprintf(f, "  \"bit_exact_with_resident\": %s,\n", exact == n ? "true" : "false");
    }
    fprintf(f,
            "  \"kv_bytes_per_token\": {\"fetched\": %.1f, \"dram\": %.1f, \"disk\": %.1f, "
            "\"gpu\": %.1f, \"remote\": %.1f, \"stored\": %.1f},\n",
            (double)fetched / n, (double)cur_run.kv.fetch_bytes[KVT_TIER_CPU] / n,
            (double)cur_run.kv.fetch_bytes[KVT_TIER_DISK] / n,
            (double)cur_run.kv.fetch_bytes[KVT_TIER_GPU] / n,
            (double)cur_run.kv.fetch_bytes[KVT_TIER_REMOTE] / n,
            (double)cur_run.kv.store_bytes / n);
    fprintf(f, "  \"kv_fetch_ms\": %.1f,\n  \"kv_store_ms\": %.1f,\n",
            (double)cur_run.kv.fetch_ns / 1e6, (double)cur_run.kv.store_ns / 1e6);
    fprintf(f, "  \"fell_back_to_resident\": %s,\n", cur_run.fell_back ? "true" : "false");
    fprintf(
        f,
        "  \"batch\": %zu,\n  \"chunk_tokens\": %u,\n  \"threads\": %u,\n  \"simd\": \"%s\"\n}\n",
        o->batch, o->chunk_tokens ? o->chunk_tokens : 64, kvt_eng_pool_size(pool), simd);
    fclose(f);

    fprintf(stderr, "%s: %zu tokens, perplexity %.4f, %.2f ms/token", kvt_eng_mode_name(o->mode), n,
            cur_run.ppl, cur_run.seconds * 1e3 / (double)n);
    if (compare)
        fprintf(stderr, "; resident perplexity %.4f (%.2f ms/token), top-1 agreement %.4f, %s",
                ref_run.ppl, ref_run.seconds * 1e3 / (double)n, (double)agree / (double)n,
                exact == n ? "bit-exact" : "NOT bit-exact");
    fputc('\n', stderr);
    print_kv_stats(stderr, &cur_run.kv, n);

out:
    /* Not through accs: a failure before it was set jumps here too. */
    free(ref.argmax);
    free(ref.digest);
    free(cur.argmax);
    free(cur.digest);
    free(ids);
    free(text);
    return rc;
}

/* dump-kv: the real KV of a text, for benchmarks and tests of what kvtier stores (codecs,
 * compression). Runs the resident mode over the first --tokens tokens of --text and writes
 * whole chunks of --chunk-tokens tokens to --out, each in kvtier's canonical layout
 * [layer][token][k|v][kv_head][head_dim], fp16 little-endian, one after the other. */
static int cmd_dump_kv(const struct opts *o, const struct kvt_eng_model *m,
                       struct kvt_eng_pool *pool)
{
    char *text = NULL;
    size_t n_all = 0;
    int32_t *ids = NULL;
    struct kvt_eng_session *s = NULL;
    struct kvt_eng_kv_span *spans = NULL;
    FILE *f = NULL;
    int rc;
    if (!o->text || !o->out) {
        fprintf(stderr, "kvtier-engine: dump-kv needs --text and --out\n");
        return -EINVAL;
    }
    if ((rc = text_tokens(o, m, &text, &ids, &n_all)))
        goto out;
    size_t T = o->chunk_tokens,
           n = o->eval_tokens && o->eval_tokens < n_all ? o->eval_tokens : n_all;
    if (n > m->hp.ctx_train)
        n = m->hp.ctx_train;
    n -= n % T;
    if (n == 0) {
        fprintf(stderr, "kvtier-engine: the text has fewer than %zu tokens (one chunk)\n", T);
        rc = -EINVAL;
        goto out;
    }
    struct kvt_eng_session_config sc = session_config(o, KVT_ENG_MODE_RESIDENT, n);
    if ((rc = kvt_eng_session_create(m, pool, &sc, &s)) ||
        (rc = kvt_eng_session_start(s, ids, n, 0, NULL, NULL, NULL))) {
        fprintf(stderr, "kvtier-engine: dump-kv: %s\n", kvt_strerror(rc));
        goto out;
    }
    struct kvt_eng_kv *kv = s->kv;
    size_t row_bytes = kvt_eng_kv_row_halfs(&kv->geom) * sizeof(uint16_t);
    spans = calloc(kv->spans_max, sizeof(*spans));
    f = fopen(o->out, "wb");
    if (!spans || !f) {
        rc = spans ? -errno : -ENOMEM;
        fprintf(stderr, "kvtier-engine: cannot write %s: %s\n", o->out, strerror(-rc));
        goto out;
    }
    for (size_t c = 0; c < n / T && !rc; c++)
        for (uint32_t l = 0; l < kv->geom.n_layer && !rc; l++) {
            int ns = kv->ops->spans(kv, l, n, spans, kv->spans_max);
            if (ns < 0) {
                rc = ns;
                break;
            }
            for (size_t p = c * T; p < (c + 1) * T && !rc; p++) {
                const uint16_t *row = NULL;
                for (int k = 0; k < ns && !row; k++)
                    if (p >= spans[k].pos && p < spans[k].pos + spans[k].n_tokens)
                        row = spans[k].rows + (p - spans[k].pos) * (row_bytes / 2);
                if (!row || fwrite(row, 1, row_bytes, f) != row_bytes)
                    rc = row ? -EIO : -EFAULT;
            }
        }
    if (!rc && fclose(f) != 0)
        rc = -EIO;
    f = NULL;
    if (rc)
        fprintf(stderr, "kvtier-engine: dump-kv: cannot write %s\n", o->out);
    else
        fprintf(stderr, "dump-kv: %zu chunks of %zu tokens (%zu bytes each) from %s to %s\n", n / T,
                T, T * kv->geom.n_layer * row_bytes, o->text, o->out);
out:
    if (f)
        fclose(f);
    free(spans);
    kvt_eng_session_destroy(s);
    free(ids);
    free(text);
    return rc;
}

/* passkey: the retention test of EVALUATION.md with the given mode (resident is --mode resident;
 * nothing else runs beside it). Keys come from --seed, depths spread over 10-90%. */
static int cmd_passkey(const struct opts *o, const struct kvt_eng_model *m,
                       struct kvt_eng_pool *pool)
{
    struct kvt_eng_session *s = NULL;
    struct kvt_eng_passkey_result *res = NULL;
    FILE *f = NULL;
    size_t N = o->eval_tokens, K = o->trials;
    int rc;
    if (!o->json || !K) {
        fprintf(stderr, "kvtier-engine: passkey needs --trials and --json\n");
        return -EINVAL;
    }
    size_t ctx = N + KVT_ENG_PASSKEY_ANSWER_TOKENS + KVT_ENG_PASSKEY_KEY_TOKENS_MAX;
    if (ctx > m->hp.ctx_train) {
        fprintf(stderr,
                "kvtier-engine: --tokens %zu leaves no room for the answer in the model's "
                "context of %u\n",
                N, m->hp.ctx_train);
        return -EINVAL;
    }
    struct kvt_eng_session_config sc = session_config(o, o->mode, ctx);
    if ((rc = kvt_eng_session_create(m, pool, &sc, &s))) {
        fprintf(stderr, "kvtier-engine: cannot start the %s session: %s\n",
                kvt_eng_mode_name(o->mode), kvt_strerror(rc));
        return rc;
    }
    res = calloc(K, sizeof(*res));
    if (!res) {
        rc = -ENOMEM;
        goto out;
    }
    uint64_t rng = o->sampling.seed;
    size_t correct = 0;
    double lp_sum = 0.0, secs = 0.0;
    for (size_t i = 0; i < K; i++) {
        struct kvt_eng_passkey_prompt p;
        double depth = kvt_eng_passkey_depth(i, K);
        uint32_t key = kvt_eng_passkey_key(&rng);
        if ((rc = kvt_eng_passkey_build(m->tok, N, depth, key, &p))) {
            fprintf(stderr, "kvtier-engine: cannot build a passkey prompt of %zu tokens: %s\n", N,
                    rc == -EINVAL ? "too short" : kvt_strerror(rc));
            goto out;
        }
        rc = kvt_eng_passkey_trial(s, &p, &res[i]);
        kvt_eng_passkey_prompt_free(&p);
        if (rc) {
            fprintf(stderr, "kvtier-engine: passkey trial %zu failed: %s\n", i, kvt_strerror(rc));
            goto out;
        }
        res[i].depth = depth;
        char shown[sizeof(res[i].answer_text)];
        size_t k = 0;
        for (const char *c = res[i].answer_text; *c && k + 1 < sizeof(shown); c++)
            shown[k++] = *c == '\n' ? ' ' : *c; /* one line per trial */
        shown[k] = '\0';
        correct += res[i].correct != 0;
        lp_sum += res[i].key_logprob;
        secs += res[i].seconds;
        fprintf(stderr,
                "passkey %zu/%zu: depth %.2f, key %u, answer \"%s\" %s, log p %.3f, %.1f s\n",
                i + 1, K, depth, key, shown, res[i].correct ? "right" : "WRONG", res[i].key_logprob,
                res[i].seconds);
    }
    f = fopen(o->json, "w");
    if (!f) {
        rc = -errno;
        fprintf(stderr, "kvtier-engine: cannot write %s: %s\n", o->json, strerror(errno));
        goto out;
    }
    fprintf(f, "{\n  \"model\": \"%s\",\n  \"mode\": \"%s\",\n  \"tokens\": %zu,\n", m->model_id,
            kvt_eng_mode_name(o->mode), N);
    fprintf(f, "  \"trials\": %zu,\n  \"seed\": %llu,\n  \"correct\": %zu,\n", K,
            (unsigned long long)o->sampling.seed, correct);
    fprintf(f, "  \"accuracy\": %.6f,\n  \"mean_key_logprob\": %.6f,\n",
            (double)correct / (double)K, lp_sum / (double)K);
    fprintf(f, "  \"seconds\": %.1f,\n  \"seconds_per_trial\": %.2f,\n", secs, secs / (double)K);
    fprintf(f,
            "  \"select\": {\"budget\": %.6g, \"top_p\": %.6g, \"spans\": \"%s\", "
            "\"estimates\": %u},\n",
            o->select.budget, o->select.top_p, spans_name(o->select.spans), o->select.estimates);
    json_lossy(f, o);
    fprintf(f, "  \"per_depth\": [");
    for (size_t i = 0; i < K; i++) {
        const struct kvt_eng_passkey_result *r = &res[i];
        fprintf(f,
                "%s\n    {\"trial\": %zu, \"depth\": %.4f, \"key_depth\": %.4f, "
                "\"prompt_tokens\": %zu, \"key\": %u, \"answer\": ",
                i ? "," : "", i, r->depth, r->key_depth, r->prompt_tokens, r->key);
        json_str(f, r->answer_text, strlen(r->answer_text));
        if (r->found && r->answer <= UINT32_MAX)
            fprintf(f, ", \"answer_int\": %llu", (unsigned long long)r->answer);
        else
            fprintf(f, ", \"answer_int\": null");
        fprintf(f,
                ", \"correct\": %s, \"key_logprob\": %.6f, \"logprob_rerun\": %s, "
                "\"seconds\": %.2f}",
                r->correct ? "true" : "false", r->key_logprob, r->logprob_rerun ? "true" : "false",
                r->seconds);
    }
    fprintf(f, "\n  ],\n  \"batch\": %zu,\n  \"threads\": %u\n}\n", o->batch,
            kvt_eng_pool_size(pool));
    rc = fclose(f) == 0 ? 0 : -EIO;
    f = NULL;
    fprintf(stderr, "passkey %s at %zu tokens: %zu/%zu right, mean log p(key) %.3f, %.1f s\n",
            kvt_eng_mode_name(o->mode), N, correct, K, lp_sum / (double)K, secs);
out:
    if (f)
        fclose(f);
    free(res);
    kvt_eng_session_destroy(s);
    return rc;
}

/* ---- rag -----------------------------------------------------------------------------------
 */

/* A RAG prompt through engine/rag.c: the ChatML system turn and the user turn's start (head),
 * each passage file's text and a blank line (one passage each), the question and the assistant
 * start (tail); then a greedy answer. Run twice with a reuse policy to see the passages reused. */
static int cmd_rag(const struct opts *o, const struct kvt_eng_model *m, struct kvt_eng_pool *pool)
{
    static const char *const names[] = {"full", "prefix", "naive", "static", "plan"};
    enum kvt_eng_rag_policy pol = KVT_ENG_RAG_PLAN;
    int found = !o->policy;
    for (size_t i = 0; o->policy && i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(o->policy, names[i])) {
            pol = (enum kvt_eng_rag_policy)i;
            found = 1;
        }
    if (!found || !o->prompt || o->n_passages == 0) {
        fprintf(stderr, "kvtier-engine: rag needs --prompt, one --passage at least (8 at most) "
                        "and --policy full|prefix|naive|static|plan\n");
        return -EINVAL;
    }
    char head[1024];
    int hn = snprintf(head, sizeof(head),
                      "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n"
                      "Answer the question using the documents below.\n\n",
                      o->system ? o->system : DEFAULT_SYSTEM);
    const char *asst = "<|im_end|>\n<|im_start|>assistant\n";
    int32_t *ids[8] = {0}, *h = NULL, *t = NULL;
    const int32_t *pp[8];
    size_t plen[8], nh = 0, nt = 0, total = 0, V = m->hp.n_vocab;
    int rc = hn > 0 && (size_t)hn < sizeof(head) ? 0 : -EINVAL;
    if (rc == 0)
        rc = tokenize(m, head, (size_t)hn, 1, &h, &nh);
    for (size_t i = 0; rc == 0 && i < o->n_passages; i++) {
        char *text = NULL;
        size_t len = 0;
        rc = read_file(o->passages[i], &text, &len);
        if (rc) {
            fprintf(stderr, "kvtier-engine: cannot read %s: %s\n", o->passages[i], strerror(-rc));
            break;
        }
        char *nt2 = realloc(text, len + 2);
        if (!nt2) {
            free(text);
            rc = -ENOMEM;
            break;
        }
        memcpy(nt2 + len, "\n\n", 2);
        rc = tokenize(m, nt2, len + 2, 0, &ids[i], &plen[i]);
        free(nt2);
        pp[i] = ids[i];
        total += plen[i];
    }
    if (rc == 0) { /* the question (no control tokens), then the template's end (with them) */
        int32_t *a = NULL;
        size_t na = 0, nq = 0;
        rc = tokenize(m, o->prompt, strlen(o->prompt), 0, &t, &nq);
        if (rc == 0)
            rc = tokenize(m, asst, strlen(asst), 1, &a, &na);
        int32_t *j = rc == 0 ? realloc(t, (nq + na) * sizeof(*t)) : NULL;
        if (rc == 0 && !j)
            rc = -ENOMEM;
        if (j) {
            memcpy(j + nq, a, na * sizeof(*a));
            t = j;
            nt = nq + na;
        }
        free(a);
    }
    size_t ctx = nh + total + nt + o->max_tokens + 1;
    struct kvt_eng_ctx *c = NULL;
    struct kvt_eng_kv *kv = NULL;
    struct kvt_client *cl = NULL;
    struct kvt_ns_info ns;
    void *buf = NULL;
    float *logits = malloc(V * sizeof(float));
    size_t bytes_per_token = 2 * (size_t)m->hp.n_layer * m->hp.n_head_kv * m->hp.head_dim * 2;
    size_t longest = 0;
    for (size_t i = 0; i < o->n_passages; i++)
        longest = plen[i] > longest ? plen[i] : longest;
    struct kvt_eng_kv_geom g = kvt_eng_model_kv_geom(m, ctx, o->batch);
    if (rc == 0 && !logits)
        rc = -ENOMEM;
    if (rc == 0)
        rc = kvt_eng_ctx_create(m, pool, o->batch, ctx, &c);
    if (rc == 0)
        rc = kvt_eng_kv_resident_create(&g, &kv);
    if (rc == 0 && pol != KVT_ENG_RAG_FULL) {
        struct kvt_connect_opts co = {
            .socket_path = o->socket, .tenant = o->tenant, .timeout_ms = o->timeout_ms};
        char id[192];
        uint32_t tpc = pol == KVT_ENG_RAG_PREFIX ? 16 : (uint32_t)(longest < 512 ? 512 : longest);
        snprintf(id, sizeof(id), "%s/rag-%s", m->model_id, names[pol]);
        struct kvt_ns_spec sp = kvt_eng_rag_ns_spec(m, id, tpc);
        rc = kvt_connect(&co, &cl);
        if (rc == 0)
            rc = kvt_register(cl, &sp, &ns);
        if (rc == 0 && !(buf = kvt_arena_alloc(cl, (size_t)tpc * bytes_per_token)))
            rc = -ENOMEM;
        if (rc)
            fprintf(stderr, "kvtier-engine: kvtier: %s (%s)\n", kvt_strerror(rc),
                    kvt_strerror_name(rc));
    }
    struct kvt_eng_rag_prompt p = {.head = h,
                                   .n_head = nh,
                                   .passages = pp,
                                   .passage_len = plen,
                                   .n_passages = o->n_passages,
                                   .tail = t,
                                   .n_tail = nt};
    struct kvt_eng_rag_config cfg = {
        .policy = pol,
        .client = cl,
        .ns = &ns,
        .buf = buf,
        .buf_bytes = pol == KVT_ENG_RAG_PREFIX ? 16 * bytes_per_token
                                               : (longest < 512 ? 512 : longest) * bytes_per_token};
    struct kvt_eng_rag_result res = {0};
    if (rc == 0)
        rc = kvt_eng_rag_prefill(c, kv, m, &cfg, &p, logits, &res);
    size_t gen = 0;
    for (; rc == 0 && gen < o->max_tokens; gen++) {
        int32_t best = 0;
        for (size_t v = 1; v < V; v++)
            best = logits[v] > logits[best] ? (int32_t)v : best;
        if (kvt_eng_tok_is_control(m->tok, best))
            break;
        char piece[256];
        int w = kvt_eng_tok_decode(m->tok, best, 0, piece, sizeof(piece));
        if (w > 0)
            fwrite(piece, 1, (size_t)w, stdout);
        rc = kvt_eng_forward(c, kv, &best, 1, res.n_tokens + gen, logits, 0);
    }
    if (rc == 0) {
        printf("\n");
        fprintf(stderr,
                "rag: policy %s, %zu prompt tokens: %zu computed (%zu reused from kvtier, %zu of "
                "them recomputed), passages %zu reused / %zu computed, %zu versions stored; "
                "prefill %.1f ms\n",
                names[pol], res.n_tokens, res.computed, res.reused, res.recomputed,
                res.passages_found, res.passages_computed, res.versions_stored, res.prefill_ms);
    } else {
        fprintf(stderr, "kvtier-engine: rag failed: %s\n",
                rc < 0 && rc > -4096 ? strerror(-rc) : kvt_strerror(rc));
    }
    kvt_close(cl);
    kvt_eng_kv_destroy(kv);
    kvt_eng_ctx_destroy(c);
    for (size_t i = 0; i < o->n_passages; i++)
        free(ids[i]);
    free(h);
    free(t);
    free(logits);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o = {
        .mode = KVT_ENG_MODE_RESIDENT,
        .max_tokens = 128,
        .eval_tokens = 2048,
        .batch = 64,
        .chunk_tokens = 64,
        .timeout_ms = 5000,
        .compare = 1,
        .trials = 20,
        .sampling = {.temp = 0.0f, .top_k = 40, .top_p = 0.95f, .seed = 42},
        .lossy = {.sinks = KVT_ENG_LOSSY_SINKS_DEFAULT, .recent = KVT_ENG_LOSSY_RECENT_DEFAULT},
    };
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (parse_args(argc, argv, &o) ||
        (strcmp(o.cmd, "generate") && strcmp(o.cmd, "eval") && strcmp(o.cmd, "dump-kv") &&
         strcmp(o.cmd, "passkey") && strcmp(o.cmd, "rag")) ||
        !o.model) {
        usage(stderr);
        return 2;
    }
    struct kvt_eng_select_config sel = o.select;
    if (!strcmp(o.cmd, "generate"))
        sel.top_p = 0.0; /* the sampler's */
    if (kvt_eng_select_config_is_set(&sel) && !kvt_eng_mode_selects(o.mode)) {
        fprintf(stderr,
                "kvtier-engine: --budget, --top-p and --spans configure a selecting mode; mode "
                "%s does not select\n",
                kvt_eng_mode_name(o.mode));
        return 2;
    }
    if (o.lossy_set && o.mode != KVT_ENG_MODE_QUANT && o.mode != KVT_ENG_MODE_CLUSTER) {
        fprintf(stderr,
                "kvtier-engine: --bits, --group, --kivi, --ratio, --window, --sinks and --recent "
                "configure the quant and cluster modes, not %s\n",
                kvt_eng_mode_name(o.mode));
        return 2;
    }
    const char *simd = kvt_eng_quant_init(0);
    struct kvt_eng_model *m = NULL;
    struct kvt_eng_pool *pool = NULL;
    char err[512];
    int rc = kvt_eng_model_load(o.model, &m, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "kvtier-engine: %s (%s)\n", err,
                strerror(rc < 0 && rc > -4096 ? -rc : EINVAL));
        return 1;
    }
    rc = kvt_eng_pool_create(o.threads, &pool);
    if (rc) {
        fprintf(stderr, "kvtier-engine: cannot start threads: %s\n", strerror(-rc));
        kvt_eng_model_free(m);
        return 1;
    }
    if (!strcmp(o.cmd, "generate"))
        rc = cmd_generate(&o, m, pool);
    else if (!strcmp(o.cmd, "dump-kv"))
        rc = cmd_dump_kv(&o, m, pool);
    else if (!strcmp(o.cmd, "passkey"))
        rc = cmd_passkey(&o, m, pool);
    else if (!strcmp(o.cmd, "rag"))
        rc = cmd_rag(&o, m, pool);
    else
        rc = cmd_eval(&o, m, pool, simd);
    kvt_eng_pool_destroy(pool);
    kvt_eng_model_free(m);
    return rc ? 1 : 0;
}
