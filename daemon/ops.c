/*
 * Request dispatch: the output each request reserves before it is handled, and the switch that
 * hands it to its handler. The handlers live by family in ops_session.c, ops_data.c, ops_keys.c,
 * ops_ctx.c and ops_admin.c. Each validates everything it was sent (namespace and tenant, geometry,
 * offsets and lengths inside the connection's arena) before it changes anything, so a bad request
 * gets its error and leaves the daemon exactly as it was.
 */
#include "daemon/ops.h"

#define BASE_RESERVE_BYTES KVT_ERROR_RESERVE_BYTES
#define KEY_STATUS_BYTES 12

size_t kvt__ops_reserve(const struct kvt_server *s, const Kvtier__Request *req)
{
    switch (req->op_case) {
    case KVTIER__REQUEST__OP_GET:
        return BASE_RESERVE_BYTES + (req->get->want_inline ? s->cfg->inline_max_bytes : 0);
    case KVTIER__REQUEST__OP_STATS:
        return STATS_RESERVE_BYTES;
    case KVTIER__REQUEST__OP_CONFIG_LIST:
        return CONFIG_LIST_RESERVE_BYTES;
    case KVTIER__REQUEST__OP_LOOKUP:
        return BASE_RESERVE_BYTES + req->lookup->n_keys * KEY_STATUS_BYTES;
    case KVTIER__REQUEST__OP_DEL:
        return BASE_RESERVE_BYTES + req->del->n_keys * KEY_STATUS_BYTES;
    case KVTIER__REQUEST__OP_SELECT:
        return BASE_RESERVE_BYTES + kvt__ops_select_reserve(s, req->select);
    case KVTIER__REQUEST__OP_CHUNK_LOOKUP:
        return BASE_RESERVE_BYTES + kvt__ops_chunk_lookup_reserve(req->chunk_lookup);
    default:
        return BASE_RESERVE_BYTES;
    }
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int kvt__ops_dispatch(struct kvt_server *s, struct kvt_conn *c, struct kvt_op *op,
                      const Kvtier__Request *req)
{
    switch (req->op_case) {
    case KVTIER__REQUEST__OP_HELLO:
        kvt__ops_hello(s, c, op, req->hello);
        return 0;
    case KVTIER__REQUEST__OP_REGISTER_NS:
        kvt__ops_register(s, c, op, req->register_ns);
        return 0;
    case KVTIER__REQUEST__OP_PUT:
        kvt__ops_put(s, c, op, req->put);
        return 0;
    case KVTIER__REQUEST__OP_GET:
        kvt__ops_get(s, c, op, req->get);
        return 0;
    case KVTIER__REQUEST__OP_GET_RANGE:
        kvt__ops_get_range(s, c, op, req->get_range);
        return 0;
    case KVTIER__REQUEST__OP_LOOKUP:
        kvt__ops_lookup(s, c, op, req->lookup);
        return 0;
    case KVTIER__REQUEST__OP_DEL:
        kvt__ops_delete(s, c, op, req->del);
        return 0;
    case KVTIER__REQUEST__OP_OPEN_CONTEXT:
        kvt__ops_open_context(s, c, op, req->open_context);
        return 0;
    case KVTIER__REQUEST__OP_APPEND_CHUNKS:
        kvt__ops_append_chunks(s, c, op, req->append_chunks);
        return 0;
    case KVTIER__REQUEST__OP_CLOSE_CONTEXT:
        kvt__ops_close_context(s, c, op, req->close_context);
        return 0;
    case KVTIER__REQUEST__OP_SELECT:
        kvt__ops_select(s, c, op, req->select);
        return 0;
    case KVTIER__REQUEST__OP_RELEASE:
        kvt__ops_release(s, c, op, req->release);
        return 0;
    case KVTIER__REQUEST__OP_VERSION_SET:
        kvt__ops_version_set(s, c, op, req->version_set);
        return 0;
    case KVTIER__REQUEST__OP_CHUNK_LOOKUP:
        kvt__ops_chunk_lookup(s, c, op, req->chunk_lookup);
        return 0;
    case KVTIER__REQUEST__OP_STATS:
        kvt__ops_stats(s, c, op);
        return 0;
    case KVTIER__REQUEST__OP_PING:
        kvt__ops_ping(s, c, op, req->ping);
        return 0;
    case KVTIER__REQUEST__OP_CONFIG_GET:
        kvt__ops_config_reply(s, c, op, req->config_get->key);
        return 0;
    case KVTIER__REQUEST__OP_CONFIG_SET:
        kvt__ops_config_set(s, c, op, req->config_set);
        return 0;
    case KVTIER__REQUEST__OP_CONFIG_LIST:
        kvt__ops_config_list(s, c, op);
        return 0;
    default:
        s->st.unknown_ops++;
        reply_error(s, c, op, KVT_E_BADOP, "unknown or missing operation");
        return 0;
    }
}
