/*
 * Peer authorization: uid lists and the tenant map (see auth.h for the rules).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/auth.h"
#include "daemon/config.h"

/* Parses one decimal id at *p (no sign, no spaces, fits 32 bits) and advances past it. */
static int parse_id(const char **p, uint32_t *out)
{
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > UINT32_MAX - 1) /* (uid_t)-1 means "no uid" */
            return -1;
        s++;
    }
    *p = s;
    *out = (uint32_t)v;
    return 0;
}

static int uid_list_scan(const char *list, uid_t uid, int *found)
{
    const char *p = list;
    *found = 0;
    while (*p) {
        uint32_t v;
        if (parse_id(&p, &v))
            return -1;
        *found |= v == (uint32_t)uid;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return 0;
}

int kvt_uid_listed(const char *list, uid_t uid, int empty_means)
{
    if (!*list)
        return empty_means;
    int found;
    /* A malformed list admits nobody; config validation keeps it from being set. */
    return uid_list_scan(list, uid, &found) == 0 && found;
}

int kvt_uid_list_valid(const char *list, char *why, size_t why_cap)
{
    int found;
    if (uid_list_scan(list, 0, &found)) {
        snprintf(why, why_cap, "'%s' is not a comma-separated list of decimal uids", list);
        return 0;
    }
    return 1;
}

int kvt_admin_uid(const struct kvt_dconfig *cfg, uid_t uid)
{
    if (!*cfg->admin_uids)
        return uid == 0 || uid == geteuid();
    return kvt_uid_listed(cfg->admin_uids, uid, 0);
}

void kvt_tenant_default(uid_t uid, char *buf, size_t cap)
{
    snprintf(buf, cap, "uid-%u", (unsigned)uid);
}

/*
 * Walks the map "name=uid:1,gid:2;name2=uid:3". For each (name, kind, id) calls back; stops at
 * the first malformed part and returns -1 with why set.
 */
typedef int (*grant_fn)(void *arg, const char *name, size_t name_len, char kind, uint32_t id);

static int map_walk(const char *map, grant_fn fn, void *arg, char *why, size_t why_cap)
{
    const char *p = map;
    while (*p) {
        const char *name = p;
        while (*p && *p != '=' && *p != ';')
            p++;
        size_t name_len = (size_t)(p - name);
        if (*p != '=' || name_len == 0 || name_len >= 64) {
            snprintf(why, why_cap, "tenants: expected 'name=uid:N,gid:N' near '%.20s'", name);
            return -1;
        }
        p++;
        for (;;) {
            char kind;
            if (!strncmp(p, "uid:", 4))
                kind = 'u';
            else if (!strncmp(p, "gid:", 4))
                kind = 'g';
            else {
                snprintf(why, why_cap, "tenants: expected uid:N or gid:N near '%.20s'", p);
                return -1;
            }
            p += 4;
            uint32_t id;
            if (parse_id(&p, &id)) {
                snprintf(why, why_cap, "tenants: bad id near '%.20s'", p);
                return -1;
            }
            if (fn && fn(arg, name, name_len, kind, id))
                return 1;
            if (*p == ',') {
                p++;
                continue;
            }
            break;
        }
        if (*p == ';')
            p++;
        else if (*p) {
            snprintf(why, why_cap, "tenants: unexpected '%c'", *p);
            return -1;
        }
    }
    return 0;
}

struct grant_query {
    const char *tenant;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t n_groups;
};

static int grant_matches(void *arg, const char *name, size_t name_len, char kind, uint32_t id)
{
    const struct grant_query *q = arg;
    if (strlen(q->tenant) != name_len || memcmp(q->tenant, name, name_len) != 0)
        return 0;
    if (kind == 'u')
        return id == (uint32_t)q->uid;
    if (id == (uint32_t)q->gid)
        return 1;
    for (size_t i = 0; i < q->n_groups; i++)
        if (id == (uint32_t)q->groups[i])
            return 1;
    return 0;
}

int kvt_tenant_allowed(const char *map, const char *tenant, uid_t uid, gid_t gid,
                       const gid_t *groups, size_t n_groups)
{
    char own[32], why[8];
    kvt_tenant_default(uid, own, sizeof(own));
    if (!strcmp(tenant, own))
        return 1;
    struct grant_query q = {tenant, uid, gid, groups, n_groups};
    return map_walk(map, grant_matches, &q, why, sizeof(why)) == 1;
}

int kvt_tenant_map_valid(const char *map, char *why, size_t why_cap)
{
    return map_walk(map, NULL, NULL, why, why_cap) == 0;
}
