/*
 * The config table engine: parsing, validation, formatting. Validation happens fully before a
 * value is stored, so a rejected set leaves the struct untouched.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/config.h"
#include "kvtier/errors.h"

static const struct kvt_cfg_entry *find(const struct kvt_cfg_table *t, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->entries[i].key, key) == 0)
            return &t->entries[i];
    return NULL;
}

const struct kvt_cfg_entry *kvt_cfg_find(const struct kvt_cfg_table *t, const char *key)
{
    return find(t, key);
}

int kvt_cfg_parse_bytes(const char *text, uint64_t *out)
{
    char *end;
    if (!text || !isdigit((unsigned char)*text))
        return KVT_E_BADCONFIG;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno)
        return KVT_E_BADCONFIG;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0':
        break;
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    default:
        return KVT_E_BADCONFIG;
    }
    if (*end) {
        end++;
        if (toupper((unsigned char)*end) == 'I')
            end++;
        if (toupper((unsigned char)*end) == 'B')
            end++;
        if (*end)
            return KVT_E_BADCONFIG;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return KVT_E_BADCONFIG;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return KVT_E_BADCONFIG;
}

static int in_limits(const struct kvt_cfg_entry *e, double v)
{
    return e->min > e->max || (v >= e->min && v <= e->max);
}

int kvt_cfg_set(const struct kvt_cfg_table *t, void *obj, const char *key, const char *value,
                int runtime, char *err, size_t err_cap)
{
    const struct kvt_cfg_entry *e = find(t, key);
    char dummy[8];
    if (!err) {
        err = dummy;
        err_cap = sizeof(dummy);
    }
    if (!e) {
        snprintf(err, err_cap, "unknown config key '%s'", key);
        return KVT_E_BADCONFIG;
    }
    if (runtime && !(e->flags & KVT_CFG_RUNTIME)) {
        snprintf(err, err_cap, "'%s' cannot be changed at run time; restart with the new value",
                 key);
        return KVT_E_READONLY;
    }
    char *field = (char *)obj + e->offset;
    switch (e->type) {
    case KVT_CFG_U64:
    case KVT_CFG_BYTES: {
        uint64_t v;
        int rc;
        if (e->type == KVT_CFG_BYTES) {
            rc = kvt_cfg_parse_bytes(value, &v);
        } else {
            char *end;
            errno = 0;
            v = strtoull(value, &end, 10);
            rc = (errno || !isdigit((unsigned char)*value) || *end) ? KVT_E_BADCONFIG : 0;
        }
        if (rc || !in_limits(e, (double)v)) {
            snprintf(err, err_cap, "'%s': '%s' is not %s in [%.0f, %.0f]", key, value,
                     e->type == KVT_CFG_BYTES ? "a size" : "an integer", e->min, e->max);
            return KVT_E_BADCONFIG;
        }
        memcpy(field, &v, sizeof(v));
        return 0;
    }
    case KVT_CFG_BOOL: {
        int b;
        if (parse_bool(value, &b)) {
            snprintf(err, err_cap, "'%s': '%s' is not a boolean", key, value);
            return KVT_E_BADCONFIG;
        }
        memcpy(field, &b, sizeof(b));
        return 0;
    }
    case KVT_CFG_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v) || !in_limits(e, v)) {
            snprintf(err, err_cap, "'%s': '%s' is not a number in [%g, %g]", key, value, e->min,
                     e->max);
            return KVT_E_BADCONFIG;
        }
        memcpy(field, &v, sizeof(v));
        return 0;
    }
    case KVT_CFG_ENUM: {
        int ok = 0;
        for (const char *const *c = e->choices; c && *c; c++)
            ok |= strcmp(*c, value) == 0;
        if (!ok) {
            snprintf(err, err_cap, "'%s': '%s' is not one of the allowed values", key, value);
            return KVT_E_BADCONFIG;
        }
    }
    /* fall through */
    case KVT_CFG_STR:
        if (strlen(value) >= e->str_cap) {
            snprintf(err, err_cap, "'%s': value longer than %zu bytes", key, e->str_cap - 1);
            return KVT_E_BADCONFIG;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    }
    snprintf(err, err_cap, "'%s': bad entry type", key);
    return KVT_E_BADCONFIG;
}

int kvt_cfg_defaults(const struct kvt_cfg_table *t, void *obj)
{
    for (size_t i = 0; i < t->n; i++) {
        int rc = kvt_cfg_set(t, obj, t->entries[i].key, t->entries[i].def, 0, NULL, 0);
        if (rc)
            return rc;
    }
    return 0;
}

int kvt_cfg_get(const struct kvt_cfg_table *t, const void *obj, const char *key, char *buf,
                size_t cap)
{
    const struct kvt_cfg_entry *e = find(t, key);
    if (!e)
        return KVT_E_BADCONFIG;
    const char *field = (const char *)obj + e->offset;
    switch (e->type) {
    case KVT_CFG_U64:
    case KVT_CFG_BYTES: {
        uint64_t v;
        memcpy(&v, field, sizeof(v));
        snprintf(buf, cap, "%" PRIu64, v);
        break;
    }
    case KVT_CFG_BOOL: {
        int b;
        memcpy(&b, field, sizeof(b));
        snprintf(buf, cap, "%s", b ? "true" : "false");
        break;
    }
    case KVT_CFG_DOUBLE: {
        double v;
        memcpy(&v, field, sizeof(v));
        snprintf(buf, cap, "%g", v);
        break;
    }
    case KVT_CFG_STR:
    case KVT_CFG_ENUM:
        snprintf(buf, cap, "%s", field);
        break;
    }
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

int kvt_cfg_load_file(const struct kvt_cfg_table *t, void *obj, const char *path, char *err,
                      size_t err_cap)
{
    enum { LINES_MAX = 100000 };
    FILE *f = fopen(path, "r");
    if (!f) {
        int rc = -errno;
        snprintf(err, err_cap, "%s: %s", path, kvt_strerror(rc));
        return rc;
    }
    char line[1024], why[256];
    int rc = 0;
    for (unsigned lineno = 1; lineno <= LINES_MAX && fgets(line, sizeof(line), f); lineno++) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, err_cap, "%s:%u: expected 'key = value'", path, lineno);
            rc = KVT_E_BADCONFIG;
            break;
        }
        *eq = '\0';
        rc = kvt_cfg_set(t, obj, trim(s), trim(eq + 1), 0, why, sizeof(why));
        if (rc) {
            snprintf(err, err_cap, "%s:%u: %s", path, lineno, why);
            break;
        }
    }
    fclose(f);
    return rc;
}

void kvt_cfg_dump(const struct kvt_cfg_table *t, const void *obj, FILE *out)
{
    char val[1100];
    for (size_t i = 0; i < t->n; i++) {
        const struct kvt_cfg_entry *e = &t->entries[i];
        kvt_cfg_get(t, obj, e->key, val, sizeof(val));
        const char *when = !(e->flags & KVT_CFG_RUNTIME) ? ""
                           : (e->flags & KVT_CFG_FAULT)
                               ? "; changeable at run time by an admin uid, "
                                 "only with fault_injection"
                           : (e->flags & KVT_CFG_ADMIN) ? "; changeable at run time by an admin uid"
                                                        : "; changeable at run time";
        fprintf(out, "# %s\n# default: %s%s\n", e->doc, e->def, when);
        if (e->type == KVT_CFG_ENUM) {
            fprintf(out, "# one of:");
            for (const char *const *c = e->choices; c && *c; c++)
                fprintf(out, " %s", *c);
            fprintf(out, "\n");
        }
        fprintf(out, "%s = %s\n\n", e->key, val);
    }
}
