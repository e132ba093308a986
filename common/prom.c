/*
 * Prometheus text rendering of stats (see prom.h). A stat's family and its one label are derived
 * from its name without copying it; samples of a family are gathered with a quadratic scan, which
 * at a few hundred stats per scrape costs less than formatting the numbers.
 */
#include "common/prom.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/stats.h"
#include "kvtier/errors.h"

enum fam_kind { FAM_PLAIN, FAM_TIER, FAM_TENANT };

/* Where a stat's family name and its label value are in its name. */
struct fam {
    enum fam_kind kind;
    const char *rest;  /* the family's part of the name (after the tier or tenant) */
    const char *label; /* the label value: name bytes [label, label + label_len) */
    size_t label_len;
};

static const char *const tier_prefixes[] = {"cpu.", "disk."};

static void fam_of(const char *name, struct fam *f)
{
    memset(f, 0, sizeof(*f));
    f->kind = FAM_PLAIN;
    f->rest = name;
    for (size_t i = 0; i < sizeof(tier_prefixes) / sizeof(tier_prefixes[0]); i++) {
        size_t len = strlen(tier_prefixes[i]);
        if (!strncmp(name, tier_prefixes[i], len) && name[len]) {
            f->kind = FAM_TIER;
            f->rest = name + len;
            f->label = name;
            f->label_len = len - 1;
            return;
        }
    }
    /* tenant.T.X: the tenant is everything between the first and the last dot. */
    const char *last = strrchr(name, '.');
    if (!strncmp(name, "tenant.", 7) && last && last > name + 7 && last[1]) {
        f->kind = FAM_TENANT;
        f->rest = last + 1;
        f->label = name + 7;
        f->label_len = (size_t)(last - f->label);
    }
}

static int same_fam(const struct fam *a, const struct fam *b)
{
    return a->kind == b->kind && !strcmp(a->rest, b->rest);
}

static int same_series(const struct fam *a, const struct fam *b)
{
    return same_fam(a, b) && a->label_len == b->label_len &&
           (!a->label_len || !memcmp(a->label, b->label, a->label_len));
}

static void put(struct kvt_prom_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct kvt_prom_out *o, const char *fmt, ...)
{
    if (o->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->cap - o->len;
    int n = vsnprintf(o->buf + o->len, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room) {
        o->overflow = 1;
        if (o->cap)
            o->buf[o->len] = '\0';
        return;
    }
    o->len += (size_t)n;
}

/* HELP text escapes backslash and newline; label values also escape the double quote. */
static void put_escaped(struct kvt_prom_out *o, const char *v, size_t len, int quote)
{
    for (size_t i = 0; i < len && v[i]; i++) {
        if (v[i] == '\\')
            put(o, "\\\\");
        else if (v[i] == '\n')
            put(o, "\\n");
        else if (quote && v[i] == '"')
            put(o, "\\\"");
        else
            put(o, "%c", v[i]);
    }
}

/* The label list of a sample, with extra (a histogram's le, or NULL) after the stat's own. */
static void put_labels(struct kvt_prom_out *o, const struct fam *f, const char *le)
{
    if (!f->label_len && !le)
        return;
    put(o, "{");
    if (f->label_len) {
        put(o, "%s=\"", f->kind == FAM_TIER ? "tier" : "tenant");
        put_escaped(o, f->label, f->label_len, 1);
        put(o, "\"%s", le ? "," : "");
    }
    if (le)
        put(o, "le=\"%s\"", le);
    put(o, "}");
}

static void put_sample(struct kvt_prom_out *o, const char *name, const struct kvt_stat *s,
                       const struct fam *f)
{
    if (s->type != KVT_STAT_HISTOGRAM) {
        put(o, "%s", name);
        put_labels(o, f, NULL);
        put(o, " %" PRIu64 "\n", s->value);
        return;
    }
    uint64_t cum = 0;
    int inf = 0;
    for (size_t b = 0; b < s->n_buckets; b++) {
        char le[24];
        cum += s->bucket_counts[b];
        if (s->bucket_le[b] == UINT64_MAX) {
            snprintf(le, sizeof(le), "+Inf");
            inf = 1;
        } else {
            snprintf(le, sizeof(le), "%" PRIu64, s->bucket_le[b]);
        }
        put(o, "%s_bucket", name);
        put_labels(o, f, le);
        put(o, " %" PRIu64 "\n", cum);
    }
    if (!inf) { /* a histogram always ends in +Inf, holding every observation */
        put(o, "%s_bucket", name);
        put_labels(o, f, "+Inf");
        put(o, " %" PRIu64 "\n", s->value);
    }
    put(o, "%s_sum", name);
    put_labels(o, f, NULL);
    put(o, " %" PRIu64 "\n%s_count", s->sum, name);
    put_labels(o, f, NULL);
    put(o, " %" PRIu64 "\n", s->value);
}

int kvt_prom_render(const struct kvt_stat *st, size_t n, struct kvt_prom_out *out)
{
    for (size_t i = 0; i < n; i++) {
        struct fam fi;
        fam_of(st[i].name, &fi);
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            struct fam fj;
            fam_of(st[j].name, &fj);
            seen = same_fam(&fi, &fj);
        }
        if (seen)
            continue; /* written with the first stat of its family */
        char fname[KVT_STAT_NAME_MAX + 8], name[KVT_STAT_NAME_MAX + 16];
        snprintf(fname, sizeof(fname), "%s%s", fi.kind == FAM_TENANT ? "tenant_" : "", fi.rest);
        if (kvt_stats_prom_name(fname, st[i].type, name, sizeof(name)))
            return KVT_E_INVAL;
        put(out, "# HELP %s ", name);
        put_escaped(out, st[i].help ? st[i].help : "", SIZE_MAX, 0);
        put(out, "\n# TYPE %s %s\n", name, kvt_stat_type_name(st[i].type));
        for (size_t j = i; j < n; j++) {
            struct fam fj;
            fam_of(st[j].name, &fj);
            if (!same_fam(&fi, &fj))
                continue;
            if (st[j].type != st[i].type)
                return KVT_E_EXISTS;
            for (size_t k = i; k < j; k++) {
                struct fam fk;
                fam_of(st[k].name, &fk);
                if (same_series(&fj, &fk))
                    return KVT_E_EXISTS;
            }
            put_sample(out, name, &st[j], &fj);
        }
    }
    return out->overflow ? KVT_E_SMALLBUF : 0;
}
