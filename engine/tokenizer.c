/*
 * Byte-level BPE tokenizer. The vocabulary and merges stay in the GGUF mapping; two open-addressing
 * hash tables index them (token string -> id, (left id, right id) -> merge rank and result).
 * Encoding follows llama.cpp step by step — UTF-8 decode (bad bytes become U+FFFD), control-token
 * partition, digit split, GPT-2 word split, byte encoding, rank-ordered merges — because the
 * engine's logits are checked against llama.cpp's token for token.
 */
#include "engine/tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/unicode_tab.h"

#define TOK_TYPE_CONTROL 3
#define TOK_MAX_WORD_BYTES 4096

struct merge_slot {
    uint64_t key; /* (left << 32) | right, both + 1 so that 0 means empty */
    int32_t rank;
    int32_t result;
};

struct kvt_eng_tokenizer {
    uint32_t n_vocab;
    struct kvt_eng_str *tokens;
    int32_t *types;
    int32_t *vocab_slots; /* id or -1 */
    size_t vocab_mask;
    struct merge_slot *merges;
    size_t merge_mask;
    int32_t *controls; /* ids of control tokens, longest first */
    size_t n_controls;
    uint32_t byte_cp[256];
    int16_t cp_byte[512]; /* inverse of byte_cp for code points below 512, -1 elsewhere */
    int32_t bos, eos;
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

int32_t kvt_eng_tok_find(const struct kvt_eng_tokenizer *t, const char *s, size_t len)
{
    for (size_t i = fnv1a(s, len) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0)
            return -1;
        if (t->tokens[id].len == len && memcmp(t->tokens[id].ptr, s, len) == 0)
            return id;
    }
}

static const struct merge_slot *merge_find(const struct kvt_eng_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
    for (size_t i = mix64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (t->merges[i].key == 0)
            return NULL;
        if (t->merges[i].key == key)
            return &t->merges[i];
    }
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes one code point at s[0..n); returns bytes consumed (>= 1). Invalid input gives U+FFFD
 * and consumes one byte, as llama.cpp does. */
static size_t utf8_get(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || len > n)
        goto invalid;
    uint32_t v = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            goto invalid;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
invalid:
    *cp = 0xfffd;
    return 1;
}

static int in_ranges(const struct kvt_eng_cpt_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].first)
            hi = mid;
        else if (cp > r[mid].last)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int is_letter(uint32_t cp)
{
    if (cp < 0x80)
        return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(kvt_eng_letter_ranges, kvt_eng_letter_ranges_count, cp);
}

static int is_number(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    return in_ranges(kvt_eng_number_ranges, kvt_eng_number_ranges_count, cp);
}

/* llama.cpp's whitespace set (its own table, not the Unicode Z category). */
static int is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
           cp == 0x205f || cp == 0x3000;
}

int kvt_eng_tok_create(const struct kvt_eng_gguf *g, struct kvt_eng_tokenizer **out)
{
    struct kvt_eng_str model;
    int rc = -EINVAL;
    if (kvt_eng_gguf_str(g, "tokenizer.ggml.model", &model) != 0 || model.len != 4 ||
        memcmp(model.ptr, "gpt2", 4) != 0)
        return -EINVAL;
    const struct kvt_eng_gguf_kv *tk = kvt_eng_gguf_find(g, "tokenizer.ggml.tokens");
    const struct kvt_eng_gguf_kv *ty = kvt_eng_gguf_find(g, "tokenizer.ggml.token_type");
    const struct kvt_eng_gguf_kv *mg = kvt_eng_gguf_find(g, "tokenizer.ggml.merges");
    if (!tk || !mg || tk->count == 0 || tk->count > (1u << 24) || mg->count > (1u << 24))
        return -EINVAL;

    struct kvt_eng_tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->n_vocab = (uint32_t)tk->count;
    t->tokens = calloc(t->n_vocab, sizeof(*t->tokens));
    t->types = calloc(t->n_vocab, sizeof(*t->types));
    size_t vslots = pow2_at_least(2 * (size_t)t->n_vocab);
    t->vocab_slots = malloc(vslots * sizeof(*t->vocab_slots));
    t->vocab_mask = vslots - 1;
    size_t mslots = pow2_at_least(2 * (size_t)mg->count);
    t->merges = calloc(mslots, sizeof(*t->merges));
    t->merge_mask = mslots - 1;
    t->controls = calloc(t->n_vocab, sizeof(*t->controls));
    struct kvt_eng_str *mstr = calloc(mg->count ? mg->count : 1, sizeof(*mstr));
    if (!t->tokens || !t->types || !t->vocab_slots || !t->merges || !t->controls || !mstr) {
        rc = -ENOMEM;
        goto err_free;
    }
    if ((rc = kvt_eng_gguf_str_array(g, tk, t->tokens)) ||
        (rc = kvt_eng_gguf_str_array(g, mg, mstr)))
        goto err_free;
    if (ty && ty->count == t->n_vocab &&
        (ty->elem_type == KVT_GGUF_I32 || ty->elem_type == KVT_GGUF_U32))
        memcpy(t->types, ty->data, t->n_vocab * sizeof(int32_t));
    else
        for (uint32_t i = 0; i < t->n_vocab; i++)
            t->types[i] = 1;

    memset(t->vocab_slots, 0xff, vslots * sizeof(*t->vocab_slots));
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const struct kvt_eng_str *s = &t->tokens[id];
        size_t i = fnv1a(s->ptr, s->len) & t->vocab_mask;
        int dup = 0;
        while (t->vocab_slots[i] >= 0) {
            const struct kvt_eng_str *o = &t->tokens[t->vocab_slots[i]];
            if (o->len == s->len && memcmp(o->ptr, s->ptr, s->len) == 0) {
                dup = 1; /* keep the first id, like a dictionary built in order */
                break;
            }
            i = (i + 1) & t->vocab_mask;
        }
        if (!dup)
            t->vocab_slots[i] = (int32_t)id;
        if (t->types[id] == TOK_TYPE_CONTROL && s->len > 0)
            t->controls[t->n_controls++] = (int32_t)id;
    }
    /* Longest control tokens first, so that a token that prefixes another never wins. */
    for (size_t i = 1; i < t->n_controls; i++)
        for (size_t j = i;
             j > 0 && t->tokens[t->controls[j]].len > t->tokens[t->controls[j - 1]].len; j--) {
            int32_t tmp = t->controls[j];
            t->controls[j] = t->controls[j - 1];
            t->controls[j - 1] = tmp;
        }

    char buf[TOK_MAX_WORD_BYTES];
    for (uint64_t r = 0; r < mg->count; r++) {
        const char *sp = memchr(mstr[r].ptr, ' ', mstr[r].len);
        if (!sp || mstr[r].len >= sizeof(buf))
            continue;
        size_t la = (size_t)(sp - mstr[r].ptr), lb = mstr[r].len - la - 1;
        int32_t a = kvt_eng_tok_find(t, mstr[r].ptr, la);
        int32_t b = kvt_eng_tok_find(t, sp + 1, lb);
        memcpy(buf, mstr[r].ptr, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t res = kvt_eng_tok_find(t, buf, la + lb);
        if (a < 0 || b < 0 || res < 0)
            continue;
        uint64_t key = ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
        size_t i = mix64(key) & t->merge_mask;
        while (t->merges[i].key != 0 && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == 0) { /* a repeated merge keeps its first (best) rank */
            t->merges[i].key = key;
            t->merges[i].rank = (int32_t)r;
            t->merges[i].result = res;
        }
    }
    free(mstr);

    /* GPT-2 byte encoding: printable bytes map to themselves, the rest to 256 + n in order. */
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        t->byte_cp[b] = printable ? (uint32_t)b : next++;
    }
    memset(t->cp_byte, 0xff, sizeof(t->cp_byte));
    for (int b = 0; b < 256; b++)
        t->cp_byte[t->byte_cp[b]] = (int16_t)b;

    uint32_t v;
    t->bos = kvt_eng_gguf_u32(g, "tokenizer.ggml.bos_token_id", &v) == 0 ? (int32_t)v : -1;
    t->eos = kvt_eng_gguf_u32(g, "tokenizer.ggml.eos_token_id", &v) == 0 ? (int32_t)v : -1;
    *out = t;
    return 0;

err_free:
    free(mstr);
    kvt_eng_tok_destroy(t);
    return rc;
}

void kvt_eng_tok_destroy(struct kvt_eng_tokenizer *t)
{
    if (!t)
        return;
    free(t->tokens);
    free(t->types);
    free(t->vocab_slots);
    free(t->merges);
    free(t->controls);
    free(t);
}

struct sink {
    int32_t *out;
    size_t max;
    size_t n;
};

static void sink_put(struct sink *s, int32_t id)
{
    if (s->n < s->max)
        s->out[s->n] = id;
    s->n++;
}

struct sym {
    int32_t id;
    int32_t next; /* index of the next live symbol, -1 at the end */
};

/* Byte-encodes one word (code points cpts[0..n)) and emits its BPE tokens. */
static int bpe_word(const struct kvt_eng_tokenizer *t, const uint32_t *cpts, size_t n,
                    struct sink *s)
{
    char raw[TOK_MAX_WORD_BYTES];
    size_t nraw = 0;
    for (size_t i = 0; i < n; i++) {
        if (nraw + 4 > sizeof(raw))
            return -E2BIG;
        nraw += utf8_put(cpts[i], raw + nraw);
    }
    struct sym syms[TOK_MAX_WORD_BYTES];
    for (size_t i = 0; i < nraw; i++) {
        char enc[4];
        size_t l = utf8_put(t->byte_cp[(uint8_t)raw[i]], enc);
        syms[i].id = kvt_eng_tok_find(t, enc, l);
        syms[i].next = i + 1 < nraw ? (int32_t)(i + 1) : -1;
    }
    if (nraw == 0)
        return 0;
    for (;;) {
        int32_t best = -1, best_rank = INT32_MAX, best_res = -1;
        for (int32_t i = 0; syms[i].next >= 0; i = syms[i].next) {
            int32_t j = syms[i].next;
            if (syms[i].id < 0 || syms[j].id < 0)
                continue;
            const struct merge_slot *m = merge_find(t, syms[i].id, syms[j].id);
            if (m && m->rank < best_rank) {
                best = i;
                best_rank = m->rank;
                best_res = m->result;
            }
        }
        if (best < 0)
            break;
        int32_t j = syms[best].next;
        syms[best].id = best_res;
        syms[best].next = syms[j].next;
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) {
        if (syms[i].id < 0)
            return -EINVAL; /* a byte missing from the vocabulary: not a byte-level BPE */
        sink_put(s, syms[i].id);
    }
    return 0;
}

/* The GPT-2 word split on cpts[b..e), written out like llama.cpp's hand-made matcher. Positions
 * outside [b, e) read as "no character", which is what makes \s+(?!\S) take trailing spaces. */
static int gpt2_split(const struct kvt_eng_tokenizer *t, const uint32_t *cpts, size_t b, size_t e,
                      struct sink *s)
{
#define CPT(p) ((p) < e ? cpts[p] : 0xffffffffu)
#define L(p) ((p) < e && is_letter(cpts[p]))
#define N(p) ((p) < e && is_number(cpts[p]))
#define W(p) ((p) < e && is_space(cpts[p]))
#define O(p) ((p) < e && !is_letter(cpts[p]) && !is_number(cpts[p]) && !is_space(cpts[p]))
    size_t pos = b;
    int rc;
    while (pos < e) {
        size_t start = pos;
        uint32_t c = cpts[pos];
        if (c == '\'' && pos + 1 < e) {
            uint32_t c1 = cpts[pos + 1];
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                pos += 2;
                goto emit;
            }
            if (pos + 2 < e) {
                uint32_t c2 = cpts[pos + 2];
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
                    (c1 == 'l' && c2 == 'l')) {
                    pos += 3;
                    goto emit;
                }
            }
        }
        size_t q = c == ' ' ? pos + 1 : pos; /* the optional leading space */
        if (L(q)) {
            pos = q + 1;
            while (L(pos))
                pos++;
            goto emit;
        }
        if (N(q)) {
            pos = q + 1;
            while (N(pos))
                pos++;
            goto emit;
        }
        if (O(q)) {
            pos = q + 1;
            while (O(pos))
                pos++;
            goto emit;
        }
        size_t nws = 0;
        while (W(pos + nws))
            nws++;
        if (nws > 1 && CPT(pos + nws) != 0xffffffffu) {
            pos += nws - 1; /* \s+(?!\S): leave the last space to the next word */
            goto emit;
        }
        if (nws > 0) {
            pos += nws;
            goto emit;
        }
        pos++;
    emit:
        rc = bpe_word(t, cpts + start, pos - start, s);
        if (rc)
            return rc;
    }
    return 0;
#undef CPT
#undef L
#undef N
#undef W
#undef O
}

/* Raw text: split off every number code point on its own, then the GPT-2 split on the rest. */
static int encode_raw(const struct kvt_eng_tokenizer *t, const uint32_t *cpts, size_t n,
                      struct sink *s)
{
    size_t run = 0;
    int rc;
    for (size_t i = 0; i < n; i++) {
        if (!is_number(cpts[i]))
            continue;
        if (i > run && (rc = gpt2_split(t, cpts, run, i, s)))
            return rc;
        if ((rc = gpt2_split(t, cpts, i, i + 1, s)))
            return rc;
        run = i + 1;
    }
    if (n > run)
        return gpt2_split(t, cpts, run, n, s);
    return 0;
}

static int encode_text(const struct kvt_eng_tokenizer *t, const char *text, size_t len,
                       uint32_t *cpts, struct sink *s)
{
    size_t n = 0;
    for (size_t i = 0; i < len;)
        i += utf8_get((const uint8_t *)text + i, len - i, &cpts[n++]);
    return encode_raw(t, cpts, n, s);
}

int kvt_eng_tok_encode(const struct kvt_eng_tokenizer *t, const char *text, size_t len,
                       int parse_special, int32_t *out, size_t max, size_t *n_out)
{
    struct sink s = {.out = out, .max = max, .n = 0};
    uint32_t *cpts = malloc((len + 1) * sizeof(*cpts));
    int rc = 0;
    if (!cpts)
        return -ENOMEM;
    size_t run = 0;
    for (size_t i = 0; parse_special && i < len;) {
        int32_t hit = -1;
        for (size_t k = 0; k < t->n_controls; k++) {
            const struct kvt_eng_str *cs = &t->tokens[t->controls[k]];
            if (cs->len <= len - i && memcmp(text + i, cs->ptr, cs->len) == 0) {
                hit = t->controls[k];
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        if (i > run && (rc = encode_text(t, text + run, i - run, cpts, &s)))
            goto out_free;
        sink_put(&s, hit);
        i += t->tokens[hit].len;
        run = i;
    }
    if (len > run)
        rc = encode_text(t, text + run, len - run, cpts, &s);
out_free:
    free(cpts);
    if (n_out)
        *n_out = s.n;
    if (rc == 0 && s.n > max)
        rc = -ENOSPC;
    return rc;
}

int kvt_eng_tok_decode(const struct kvt_eng_tokenizer *t, int32_t id, int show_special, char *buf,
                       size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return -EINVAL;
    const struct kvt_eng_str *s = &t->tokens[id];
    size_t n = 0;
    if (t->types[id] == TOK_TYPE_CONTROL) {
        if (!show_special)
            return 0;
        if (s->len > cap)
            return -ENOSPC;
        memcpy(buf, s->ptr, s->len);
        return (int)s->len;
    }
    for (size_t i = 0; i < s->len;) {
        uint32_t cp;
        i += utf8_get((const uint8_t *)s->ptr + i, s->len - i, &cp);
        if (cp < 512 && t->cp_byte[cp] >= 0) {
            if (n + 1 > cap)
                return -ENOSPC;
            buf[n++] = (char)t->cp_byte[cp];
        } else {
            if (n + 4 > cap)
                return -ENOSPC;
            n += utf8_put(cp, buf + n);
        }
    }
    return (int)n;
}

uint32_t kvt_eng_tok_n_vocab(const struct kvt_eng_tokenizer *t)
{
    return t->n_vocab;
}

int32_t kvt_eng_tok_eos(const struct kvt_eng_tokenizer *t)
{
    return t->eos;
}

int32_t kvt_eng_tok_bos(const struct kvt_eng_tokenizer *t)
{
    return t->bos;
}

int kvt_eng_tok_is_control(const struct kvt_eng_tokenizer *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab && t->types[id] == TOK_TYPE_CONTROL;
}
