/*
 * Helpers shared by the engine tests: where the model and the llama.cpp reference fixture are,
 * and a reader for the fixture JSON written by scripts/llama_ref.py (a flat object whose values
 * are a string, integer arrays and arrays of arrays; nothing more general is needed).
 * Header-only (static inline) so that each test binary stays one file.
 */
#ifndef KVT_TESTS_ENGINE_FIXTURE_H
#define KVT_TESTS_ENGINE_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENGINE_TEST_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define ENGINE_TEST_FIXTURE "tests/engine/fixtures/gpl3_ref.json"
#define ENGINE_TEST_TOP 5

struct engine_fixture {
    char *text;
    size_t text_len;
    int32_t *ids;
    size_t n_ids;
    size_t n_pos;      /* positions with reference logits */
    int32_t *top_ids;  /* n_pos * ENGINE_TEST_TOP */
    float *top_logits; /* n_pos * ENGINE_TEST_TOP */
};

static inline const char *engine_test_model_path(void)
{
    const char *p = getenv("KVT_ENGINE_MODEL");
    return p && *p ? p : ENGINE_TEST_MODEL;
}

static inline int engine_test_have_model(void)
{
    return access(engine_test_model_path(), R_OK) == 0;
}

static inline char *engine_fx_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

/* Points just after `"key":` in the JSON text, or NULL. */
static inline const char *engine_fx_find(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(js, pat);
    return p ? p + strlen(pat) : NULL;
}

/* Reads every number of the array at p (nested arrays flattened) into out (capacity max). */
static inline size_t engine_fx_numbers(const char *p, double *out, size_t max)
{
    size_t n = 0;
    int depth = 0;
    if (!p || *p != '[')
        return 0;
    while (*p) {
        if (*p == '[') {
            depth++;
            p++;
        } else if (*p == ']') {
            p++;
            if (--depth == 0)
                break;
        } else if (*p == ',' || *p == ' ') {
            p++;
        } else {
            char *end;
            double v = strtod(p, &end);
            if (end == p)
                return 0;
            if (n < max)
                out[n] = v;
            n++;
            p = end;
        }
    }
    return n;
}

/* Decodes the JSON string at p (ASCII and \u escapes below 0x80 are all the fixture holds). */
static inline char *engine_fx_string(const char *p, size_t *len)
{
    if (!p || *p != '"')
        return NULL;
    p++;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    if (!out)
        return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        p++;
        switch (*p) {
        case 'n':
            out[n++] = '\n';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'u': {
            unsigned v = 0;
            sscanf(p + 1, "%4x", &v);
            out[n++] = (char)v;
            p += 4;
            break;
        }
        default:
            out[n++] = *p;
            break;
        }
        p++;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

static inline void engine_fixture_free(struct engine_fixture *fx)
{
    free(fx->text);
    free(fx->ids);
    free(fx->top_ids);
    free(fx->top_logits);
    memset(fx, 0, sizeof(*fx));
}

/* Loads the reference fixture; 0 or -1. */
static inline int engine_fixture_load(struct engine_fixture *fx)
{
    const char *path = getenv("KVT_ENGINE_FIXTURE");
    size_t len = 0;
    char *js = engine_fx_slurp(path && *path ? path : ENGINE_TEST_FIXTURE, &len);
    int rc = -1;
    memset(fx, 0, sizeof(*fx));
    if (!js)
        return -1;
    size_t cap = len; /* more numbers than bytes is impossible */
    double *tmp = malloc(cap * sizeof(double));
    if (!tmp)
        goto out;
    fx->text = engine_fx_string(engine_fx_find(js, "text"), &fx->text_len);
    fx->n_ids = engine_fx_numbers(engine_fx_find(js, "token_ids"), tmp, cap);
    fx->ids = malloc((fx->n_ids + 1) * sizeof(int32_t));
    if (!fx->text || !fx->ids || fx->n_ids == 0)
        goto out;
    for (size_t i = 0; i < fx->n_ids; i++)
        fx->ids[i] = (int32_t)tmp[i];
    size_t nt = engine_fx_numbers(engine_fx_find(js, "top_ids"), tmp, cap);
    fx->n_pos = nt / ENGINE_TEST_TOP;
    fx->top_ids = malloc((nt + 1) * sizeof(int32_t));
    fx->top_logits = malloc((nt + 1) * sizeof(float));
    if (!fx->top_ids || !fx->top_logits || fx->n_pos == 0)
        goto out;
    for (size_t i = 0; i < nt; i++)
        fx->top_ids[i] = (int32_t)tmp[i];
    if (engine_fx_numbers(engine_fx_find(js, "top_logits"), tmp, cap) != nt)
        goto out;
    for (size_t i = 0; i < nt; i++)
        fx->top_logits[i] = (float)tmp[i];
    rc = 0;
out:
    free(tmp);
    free(js);
    if (rc)
        engine_fixture_free(fx);
    return rc;
}

#endif
