/*
 * What the request handler files share (daemon/ops*.c, and nothing else): the reply and lookup
 * helpers every handler starts with, the handlers the dispatch in ops.c calls, and the Stats
 * reservation that ops.c reserves and ops_admin.c checks its answer against. The handlers are
 * split by family: ops_session.c (Hello, RegisterNamespace), ops_data.c (Put, Get, GetRange,
 * copy completions, the tier manager's callbacks), ops_meta.c (its metadata callbacks: span
 * abstracts beside the chunks' disk copies), ops_keys.c (Lookup, Delete), ops_ctx.c (contexts and
 * Select) and ops_admin.c (Stats, Ping, Config).
 */
#ifndef KVT_DAEMON_OPS_H
#define KVT_DAEMON_OPS_H

#include "daemon/server.h"

/* Output reserved for a Stats answer: every statistic with its help text (asserted in
 * kvt__ops_stats). */
#define STATS_RESERVE_BYTES (48 * 1024)
/* A Config list answer: every key with its value, default and help (about 10K today). */
#define CONFIG_LIST_RESERVE_BYTES (32 * 1024)

static inline void reply_error(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                               int status, const char *detail)
{
    Kvtier__Response resp = KVTIER__RESPONSE__INIT;
    kvt__server_respond(s, c, op, &resp, status, detail);
}

/* Resolves the namespace of a request and counts the rejection kinds. */
static inline int resolve_ns(struct kvt_server *s, struct kvt_conn *c, uint32_t id,
                             const struct kvt_ns **ns)
{
    int rc = kvt_ns_resolve(&s->ns, id, c->tenant, ns);
    if (rc == KVT_E_NONS)
        s->st.unknown_namespace++;
    else if (rc == KVT_E_ACCESS)
        s->st.access_denied++;
    return rc;
}

static inline int key_of(const Kvtier__Key *k, struct kvt_key *out)
{
    if (!k)
        return KVT_E_INVAL;
    out->lo = k->lo;
    out->hi = k->hi;
    return 0;
}

/* The handlers kvt__ops_dispatch calls, one per operation. Each validates its request and either
 * answers at once or keeps op in flight (a copy or the disk), answering when that completes. */

/* ops_session.c */
void kvt__ops_hello(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                    const Kvtier__HelloReq *h);
void kvt__ops_register(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                       const Kvtier__RegisterReq *r);
/* ops_data.c */
void kvt__ops_put(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                  const Kvtier__PutReq *p);
void kvt__ops_get(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                  const Kvtier__GetReq *g);
/* Rows of one layer of a chunk, into the arena (never inline): from DRAM through the guarded
 * copy, or from disk through kvt_tm_get_range_from_disk. Answered like a Get. */
void kvt__ops_get_range(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                        const Kvtier__GetRangeReq *g);
/* ops_keys.c */
void kvt__ops_lookup(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__LookupReq *l);
void kvt__ops_delete(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__DeleteReq *d);
/* ops_ctx.c */
void kvt__ops_open_context(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const Kvtier__OpenContextReq *r);
void kvt__ops_append_chunks(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                            const Kvtier__AppendChunksReq *r);
void kvt__ops_version_set(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                          const Kvtier__VersionSetReq *r);
void kvt__ops_chunk_lookup(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const Kvtier__ChunkLookupReq *r);
/* Output a ChunkLookup answer needs, at most. */
size_t kvt__ops_chunk_lookup_reserve(const Kvtier__ChunkLookupReq *r);
void kvt__ops_release(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__ReleaseReq *r);
void kvt__ops_close_context(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                            const Kvtier__CloseContextReq *r);
void kvt__ops_select(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                     const Kvtier__SelectReq *r);
/* Output a Select answer may need beyond the base: its context's spans in that layer. */
size_t kvt__ops_select_reserve(const struct kvt_server *s, const Kvtier__SelectReq *r);
/* ops_admin.c */
void kvt__ops_stats(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op);
void kvt__ops_ping(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                   const Kvtier__PingReq *p);
/* Config get: answers with the value of key (NULL reads as ""). */
void kvt__ops_config_reply(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                           const char *key);
void kvt__ops_config_set(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                         const Kvtier__ConfigSetReq *r);
/* Config list: every key of the table with its value, default, help and flags. */
void kvt__ops_config_list(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op);

#endif
