/*
 * Request handlers. Each validates everything it was sent (namespace and tenant, geometry,
 * offsets and lengths inside the connection's arena) before it changes anything, so a bad request
 * gets its error and leaves the daemon exactly as it was.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/checksum.h"
#include "common/log.h"
#include "common/time.h"
#include "common/version.h"
#include "daemon/auth.h"
#include "daemon/server.h"
#include "kernels/copy.h"

#define STATS_RESERVE_BYTES (48 * 1024)
#define BASE_RESERVE_BYTES KVT_ERROR_RESERVE_BYTES
#define KEY_STATUS_BYTES 12

static int range_ok(const struct kvt_conn *c, uint64_t off, uint64_t len)
{
    return c->arena && off <= c->arena_bytes && len <= c->arena_bytes - off;
}

size_t kvt__ops_reserve(const struct kvt_server *s, const Kvtier__Request *req)
{
    switch (req->op_case) {
    case KVTIER__REQUEST__OP_GET:
        return BASE_RESERVE_BYTES + (req->get->want_inline ? s->cfg->inline_max_bytes : 0);
    case KVTIER__REQUEST__OP_STATS:
        return STATS_RESERVE_BYTES;
    case KVTIER__REQUEST__OP_LOOKUP:
        return BASE_RESERVE_BYTES + req->lookup->n_keys * KEY_STATUS_BYTES;
    case KVTIER__REQUEST__OP_DEL:
        return BASE_RESERVE_BYTES + req->del->n_keys * KEY_STATUS_BYTES;
    default:
        return BASE_RESERVE_BYTES;
    }
}

static void reply_error(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, int status,
                        const char *detail)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    kvt__server_respond(s, c, op, &resp, status, detail);
}

/* Resolves the namespace of a request and counts the rejection kinds. */
static int resolve_ns(struct kvt_server *s, struct kvt_conn *c, uint32_t id,
                      const struct kvt_ns **ns)
{
    int rc = kvt_ns_resolve(&s->ns, id, c->tenant, ns);
    if (rc == KVT_E_NONS)
        s->st.unknown_namespace++;
    else if (rc == KVT_E_ACCESS)
        s->st.access_denied++;
    return rc;
}

static int key_of(const Kvtier__Key *k, struct kvt_key *out)
{
    if (!k)
        return KVT_E_INVAL;
    out->lo = k->lo;
    out->hi = k->hi;
    return 0;
}

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

static void op_hello(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
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

static void op_register(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
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
                           .allow_lossy = sp->allow_lossy};
    const struct kvt_ns *ns = NULL;
    const char *why = NULL;
    int rc = kvt_ns_register(&s->ns, c->tenant, &d, (uint32_t)s->cfg->quota_namespaces, &ns, &why);
    if (rc) {
        if (rc == KVT_E_QUOTA)
            s->st.quota_rejections++;
        reply_error(s, c, op, rc, why);
        return;
    }
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

/* ---- Put ---------------------------------------------------------------------------------- */

struct tenant_pick {
    struct kvt_server *s;
    const struct kvt_ns *ns;
};

/* A chunk in DRAM of the Put's tenant that nobody holds. */
static int tenant_chunk(void *arg, uint32_t id)
{
    const struct tenant_pick *tp = arg;
    const struct kvt_entry *e = kvt_index_at(&tp->s->idx, id);
    return e->owner && e->state == KVT_ENTRY_READY && e->in_host && !e->refs && !e->promoting &&
           kvt_ns_same_tenant(&tp->s->ns, e->owner - 1u, tp->ns);
}

/* quota.cpu_share: before a tenant's Put takes DRAM beyond its share, its own coldest chunks make
 * room (written back or dropped as the tier manager decides for any eviction), so one tenant
 * cannot push every other out of the CPU tier. KVT_E_QUOTA when none of them can go. */
static int tenant_dram_room(struct kvt_server *s, const struct kvt_ns *ns, uint64_t len)
{
    enum { PICK = 16, SCAN = 4096, ROUNDS = 8 };
    if (s->cfg->quota_cpu_share >= 1.0)
        return 0;
    double limit = s->cfg->quota_cpu_share * (double)kvt_host_arena_bytes(s->host);
    uint64_t need = kvt_host_slot_bytes(s->host, len);
    struct tenant_pick tp = {s, ns};
    for (int round = 0; round < ROUNDS; round++) {
        if ((double)(kvt_ns_tenant_dram_bytes(&s->ns, ns) + need) <= limit)
            return 0;
        uint32_t ids[PICK];
        size_t n = kvt_host_coldest_where(s->host, tenant_chunk, &tp, ids, PICK, SCAN);
        size_t freed = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t off = kvt_index_at(&s->idx, ids[i])->host_off;
            if (kvt_tm_evict(s, ids[i], off) == 0) {
                kvt_host_free(s->host, off);
                freed++;
                s->st.quota_evictions++;
            }
        }
        if (!freed)
            break;
    }
    return (double)(kvt_ns_tenant_dram_bytes(&s->ns, ns) + need) <= limit ? 0 : KVT_E_QUOTA;
}

static void put_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op, int existed,
                      enum kvt_tier_id tier)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__PutResp pr = KVTIER__PUT_RESP__INIT;
    pr.existed = existed;
    pr.tier = tier;
    resp.result_case = KVTIER__RESPONSE__RESULT_PUT;
    resp.put = &pr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_put_reply(struct kvt_server *s, struct kvt_op *op, enum kvt_tier_id tier)
{
    put_reply(s, op->conn, op, 0, tier);
}

static void op_put(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                   const Kvtier__PutReq *p)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    char why[160];
    int rc = resolve_ns(s, c, p->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(p->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "Put without a key");
        return;
    }
    uint32_t n_tokens = p->n_tokens ? p->n_tokens : ns->tokens_per_chunk;
    uint64_t len = p->inline_data.len ? p->inline_data.len : p->length;
    if (n_tokens > ns->tokens_per_chunk || len != n_tokens * ns->bytes_per_token) {
        s->st.geometry_errors++;
        snprintf(why, sizeof(why),
                 "chunk of %u tokens must be %" PRIu64 " bytes in this namespace, got %" PRIu64,
                 n_tokens, n_tokens * ns->bytes_per_token, len);
        reply_error(s, c, op, KVT_E_GEOMETRY, why);
        return;
    }
    const uint8_t *src;
    if (p->inline_data.len) {
        if (len > s->cfg->inline_max_bytes) {
            reply_error(s, c, op, KVT_E_TOOBIG, "inline data larger than inline_max_bytes");
            return;
        }
        src = p->inline_data.data;
    } else if (!c->arena) {
        reply_error(s, c, op, KVT_E_NOARENA, NULL);
        return;
    } else if (!range_ok(c, p->offset, len)) {
        s->st.range_errors++;
        snprintf(why, sizeof(why),
                 "offset %" PRIu64 " + length %" PRIu64 " outside the %" PRIu64 "-byte arena",
                 p->offset, len, c->arena_bytes);
        reply_error(s, c, op, KVT_E_RANGE, why);
        return;
    } else {
        src = c->arena + p->offset;
    }
    if (!p->checksum && !p->inline_data.len && !strcmp(s->cfg->put_checksum, "required")) {
        s->st.put_checksum_missing++;
        reply_error(s, c, op, KVT_E_INVAL,
                    "Put from the arena without a payload checksum (put_checksum = required)");
        return;
    }
    s->st.puts++;
    uint32_t found = kvt_index_find(&s->idx, ns->seed, &key);
    if (found != KVT_INDEX_NIL) {
        s->st.puts_existed++;
        enum kvt_tier_id t = kvt_tm_tier_of(kvt_index_at(&s->idx, found));
        put_reply(s, c, op, 1, t == KVT_TIER_NONE ? KVT_TIER_CPU : t);
        return;
    }
    if (s->cfg->quota_objects_share < 1.0 && (double)kvt_ns_tenant_objects(&s->ns, ns) >=
                                                 s->cfg->quota_objects_share * (double)s->idx.cap) {
        s->st.quota_rejections++;
        reply_error(s, c, op, KVT_E_QUOTA,
                    "tenant stores its share of index.max_objects (quota.objects_share): delete "
                    "chunks or raise the quota");
        return;
    }
    uint32_t id;
    if (kvt_tm_index_insert(s, ns->seed, &key, &id)) {
        s->st.index_full++;
        reply_error(s, c, op, KVT_E_INDEXFULL, NULL);
        return;
    }
    kvt_index_set_owner(&s->idx, id, (uint16_t)(kvt_ns_slot(ns) + 1));
    uint64_t off;
    if (tenant_dram_room(s, ns, len)) {
        kvt_index_remove(&s->idx, id);
        s->st.quota_rejections++;
        reply_error(s, c, op, KVT_E_QUOTA,
                    "tenant holds its share of the CPU tier (quota.cpu_share) and none of its "
                    "chunks can be evicted now: retry");
        return;
    }
    rc = kvt_tm_host_alloc(s, len, id, &off);
    if (rc) {
        kvt_index_remove(&s->idx, id);
        if (rc == KVT_E_FULL)
            s->st.tier_full++;
        reply_error(s, c, op, rc,
                    rc == KVT_E_TOOBIG      ? "chunk larger than cpu.page_bytes"
                    : rc == KVT_E_DIRTYFULL ? "CPU tier full of chunks not yet written to disk "
                                              "(tier.dirty_full = reject): retry"
                                            : NULL);
        return;
    }
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    kvt_host_set_owner(s->host, off, e->owner);
    e->host_off = off;
    e->in_host = 1;
    e->length = len;
    e->n_tokens = n_tokens;
    e->elem_bytes = (uint8_t)kvt_dtype_size((enum kvt_dtype)ns->dtype);
    e->refs = 1; /* the writer: the slot cannot be evicted while it fills */
    op->entry = id;
    op->length = len;
    op->has_checksum = p->checksum != NULL;
    op->checksum = p->checksum ? p->checksum->value : 0;
    op->job.dst = kvt_host_ptr(s->host, off);
    op->job.src = src;
    op->job.len = len;
    op->job.want_sum = (uint8_t)op->has_checksum;
    if (p->inline_data.len) {
        /* Inline bytes live in the request, which is freed after dispatch: copy now. They are
         * the daemon's own memory: no guard needed. */
        kvt_copy_stream(op->job.dst, src, len);
        op->copy_res = 0;
        op->sum = op->has_checksum ? kvt_payload_checksum(op->job.dst, len) : 0;
        kvt__ops_complete(s, op);
        return;
    }
    kvt__server_submit(s, op);
}

/* ---- Get ---------------------------------------------------------------------------------- */

static void get_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const struct kvt_entry *e, const uint8_t *inline_data)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__GetResp gr = KVTIER__GET_RESP__INIT;
    gr.length = e->length;
    gr.n_tokens = e->n_tokens;
    gr.tier = op->tier;
    if (inline_data) {
        gr.inline_data.data = (uint8_t *)inline_data;
        gr.inline_data.len = e->length;
    }
    resp.result_case = KVTIER__RESPONSE__RESULT_GET;
    resp.get = &gr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

void kvt__ops_get_reply_entry(struct kvt_server *s, struct kvt_op *op, const struct kvt_entry *e)
{
    s->st.get_hits++;
    s->st.get_bytes += e->length;
    get_reply(s, op->conn, op, e, NULL);
}

void kvt__ops_get_fail(struct kvt_server *s, struct kvt_op *op, int status)
{
    if (status == KVT_E_NOTFOUND)
        s->st.get_misses++;
    reply_error(s, op->conn, op, status, NULL);
}

void kvt__ops_get_deliver(struct kvt_server *s, struct kvt_op *op)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    s->st.get_hits++;
    s->st.get_bytes += e->length;
    if (op->want_inline) {
        e->refs--;
        get_reply(s, op->conn, op, e, kvt_host_ptr(s->host, e->host_off));
        return;
    }
    /* refs stays taken until the copy to the client completes (kvt__ops_complete). */
    op->length = e->length;
    op->job.src = kvt_host_ptr(s->host, e->host_off);
    op->job.len = e->length;
    kvt__server_submit(s, op);
}

static void op_get(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                   const Kvtier__GetReq *g)
{
    const struct kvt_ns *ns;
    struct kvt_key key;
    char why[160];
    int rc = resolve_ns(s, c, g->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    if (key_of(g->key, &key)) {
        reply_error(s, c, op, KVT_E_INVAL, "Get without a key");
        return;
    }
    if (!g->want_inline) {
        if (!c->arena) {
            reply_error(s, c, op, KVT_E_NOARENA, NULL);
            return;
        }
        if (!range_ok(c, g->offset, g->capacity)) {
            s->st.range_errors++;
            snprintf(why, sizeof(why),
                     "offset %" PRIu64 " + capacity %" PRIu64 " outside the %" PRIu64 "-byte arena",
                     g->offset, g->capacity, c->arena_bytes);
            reply_error(s, c, op, KVT_E_RANGE, why);
            return;
        }
    }
    s->st.gets++;
    uint32_t id = kvt_index_find(&s->idx, ns->seed, &key);
    struct kvt_entry *e = id == KVT_INDEX_NIL ? NULL : kvt_index_at(&s->idx, id);
    enum kvt_tier_id tier = e ? kvt_tm_tier_of(e) : KVT_TIER_NONE;
    if (tier == KVT_TIER_NONE) {
        s->st.get_misses++;
        kvt_host_count(s->host, 0);
        reply_error(s, c, op, KVT_E_NOTFOUND, NULL);
        return;
    }
    if (g->want_inline ? e->length > s->cfg->inline_max_bytes : e->length > g->capacity) {
        Kvtier__Response resp = KVTIER__RESPONSE__INIT;
        Kvtier__GetResp gr = KVTIER__GET_RESP__INIT;
        gr.length = e->length; /* tells the client how much room it needs */
        resp.result_case = KVTIER__RESPONSE__RESULT_GET;
        resp.get = &gr;
        kvt__server_respond(s, c, op, &resp, g->want_inline ? KVT_E_TOOBIG : KVT_E_SMALLBUF, NULL);
        return;
    }
    if (e->hits < UINT16_MAX)
        e->hits++;
    e->referenced = 1;
    op->tier = tier;
    op->want_inline = g->want_inline;
    if (tier == KVT_TIER_DISK) {
        kvt_host_count(s->host, 0);
        op->length = e->length;
        op->job.dst = g->want_inline ? NULL : c->arena + g->offset;
        rc = kvt_tm_get_from_disk(s, op, id);
        if (rc)
            kvt__ops_get_fail(s, op, rc);
        return;
    }
    s->st.get_hits++;
    s->st.get_bytes += e->length;
    kvt_host_count(s->host, 1);
    kvt_host_touch(s->host, e->host_off);
    if (g->want_inline) {
        get_reply(s, c, op, e, kvt_host_ptr(s->host, e->host_off));
        return;
    }
    e->refs++;
    op->entry = id;
    op->length = e->length;
    op->job.dst = c->arena + g->offset;
    op->job.src = kvt_host_ptr(s->host, e->host_off);
    op->job.len = e->length;
    kvt__server_submit(s, op);
}

void kvt__ops_complete(struct kvt_server *s, struct kvt_op *op)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    e->refs--;
    if (op->kind == KVTIER__REQUEST__OP_PUT) {
        /* The copied bytes cannot be trusted when the client gave up on this Put (timeout or
         * exit: it may already reuse its buffer), when its memory vanished mid-copy, or when
         * they are not the bytes it checksummed: the chunk is dropped, never served. */
        int status = op->conn->dead                                ? KVT_E_DISCONNECTED
                     : op->copy_res                                ? op->copy_res
                     : op->has_checksum && op->sum != op->checksum ? KVT_E_CHECKSUM
                                                                   : 0;
        if (status) {
            if (status == KVT_E_CHECKSUM)
                s->st.put_checksum_errors++;
            else if (status == KVT_E_FAULT)
                s->st.client_memory_faults++;
            kvt_host_free(s->host, e->host_off);
            kvt_index_remove(&s->idx, op->entry);
            reply_error(s, op->conn, op, status,
                        status == KVT_E_CHECKSUM
                            ? "the bytes copied from the arena do not match the Put's checksum: "
                              "the buffer changed during the copy; nothing was stored"
                            : NULL);
            return;
        }
    } else if (op->copy_res) {
        s->st.client_memory_faults++;
        reply_error(s, op->conn, op, op->copy_res,
                    "the Get's destination in the arena could not be written");
        return;
    }
    if (op->kind == KVTIER__REQUEST__OP_PUT) {
        e->state = KVT_ENTRY_READY;
        s->st.put_bytes += op->length;
        if (!kvt_tm_put_committed(s, op, op->entry))
            put_reply(s, op->conn, op, 0, KVT_TIER_CPU);
    } else {
        get_reply(s, op->conn, op, e, NULL);
    }
}

/* ---- Lookup and Delete -------------------------------------------------------------------- */

static void op_lookup(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__LookupReq *l)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, l->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    /* Static buffers are safe: the loop is single-threaded and packs the response before the
     * handler returns. */
    enum { LOOKUP_KEYS_MAX = 65536 };
    if (l->n_keys > LOOKUP_KEYS_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "more than 65536 keys in one Lookup");
        return;
    }
    static uint32_t tiers[LOOKUP_KEYS_MAX];
    size_t hits = 0;
    for (size_t i = 0; i < l->n_keys; i++) {
        struct kvt_key key;
        if (key_of(l->keys[i], &key))
            break;
        uint32_t id = kvt_index_find(&s->idx, ns->seed, &key);
        enum kvt_tier_id t =
            id == KVT_INDEX_NIL ? KVT_TIER_NONE : kvt_tm_tier_of(kvt_index_at(&s->idx, id));
        if (t == KVT_TIER_NONE)
            break;
        tiers[hits++] = t;
    }
    s->st.lookups++;
    s->st.lookup_keys += l->n_keys;
    s->st.lookup_hits += hits;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__LookupResp lr = KVTIER__LOOKUP_RESP__INIT;
    lr.hits = (uint32_t)hits;
    lr.n_tiers = hits;
    lr.tiers = tiers;
    resp.result_case = KVTIER__RESPONSE__RESULT_LOOKUP;
    resp.lookup = &lr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

static void op_delete(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__DeleteReq *d)
{
    const struct kvt_ns *ns;
    int rc = resolve_ns(s, c, d->ns, &ns);
    if (rc) {
        reply_error(s, c, op, rc, NULL);
        return;
    }
    enum { DELETE_KEYS_MAX = 65536 };
    if (d->n_keys > DELETE_KEYS_MAX) {
        reply_error(s, c, op, KVT_E_TOOBIG, "more than 65536 keys in one Delete");
        return;
    }
    /* The statuses live with the tier manager: the answer may wait for the tombstones. */
    int32_t *status = kvt_tm_delete_begin(s, (uint32_t)d->n_keys);
    if (!status) {
        reply_error(s, c, op, KVT_E_BUSY, "too many Deletes waiting for the disk: retry");
        return;
    }
    for (size_t i = 0; i < d->n_keys; i++) {
        struct kvt_key key;
        uint32_t id =
            key_of(d->keys[i], &key) ? KVT_INDEX_NIL : kvt_index_find(&s->idx, ns->seed, &key);
        struct kvt_entry *e = id == KVT_INDEX_NIL ? NULL : kvt_index_at(&s->idx, id);
        if (!e || e->state != KVT_ENTRY_READY) {
            status[i] = e ? KVT_E_INUSE : KVT_E_NOTFOUND; /* being written: retry */
        } else {
            /* In use (being read or written): KVT_E_INUSE, the caller may retry. */
            status[i] = kvt_tm_delete(s, id);
            s->st.deletes += status[i] == 0;
        }
    }
    /* Answered once every tombstone it staged is durable, so a crash cannot undo it. */
    if (kvt_tm_delete_end(s, op, status, (uint32_t)d->n_keys))
        return;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__DeleteResp dr = KVTIER__DELETE_RESP__INIT;
    dr.n_status = d->n_keys;
    dr.status = status;
    resp.result_case = KVTIER__RESPONSE__RESULT_DEL;
    resp.del = &dr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

/* ---- Stats, Ping, Config ------------------------------------------------------------------ */

/* Room for every statistic the daemon has (about 130 with a disk tier today). A stat that does
 * not fit is a bug caught by the assertion in stat_add and by the stats tests, never a silent
 * truncation; STATS_RESERVE_BYTES likewise holds the whole packed answer (asserted below). */
#define STATS_MAX 512

/* One Stats answer: the registry snapshot, the messages that point into it, and the copies of
 * tier stats whose histograms the registry borrows. Static (in op_stats) because the loop is
 * single-threaded and packs the answer before anything else runs. */
struct stats_buf {
    struct kvt_stat_entry entries[STATS_MAX];
    struct kvt_stats_registry reg;
    Kvtier__Stat items[STATS_MAX];
    Kvtier__Stat *ptrs[STATS_MAX];
    struct kvt_tier_stats cpu;
    struct kvt_disk_stats disk;
    uint64_t le[KVT_HIST_BUCKETS - 1];
};

_Static_assert((int)KVTIER__STAT_TYPE__STAT_COUNTER == (int)KVT_STAT_COUNTER &&
                   (int)KVTIER__STAT_TYPE__STAT_GAUGE == (int)KVT_STAT_GAUGE &&
                   (int)KVTIER__STAT_TYPE__STAT_HISTOGRAM == (int)KVT_STAT_HISTOGRAM,
               "the protocol's StatType numbers are the registry's");

static void stat_add(struct stats_buf *b, const char *prefix, const char *name,
                     enum kvt_stat_type type, const char *unit, const char *help, uint64_t v)
{
    /* Full or duplicate: STATS_MAX too small or a name registered twice, both bugs. */
    int rc = kvt_stats_add(&b->reg, prefix, name, type, unit, help, v);
    KVT_ASSERT(rc == 0);
}

static void stat_add_hist(struct stats_buf *b, const char *prefix, const char *name,
                          const char *unit, const char *help, const struct kvt_hist *h)
{
    int rc = kvt_stats_add_hist(&b->reg, prefix, name, unit, help, h);
    KVT_ASSERT(rc == 0);
}

/* Fills the registry from every subsystem's X-macro list, plus the few levels read on demand. */
static void stats_fill(struct kvt_server *s, struct stats_buf *b)
{
#define KVT__DSTAT_ADD(name, type, unit, help) stat_add(b, "", #name, type, unit, help, s->st.name);
    KVT_DAEMON_STATS_DEF(KVT_STAT_FULL, KVT__DSTAT_ADD)
#undef KVT__DSTAT_ADD
#define KVT__DHIST_ADD(name, unit, help) stat_add_hist(b, "", #name, unit, help, &s->st.name);
    KVT_DAEMON_HISTS(KVT__DHIST_ADD)
#undef KVT__DHIST_ADD
    const enum kvt_stat_type g = KVT_STAT_GAUGE;
    stat_add(b, "", "uptime_ms", g, "ms", "time since the daemon started",
             kvt_now_ms() - s->start_ms);
    stat_add(b, "", "connections", g, "", "client connections open", s->n_conns);
    stat_add(b, "", "namespaces", g, "", "namespaces registered", s->ns.n);
    stat_add(b, "", "index_objects", g, "", "chunks in the index", s->idx.n);
    stat_add(b, "", "index_capacity", g, "", "chunks the index can hold (index.max_objects)",
             s->idx.cap);
    stat_add(b, "", "workers", g, "", "copy worker threads", s->n_workers);
    stat_add(b, "", "log_lines_dropped", KVT_STAT_COUNTER, "",
             "log lines dropped because the log ring was full", kvt_log_dropped());
    stat_add(b, "cpu.", "page_moves", KVT_STAT_COUNTER, "",
             "CPU tier pages moved from one size class to another", kvt_host_page_moves(s->host));
    kvt_host_tier_ops.stats(s->host, &b->cpu);
    /* Moves between tiers are the tier manager's: chunks written from DRAM to disk, and read
     * from disk into DRAM. */
    b->cpu.demotions = s->tm.st.demotions;
    b->cpu.promotions = s->tm.st.promotions;
#define KVT__TSTAT_ADD(name, type, unit, help)                                                     \
    stat_add(b, "cpu.", #name, type, unit, help, b->cpu.name);
    KVT_TIER_STATS_DEF(KVT_STAT_FULL, KVT__TSTAT_ADD)
#undef KVT__TSTAT_ADD
#define KVT__TMSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "tier.", #name, type, unit, help, s->tm.st.name);
    KVT_TM_STATS_DEF(KVT_STAT_FULL, KVT__TMSTAT_ADD)
#undef KVT__TMSTAT_ADD
    if (s->tm.disk) {
        kvt_disk_stats(s->tm.disk, &b->disk);
#define KVT__DTSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "disk.", #name, type, unit, help, b->disk.tier.name);
        KVT_TIER_STATS_DEF(KVT_STAT_FULL, KVT__DTSTAT_ADD)
#undef KVT__DTSTAT_ADD
#define KVT__DDSTAT_ADD(name, type, unit, help)                                                    \
    stat_add(b, "disk.", #name, type, unit, help, b->disk.name);
        KVT_DISK_STATS_DEF(KVT_STAT_FULL, KVT__DDSTAT_ADD)
#undef KVT__DDSTAT_ADD
#define KVT__DDHIST_ADD(name, unit, help)                                                          \
    stat_add_hist(b, "disk.", #name, unit, help, &b->disk.name);
        KVT_DISK_HISTS(KVT__DDHIST_ADD)
#undef KVT__DDHIST_ADD
    }
    for (int t = 0; t < KVT_ALLOC_TAG_COUNT; t++) {
        char name[48];
        snprintf(name, sizeof(name), "%s_bytes", kvt_alloc_tag_name((enum kvt_alloc_tag)t));
        for (char *p = name; *p; p++)
            *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
        stat_add(b, "mem.", name, g, "bytes", "bytes allocated under this tag",
                 kvt_alloc_bytes((enum kvt_alloc_tag)t));
    }
}

static void op_stats(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op)
{
    static struct stats_buf b;
    kvt_stats_init(&b.reg, b.entries, STATS_MAX);
    stats_fill(s, &b);
    for (unsigned i = 0; i + 1 < KVT_HIST_BUCKETS; i++)
        b.le[i] = kvt_hist_bound(i);
    for (size_t i = 0; i < b.reg.n; i++) {
        const struct kvt_stat_entry *e = &b.reg.entries[i];
        Kvtier__Stat *st = &b.items[i];
        kvtier__stat__init(st);
        st->name = (char *)e->name;
        st->value = e->value;
        st->type = (Kvtier__StatType)e->type;
        st->help = (char *)e->help;
        st->unit = (char *)e->unit;
        if (e->hist) {
            /* The histogram lives in the server or in b until the answer is packed. */
            st->n_bucket_le = KVT_HIST_BUCKETS - 1;
            st->bucket_le = b.le;
            st->n_bucket_counts = KVT_HIST_BUCKETS;
            st->bucket_counts = (uint64_t *)e->hist->counts;
            st->sum = e->hist->sum;
        }
        b.ptrs[i] = st;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__StatsResp sr = KVTIER__STATS_RESP__INIT;
    sr.n_stats = b.reg.n;
    sr.stats = b.ptrs;
    resp.result_case = KVTIER__RESPONSE__RESULT_STATS;
    resp.stats = &sr;
    /* Every stat, help included, fits the reservation with room for the frame length and the
     * request id kvt__server_respond adds; an answer past it would cost the connection. */
    KVT_ASSERT(kvtier__response__get_packed_size(&resp) + 64 <= STATS_RESERVE_BYTES);
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

static void op_ping(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                    const Kvtier__PingReq *p)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__PingResp pr = KVTIER__PING_RESP__INIT;
    pr.nonce = p->nonce;
    resp.result_case = KVTIER__RESPONSE__RESULT_PING;
    resp.ping = &pr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

static void config_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         const char *key)
{
    char val[512];
    int rc = kvt_cfg_get(&kvt_dconfig_table, s->cfg, key ? key : "", val, sizeof(val));
    if (rc) {
        reply_error(s, c, op, rc, "unknown config key");
        return;
    }
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__ConfigResp cr = KVTIER__CONFIG_RESP__INIT;
    cr.key = (char *)key;
    cr.value = val;
    resp.result_case = KVTIER__RESPONSE__RESULT_CONFIG;
    resp.config = &cr;
    kvt__server_respond(s, c, op, &resp, 0, NULL);
}

static void op_config_set(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                          const Kvtier__ConfigSetReq *r)
{
    char why[256];
    const char *key = r->key ? r->key : "";
    const char *value = r->value ? r->value : "";
    const struct kvt_cfg_entry *e = kvt_cfg_find(&kvt_dconfig_table, key);
    if (e && (e->flags & KVT_CFG_RUNTIME) && (e->flags & KVT_CFG_ADMIN) && !c->admin) {
        s->st.config_denied++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "ops", "config set %s refused: uid=%u is not an admin",
                            key, (unsigned)c->uid);
        snprintf(why, sizeof(why), "'%s' can only be changed by an admin uid (admin_uids)", key);
        reply_error(s, c, op, KVT_E_NOTADMIN, why);
        return;
    }
    /* Validate cross-key constraints on a copy, then commit. */
    struct kvt_dconfig next = *s->cfg;
    int rc = kvt_cfg_set(&kvt_dconfig_table, &next, key, value, 1, why, sizeof(why));
    if (!rc)
        rc = kvt_dconfig_check(&next, why, sizeof(why));
    if (rc) {
        reply_error(s, c, op, rc, why);
        return;
    }
    *s->cfg = next;
    kvt__server_config_applied(s);
    KVT_INFO("ops", "config set %s = %s by uid=%u", key, value, (unsigned)c->uid);
    config_reply(s, c, op, key);
}

void kvt__server_config_applied(struct kvt_server *s)
{
    kvt_log_set_level(kvt_log_level_parse(s->cfg->log_level));
    kvt_tm_config_changed(s);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int kvt__ops_dispatch(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__Request *req)
{
    switch (req->op_case) {
    case KVTIER__REQUEST__OP_HELLO:
        op_hello(s, c, op, req->hello);
        return 0;
    case KVTIER__REQUEST__OP_REGISTER_NS:
        op_register(s, c, op, req->register_ns);
        return 0;
    case KVTIER__REQUEST__OP_PUT:
        op_put(s, c, op, req->put);
        return 0;
    case KVTIER__REQUEST__OP_GET:
        op_get(s, c, op, req->get);
        return 0;
    case KVTIER__REQUEST__OP_LOOKUP:
        op_lookup(s, c, op, req->lookup);
        return 0;
    case KVTIER__REQUEST__OP_DEL:
        op_delete(s, c, op, req->del);
        return 0;
    case KVTIER__REQUEST__OP_STATS:
        op_stats(s, c, op);
        return 0;
    case KVTIER__REQUEST__OP_PING:
        op_ping(s, c, op, req->ping);
        return 0;
    case KVTIER__REQUEST__OP_CONFIG_GET:
        config_reply(s, c, op, req->config_get->key);
        return 0;
    case KVTIER__REQUEST__OP_CONFIG_SET:
        op_config_set(s, c, op, req->config_set);
        return 0;
    default:
        s->st.unknown_ops++;
        reply_error(s, c, op, KVT_E_BADOP, "unknown or missing operation");
        return 0;
    }
}

/* ---- completions the tier manager reports ------------------------------------------------- */

/* Each answers its op and queues the connection to resume before the loop sleeps. */
static void tm_put_done(void *arg, struct kvt_op *op, enum kvt_tier_id tier)
{
    struct kvt_conn *c = op->conn;
    kvt__ops_put_reply(arg, op, tier);
    kvt__server_after_ops(arg, c);
}

static void tm_get_failed(void *arg, struct kvt_op *op, int status)
{
    struct kvt_conn *c = op->conn;
    kvt__ops_get_fail(arg, op, status);
    kvt__server_after_ops(arg, c);
}

static void tm_get_in_dram(void *arg, struct kvt_op *op)
{
    struct kvt_conn *c = op->conn;
    kvt__ops_get_deliver(arg, op);
    kvt__server_after_ops(arg, c);
}

static void tm_get_read_direct(void *arg, struct kvt_op *op, const struct kvt_entry *e)
{
    struct kvt_conn *c = op->conn;
    kvt__ops_get_reply_entry(arg, op, e);
    kvt__server_after_ops(arg, c);
}

static void tm_delete_done(void *arg, struct kvt_op *op, const int32_t *status, uint32_t n)
{
    struct kvt_conn *c = op->conn;
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    Kvtier__DeleteResp dr = KVTIER__DELETE_RESP__INIT;
    dr.n_status = n;
    dr.status = (int32_t *)status;
    resp.result_case = KVTIER__RESPONSE__RESULT_DEL;
    resp.del = &dr;
    kvt__server_respond(arg, c, op, &resp, 0, NULL);
    kvt__server_after_ops(arg, c);
}

const struct kvt_tm_callbacks kvt__ops_tm_callbacks = {
    .put_done = tm_put_done,
    .get_failed = tm_get_failed,
    .get_in_dram = tm_get_in_dram,
    .get_read_direct = tm_get_read_direct,
    .delete_done = tm_delete_done,
};
