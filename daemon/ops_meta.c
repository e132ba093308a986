/*
 * Span abstracts beside the chunks' disk copies (docs/sparse.md, "Abstracts across restarts"):
 * the tier manager's metadata callbacks, which hand it a chunk's abstract in its serialized form
 * (daemon/abstract_io.h) when the chunk is written to a lower tier and take the abstracts back at
 * start, read from the disk without its payloads, into the abstract store. The tier manager and
 * the tiers see opaque bytes only.
 *
 * And reuse version info beside the disk copies (docs/reuse.md, "Across restarts"): the version
 * log's records, written when a copy lands or a record is set on a chunk already copied, and
 * read back at start, also without a payload read.
 */
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "daemon/abstract_io.h"
#include "daemon/ops.h"
#include "daemon/reuse.h"
#include "daemon/version_io.h"

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

/* ---- reuse versions across restarts (docs/reuse.md) -------------------------------------------
 * Every version record of a chunk with a durable disk copy is in the version log, stamped with
 * that copy's sequence number: written when the copy lands (kvt__ops_copied) or, for a copy that
 * already landed, when the record is set. A restart keeps the records whose stamp is still the
 * stamp of the chunk's copy, so deleted, evicted and rewritten chunks never get one back. */

/* The disk copy's stamp of entry e at tier position t, or 0 when it has no durable one. */
static uint64_t copy_stamp(const struct kvt_server *s, const struct kvt_entry *e)
{
    uint32_t t = s->vlog_tier;
    return t && e->at[t] == KVT_AT_READY ? e->loc[t] : 0;
}

/* The log reached half of reuse.log_bytes_max: a snapshot of the records still live (each
 * version logged for its chunk's current copy) becomes the new log. Serializing is CPU work on
 * the loop (bounded by reuse.bytes_max); the file is written by a worker. */
static void version_log_compact(void *arg)
{
    struct kvt_server *s = arg;
    size_t bytes = 0;
    for (uint32_t id = 0; id < s->versions.cap; id++) {
        const struct kvt_version *v = kvt_version_store_get(&s->versions, id);
        if (v && v->logged_stamp && v->logged_stamp == copy_stamp(s, kvt_index_at(&s->idx, id)))
            bytes += kvt_version_log_record_bytes(v);
    }
    unsigned char *snap = kvt_malloc(KVT_ALLOC_INDEX, bytes ? bytes : 1);
    if (!snap)
        return; /* tried again at the next append */
    size_t at = 0;
    for (uint32_t id = 0; id < s->versions.cap; id++) {
        const struct kvt_version *v = kvt_version_store_get(&s->versions, id);
        const struct kvt_entry *e = kvt_index_at(&s->idx, id);
        if (!v || !v->logged_stamp || v->logged_stamp != copy_stamp(s, e))
            continue;
        kvt_version_log_record_write(v, &e->id, v->logged_stamp, snap + at);
        at += kvt_version_log_record_bytes(v);
    }
    kvt_vlog_compact(&s->vlog, snap, at);
}

static void version_log(struct kvt_server *s, uint32_t id)
{
    struct kvt_version *v = kvt_version_store_get(&s->versions, id);
    const struct kvt_entry *e = kvt_index_at(&s->idx, id);
    uint64_t stamp = v ? copy_stamp(s, e) : 0;
    if (!stamp || v->logged_stamp == stamp)
        return;
    if (kvt_vlog_compact_due(&s->vlog))
        version_log_compact(s);
    if (kvt_vlog_append(&s->vlog, v, &e->id, stamp) == 0) {
        v->logged_stamp = stamp;
        s->st.version_log_appends++;
    } else {
        s->st.version_log_dropped++;
    }
}

void kvt__ops_copied(void *arg, uint32_t id, uint32_t tier)
{
    struct kvt_server *s = arg;
    if (tier == s->vlog_tier)
        version_log(s, id);
}

void kvt__server_version_to_disk(struct kvt_server *s, uint32_t id)
{
    /* A copy being written now lands without this record: kvt__ops_copied logs it then. */
    version_log(s, id);
}

/* A record read back must fit its chunk: as many tokens, and a length that its layers divide
 * into rows of its tokens (the namespace is not known yet: VersionSet checked the rest). */
static int version_fits(const struct kvt_version *v, const struct kvt_entry *e)
{
    uint64_t rows = (uint64_t)v->layers * v->n_tokens;
    return v->n_tokens == e->n_tokens && rows && e->length % rows == 0;
}

static void replay_one(void *arg, const struct kvt_obj_id *oid, uint64_t stamp, const void *form,
                       size_t form_len)
{
    struct kvt_server *s = arg;
    uint32_t id = kvt_index_find(&s->idx, oid);
    if (id == KVT_INDEX_NIL || copy_stamp(s, kvt_index_at(&s->idx, id)) != stamp) {
        s->st.version_records_stale++; /* its copy is gone: the record goes with the rewrite */
        return;
    }
    struct kvt_version *v = NULL;
    int rc = kvt_version_io_read(form, form_len, &v);
    if (rc == 0 && !version_fits(v, kvt_index_at(&s->idx, id))) {
        kvt_free(KVT_ALLOC_INDEX, v);
        rc = KVT_E_CORRUPT;
    }
    if (rc) {
        if (rc == KVT_E_CORRUPT)
            s->st.version_records_corrupt++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "reuse", "version record of a chunk on disk refused: %s",
                            kvt_strerror(rc));
        return;
    }
    v->logged_stamp = stamp;
    /* A later record of the same copy replaces an earlier one, as the VersionSet did. */
    if (kvt_version_store_keep(&s->versions, id, v))
        s->st.versions_not_restored++;
}

static void prior_add(struct kvt_server *s, uint64_t seed, double cci, double passage_mass)
{
    uint32_t i = 0;
    while (i < s->n_prior_pending && s->prior_pending[i].seed != seed)
        i++;
    if (i == s->n_prior_pending) {
        if (i == KVT_PRIOR_PENDING_MAX)
            return; /* more namespaces than that: their priors start afresh */
        s->prior_pending[s->n_prior_pending++] = (struct kvt_prior_pending){.seed = seed};
    }
    s->prior_pending[i].cci_sum += cci;
    s->prior_pending[i].passage_mass_sum += passage_mass;
    s->prior_pending[i].n++;
}

void kvt__server_prior_apply(struct kvt_server *s, const struct kvt_ns *ns)
{
    for (uint32_t i = 0; i < s->n_prior_pending; i++) {
        struct kvt_prior_pending *p = &s->prior_pending[i];
        if (p->seed != ns->seed)
            continue;
        kvt_ns_add_seen(&s->ns, ns, p->cci_sum, p->passage_mass_sum, p->n);
        *p = s->prior_pending[--s->n_prior_pending];
        return;
    }
}

void kvt__server_versions_restore(struct kvt_server *s)
{
    const struct kvt_dconfig *cfg = s->cfg;
    uint64_t t0 = kvt_now_ms();
    s->vlog_tier = 0;
    for (uint32_t i = 1; kvt_tm_tier(s->tm, i); i++)
        if (kvt_tm_tier(s->tm, i)->ops->caps & KVT_TIER_CAP_PERSISTENT) {
            s->vlog_tier = i;
            break;
        }
    if (!s->vlog_tier)
        return; /* nothing survives a restart: the log (of another run's disk) is left alone */
    struct kvt_vlog_config vc = {.dir = cfg->data_dir,
                                 .workers = s->workers,
                                 .buffer_bytes = KVT_VERSION_LOG_BUFFER_BYTES,
                                 .bytes_max = cfg->reuse_log_bytes_max,
                                 .snapshot = version_log_compact,
                                 .snapshot_arg = s};
    int rc = kvt_vlog_open(&s->vlog, &vc);
    if (rc)
        KVT_WARN("reuse", "version log %s not read: %s", s->vlog.path, kvt_strerror(rc));
    kvt_vlog_replay(&s->vlog, replay_one, s);
    s->st.version_records_corrupt += s->vlog.corrupt;

    /* Compaction: only the records just restored are written again. */
    if (kvt_vlog_rewrite_begin(&s->vlog) == 0) {
        for (uint32_t id = 0; id < s->versions.cap; id++) {
            const struct kvt_version *v = kvt_version_store_get(&s->versions, id);
            if (!v)
                continue;
            int r =
                kvt_vlog_rewrite_add(&s->vlog, v, &kvt_index_at(&s->idx, id)->id, v->logged_stamp);
            if (r && r != KVT_E_TOOBIG) /* TOOBIG: never logged; it stays in DRAM */
                break;
        }
        kvt_vlog_rewrite_end(&s->vlog);
    }
    for (uint32_t id = 0; id < s->versions.cap; id++) {
        const struct kvt_version *v = kvt_version_store_get(&s->versions, id);
        double cci, passage_mass;
        if (!v)
            continue;
        s->st.versions_restored++;
        if (kvt_reuse_observe(v, &cci, &passage_mass))
            prior_add(s, kvt_index_at(&s->idx, id)->id.ns_seed, cci, passage_mass);
    }
    if (s->vlog.replayed || s->st.version_records_corrupt)
        KVT_INFO("reuse",
                 "versions restored=%llu corrupt=%llu stale=%llu not_kept=%llu log_bytes=%llu "
                 "ms=%llu",
                 (unsigned long long)s->st.versions_restored,
                 (unsigned long long)s->st.version_records_corrupt,
                 (unsigned long long)s->st.version_records_stale,
                 (unsigned long long)s->st.versions_not_restored,
                 (unsigned long long)s->vlog.file_bytes, (unsigned long long)(kvt_now_ms() - t0));
}
