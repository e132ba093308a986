/*
 * Who may do what: peer credentials (SO_PEERCRED at accept) against the configured lists.
 *
 * - allowed_uids: who may connect at all (empty: anyone who can open the socket).
 * - admin_uids: who may change security, resource and fault settings at run time (empty: root
 *   and the daemon's own uid).
 * - tenants: which credentials may act for which tenant. A tenant is never a name a client merely
 *   claims: a connection starts as the tenant of its uid ("uid-<uid>"), and may claim a named
 *   tenant at Hello only when the map lists its uid or one of its groups for that name:
 *   "team-a=uid:1000,gid:50;team-b=uid:1001".
 */
#ifndef KVT_DAEMON_AUTH_H
#define KVT_DAEMON_AUTH_H

#include <stddef.h>
#include <sys/types.h>

struct kvt_dconfig;

/* Whether uid appears in a comma-separated list of uids; an empty list answers empty_means. */
int kvt_uid_listed(const char *list, uid_t uid, int empty_means);
/* Whether a comma-separated uid list is well formed (each a decimal uid); why gets the reason. */
int kvt_uid_list_valid(const char *list, char *why, size_t why_cap);

/* Whether uid may change admin config keys. */
int kvt_admin_uid(const struct kvt_dconfig *cfg, uid_t uid);

/* The tenant a connection of uid acts for until it claims another: "uid-<uid>". */
void kvt_tenant_default(uid_t uid, char *buf, size_t cap);

/* Whether a peer with uid, primary gid and supplementary groups may act for tenant. */
int kvt_tenant_allowed(const char *map, const char *tenant, uid_t uid, gid_t gid,
                       const gid_t *groups, size_t n_groups);
/* Whether a tenant map is well formed; why gets the reason. */
int kvt_tenant_map_valid(const char *map, char *why, size_t why_cap);

#endif
