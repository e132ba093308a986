/*
 * Session handlers: Hello (protocol version, the tenant the peer may act for, mapping the
 * client's memfd arena) and RegisterNamespace (geometry, quota, the connection's hold on the
 * namespace). Both validate everything before they change anything.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "common/log.h"
#include "common/version.h"
#include "daemon/auth.h"
#include "daemon/ops.h"

/* ---- Hello -------------------------------------------------------------------------------- */

static int tenant_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n >= KVT_TENANT_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] > 0x7e)
            return 0;
    return 1;
}

/* Whether the peer of c may act for tenant: its own uid's tenant, or one the tenants map grants
 * to its uid or one of its groups (primary from SO_PEERCRED, supplementary from SO_PEERGROUPS). */
static int peer_may_act_for(const struct kvt_server *s, const struct kvt_conn *c,
                            const char *tenant)
{
    enum { GROUPS_MAX = 64 };
    gid_t groups[GROUPS_MAX];
    socklen_t len = sizeof(groups);
    size_t n = 0;
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
        n = len / sizeof(gid_t);
    return kvt_tenant_allowed(s->cfg->tenants, tenant, c->uid, c->gid, groups, n);
}

static int map_arena(struct kvt_server *s, struct kvt_conn *c, uint64_t bytes, const char **why)
{
    if (bytes > s->cfg->max_arena_bytes) {
        *why = "arena larger than max_arena_bytes";
        return KVT_E_TOOBIG;
    }
    if (c->pending_fd < 0) {
        *why = "arena_bytes set but no memfd was passed with the Hello frame";
        return KVT_E_NOARENA;
    }
    int fd = c->pending_fd;
    c->pending_fd = -1;
    /* The daemon must be able to read the arena's pages whenever it likes. Without a seal
     * against shrinking the client could truncate the file under our mapping; on hugetlbfs it
     * could punch a page out and use up the free huge pages, so that the page cannot come back.
     * Either turns our next copy into SIGBUS. Only a sealed shmem memfd (pages that are always
     * there or can be allocated again) is accepted; the copies are guarded all the same. */
    int seals = fcntl(fd, F_GET_SEALS);
    struct stat st;
    struct statfs fs;
    int rc = 0;
    if (fstatfs(fd, &fs) || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        *why = "arena must be a memfd";
        rc = KVT_E_INVAL;
    } else if ((unsigned long)fs.f_type == HUGETLBFS_MAGIC) {
        *why = "arena must not be a hugetlb memfd: its pages can vanish under the daemon";
        rc = KVT_E_INVAL;
    } else if ((unsigned long)fs.f_type != TMPFS_MAGIC) {
        *why = "arena must be a memfd (shmem), not a file on another file system";
        rc = KVT_E_INVAL;
    } else if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        *why = "arena must be a memfd sealed with F_SEAL_SHRINK";
        rc = KVT_E_INVAL;
    } else if ((uint64_t)st.st_size < bytes) {
        *why = "arena memfd is smaller than arena_bytes";
        rc = KVT_E_RANGE;
    } else {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            *why = "cannot map the arena";
            rc = -errno;
        } else {
            c->arena = p;
            c->arena_bytes = bytes;
        }
    }
    close(fd);
    return rc;
}

void kvt__ops_hello(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                    const Kvtier__HelloReq *h)
{
    const char *why = NULL;
    if (c->hello_done) {
        reply_error(s, c, op, KVT_E_PROTO, "Hello was already sent on this connection");
        return;
    }
    if (h->version != KVT_PROTO_VERSION) {
        reply_error(s, c, op, KVT_E_PROTO, "unsupported protocol version");
        return;
    }
    /* No tenant (or "default") keeps the one the connection started with: its uid's. */
    const char *tenant =
        (h->tenant && *h->tenant && strcmp(h->tenant, "default") != 0) ? h->tenant : c->tenant;
    if (!tenant_ok(tenant)) {
        reply_error(s, c, op, KVT_E_INVAL, "tenant must be 1-63 printable non-space characters");
        return;
    }
    if (!peer_may_act_for(s, c, tenant)) {
        s->st.tenant_denied++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "ops", "conn=%llu uid=%u may not act for tenant %s",
                            (unsigned long long)c->id, (unsigned)c->uid, tenant);
        reply_error(s, c, op, KVT_E_TENANT,
                    "this uid may not act for that tenant: the tenants map does not list it");
        return;
    }
    if (h->arena_bytes) {
        int rc = map_arena(s, c, h->arena_bytes, &why);
        if (rc) {
            reply_error(s, c, op, rc, why);
            return;
        }
    }
    if (tenant != c->tenant) /* a claimed name; the uid's own needs no copy (nor an overlap) */
        snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    c->hello_done = 1;
    c->tstats = kvt__server_tenant_stats(s, c->tenant);
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__HelloResp hr = KVTIER__HELLO_RESP__INIT;
    hr.version = KVT_PROTO_VERSION;
    hr.arena_bytes = c->arena_bytes;
    hr.max_frame_bytes = s->cfg->max_frame_bytes;
    hr.inline_max_bytes = s->cfg->inline_max_bytes;
    hr.daemon_version = (char *)"kvtierd " KVT_VERSION_STRING;
    resp.result_case = KVTIER__RESPONSE__RESULT_HELLO;
    resp.hello = &hr;
    KVT_DEBUG("ops", "hello conn=%llu tenant=%s arena_bytes=%llu", (unsigned long long)c->id,
              c->tenant, (unsigned long long)c->arena_bytes);
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

/* ---- RegisterNamespace -------------------------------------------------------------------- */

void kvt__ops_register(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                       const Kvtier__RegisterReq *r)
{
    const Kvtier__NamespaceSpec *sp = r->spec;
    if (!sp) {
        reply_error(s, c, op, KVT_E_INVAL, "RegisterNamespace without a spec");
        return;
    }
    struct kvt_ns_def d = {.model_id = sp->model_id,
                           .layers = sp->layers,
                           .kv_heads = sp->kv_heads,
                           .head_dim = sp->head_dim,
                           .dtype = sp->dtype,
                           .tokens_per_chunk = sp->tokens_per_chunk,
                           .rotary_dims = sp->rotary_dims,
                           .rope_style = sp->rope_style,
                           .rope_theta = sp->rope_theta,
                           .allow_lossy = sp->allow_lossy,
                           .spans = {.fine_layers = UINT32_MAX}};
    const char *why = NULL;
    if (sp->spans) {
        const Kvtier__SpanPolicy *p = sp->spans;
        d.spans = (struct kvt_span_policy){
            .kind = p->kind,
            .block_tokens = p->block_tokens,
            .max_tokens = p->max_tokens,
            .merge_tol = p->merge_tol,
            .fine_layers = p->has_fine_layers ? p->fine_layers : UINT32_MAX,
        };
        struct kvt_span_policy resolved;
        if (kvt_span_policy_resolve(&d.spans, &s->span_dflt, &resolved, &why)) {
            reply_error(s, c, op, KVT_E_INVAL, why);
            return;
        }
    }
    const struct kvt_ns *ns = NULL;
    int rc = kvt_ns_register(&s->ns, c->tenant, &d, (uint32_t)s->cfg->quota_namespaces, &ns, &why);
    if (rc) {
        if (rc == KVT_E_QUOTA)
            s->st.quota_rejections++;
        reply_error(s, c, op, rc, why);
        return;
    }
    if (s->n_prior_pending)
        kvt__server_prior_apply(s, ns); /* what the versions restored at start showed */
    /* The connection holds the namespace until it closes: a held namespace is never reclaimed. */
    uint32_t slot = kvt_ns_slot(ns);
    int held = 0;
    for (uint32_t i = 0; i < c->n_ns_held && !held; i++)
        held = c->ns_held[i] == slot;
    if (!held) {
        if (c->n_ns_held == KVT_CONN_NS_MAX) {
            s->st.quota_rejections++;
            reply_error(s, c, op, KVT_E_QUOTA, "one connection may hold at most 64 namespaces");
            return;
        }
        c->ns_held[c->n_ns_held++] = slot;
        kvt_ns_hold(&s->ns, slot);
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__RegisterResp rr = KVTIER__REGISTER_RESP__INIT;
    rr.ns_id = ns->id;
    rr.seed = ns->seed;
    rr.bytes_per_token = ns->bytes_per_token;
    rr.chunk_bytes = ns->chunk_bytes;
    resp.result_case = KVTIER__RESPONSE__RESULT_REGISTER_NS;
    resp.register_ns = &rr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}
