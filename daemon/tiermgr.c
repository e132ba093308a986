/*
 * Tier manager: demotion (write-back and write-through), promotion, eviction decisions, recovery
 * at start and the shutdown flush. Runs on the loop thread; only kvt_disk_encode runs on workers,
 * each with its own codec (thread-local, freed when the worker exits).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/log.h"
#include "common/time.h"
#include "daemon/server.h"
#include "daemon/tiermgr.h"

#define COLDEST_SCAN 64
#define WRITEBACK_SCAN 1024 /* DRAM chunks the write-back looks at per loop iteration */
#define FLUSH_SCAN 4096
#define CLOCK_SCAN 4096 /* index entries the disk eviction looks at per loop iteration */
#define HITS_MAX 0xffff

/* One write to disk in progress: encoding on a worker, then I/O. */
struct kvt_demote {
    struct kvt_job job; /* first: a reaped job is its demote */
    struct kvt_demote *next_free;
    struct kvt_disk_wslot ws;
    const struct kvt_codec_config *codec_cfg;
    struct kvt_op *op; /* write-through Put waiting for durability, or NULL */
    uint32_t entry;
    uint32_t gen;
    uint32_t elem_bytes;
};

/* ---- worker-side encoding ----------------------------------------------------------------- */

static pthread_key_t codec_key;
static pthread_once_t codec_key_once = PTHREAD_ONCE_INIT;

static void codec_key_free(void *p)
{
    kvt_codec_destroy(p);
}

static void codec_key_make(void)
{
    pthread_key_create(&codec_key, codec_key_free);
}

static void encode_job(struct kvt_job *job)
{
    struct kvt_demote *d = (struct kvt_demote *)job;
    pthread_once(&codec_key_once, codec_key_make);
    struct kvt_codec *codec = pthread_getspecific(codec_key);
    if (!codec) {
        if (kvt_codec_create(d->codec_cfg, &codec)) {
            job->res = KVT_E_NOMEM;
            return;
        }
        pthread_setspecific(codec_key, codec);
    }
    job->res = kvt_disk_encode(codec, &d->ws, job->src, d->elem_bytes);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static struct kvt_obj_id obj_id(const struct kvt_entry *e)
{
    return e->id;
}

static int admitted(const struct kvt_server *s, const struct kvt_entry *e)
{
    if (s->tm.write_through)
        return 1;
    return strcmp(s->cfg->disk_admission, "second-access") != 0 || e->hits > 0;
}

static int disk_usable(const struct kvt_server *s, const struct kvt_entry *e)
{
    return s->tm.disk && e->length <= s->cfg->disk_object_bytes_max;
}

/* An entry left with no copy anywhere leaves the index. */
static void forget_if_homeless(struct kvt_server *s, uint32_t id)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    if (e->state == KVT_ENTRY_READY && !e->in_host && e->disk != KVT_ENTRY_DISK_DURABLE &&
        e->refs == 0)
        kvt_index_remove(&s->idx, id);
}

enum kvt_tier_id kvt_tm_tier_of(const struct kvt_entry *e)
{
    if (e->state != KVT_ENTRY_READY)
        return KVT_TIER_NONE;
    if (e->in_host)
        return KVT_TIER_CPU;
    /* A chunk let go of while its write is in flight is served once the write lands. */
    if (e->disk == KVT_ENTRY_DISK_DURABLE || e->disk == KVT_ENTRY_DISK_WRITING)
        return KVT_TIER_DISK;
    return KVT_TIER_NONE;
}

/* ---- demotion ----------------------------------------------------------------------------- */

static void demote_finish(struct kvt_server *s, struct kvt_demote *d, int durable)
{
    struct kvt_op *op = d->op;
    d->op = NULL;
    d->next_free = s->tm.free_demotes;
    s->tm.free_demotes = d;
    s->tm.demotes_inflight--;
    if (op && !s->destroying)
        s->tm.cb->put_done(s->tm.cb_arg, op, durable ? KVT_TIER_DISK : KVT_TIER_CPU);
}

static void demote_durable(void *arg, int res)
{
    struct kvt_demote *d = arg;
    struct kvt_server *s = d->job.ctx;
    struct kvt_entry *e = kvt_index_at(&s->idx, d->entry);
    if (e->state == KVT_ENTRY_FREE || e->gen != d->gen) {
        /* Deleted (or dropped) while it was being written: the disk copy must not outlive it. */
        struct kvt_obj_id id = d->ws.id;
        if (res == 0 && kvt_disk_remove(s->tm.disk, &id) == 0)
            s->tm.st.orphans_removed++;
        demote_finish(s, d, 0);
        return;
    }
    if (res == 0) {
        e->disk = KVT_ENTRY_DISK_DURABLE;
        e->referenced = 1;
        s->tm.st.demotions++;
    } else {
        e->disk = KVT_ENTRY_DISK_NONE;
        s->tm.st.demotion_failures++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "write to disk failed: %s", kvt_strerror(res));
        if (!e->in_host)
            s->tm.st.dropped_dirty++; /* let go of under memory pressure while being written */
        forget_if_homeless(s, d->entry);
    }
    demote_finish(s, d, res == 0);
}

static void demote_encoded(struct kvt_job *job)
{
    struct kvt_demote *d = (struct kvt_demote *)job;
    struct kvt_server *s = job->ctx;
    struct kvt_entry *e = kvt_index_at(&s->idx, d->entry);
    e->refs--;
    s->tm.encoding_bytes -= d->job.len;
    int rc = job->res;
    if (s->destroying) {
        kvt_disk_write_cancel(s->tm.disk, &d->ws);
        demote_finish(s, d, 0);
        return;
    }
    if (rc == 0)
        rc = kvt_disk_write_submit(s->tm.disk, &d->ws, demote_durable, d);
    else
        kvt_disk_write_cancel(s->tm.disk, &d->ws);
    if (rc) {
        e->disk = KVT_ENTRY_DISK_NONE;
        s->tm.st.demotion_failures++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "cannot write chunk to disk: %s",
                            kvt_strerror(rc));
        demote_finish(s, d, 0);
    }
}

/* The shape of entry e's chunk, from the namespace that stored it, so that its disk object can be
 * read by layer and token range; NULL when unknown (a chunk recovered from disk and not stored
 * again since, or a namespace reclaimed meanwhile): the object is then one opaque layer. */
static const struct kvt_disk_geom *entry_geom(const struct kvt_server *s, const struct kvt_entry *e,
                                              struct kvt_disk_geom *g)
{
    if (!e->owner || e->owner > s->ns.used)
        return NULL;
    const struct kvt_ns *ns = &s->ns.v[e->owner - 1];
    if (!ns->id || ns->seed != e->id.ns_seed ||
        (uint64_t)e->n_tokens * ns->bytes_per_token != e->length)
        return NULL;
    memset(g, 0, sizeof(*g));
    g->g.n_layers = ns->layers;
    g->g.n_kv_heads = ns->kv_heads;
    g->g.head_dim = ns->head_dim;
    g->g.elem_bytes = (uint16_t)kvt_dtype_size((enum kvt_dtype)ns->dtype);
    g->g.dtype = (uint16_t)ns->dtype;
    return g;
}

/* Starts writing entry id to disk. 0 when started (op, if any, is answered when durable),
 * KVT_E_EXISTS when the disk already holds it, KVT_E_BUSY when no staging buffer is free. */
static int demote_start(struct kvt_server *s, uint32_t id, struct kvt_op *op)
{
    struct kvt_tiermgr *tm = &s->tm;
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    struct kvt_demote *d = tm->free_demotes;
    if (!d)
        return KVT_E_BUSY;
    /* Encoders pin their DRAM slots: never more than a quarter of the CPU tier at once, so
     * Puts always find memory to evict. */
    if (tm->encoding_bytes && tm->encoding_bytes + e->length > kvt_host_arena_bytes(s->host) / 4)
        return KVT_E_BUSY;
    struct kvt_obj_id oid = obj_id(e);
    struct kvt_disk_geom geom;
    int rc = kvt_disk_write_reserve_geom(tm->disk, &oid, e->length, e->n_tokens,
                                         entry_geom(s, e, &geom), &d->ws);
    if (rc == KVT_E_EXISTS) {
        e->disk = KVT_ENTRY_DISK_DURABLE;
        return rc;
    }
    if (rc)
        return rc;
    tm->free_demotes = d->next_free;
    tm->demotes_inflight++;
    d->op = op;
    d->entry = id;
    d->gen = e->gen;
    d->elem_bytes = e->elem_bytes ? e->elem_bytes : 1;
    e->refs++; /* the slot is read by the encoder: it must not be evicted or freed */
    tm->encoding_bytes += e->length;
    e->disk = KVT_ENTRY_DISK_WRITING;
    memset(&d->job, 0, sizeof(d->job));
    d->job.fn = encode_job;
    d->job.done = demote_encoded;
    d->job.ctx = s;
    d->job.src = kvt_host_ptr(s->host, e->host_off);
    d->job.len = e->length;
    kvt_workers_submit(tm->workers, &d->job);
    return 0;
}

/* Whether entry id is a chunk in DRAM with no disk copy that the disk should get. */
static int wants_demotion(const struct kvt_server *s, uint32_t id)
{
    const struct kvt_entry *e = kvt_index_at(&s->idx, id);
    return e->state == KVT_ENTRY_READY && e->in_host && e->disk == KVT_ENTRY_DISK_NONE &&
           disk_usable(s, e) && admitted(s, e);
}

int kvt_tm_put_committed(struct kvt_server *s, struct kvt_op *op, uint32_t entry)
{
    struct kvt_tiermgr *tm = &s->tm;
    if (!tm->disk || !tm->write_through || !wants_demotion(s, entry))
        return 0;
    op->entry = entry;
    op->gen = kvt_index_at(&s->idx, entry)->gen;
    int rc = demote_start(s, entry, op);
    if (rc == 0)
        return 1;
    if (rc == KVT_E_BUSY) {
        /* Answer when a staging buffer frees up; the chunk is already readable from DRAM. */
        op->tm_next = NULL;
        if (tm->wt_tail)
            tm->wt_tail->tm_next = op;
        else
            tm->wt_head = op;
        tm->wt_tail = op;
        return 1;
    }
    return 0;
}

static void drain_write_through(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    while (tm->wt_head && tm->free_demotes) {
        struct kvt_op *op = tm->wt_head;
        struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
        int valid = e->state == KVT_ENTRY_READY && e->gen == op->gen;
        int rc =
            valid && wants_demotion(s, op->entry) ? demote_start(s, op->entry, op) : KVT_E_EXISTS;
        if (rc == KVT_E_BUSY)
            return;
        tm->wt_head = op->tm_next;
        if (!tm->wt_head)
            tm->wt_tail = NULL;
        if (rc != 0)
            tm->cb->put_done(tm->cb_arg, op,
                             valid && e->disk == KVT_ENTRY_DISK_DURABLE ? KVT_TIER_DISK
                                                                        : KVT_TIER_CPU);
    }
}

static void drain_reads(struct kvt_server *s);

/* Disk above its high watermark, of bytes or of objects (disk.objects_max): removes chunks that
 * are only on disk, coldest first (CLOCK), looking at no more than CLOCK_SCAN entries per call.
 * Chunks also in DRAM stay (removing their disk copy would make them dirty again), as do pinned
 * ones. */
static void evict_disk(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    struct kvt_disk_stats ds;
    kvt_disk_stats(tm->disk, &ds);
    double high = s->cfg->disk_high_watermark * (double)ds.tier.bytes_capacity;
    double high_objects = s->cfg->disk_high_watermark * (double)s->cfg->disk_objects_max;
    if (((double)ds.tier.bytes_used <= high && (double)ds.tier.objects <= high_objects) ||
        ds.tier.failed)
        return;
    uint64_t used = ds.tier.bytes_used, objects = ds.tier.objects;
    for (uint32_t n = 0; n < CLOCK_SCAN && ((double)used > high || (double)objects > high_objects);
         n++) {
        uint32_t id = tm->clock_hand;
        tm->clock_hand = tm->clock_hand + 1 < s->idx.cap ? tm->clock_hand + 1 : 0;
        struct kvt_entry *e = kvt_index_at(&s->idx, id);
        if (e->state != KVT_ENTRY_READY || e->disk != KVT_ENTRY_DISK_DURABLE || e->in_host ||
            e->refs || e->promoting)
            continue;
        if (e->referenced) {
            e->referenced = 0;
            continue;
        }
        struct kvt_obj_id oid = obj_id(e);
        int rc = kvt_disk_remove(tm->disk, &oid);
        if (rc == KVT_E_BUSY)
            return; /* too many removals waiting for a commit: next iteration */
        kvt_disk_stats(tm->disk, &ds);
        used = ds.tier.bytes_used;
        objects = ds.tier.objects;
        tm->st.disk_evictions++;
        kvt_index_remove(&s->idx, id);
    }
}

/* ---- index eviction ------------------------------------------------------------------------ */

/* Whether entry id may leave the index now: a READY chunk nobody holds, no I/O in flight. */
static int index_evictable(const struct kvt_entry *e)
{
    return e->state == KVT_ENTRY_READY && !e->refs && !e->promoting &&
           e->disk != KVT_ENTRY_DISK_WRITING;
}

/* Removes entry id from every tier. Returns 0, or KVT_E_BUSY when the disk tier cannot stage
 * another removal in this commit. */
static int index_drop(struct kvt_server *s, uint32_t id)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    if (e->disk == KVT_ENTRY_DISK_DURABLE && s->tm.disk) {
        struct kvt_obj_id oid = obj_id(e);
        int rc = kvt_disk_remove(s->tm.disk, &oid);
        if (rc == KVT_E_BUSY)
            return rc;
    }
    if (e->in_host)
        kvt_host_free(s->host, e->host_off);
    kvt_index_remove(&s->idx, id);
    s->tm.st.index_evictions++;
    return 0;
}

/* Frees one index entry, coldest first: chunks only on disk (they left DRAM already) by the
 * CLOCK hand with its second chance, then the coldest chunks in DRAM, clean ones before dirty
 * ones, and dirty ones only under tier.dirty_full = drop. Returns 1 when an entry went. */
static int index_evict_one(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    if (tm->disk) {
        for (uint32_t n = 0; n < CLOCK_SCAN; n++) {
            uint32_t id = tm->clock_hand;
            tm->clock_hand = tm->clock_hand + 1 < s->idx.cap ? tm->clock_hand + 1 : 0;
            struct kvt_entry *e = kvt_index_at(&s->idx, id);
            if (!index_evictable(e) || e->in_host || e->disk != KVT_ENTRY_DISK_DURABLE)
                continue;
            if (e->referenced) {
                e->referenced = 0;
                continue;
            }
            if (index_drop(s, id) == KVT_E_BUSY)
                break;
            tm->st.disk_evictions++;
            return 1;
        }
    }
    uint32_t cold[COLDEST_SCAN];
    size_t n = kvt_host_coldest(s->host, cold, COLDEST_SCAN);
    int may_drop_dirty = !tm->disk || strcmp(s->cfg->dirty_full, "reject") != 0;
    for (int dirty = 0; dirty < 2; dirty++) {
        for (size_t i = 0; i < n; i++) {
            struct kvt_entry *e = kvt_index_at(&s->idx, cold[i]);
            int clean = e->disk == KVT_ENTRY_DISK_DURABLE;
            if (!index_evictable(e) || !e->in_host || clean == dirty)
                continue;
            if (dirty && !may_drop_dirty)
                return 0;
            if (index_drop(s, cold[i]) == KVT_E_BUSY)
                continue;
            if (dirty && tm->disk)
                tm->st.dropped_dirty++;
            return 1;
        }
    }
    return 0;
}

int kvt_tm_index_insert(struct kvt_server *s, const struct kvt_obj_id *oid, uint32_t *id_out)
{
    int rc = kvt_index_insert(&s->idx, oid, id_out);
    if (rc != KVT_E_INDEXFULL)
        return rc;
    /* Bounded: each try frees an entry or gives up after one look at the coldest chunks. */
    for (int tries = 0; tries < 4; tries++) {
        if (!index_evict_one(s))
            break;
        rc = kvt_index_insert(&s->idx, oid, id_out);
        if (rc != KVT_E_INDEXFULL)
            return rc;
    }
    s->tm.st.index_full++;
    return KVT_E_INDEXFULL;
}

/* A DRAM chunk the write-back may start on now: dirty, admitted, nobody holding it. */
static int writeback_candidate(void *arg, uint32_t id)
{
    struct kvt_server *s = arg;
    return wants_demotion(s, id) && kvt_index_at(&s->idx, id)->refs == 0;
}

void kvt_tm_tick(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    if (!tm->disk || s->destroying)
        return;
    evict_disk(s);
    drain_reads(s); /* reads first: a client waits on them */
    drain_write_through(s);
    if (!tm->free_demotes)
        return;
    if (tm->flushing) {
        for (uint32_t n = 0; n < FLUSH_SCAN && tm->flush_cursor < s->idx.cap && tm->free_demotes;
             n++, tm->flush_cursor++) {
            if (wants_demotion(s, tm->flush_cursor) &&
                kvt_index_at(&s->idx, tm->flush_cursor)->refs == 0 &&
                demote_start(s, tm->flush_cursor, NULL) == KVT_E_BUSY)
                break;
        }
        return;
    }
    /* Pressure is measured as memory free for new chunks, per size class being asked for: free
     * slots of a class nobody asks for are no room for the next Put, and a class that has to
     * evict (or found only dirty chunks) needs write-back now, whatever the other classes hold. */
    if (!kvt_host_pressure(s->host, 1.0 - s->cfg->cpu_high_watermark))
        return;
    /* Write back the coldest dirty chunks, so eviction finds clean ones to drop. The scan looks
     * past clean chunks (up to WRITEBACK_SCAN of them): a run of clean cold chunks must not hide
     * the dirty ones behind it. */
    if (!tm->free_demotes)
        return;
    uint32_t cold[COLDEST_SCAN];
    size_t n =
        kvt_host_coldest_where(s->host, writeback_candidate, s, cold, COLDEST_SCAN, WRITEBACK_SCAN);
    for (size_t i = 0; i < n && tm->free_demotes; i++) {
        if (demote_start(s, cold[i], NULL) == KVT_E_BUSY)
            break;
    }
}

int kvt_tm_busy(const struct kvt_server *s)
{
    const struct kvt_tiermgr *tm = &s->tm;
    if (!tm->disk)
        return 0;
    return tm->demotes_inflight > 0 || tm->wt_head || tm->rd_head || tm->del_head ||
           kvt_disk_inflight(tm->disk) > 0 || (tm->flushing && tm->flush_cursor < s->idx.cap);
}

/* ---- eviction and allocation -------------------------------------------------------------- */

int kvt_tm_evict(void *server, uint32_t cookie, uint64_t off)
{
    struct kvt_server *s = server;
    struct kvt_entry *e = kvt_index_at(&s->idx, cookie);
    (void)off;
    if (e->refs || e->state != KVT_ENTRY_READY)
        return 1;
    if (e->disk == KVT_ENTRY_DISK_DURABLE ||
        (e->disk == KVT_ENTRY_DISK_WRITING && s->tm.evict_force)) {
        /* Clean: DRAM can let go at once. A chunk whose write is still in flight is let go only
         * when memory is short: until the write lands it is unreadable, and lost if it fails. */
        e->in_host = 0;
        s->tm.st.evicted_to_disk++;
        return 0;
    }
    if (e->disk == KVT_ENTRY_DISK_WRITING)
        return 1; /* clean as soon as its write is durable */
    if (s->tm.disk && !s->tm.evict_force) {
        if (!disk_usable(s, e)) {
            s->tm.st.too_big_for_disk++;
        } else if (admitted(s, e)) {
            return 1; /* dirty: the write-back will make it clean */
        } else {
            s->tm.st.admission_skipped++;
        }
    } else if (s->tm.disk) {
        s->tm.st.dropped_dirty++;
    }
    kvt_index_remove(&s->idx, cookie);
    return 0;
}

/* Whether the disk tier latched failed: then nothing will ever make DRAM clean again. */
static int disk_failed(const struct kvt_server *s)
{
    struct kvt_disk_stats st;
    kvt_disk_stats(s->tm.disk, &st);
    return st.tier.failed != 0;
}

int kvt_tm_host_alloc(struct kvt_server *s, uint64_t bytes, uint32_t cookie, uint64_t *off_out)
{
    int rc = kvt_host_alloc(s->host, bytes, cookie, off_out);
    if (rc == KVT_E_FULL && s->tm.disk && !s->tm.write_through &&
        !strcmp(s->cfg->dirty_full, "reject") && !disk_failed(s)) {
        /* Everything evictable is waiting for write-back, and the operator would rather have
         * the writer wait than lose a chunk. */
        s->tm.st.rejected_dirty_full++;
        return KVT_E_DIRTYFULL;
    }
    if (rc == KVT_E_FULL && s->tm.disk) {
        /* Everything evictable is waiting for write-back: rather than fail, drop dirty
         * chunks (counted), the cache's job being to stay available. */
        s->tm.evict_force = 1;
        rc = kvt_host_alloc(s->host, bytes, cookie, off_out);
        s->tm.evict_force = 0;
    }
    return rc;
}

/* ---- promotion and reads from disk -------------------------------------------------------- */

static void disk_miss(struct kvt_server *s, uint32_t id, int res)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    s->tm.st.disk_read_misses++;
    if (res == KVT_E_NOTFOUND || res == KVT_E_CORRUPT) {
        /* The disk dropped the object (failed checksum): so does the index. */
        e->disk = KVT_ENTRY_DISK_NONE;
        forget_if_homeless(s, id);
    }
}

static void promote_done(void *arg, int res)
{
    struct kvt_op *op = arg;
    struct kvt_server *s = op->job.ctx;
    struct kvt_conn *c = op->conn;
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    e->promoting = 0;
    if (s->destroying) {
        kvt_host_free(s->host, op->slot_off);
        e->refs--;
        c->inflight--;
        return;
    }
    if (res < 0) {
        kvt_host_free(s->host, op->slot_off);
        e->refs--;
        disk_miss(s, op->entry, res);
        s->tm.cb->get_failed(s->tm.cb_arg, op, res == KVT_E_CORRUPT ? KVT_E_NOTFOUND : res);
        return;
    }
    e->in_host = 1;
    e->host_off = op->slot_off;
    s->tm.st.promotions++;
    op->tier = KVT_TIER_DISK;
    s->tm.cb->get_in_dram(s->tm.cb_arg, op);
}

static void direct_done(void *arg, int res)
{
    struct kvt_op *op = arg;
    struct kvt_server *s = op->job.ctx;
    struct kvt_conn *c = op->conn;
    struct kvt_entry *e = kvt_index_at(&s->idx, op->entry);
    e->refs--;
    if (s->destroying) {
        c->inflight--;
        return;
    }
    if (res < 0) {
        disk_miss(s, op->entry, res);
        s->tm.cb->get_failed(s->tm.cb_arg, op, res == KVT_E_CORRUPT ? KVT_E_NOTFOUND : res);
    } else {
        s->tm.st.disk_direct_reads++;
        op->tier = KVT_TIER_DISK;
        s->tm.cb->get_read_direct(s->tm.cb_arg, op, e);
    }
}

/* Starts the read of a GetRange whose entry is pinned: only the blocks that cover its rows, read
 * and verified by the disk tier straight into the client's destination (never promoted: a few
 * rows do not make the chunk hot). Returns as read_start does. */
static int range_start(struct kvt_server *s, struct kvt_op *op)
{
    uint32_t id = op->entry;
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    struct kvt_obj_id oid = obj_id(e);
    if (e->in_host) {
        /* Promoted by a Get while this one waited: serve the rows from DRAM. */
        op->tier = KVT_TIER_CPU;
        kvt_host_touch(s->host, e->host_off);
        s->tm.cb->get_in_dram(s->tm.cb_arg, op);
        return 0;
    }
    if (e->disk == KVT_ENTRY_DISK_WRITING)
        return KVT_E_BUSY;
    if (e->disk != KVT_ENTRY_DISK_DURABLE) {
        e->refs--;
        forget_if_homeless(s, id);
        return KVT_E_NOTFOUND;
    }
    int rc = kvt_disk_read_range(s->tm.disk, &oid, op->layer, op->token_first, op->n_tokens,
                                 op->job.dst, op->length, direct_done, op);
    if (rc == 0 || rc == KVT_E_BUSY)
        return rc;
    e->refs--;
    if (rc == KVT_E_NOTFOUND || rc == KVT_E_CORRUPT) {
        disk_miss(s, id, rc);
        rc = KVT_E_NOTFOUND;
    } else if (rc == KVT_E_INVAL) {
        /* The disk copy carries no geometry (written while its namespace was unknown): its rows
         * cannot be addressed; a whole-chunk Get still reads it. */
        rc = KVT_E_GEOMETRY;
    }
    return rc;
}

/* Starts the read of a Get whose entry is pinned (refs taken). 0, KVT_E_BUSY (no staging buffer,
 * or no DRAM slot for an inline answer: retry later, still pinned) or an error (unpinned). */
static int read_start(struct kvt_server *s, struct kvt_op *op)
{
    if (op->kind == KVTIER__REQUEST__OP_GET_RANGE)
        return range_start(s, op);
    uint32_t id = op->entry;
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    struct kvt_obj_id oid = obj_id(e);
    int rc = KVT_E_FULL;
    if (e->in_host) {
        /* Promoted by another Get while this one waited: serve it from DRAM. */
        op->tier = KVT_TIER_CPU;
        kvt_host_touch(s->host, e->host_off);
        s->tm.cb->get_in_dram(s->tm.cb_arg, op);
        return 0;
    }
    if (e->disk == KVT_ENTRY_DISK_WRITING)
        return KVT_E_BUSY; /* readable once its write is durable */
    if (e->disk != KVT_ENTRY_DISK_DURABLE) {
        /* Its write failed while this Get waited: the chunk is gone. */
        e->refs--;
        forget_if_homeless(s, id);
        return KVT_E_NOTFOUND;
    }
    /* A promotion takes DRAM that is free or clean: a read never costs a chunk not yet on disk. */
    if (!e->promoting && kvt_host_alloc(s->host, e->length, id, &op->slot_off) == 0) {
        kvt_host_set_owner(s->host, op->slot_off, e->owner); /* per-tenant DRAM accounting */
        rc = kvt_disk_read(s->tm.disk, &oid, kvt_host_ptr(s->host, op->slot_off), e->length,
                           promote_done, op);
        if (rc == 0) {
            e->promoting = 1;
            return 0;
        }
        kvt_host_free(s->host, op->slot_off);
    }
    if (rc != KVT_E_NOTFOUND && !op->want_inline) {
        /* No DRAM slot (or a promotion already running): read into the client's buffer. */
        rc = kvt_disk_read(s->tm.disk, &oid, op->job.dst, e->length, direct_done, op);
        if (rc == 0)
            return 0;
    }
    if (rc == KVT_E_BUSY || (rc == KVT_E_FULL && op->want_inline))
        return KVT_E_BUSY; /* an inline answer needs the chunk in DRAM: wait for a slot */
    e->refs--;
    if (rc == KVT_E_NOTFOUND || rc == KVT_E_CORRUPT) {
        disk_miss(s, id, rc);
        rc = KVT_E_NOTFOUND;
    }
    return rc;
}

/* Pins entry id for op and starts its read, or queues it (pinned) behind the reads waiting for a
 * staging buffer: a Get and a GetRange wait in the same first-come-first-served queue. */
static int read_or_queue(struct kvt_server *s, struct kvt_op *op, uint32_t id)
{
    struct kvt_tiermgr *tm = &s->tm;
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    if (!tm->disk || e->disk == KVT_ENTRY_DISK_NONE)
        return KVT_E_NOTFOUND;
    op->entry = id;
    op->job.ctx = s;
    e->refs++;
    int rc = tm->rd_head ? KVT_E_BUSY : read_start(s, op);
    if (rc != KVT_E_BUSY)
        return rc;
    /* Every staging buffer is busy: the read waits its turn (pinned), first come first served. */
    op->tm_next = NULL;
    if (tm->rd_tail)
        tm->rd_tail->tm_next = op;
    else
        tm->rd_head = op;
    tm->rd_tail = op;
    return 0;
}

int kvt_tm_get_from_disk(struct kvt_server *s, struct kvt_op *op, uint32_t id)
{
    KVT_ASSERT(op->kind == KVTIER__REQUEST__OP_GET);
    return read_or_queue(s, op, id);
}

int kvt_tm_get_range_from_disk(struct kvt_server *s, struct kvt_op *op, uint32_t id)
{
    KVT_ASSERT(op->kind == KVTIER__REQUEST__OP_GET_RANGE);
    return read_or_queue(s, op, id);
}

static void drain_reads(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    while (tm->rd_head) {
        struct kvt_op *op = tm->rd_head;
        int rc = read_start(s, op);
        if (rc == KVT_E_BUSY)
            return;
        tm->rd_head = op->tm_next;
        if (!tm->rd_head)
            tm->rd_tail = NULL;
        if (rc)
            tm->cb->get_failed(tm->cb_arg, op, rc);
    }
}

int kvt_tm_delete(struct kvt_server *s, uint32_t id)
{
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    /* A chunk whose disk write is in flight is in use too: deleting it now would leave an object
     * that becomes durable after the answer, and a crash could bring it back. */
    if (e->refs || e->promoting || e->disk == KVT_ENTRY_DISK_WRITING)
        return KVT_E_INUSE;
    if (e->disk == KVT_ENTRY_DISK_DURABLE && s->tm.disk) {
        struct kvt_obj_id oid = obj_id(e);
        int rc = kvt_disk_remove(s->tm.disk, &oid);
        if (rc == KVT_E_BUSY)
            return rc;
        if (rc == 0)
            s->tm.del_staged = 1;
    }
    if (e->in_host)
        kvt_host_free(s->host, e->host_off);
    kvt_index_remove(&s->idx, id);
    return 0;
}

/* ---- durable deletes ---------------------------------------------------------------------- */

struct kvt_tm_del {
    struct kvt_disk_sync sync; /* the disk tier's barrier, in our storage */
    struct kvt_server *s;
    struct kvt_op *op;
    int32_t *status;
    uint32_t off, n; /* place in the status ring */
    struct kvt_tm_del *next;
};

/* Where n statuses fit in the ring, which is used in FIFO order: [tail, head) or, wrapped,
 * [tail, end) and [0, head). */
static int del_ring_fit(struct kvt_tiermgr *tm, uint32_t n, uint32_t *off)
{
    if (tm->n_dels_waiting == 0) {
        tm->ds_head = tm->ds_tail = 0;
        *off = 0;
        return n <= KVT_TM_DEL_STATUS_MAX;
    }
    if (tm->ds_head >= tm->ds_tail) {
        if (KVT_TM_DEL_STATUS_MAX - tm->ds_head >= n) {
            *off = tm->ds_head;
            return 1;
        }
        *off = 0;
        return tm->ds_tail > n;
    }
    *off = tm->ds_head;
    return tm->ds_tail - tm->ds_head > n;
}

int32_t *kvt_tm_delete_begin(struct kvt_server *s, uint32_t n)
{
    static int32_t immediate[KVT_TM_DEL_KEYS_MAX];
    struct kvt_tiermgr *tm = &s->tm;
    tm->del_staged = 0;
    if (n > KVT_TM_DEL_KEYS_MAX)
        return NULL;
    if (!tm->disk)
        return immediate;
    if (!tm->free_dels || !del_ring_fit(tm, n, &tm->del_off)) {
        tm->st.delete_busy++;
        return NULL;
    }
    return tm->del_status + tm->del_off;
}

static void delete_durable(void *arg, int res)
{
    struct kvt_tm_del *d = arg;
    struct kvt_server *s = d->s;
    struct kvt_tiermgr *tm = &s->tm;
    /* Barriers complete in the order they were made, which is the ring's order. */
    KVT_ASSERT(tm->del_head == d);
    tm->del_head = d->next;
    if (!tm->del_head)
        tm->del_tail = NULL;
    if (res)
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "delete answered without a durable tombstone: %s",
                            kvt_strerror(res));
    if (!s->destroying)
        tm->cb->delete_done(tm->cb_arg, d->op, d->status, d->n);
    tm->ds_tail = d->off + d->n;
    if (--tm->n_dels_waiting == 0)
        tm->ds_head = tm->ds_tail = 0;
    d->op = NULL;
    d->next = tm->free_dels;
    tm->free_dels = d;
}

int kvt_tm_delete_end(struct kvt_server *s, struct kvt_op *op, int32_t *status, uint32_t n)
{
    struct kvt_tiermgr *tm = &s->tm;
    if (!tm->disk || !tm->del_staged)
        return 0;
    struct kvt_tm_del *d = tm->free_dels;
    /* begin handed this ring space out, or returned NULL and nothing was deleted. */
    KVT_ASSERT(d && status == tm->del_status + tm->del_off);
    int rc = kvt_disk_sync(tm->disk, &d->sync, delete_durable, d);
    if (rc) {
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "delete answered without a durable tombstone: %s",
                            kvt_strerror(rc));
        return 0;
    }
    tm->free_dels = d->next;
    d->s = s;
    d->op = op;
    d->status = status;
    d->off = tm->del_off;
    d->n = n;
    d->next = NULL;
    if (tm->del_tail)
        tm->del_tail->next = d;
    else
        tm->del_head = d;
    tm->del_tail = d;
    tm->ds_head = tm->del_off + n;
    tm->n_dels_waiting++;
    tm->st.deletes_deferred++;
    return 1;
}

/* ---- start, stop, stats ------------------------------------------------------------------- */

struct load_ctx {
    struct kvt_server *s;
    uint64_t loaded, skipped;
    struct kvt_obj_id orphans[256]; /* disk objects the index could not take, per pass */
    uint32_t n_orphans;
};

static int load_object(void *arg, const struct kvt_disk_obj_info *info)
{
    struct load_ctx *lc = arg;
    struct kvt_server *s = lc->s;
    uint32_t id;
    if (kvt_index_find(&s->idx, &info->id) != KVT_INDEX_NIL ||
        kvt_index_insert(&s->idx, &info->id, &id)) {
        lc->skipped++;
        return 0;
    }
    struct kvt_entry *e = kvt_index_at(&s->idx, id);
    e->state = KVT_ENTRY_READY;
    e->disk = KVT_ENTRY_DISK_DURABLE;
    e->length = info->raw_len;
    e->n_tokens = info->n_tokens;
    lc->loaded++;
    return 0;
}

static int collect_orphan(void *arg, const struct kvt_disk_obj_info *info)
{
    struct load_ctx *lc = arg;
    if (kvt_index_find(&lc->s->idx, &info->id) != KVT_INDEX_NIL)
        return 0;
    lc->orphans[lc->n_orphans++] = info->id;
    return lc->n_orphans == sizeof(lc->orphans) / sizeof(lc->orphans[0]);
}

/* Disk objects that did not fit in the index (index.max_objects below what the disk holds) would
 * hold disk space no chunk can ever reach: remove them, a batch per pass over the disk's index,
 * waiting for a commit whenever the disk tier has staged as many removals as one takes. */
static uint64_t remove_orphans(struct kvt_server *s, struct load_ctx *lc)
{
    uint64_t removed = 0;
    for (uint64_t pass = 0; pass <= lc->skipped / 256 + 1; pass++) {
        lc->n_orphans = 0;
        kvt_disk_enumerate(s->tm.disk, collect_orphan, lc);
        if (lc->n_orphans == 0)
            break;
        for (uint32_t i = 0; i < lc->n_orphans; i++) {
            int rc = kvt_disk_remove(s->tm.disk, &lc->orphans[i]);
            for (int tries = 0; rc == KVT_E_BUSY && tries < 100; tries++) {
                kvt_disk_wait(s->tm.disk, 100);
                rc = kvt_disk_remove(s->tm.disk, &lc->orphans[i]);
            }
            if (rc)
                return removed; /* latched failed: nothing more to do */
            removed++;
        }
    }
    return removed;
}

static int split_paths(char *list, const char **paths, uint32_t max)
{
    uint32_t n = 0;
    for (char *save = NULL, *p = strtok_r(list, ",", &save); p && n < max;
         p = strtok_r(NULL, ",", &save))
        if (*p)
            paths[n++] = p;
    return (int)n;
}

void kvt_tm_set_callbacks(struct kvt_tiermgr *tm, const struct kvt_tm_callbacks *cb, void *arg,
                          struct kvt_workers *workers)
{
    tm->cb = cb;
    tm->cb_arg = arg;
    tm->workers = workers;
}

int kvt_tm_init(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    const struct kvt_dconfig *cfg = s->cfg;
    memset(tm, 0, sizeof(*tm));
    tm->write_through = strcmp(cfg->write_policy, "write-through") == 0;
    if (cfg->disk_bytes == 0) {
        KVT_INFO("tier", "disk tier off (disk.bytes = 0)");
        return 0;
    }
    static char path_buf[sizeof(cfg->disk_paths)], default_path[300];
    const char *paths[KVT_DISK_PATHS_MAX];
    snprintf(path_buf, sizeof(path_buf), "%s", cfg->disk_paths);
    int n = split_paths(path_buf, paths, KVT_DISK_PATHS_MAX);
    if (n == 0) {
        snprintf(default_path, sizeof(default_path), "%s/disk.0", cfg->data_dir);
        paths[0] = default_path;
        n = 1;
    }
    struct kvt_disk_config dc;
    kvt_disk_config_init(&dc);
    for (int i = 0; i < n; i++)
        dc.paths[i] = paths[i];
    dc.n_paths = (uint32_t)n;
    dc.file_bytes = cfg->disk_bytes / (uint64_t)n / 4096 * 4096;
    dc.meta_dir = cfg->data_dir;
    dc.queue_depth = (uint32_t)cfg->disk_queue_depth;
    dc.staging_bytes = cfg->disk_staging_bytes;
    dc.object_bytes_max = cfg->disk_object_bytes_max;
    dc.objects_max = (uint32_t)cfg->disk_objects_max;
    dc.io_errors_max = (uint32_t)cfg->disk_io_errors_max;
    dc.allow_buffered = cfg->disk_allow_buffered;
    kvt_codec_config_init(&dc.codec);
    dc.codec.algo = !strcmp(cfg->disk_codec, "zstd")  ? KVT_CODEC_ZSTD
                    : !strcmp(cfg->disk_codec, "lz4") ? KVT_CODEC_LZ4
                                                      : KVT_CODEC_NONE;
    dc.codec.level = (int)cfg->disk_codec_level;
    dc.codec.min_saving_ratio = cfg->disk_min_saving;
    dc.codec.input_bytes_max = cfg->disk_object_bytes_max;
    dc.faults = &tm->faults;
    char why[256] = "";
    dc.err_buf = why;
    dc.err_buf_bytes = sizeof(why);
    tm->codec_cfg = dc.codec;
    uint64_t t0 = kvt_now_ms();
    int rc = kvt_disk_create(&dc, &tm->disk);
    if (rc) {
        KVT_ERR("tier", "disk tier cannot start on %s: %s (%s)", paths[0], kvt_strerror(rc), why);
        tm->disk = NULL;
        return rc;
    }
    /* Background writes may use at most half the staging buffers: reads must find one. */
    uint64_t buffers = cfg->disk_staging_bytes / cfg->disk_object_bytes_max;
    tm->n_demotes =
        (uint32_t)(buffers / 2 < cfg->disk_queue_depth ? buffers / 2 : cfg->disk_queue_depth);
    if (tm->n_demotes == 0)
        tm->n_demotes = 1;
    tm->demotes = kvt_calloc(KVT_ALLOC_TIER, tm->n_demotes, sizeof(*tm->demotes));
    if (!tm->demotes) {
        kvt_disk_destroy(tm->disk);
        tm->disk = NULL;
        return KVT_E_NOMEM;
    }
    for (uint32_t i = 0; i < tm->n_demotes; i++) {
        tm->demotes[i].codec_cfg = &tm->codec_cfg;
        tm->demotes[i].next_free = tm->free_demotes;
        tm->free_demotes = &tm->demotes[i];
    }
    tm->dels = kvt_calloc(KVT_ALLOC_TIER, KVT_TM_DELS_MAX, sizeof(*tm->dels));
    tm->del_status = kvt_calloc(KVT_ALLOC_TIER, KVT_TM_DEL_STATUS_MAX, sizeof(*tm->del_status));
    if (!tm->dels || !tm->del_status) {
        kvt_tm_deinit(s);
        return KVT_E_NOMEM;
    }
    for (uint32_t i = 0; i < KVT_TM_DELS_MAX; i++) {
        tm->dels[i].next = tm->free_dels;
        tm->free_dels = &tm->dels[i];
    }
    static struct load_ctx lc;
    memset(&lc, 0, sizeof(lc));
    lc.s = s;
    kvt_disk_enumerate(tm->disk, load_object, &lc);
    /* Injected faults given at start count from the first I/O after recovery. */
    kvt_tm_config_changed(s);
    tm->st.recovered_objects = lc.loaded;
    tm->st.recovery_ms = kvt_now_ms() - t0;
    if (lc.skipped) {
        tm->st.recovery_removed = remove_orphans(s, &lc);
        KVT_WARN("tier",
                 "%llu disk objects do not fit in the index (index.max_objects too small): "
                 "%llu removed from disk",
                 (unsigned long long)lc.skipped, (unsigned long long)tm->st.recovery_removed);
    }
    KVT_INFO("tier", "disk tier ready paths=%d bytes=%llu objects=%llu start_ms=%llu policy=%s", n,
             (unsigned long long)cfg->disk_bytes, (unsigned long long)lc.loaded,
             (unsigned long long)tm->st.recovery_ms, cfg->write_policy);
    return 0;
}

void kvt_tm_deinit(struct kvt_server *s)
{
    struct kvt_tiermgr *tm = &s->tm;
    if (tm->disk)
        kvt_disk_destroy(tm->disk); /* runs the last callbacks; s->destroying mutes replies */
    tm->disk = NULL;
    kvt_free(KVT_ALLOC_TIER, tm->demotes);
    tm->demotes = NULL;
    kvt_free(KVT_ALLOC_TIER, tm->dels);
    tm->dels = tm->free_dels = tm->del_head = tm->del_tail = NULL;
    kvt_free(KVT_ALLOC_TIER, tm->del_status);
    tm->del_status = NULL;
}

int kvt_tm_event_fd(const struct kvt_server *s)
{
    return s->tm.disk ? kvt_disk_event_fd(s->tm.disk) : -1;
}

void kvt_tm_poll(struct kvt_server *s)
{
    if (s->tm.disk)
        kvt_disk_poll(s->tm.disk);
}

void kvt_tm_config_changed(struct kvt_server *s)
{
    s->tm.faults.fail_next_io = (uint32_t)s->cfg->disk_fault_fail_next_io;
    s->tm.faults.fail_errno = (int)s->cfg->disk_fault_errno;
}
