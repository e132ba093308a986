/*
 * Span abstracts beside the chunks' disk copies (docs/sparse.md, "Abstracts across restarts"):
 * the tier manager's metadata callbacks, which hand it a chunk's abstract in its serialized form
 * (daemon/abstract_io.h) when the chunk is written to a lower tier and take the abstracts back at
 * start, read from the disk without its payloads, into the abstract store. The tier manager and
 * the tiers see opaque bytes only.
 */
#include <string.h>

#include "common/log.h"
#include "daemon/abstract_io.h"
#include "daemon/ops.h"

/* Worker, during the lower tier's fill: the abstract is immutable and pinned by meta_pin. */
static void abs_meta_write(void *ctx, void *dst, size_t len)
{
    const struct kvt_abs *a = ctx;
    (void)len; /* kvt_abs_io_bytes(a), as meta_pin said */
    kvt_abs_io_write(a, dst);
}

int kvt__ops_meta_pin(void *arg, uint32_t id, struct kvt_tm_meta *out)
{
    struct kvt_server *s = arg;
    struct kvt_abs *a = kvt_abs_store_get(&s->abs, id);
    size_t bytes = a ? kvt_abs_io_bytes(a) : 0;
    if (!bytes)
        return -1;
    kvt_abs_ref(a); /* the store may drop it while the fill reads it */
    out->len = (uint32_t)bytes;
    out->write = abs_meta_write;
    out->ctx = a;
    return 0;
}

void kvt__ops_meta_release(void *arg, struct kvt_tm_meta *m)
{
    (void)arg;
    kvt_abs_unref(m->ctx);
}

/* The reads in flight count against abstract.bytes_max before their abstracts are kept, so that
 * a full store stops the reading instead of having it read what it would drop. */
int kvt__ops_meta_want(void *arg, uint32_t id, uint32_t want_len)
{
    struct kvt_server *s = arg;
    if (kvt_abs_store_get(&s->abs, id))
        return 0; /* read from another tier already */
    if (!kvt_abs_store_room(&s->abs, s->abs_restore_pending + want_len)) {
        s->abs.dropped++;
        return 0;
    }
    s->abs_restore_pending += want_len;
    return 1;
}

/* An abstract read back must describe its chunk: as many tokens, and the chunk's bytes exactly
 * (fp16 keys and values of its layers and heads), or Select would score it with another shape. */
static int abs_fits(const struct kvt_abs *a, const struct kvt_entry *e)
{
    const struct kvt_abs_geom *g = &a->g;
    return g->n_tokens == e->n_tokens &&
           (uint64_t)g->n_layers * g->n_tokens * 2u * g->n_heads * g->head_dim * 2u == e->length;
}

void kvt__ops_meta_loaded(void *arg, uint32_t id, uint32_t want_len, const void *bytes, size_t len,
                          int status)
{
    struct kvt_server *s = arg;
    s->abs_restore_pending -= want_len;
    if (status == KVT_E_BUSY)
        return; /* asked for again */
    struct kvt_abs *a = NULL;
    int rc = status ? status : kvt_abs_io_read(bytes, len, &a);
    if (rc == 0 && !abs_fits(a, kvt_index_at(&s->idx, id))) {
        kvt_abs_unref(a);
        rc = KVT_E_CORRUPT;
    }
    if (rc) {
        /* The chunk is served all the same; Select keeps it whole. */
        s->st.abstracts_restore_failed++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "abstract",
                            "span abstract of a chunk on disk not restored: %s", kvt_strerror(rc));
        return;
    }
    if (kvt_abs_store_keep(&s->abs, id, a))
        s->st.abstracts_restored++;
}

void kvt__server_abstracts_restore(struct kvt_server *s)
{
    struct kvt_tm_stats st;
    uint64_t dropped = s->abs.dropped;
    int rc = kvt_tm_load_meta(s->tm);
    s->abs_restore_pending = 0;
    kvt_tm_stats(s->tm, &st);
    if (rc)
        KVT_WARN("abstract", "restoring span abstracts stopped early: %s", kvt_strerror(rc));
    if (st.meta_loaded || st.meta_load_failures || s->st.abstracts_restore_failed)
        KVT_INFO("abstract",
                 "span abstracts restored=%llu failed=%llu not_kept=%llu bytes=%llu ms=%llu",
                 (unsigned long long)s->st.abstracts_restored,
                 (unsigned long long)s->st.abstracts_restore_failed,
                 (unsigned long long)(s->abs.dropped - dropped),
                 (unsigned long long)st.meta_load_bytes, (unsigned long long)st.meta_load_ms);
}
