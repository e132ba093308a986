/*
 * Tier manager: write-back and write-through to lower tiers, promotion, eviction decisions,
 * recovery at start and the shutdown flush, over an ordered list of tiers driven only through
 * their operations table. Runs on the loop thread; only the lower tiers' fill, and the verification
 * and decoding of the whole reads a tier lends (read_lend), run on workers.
 *
 * Positions: tier 0 is the memory tier ("DRAM"); 1..n-1 are lower tiers. An entry's at[i] says
 * whether tier i has its copy (WRITING, READY) and loc[i] where.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/log.h"
#include "common/loop.h"
#include "common/time.h"
#include "daemon/freq.h"
#include "daemon/tiermgr.h"

#define COLDEST_SCAN 64
#define WRITEBACK_SCAN 1024 /* DRAM chunks the write-back looks at per loop iteration */
#define FLUSH_SCAN 4096
#define CLOCK_SCAN 4096 /* index entries the lower tiers' eviction looks at per loop iteration */
#define LOWER_SAMPLE 8  /* cost-aware: entries compared for one lower-tier eviction */
#define MEM 0           /* position of the memory tier */

/* One write to a lower tier in progress: fill on a worker, then the tier's commit. */
struct kvt_demote {
    struct kvt_job job; /* first: a reaped job is its demote */
    struct kvt_demote *next_free;
    struct kvt_tier_write w;
    struct kvt_tm *tm;
    struct kvt_tm_io *io;    /* write-through Put waiting for durability, or NULL */
    struct kvt_obj_id id;    /* what is written (the entry may be reused meanwhile) */
    struct kvt_tm_meta meta; /* what the fill writes beside the bytes, pinned until it returned */
    uint32_t entry;
    uint32_t gen;
    uint32_t tier; /* position written to */
};

struct kvt_tm_del {
    struct kvt_tier_sync sync[KVT_TM_TIERS_MAX]; /* the tiers' barriers, in our storage */
    struct kvt_tm *tm;
    void *ctx;
    int32_t *status;
    uint32_t off, n;  /* place in the status ring */
    uint32_t waiting; /* barriers not yet complete */
    struct kvt_tm_del *next;
};

struct kvt_tm {
    struct kvt_tm_config cfg;
    struct kvt_index *idx;
    struct kvt_freq freq; /* reads per object, past eviction (tier.eviction = cost) */
    struct kvt_tier tiers[KVT_TM_TIERS_MAX];
    uint32_t n_tiers;
    struct kvt_workers *workers;
    struct kvt_loop *loop;
    struct kvt_hook hook;
    uint32_t attached; /* tiers attached to the loop */
    const struct kvt_tm_callbacks *cb;
    void *cb_arg;
    struct kvt_demote *demotes, *free_demotes;
    uint32_t n_demotes, demotes_inflight;
    uint64_t encoding_bytes;             /* DRAM pinned by lower-tier fills */
    struct kvt_tm_io *wt_head, *wt_tail; /* write-through Puts waiting for a writer */
    struct kvt_tm_io *rd_head, *rd_tail; /* reads waiting for a buffer (entries pinned) */
    int evict_force;                     /* drop dirty chunks: memory could not be found */
    int stopping;                        /* abandon requests, never answer them */
    int flushing;                        /* shutdown: write back every dirty chunk */
    /* The last write-back scan saw every DRAM chunk and none could be written back; nothing
     * since could have made one a candidate (a Put, a read, a failed write): skip the scan. */
    int writeback_idle;
    uint32_t flush_cursor; /* next index entry the flush looks at */
    uint32_t clock_hand;   /* next index entry the lower tiers' eviction sees */
    struct kvt_tm_del *dels, *free_dels;
    struct kvt_tm_del *del_head, *del_tail; /* waiting, oldest first */
    int32_t *del_status;                    /* the ring */
    uint32_t ds_head, ds_tail, n_dels_waiting;
    uint32_t del_off;    /* ring offset handed out by the last kvt_tm_delete_begin */
    uint32_t del_staged; /* tiers (bit per position) that staged a removal since begin */
    int32_t immediate[KVT_TM_DEL_KEYS_MAX];
    /* Learning from selections: chunks waiting for a background promotion (a ring of entry ids
     * with their generations), the reads' descriptors, and while a promotion reserves DRAM, the
     * worth a chunk must be below to be evicted for it. */
    struct {
        uint32_t id, gen;
    } sel_q[KVT_TM_SEL_QUEUE];
    uint32_t sel_q_head, sel_q_n;
    struct kvt_tm_io sel_io[KVT_TM_SEL_INFLIGHT_MAX];
    struct kvt_tm_io *sel_free;
    uint32_t sel_inflight;
    int sel_reserving;
    double sel_floor;
    struct kvt_tm_stats st;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static const struct kvt_tier_ops *ops_of(const struct kvt_tm *tm, uint32_t i)
{
    return tm->tiers[i].ops;
}

static struct kvt_entry *entry(const struct kvt_tm *tm, uint32_t id)
{
    return kvt_index_at(tm->idx, id);
}

static int tier_failed(const struct kvt_tm *tm, uint32_t i)
{
    struct kvt_tier_stats st;
    ops_of(tm, i)->stats(tm->tiers[i].t, &st);
    return st.failed != 0;
}

/* Position of the first lower tier with copy state `at`, or 0 when none. */
static uint32_t lower_at(const struct kvt_tm *tm, const struct kvt_entry *e, uint8_t at)
{
    for (uint32_t i = 1; i < tm->n_tiers; i++)
        if (e->at[i] == at)
            return i;
    return 0;
}

static int lower_any(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    return lower_at(tm, e, KVT_AT_READY) || lower_at(tm, e, KVT_AT_WRITING);
}

/* The lower tier a write-back of e goes to: the first that takes its size, or 0. */
static uint32_t target_of(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    for (uint32_t i = 1; i < tm->n_tiers; i++) {
        uint64_t max = tm->cfg.tier[i].object_bytes_max;
        if (!max || e->length <= max)
            return i;
    }
    return 0;
}

static int admitted(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    return tm->cfg.write_through || !tm->cfg.admit_second_access || e->hits > 0;
}

/* An entry left with no copy anywhere leaves the index. */
static void forget_if_homeless(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    if (e->state == KVT_ENTRY_READY && e->at[MEM] != KVT_AT_READY &&
        !lower_at(tm, e, KVT_AT_READY) && !lower_at(tm, e, KVT_AT_WRITING) && e->refs == 0)
        kvt_index_remove(tm->idx, id);
}

/* Removes entry e's copy from lower tier i (index state unchanged but at[i]). */
static int remove_lower(struct kvt_tm *tm, struct kvt_entry *e, uint32_t i)
{
    int rc = ops_of(tm, i)->remove(tm->tiers[i].t, &e->id, e->loc[i]);
    if (rc == KVT_E_BUSY)
        return rc;
    e->at[i] = KVT_AT_NONE;
    return 0;
}

/* Frees entry e's DRAM copy. */
static void free_mem(struct kvt_tm *tm, struct kvt_entry *e)
{
    if (e->at[MEM] == KVT_AT_NONE)
        return;
    ops_of(tm, MEM)->remove(tm->tiers[MEM].t, &e->id, e->loc[MEM]);
    e->at[MEM] = KVT_AT_NONE;
}

enum kvt_tier_id kvt_tm_tier_of(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    if (e->state != KVT_ENTRY_READY)
        return KVT_TIER_NONE;
    if (e->at[MEM] == KVT_AT_READY)
        return ops_of(tm, MEM)->id;
    uint32_t i = lower_at(tm, e, KVT_AT_READY);
    /* A chunk let go of while its write is in flight is served once the write lands. */
    if (!i)
        i = lower_at(tm, e, KVT_AT_WRITING);
    return i ? ops_of(tm, i)->id : KVT_TIER_NONE;
}

const struct kvt_tier *kvt_tm_tier(const struct kvt_tm *tm, uint32_t i)
{
    return i < tm->n_tiers ? &tm->tiers[i] : NULL;
}

void kvt_tm_stats(const struct kvt_tm *tm, struct kvt_tm_stats *out)
{
    *out = tm->st;
}

/* ---- demotion ----------------------------------------------------------------------------- */

static void demote_finish(struct kvt_tm *tm, struct kvt_demote *d, int durable)
{
    struct kvt_tm_io *io = d->io;
    uint32_t tier = d->tier;
    d->io = NULL;
    d->next_free = tm->free_demotes;
    tm->free_demotes = d;
    tm->demotes_inflight--;
    if (!io)
        return;
    if (tm->stopping)
        tm->cb->abandoned(tm->cb_arg, io);
    else
        tm->cb->put_done(tm->cb_arg, io, ops_of(tm, durable ? tier : MEM)->id);
}

static void demote_durable(void *arg, int res)
{
    struct kvt_demote *d = arg;
    struct kvt_tm *tm = d->tm;
    struct kvt_entry *e = entry(tm, d->entry);
    if (e->state == KVT_ENTRY_FREE || e->gen != d->gen) {
        /* Deleted (or dropped) while it was being written: the copy must not outlive it. */
        if (res == 0 && ops_of(tm, d->tier)->remove(tm->tiers[d->tier].t, &d->id, d->w.loc) == 0)
            tm->st.orphans_removed++;
        demote_finish(tm, d, 0);
        return;
    }
    if (res == 0) {
        e->at[d->tier] = KVT_AT_READY;
        e->loc[d->tier] = d->w.loc;
        e->form[d->tier] = (uint8_t)d->w.form;
        e->referenced = 1;
        tm->st.demotions++;
        if (tm->cb->copied)
            tm->cb->copied(tm->cb_arg, d->entry, d->tier);
    } else {
        e->at[d->tier] = KVT_AT_NONE;
        tm->writeback_idle = 0; /* dirty again */
        tm->st.demotion_failures++;
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "write to %s failed: %s",
                            ops_of(tm, d->tier)->name, kvt_strerror(res));
        if (e->at[MEM] != KVT_AT_READY)
            tm->st.dropped_dirty++; /* let go of under memory pressure while being written */
        forget_if_homeless(tm, d->entry);
    }
    demote_finish(tm, d, res == 0);
}

static void fill_job(struct kvt_job *job)
{
    struct kvt_demote *d = (struct kvt_demote *)job;
    job->res = ops_of(d->tm, d->tier)->fill(&d->w, job->src);
}

/* The metadata of a write is the caller's again once the fill that reads it returned. */
static void meta_unpin(struct kvt_tm *tm, struct kvt_demote *d)
{
    if (d->meta.len && tm->cb->meta_release)
        tm->cb->meta_release(tm->cb_arg, &d->meta);
    memset(&d->meta, 0, sizeof(d->meta));
}

static void demote_filled(struct kvt_job *job)
{
    struct kvt_demote *d = (struct kvt_demote *)job;
    struct kvt_tm *tm = d->tm;
    struct kvt_entry *e = entry(tm, d->entry);
    const struct kvt_tier_ops *ops = ops_of(tm, d->tier);
    void *t = tm->tiers[d->tier].t;
    meta_unpin(tm, d);
    e->refs--;
    tm->encoding_bytes -= d->job.len;
    int rc = job->res;
    if (tm->stopping) {
        ops->cancel(t, &d->w);
        e->at[d->tier] = KVT_AT_NONE;
        demote_finish(tm, d, 0);
        return;
    }
    if (rc == 0) {
        rc = ops->commit(t, &d->w, demote_durable, d);
        if (rc == 0) {
            demote_durable(d, 0); /* a tier that commits at once */
            return;
        }
        if (rc == KVT_TIER_LATER)
            return;
    } else {
        ops->cancel(t, &d->w);
    }
    e->at[d->tier] = KVT_AT_NONE;
    tm->writeback_idle = 0; /* dirty again */
    tm->st.demotion_failures++;
    KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "cannot write chunk to %s: %s", ops->name,
                        kvt_strerror(rc));
    demote_finish(tm, d, 0);
}

/* Starts writing entry id to its lower tier. 0 when started (io, if any, is answered when
 * durable), KVT_E_EXISTS when that tier already holds it, KVT_E_BUSY when no writer or buffer is
 * free, or the tier's error. */
static int demote_start(struct kvt_tm *tm, uint32_t id, struct kvt_tm_io *io)
{
    struct kvt_entry *e = entry(tm, id);
    struct kvt_demote *d = tm->free_demotes;
    uint32_t ti = target_of(tm, e);
    if (!d)
        return KVT_E_BUSY;
    if (!ti)
        return KVT_E_TOOBIG;
    /* Fills pin their DRAM slots: never more than a quarter of DRAM at once, so Puts always find
     * memory to evict. */
    if (tm->encoding_bytes && tm->encoding_bytes + e->length > kvt_tm_memory_bytes(tm) / 4)
        return KVT_E_BUSY;
    struct kvt_chunk_geom geom;
    struct kvt_tier_obj o = {.id = e->id,
                             .length = e->length,
                             .n_tokens = e->n_tokens,
                             .elem_bytes = e->elem_bytes ? e->elem_bytes : 1,
                             .cookie = id,
                             .owner = e->owner};
    if (tm->cb->geom && tm->cb->geom(tm->cb_arg, e, &geom) == 0)
        o.geom = &geom;
    /* A form only for tiers that keep forms (q8/q4 also need the shape: the tier checks). */
    if (tm->cb->form && ops_of(tm, ti)->read_stored)
        o.form = tm->cb->form(tm->cb_arg, id);
    d->w.form = 0; /* a tier that keeps no forms leaves it so */
    memset(&d->meta, 0, sizeof(d->meta));
    if ((ops_of(tm, ti)->caps & KVT_TIER_CAP_META) && tm->cb->meta_pin &&
        tm->cb->meta_pin(tm->cb_arg, id, &d->meta) == 0 && d->meta.len) {
        o.meta_len = d->meta.len;
        o.meta_write = d->meta.write;
        o.meta_ctx = d->meta.ctx;
    } else {
        memset(&d->meta, 0, sizeof(d->meta));
    }
    d->w.loc = 0; /* a tier that finds the object there may say where it is */
    int rc = ops_of(tm, ti)->reserve(tm->tiers[ti].t, &o, &d->w);
    if (rc)
        meta_unpin(tm, d);
    if (rc == KVT_E_EXISTS) {
        e->at[ti] = KVT_AT_READY;
        e->loc[ti] = d->w.loc;
        if (tm->cb->copied)
            tm->cb->copied(tm->cb_arg, id, ti);
        return rc;
    }
    if (rc)
        return rc;
    tm->free_demotes = d->next_free;
    tm->demotes_inflight++;
    d->tm = tm;
    d->io = io;
    d->id = e->id;
    d->entry = id;
    d->gen = e->gen;
    d->tier = ti;
    e->refs++; /* the slot is read by the fill: it must not be evicted or freed */
    tm->encoding_bytes += e->length;
    e->at[ti] = KVT_AT_WRITING;
    memset(&d->job, 0, sizeof(d->job));
    d->job.fn = fill_job;
    d->job.done = demote_filled;
    d->job.ctx = tm;
    d->job.src = kvt_tm_memory_ptr(tm, e);
    d->job.len = e->length;
    kvt_workers_submit(tm->workers, &d->job);
    return 0;
}

/* Whether entry id is a chunk in DRAM with no lower copy that a lower tier should get. */
static int wants_demotion(const struct kvt_tm *tm, uint32_t id)
{
    const struct kvt_entry *e = entry(tm, id);
    return e->state == KVT_ENTRY_READY && e->at[MEM] == KVT_AT_READY && !lower_any(tm, e) &&
           target_of(tm, e) && admitted(tm, e);
}

int kvt_tm_put_committed(struct kvt_tm *tm, struct kvt_tm_io *io, uint32_t id,
                         enum kvt_tier_id *tier_now)
{
    struct kvt_entry *e = entry(tm, id);
    e->state = KVT_ENTRY_READY;
    e->at[MEM] = KVT_AT_READY;
    e->refs--;
    tm->writeback_idle = 0; /* a new dirty chunk */
    *tier_now = ops_of(tm, MEM)->id;
    if (tm->n_tiers < 2 || !tm->cfg.write_through || !wants_demotion(tm, id))
        return 0;
    io->entry = id;
    io->gen = e->gen;
    io->tm = tm;
    int rc = demote_start(tm, id, io);
    if (rc == 0)
        return 1;
    if (rc == KVT_E_BUSY) {
        /* Answer when a writer frees up; the chunk is already readable from DRAM. */
        io->next = NULL;
        if (tm->wt_tail)
            tm->wt_tail->next = io;
        else
            tm->wt_head = io;
        tm->wt_tail = io;
        return 1;
    }
    if (rc == KVT_E_EXISTS) /* a lower tier holds it already (stored before, then let go of) */
        *tier_now = ops_of(tm, lower_at(tm, e, KVT_AT_READY))->id;
    return 0;
}

static void drain_write_through(struct kvt_tm *tm)
{
    while (tm->wt_head && tm->free_demotes) {
        struct kvt_tm_io *io = tm->wt_head;
        struct kvt_entry *e = entry(tm, io->entry);
        int valid = e->state == KVT_ENTRY_READY && e->gen == io->gen;
        int rc =
            valid && wants_demotion(tm, io->entry) ? demote_start(tm, io->entry, io) : KVT_E_EXISTS;
        if (rc == KVT_E_BUSY)
            return;
        tm->wt_head = io->next;
        if (!tm->wt_head)
            tm->wt_tail = NULL;
        if (rc != 0) {
            uint32_t ready = valid ? lower_at(tm, e, KVT_AT_READY) : 0;
            tm->cb->put_done(tm->cb_arg, io, ops_of(tm, ready)->id);
        }
    }
}

static double tm_value(void *arg, uint32_t id);

/* A lower tier above its high watermark, of bytes or of objects: removes chunks only there (not
 * in DRAM: removing their copy would make them dirty again), coldest first (CLOCK with a second
 * chance), looking at no more than CLOCK_SCAN entries per call and tier. */
static void evict_lower(struct kvt_tm *tm, uint32_t ti)
{
    const struct kvt_tier_ops *ops = ops_of(tm, ti);
    const struct kvt_tm_tier_policy *p = &tm->cfg.tier[ti];
    struct kvt_tier_stats ts;
    ops->stats(tm->tiers[ti].t, &ts);
    double high = p->high_watermark * (double)ts.bytes_capacity;
    double high_objects = p->objects_max ? p->high_watermark * (double)p->objects_max : 1e300;
    if (((double)ts.bytes_used <= high && (double)ts.objects <= high_objects) || ts.failed)
        return;
    for (uint32_t n = 0;
         n < CLOCK_SCAN && ((double)ts.bytes_used > high || (double)ts.objects > high_objects);
         n++) {
        uint32_t id = tm->clock_hand;
        tm->clock_hand = tm->clock_hand + 1 < tm->idx->cap ? tm->clock_hand + 1 : 0;
        struct kvt_entry *e = entry(tm, id);
        if (e->state != KVT_ENTRY_READY || e->at[ti] != KVT_AT_READY || e->at[MEM] != KVT_AT_NONE ||
            e->refs || e->promoting)
            continue;
        if (e->referenced) {
            e->referenced = 0;
            continue;
        }
        if (tm->cfg.eviction_cost) {
            /* Cost-aware: of this candidate and the next ones the hand passes that could go too
             * (up to LOWER_SAMPLE), the lowest-valued goes; the others stay for the next turn. */
            uint32_t best = id;
            double best_v = tm_value(tm, id);
            for (uint32_t k = 1, h = tm->clock_hand; k < LOWER_SAMPLE; k++) {
                const struct kvt_entry *f = entry(tm, h);
                if (f->state == KVT_ENTRY_READY && f->at[ti] == KVT_AT_READY &&
                    f->at[MEM] == KVT_AT_NONE && !f->refs && !f->promoting && !f->referenced &&
                    tm_value(tm, h) < best_v) {
                    best = h;
                    best_v = tm_value(tm, h);
                }
                h = h + 1 < tm->idx->cap ? h + 1 : 0;
            }
            id = best;
            e = entry(tm, id);
        }
        if (remove_lower(tm, e, ti) == KVT_E_BUSY)
            return; /* too many removals waiting for a commit: next iteration */
        ops->stats(tm->tiers[ti].t, &ts);
        tm->st.disk_evictions++;
        if (!lower_any(tm, e))
            kvt_index_remove(tm->idx, id);
    }
}

/* ---- index eviction ------------------------------------------------------------------------ */

/* Whether entry e may leave the index now: a READY chunk nobody holds, no I/O in flight. */
static int index_evictable(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    return e->state == KVT_ENTRY_READY && !e->refs && !e->promoting &&
           !lower_at(tm, e, KVT_AT_WRITING);
}

/* Removes entry id from every tier. 0, or KVT_E_BUSY when a tier cannot stage another removal. */
static int index_drop(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    for (uint32_t i = 1; i < tm->n_tiers; i++)
        if (e->at[i] == KVT_AT_READY && remove_lower(tm, e, i) == KVT_E_BUSY)
            return KVT_E_BUSY;
    free_mem(tm, e);
    kvt_index_remove(tm->idx, id);
    tm->st.index_evictions++;
    return 0;
}

/* Frees one index entry, coldest first: chunks only in lower tiers (they left DRAM already) by
 * the CLOCK hand with its second chance, then the coldest chunks in DRAM, clean ones before dirty
 * ones, and dirty ones only when they may be dropped. Returns 1 when an entry went. */
static int index_evict_one(struct kvt_tm *tm)
{
    if (tm->n_tiers > 1) {
        for (uint32_t n = 0; n < CLOCK_SCAN; n++) {
            uint32_t id = tm->clock_hand;
            tm->clock_hand = tm->clock_hand + 1 < tm->idx->cap ? tm->clock_hand + 1 : 0;
            struct kvt_entry *e = entry(tm, id);
            if (!index_evictable(tm, e) || e->at[MEM] != KVT_AT_NONE ||
                !lower_at(tm, e, KVT_AT_READY))
                continue;
            if (e->referenced) {
                e->referenced = 0;
                continue;
            }
            if (index_drop(tm, id) == KVT_E_BUSY)
                break;
            tm->st.disk_evictions++;
            return 1;
        }
    }
    uint32_t cold[COLDEST_SCAN];
    size_t n =
        ops_of(tm, MEM)->coldest(tm->tiers[MEM].t, NULL, NULL, cold, COLDEST_SCAN, COLDEST_SCAN);
    int may_drop_dirty = tm->n_tiers < 2 || !tm->cfg.dirty_reject;
    for (int dirty = 0; dirty < 2; dirty++) {
        for (size_t i = 0; i < n; i++) {
            struct kvt_entry *e = entry(tm, cold[i]);
            int clean = lower_at(tm, e, KVT_AT_READY) != 0;
            if (!index_evictable(tm, e) || e->at[MEM] != KVT_AT_READY || clean == dirty)
                continue;
            if (dirty && !may_drop_dirty)
                return 0;
            if (index_drop(tm, cold[i]) == KVT_E_BUSY)
                continue;
            if (dirty && tm->n_tiers > 1)
                tm->st.dropped_dirty++;
            return 1;
        }
    }
    return 0;
}

int kvt_tm_index_insert(struct kvt_tm *tm, const struct kvt_obj_id *oid, uint32_t *id_out)
{
    int rc = kvt_index_insert(tm->idx, oid, id_out);
    if (rc != KVT_E_INDEXFULL)
        return rc;
    /* Bounded: each try frees an entry or gives up after one look at the coldest chunks. */
    for (int tries = 0; tries < 4; tries++) {
        if (!index_evict_one(tm))
            break;
        rc = kvt_index_insert(tm->idx, oid, id_out);
        if (rc != KVT_E_INDEXFULL)
            return rc;
    }
    tm->st.index_full++;
    return KVT_E_INDEXFULL;
}

/* Chunks DRAM holds. */
static uint64_t dram_objects(const struct kvt_tm *tm)
{
    struct kvt_tier_stats st;
    ops_of(tm, MEM)->stats(tm->tiers[MEM].t, &st);
    return st.objects;
}

/* A DRAM chunk the write-back may start on now: dirty, admitted, nobody holding it. */
static int writeback_candidate(void *arg, uint32_t id)
{
    struct kvt_tm *tm = arg;
    return wants_demotion(tm, id) && entry(tm, id)->refs == 0;
}

static void drain_reads(struct kvt_tm *tm);
static void promote_selected(struct kvt_tm *tm);

void kvt_tm_tick(struct kvt_tm *tm)
{
    if (tm->n_tiers < 2 || tm->stopping)
        return;
    for (uint32_t i = 1; i < tm->n_tiers; i++)
        evict_lower(tm, i);
    drain_reads(tm); /* reads first: a client waits on them */
    if (!tm->flushing)
        promote_selected(tm); /* after them: only when no read waits for a buffer */
    drain_write_through(tm);
    if (!tm->free_demotes)
        return;
    if (tm->flushing) {
        for (uint32_t n = 0; n < FLUSH_SCAN && tm->flush_cursor < tm->idx->cap && tm->free_demotes;
             n++, tm->flush_cursor++) {
            if (wants_demotion(tm, tm->flush_cursor) && entry(tm, tm->flush_cursor)->refs == 0 &&
                demote_start(tm, tm->flush_cursor, NULL) == KVT_E_BUSY)
                break;
        }
        return;
    }
    /* Pressure is measured as memory free for new chunks, per size class being asked for: free
     * slots of a class nobody asks for are no room for the next Put, and a class that has to
     * evict (or found only dirty chunks) needs write-back now, whatever the other classes hold. */
    if (!ops_of(tm, MEM)->pressure(tm->tiers[MEM].t, 1.0 - tm->cfg.tier[MEM].high_watermark))
        return;
    /* Write back the coldest dirty chunks, so eviction finds clean ones to drop. The scan looks
     * past clean chunks (up to WRITEBACK_SCAN of them): a run of clean cold chunks must not hide
     * the dirty ones behind it. */
    if (tm->writeback_idle)
        return;
    uint32_t cold[COLDEST_SCAN];
    size_t n = ops_of(tm, MEM)->coldest(tm->tiers[MEM].t, writeback_candidate, tm, cold,
                                        COLDEST_SCAN, WRITEBACK_SCAN);
    /* A scan that had fewer chunks to look at than its limit saw all of them. */
    tm->writeback_idle = n == 0 && dram_objects(tm) <= WRITEBACK_SCAN;
    for (size_t i = 0; i < n && tm->free_demotes; i++) {
        if (demote_start(tm, cold[i], NULL) == KVT_E_BUSY)
            break;
    }
}

static int tick_hook(void *arg)
{
    kvt_tm_tick(arg);
    return 0;
}

int kvt_tm_busy(const struct kvt_tm *tm)
{
    if (tm->n_tiers < 2)
        return 0;
    for (uint32_t i = 1; i < tm->n_tiers; i++)
        if (ops_of(tm, i)->inflight(tm->tiers[i].t) > 0)
            return 1;
    return tm->demotes_inflight > 0 || tm->sel_inflight > 0 || tm->wt_head || tm->rd_head ||
           tm->del_head || (tm->flushing && tm->flush_cursor < tm->idx->cap);
}

void kvt_tm_flush(struct kvt_tm *tm)
{
    tm->flushing = 1;
}

void kvt_tm_stop(struct kvt_tm *tm)
{
    if (!tm->stopping) {
        tm->stopping = 1;
        /* What waits in the tier manager's own queues will never be answered: hand it back. */
        while (tm->rd_head) {
            struct kvt_tm_io *io = tm->rd_head;
            tm->rd_head = io->next;
            entry(tm, io->entry)->refs--;
            tm->cb->abandoned(tm->cb_arg, io);
        }
        while (tm->wt_head) {
            struct kvt_tm_io *io = tm->wt_head;
            tm->wt_head = io->next;
            tm->cb->abandoned(tm->cb_arg, io);
        }
        tm->rd_tail = tm->wt_tail = NULL;
        tm->sel_q_n = 0; /* background promotions answer nobody: they are simply not started */
        /* Waiting Deletes stay listed (their barriers still complete) but answer nobody. */
        for (struct kvt_tm_del *d = tm->del_head; d; d = d->next) {
            if (d->ctx && tm->cb->delete_abandoned)
                tm->cb->delete_abandoned(tm->cb_arg, d->ctx);
            d->ctx = NULL;
        }
    }
    if (!tm->loop)
        return;
    for (; tm->attached > 0; tm->attached--)
        ops_of(tm, tm->attached - 1)->detach(tm->tiers[tm->attached - 1].t, tm->loop);
    kvt_loop_remove_hook(tm->loop, &tm->hook);
}

/* ---- eviction and allocation -------------------------------------------------------------- */

static uint64_t obj_hash(const struct kvt_obj_id *o)
{
    uint64_t h = o->ns_seed ^ (o->key.lo * 0x9e3779b97f4a7c15ull) ^
                 (o->key.hi * 0xc2b2ae3d27d4eb4full) ^ ((uint64_t)o->variant << 47);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

/* Cost-aware eviction (tier.eviction = cost): what keeping entry id is worth per byte, expected
 * reuse x recompute saved / bytes, with the reads of its object in the frequency sketch (+1: what
 * is stored is read at least once; the sketch remembers reads from before an eviction and lets
 * old ones fade) for the expected reuse and its tokens for the recompute a hit saves. Among
 * chunks of one model this ranks by recent popularity; across models a chunk of more tokens per
 * byte is worth more. With tier.select_promote, the chunk's selection heat (chunks' worth of its
 * rows chosen per window) counts as reads too: a chunk whose rows are selected every step is kept
 * like one read whole as often. */
static double tm_value(void *arg, uint32_t id)
{
    struct kvt_tm *tm = arg;
    const struct kvt_entry *e = entry(tm, id);
    double reads = (double)kvt_freq_estimate(&tm->freq, obj_hash(&e->id));
    return (reads + 1.0 + kvt_tm_sel_heat(tm, e)) * (double)(e->n_tokens ? e->n_tokens : 1) /
           (double)(e->length ? e->length : 1);
}

void kvt_tm_note_read(struct kvt_tm *tm, const struct kvt_obj_id *id)
{
    if (tm->freq.count)
        kvt_freq_add(&tm->freq, obj_hash(id));
}

/* What a selection promotion compares: a chunk's selection heat, plus its reads in the frequency
 * sketch under cost-aware eviction. */
static double sel_worth(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    double w = kvt_tm_sel_heat(tm, e);
    if (tm->freq.count)
        w += (double)kvt_freq_estimate(&tm->freq, obj_hash(&e->id));
    return w;
}

/* The memory tier's eviction callback (cookie = entry id). */
static int tm_evict(void *arg, uint32_t cookie, kvt_tier_loc loc)
{
    struct kvt_tm *tm = arg;
    struct kvt_entry *e = entry(tm, cookie);
    (void)loc;
    if (e->refs || e->state != KVT_ENTRY_READY)
        return 1;
    if (tm->sel_reserving) {
        /* A background promotion takes only clean chunks worth less than the chunk it brings
         * in: it never costs a dirty chunk, nor one hotter than itself. */
        if (!lower_at(tm, e, KVT_AT_READY) || sel_worth(tm, e) >= tm->sel_floor)
            return 1;
        e->at[MEM] = KVT_AT_NONE;
        tm->st.evicted_to_disk++;
        return 0;
    }
    uint32_t writing = lower_at(tm, e, KVT_AT_WRITING);
    if (lower_at(tm, e, KVT_AT_READY) || (writing && tm->evict_force)) {
        /* Clean: DRAM can let go at once. A chunk whose write is still in flight is let go only
         * when memory is short: until the write lands it is unreadable, and lost if it fails. */
        e->at[MEM] = KVT_AT_NONE;
        tm->st.evicted_to_disk++;
        return 0;
    }
    if (writing)
        return 1; /* clean as soon as its write is durable */
    if (tm->n_tiers > 1 && !tm->evict_force) {
        if (!target_of(tm, e)) {
            tm->st.too_big_for_disk++;
        } else if (admitted(tm, e)) {
            return 1; /* dirty: the write-back will make it clean */
        } else {
            tm->st.admission_skipped++;
        }
    } else if (tm->n_tiers > 1) {
        tm->st.dropped_dirty++;
    }
    e->at[MEM] = KVT_AT_NONE;
    kvt_index_remove(tm->idx, cookie);
    return 0;
}

/* Whether some lower tier can still make DRAM clean. */
static int lower_usable(const struct kvt_tm *tm)
{
    for (uint32_t i = 1; i < tm->n_tiers; i++)
        if (!tier_failed(tm, i))
            return 1;
    return 0;
}

/* A DRAM slot for entry id (its length and owner set): see kvt_tm_reserve. */
static int mem_reserve(struct kvt_tm *tm, uint32_t id, struct kvt_tier_write *w)
{
    struct kvt_entry *e = entry(tm, id);
    const struct kvt_tier_ops *ops = ops_of(tm, MEM);
    struct kvt_tier_obj o = {
        .id = e->id, .length = e->length, .n_tokens = e->n_tokens, .cookie = id, .owner = e->owner};
    return ops->reserve(tm->tiers[MEM].t, &o, w);
}

int kvt_tm_reserve(struct kvt_tm *tm, uint32_t id, void **dst)
{
    tm->writeback_idle = 0; /* memory is asked for: look again */
    struct kvt_entry *e = entry(tm, id);
    struct kvt_tier_write w;
    int rc = mem_reserve(tm, id, &w);
    if (rc == KVT_E_FULL && tm->n_tiers > 1 && !tm->cfg.write_through && tm->cfg.dirty_reject &&
        lower_usable(tm)) {
        /* Everything evictable is waiting for write-back, and the operator would rather have
         * the writer wait than lose a chunk. */
        tm->st.rejected_dirty_full++;
        return KVT_E_DIRTYFULL;
    }
    if (rc == KVT_E_FULL && tm->n_tiers > 1) {
        /* Everything evictable is waiting for write-back: rather than fail, drop dirty chunks
         * (counted), the cache's job being to stay available. */
        tm->evict_force = 1;
        rc = mem_reserve(tm, id, &w);
        tm->evict_force = 0;
    }
    if (rc)
        return rc;
    e->loc[MEM] = w.loc;
    e->at[MEM] = KVT_AT_WRITING;
    e->refs = 1; /* the writer: the slot cannot be evicted while it fills */
    *dst = ops_of(tm, MEM)->ptr(tm->tiers[MEM].t, w.loc);
    return 0;
}

void kvt_tm_abort(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    e->refs = 0; /* the writer lets go */
    free_mem(tm, e);
    kvt_index_remove(tm->idx, id);
}

size_t kvt_tm_evict_coldest(struct kvt_tm *tm, kvt_tier_pick_fn pick, void *arg, size_t max,
                            size_t scan_max)
{
    uint32_t ids[COLDEST_SCAN];
    if (max > COLDEST_SCAN)
        max = COLDEST_SCAN;
    size_t n = ops_of(tm, MEM)->coldest(tm->tiers[MEM].t, pick, arg, ids, max, scan_max);
    size_t freed = 0;
    for (size_t i = 0; i < n; i++) {
        struct kvt_entry *e = entry(tm, ids[i]);
        kvt_tier_loc loc = e->loc[MEM];
        if (tm_evict(tm, ids[i], loc) == 0) {
            ops_of(tm, MEM)->remove(tm->tiers[MEM].t, NULL, loc);
            freed++;
        }
    }
    return freed;
}

uint64_t kvt_tm_memory_slot_bytes(const struct kvt_tm *tm, uint64_t bytes)
{
    return ops_of(tm, MEM)->slot_bytes(tm->tiers[MEM].t, bytes);
}

uint64_t kvt_tm_memory_bytes(const struct kvt_tm *tm)
{
    struct kvt_tier_stats st;
    ops_of(tm, MEM)->stats(tm->tiers[MEM].t, &st);
    return st.bytes_capacity;
}

/* ---- reads -------------------------------------------------------------------------------- */

void *kvt_tm_memory_ptr(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    if (e->at[MEM] == KVT_AT_NONE)
        return NULL;
    return ops_of(tm, MEM)->ptr(tm->tiers[MEM].t, e->loc[MEM]);
}

const void *kvt_tm_acquire(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    if (e->at[MEM] != KVT_AT_READY)
        return NULL;
    const struct kvt_tier_ops *ops = ops_of(tm, MEM);
    ops->count(tm->tiers[MEM].t, 1);
    ops->touch(tm->tiers[MEM].t, e->loc[MEM]);
    e->refs++;
    tm->writeback_idle = 0; /* a read may admit it (second access) */
    return ops->ptr(tm->tiers[MEM].t, e->loc[MEM]);
}

void kvt_tm_release(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    KVT_ASSERT(e->refs > 0);
    e->refs--;
    tm->writeback_idle = 0; /* no longer held: it may be written back */
}

void kvt_tm_pin(struct kvt_tm *tm, uint32_t id)
{
    entry(tm, id)->refs++;
}

void kvt_tm_unpin(struct kvt_tm *tm, uint32_t id, uint32_t gen)
{
    struct kvt_entry *e = entry(tm, id);
    if (e->gen != gen || e->state == KVT_ENTRY_FREE || e->refs == 0)
        return;
    e->refs--;
    tm->writeback_idle = 0; /* no longer held: it may be written back */
}

void kvt_tm_count_miss(struct kvt_tm *tm)
{
    ops_of(tm, MEM)->count(tm->tiers[MEM].t, 0);
}

/* A read from lower tier ti (the one it was started on) failed with res. */
static void read_miss(struct kvt_tm *tm, uint32_t id, uint32_t ti, int res)
{
    struct kvt_entry *e = entry(tm, id);
    tm->st.disk_read_misses++;
    if (ti == MEM || ti >= tm->n_tiers)
        return;
    if (res == KVT_E_NOTFOUND || res == KVT_E_CORRUPT) {
        /* The tier dropped the object (failed checksum): so does the index. */
        e->at[ti] = KVT_AT_NONE;
        forget_if_homeless(tm, id);
    }
}

/* Which lower tier a read of e comes from (0: none readable). */
static uint32_t read_source(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    return lower_at(tm, e, KVT_AT_READY);
}

static void promote_done(void *arg, int res)
{
    struct kvt_tm_io *io = arg;
    struct kvt_tm *tm = io->tm;
    struct kvt_entry *e = entry(tm, io->entry);
    e->promoting = 0;
    if (tm->stopping || res < 0) {
        ops_of(tm, MEM)->remove(tm->tiers[MEM].t, NULL, io->slot);
        e->at[MEM] = KVT_AT_NONE;
        e->refs--;
        if (tm->stopping) {
            tm->cb->abandoned(tm->cb_arg, io);
            return;
        }
        read_miss(tm, io->entry, io->src, res);
        tm->cb->get_failed(tm->cb_arg, io, res == KVT_E_CORRUPT ? KVT_E_NOTFOUND : res);
        return;
    }
    e->at[MEM] = KVT_AT_READY;
    e->loc[MEM] = io->slot;
    /* DRAM holds fp16 again, dequantized from a lossy copy: not the bytes the Put gave. */
    if (io->src < tm->n_tiers && (e->form[io->src] == 1 || e->form[io->src] == 2))
        e->lossy = 1; /* q8 or q4 (a clustered variant is kept as given) */
    tm->st.promotions++;
    tm->cb->get_in_dram(tm->cb_arg, io);
}

static void direct_done(void *arg, int res)
{
    struct kvt_tm_io *io = arg;
    struct kvt_tm *tm = io->tm;
    struct kvt_entry *e = entry(tm, io->entry);
    e->refs--;
    io->got = res > 0 ? (uint64_t)res : 0;
    if (tm->stopping) {
        tm->cb->abandoned(tm->cb_arg, io);
        return;
    }
    if (res < 0) {
        read_miss(tm, io->entry, io->src, res);
        tm->cb->get_failed(tm->cb_arg, io, res == KVT_E_CORRUPT ? KVT_E_NOTFOUND : res);
    } else {
        tm->st.disk_direct_reads++;
        tm->cb->get_read_direct(tm->cb_arg, io, e);
    }
}

/* ---- lent whole reads: verified and decoded on a worker --------------------------------------
 * A tier that lends its reads (read_lend) hands the loop the object as stored; its check (an
 * XXH3 pass over every block) and its decoding (the dequantization of a q8/q4 copy, lz4/zstd)
 * run on a worker, into the DRAM slot of a promotion or the client's buffer, and the loop only
 * releases the loan and finishes the read as the tier's own callback would have. */

static void lend_decode_job(struct kvt_job *job)
{
    struct kvt_tm_io *io = job->owner;
    const struct kvt_tier_ops *ops = ops_of(io->tm, io->src);
    job->res = ops->decode(&io->loan, job->dst, job->len, io->stored, &io->form);
}

static void lend_decoded(struct kvt_job *job)
{
    struct kvt_tm_io *io = job->owner;
    struct kvt_tm *tm = io->tm;
    ops_of(tm, io->src)->release(tm->tiers[io->src].t, &io->loan, job->res);
    if (!tm->stopping && kvt_workers_stopped(tm->workers)) {
        /* The daemon's last reap before it stops: an answer would need the workers again (the
         * copy out), so the read is abandoned as one of a stopped tier manager is. */
        tm->stopping = 1;
        io->then(io, job->res);
        tm->stopping = 0;
        return;
    }
    tm->st.reads_decoded_on_workers++;
    io->then(io, job->res);
}

/* The tier's callback: the object is lent (res 0), or the read failed. */
static void lend_done(void *arg, int res)
{
    struct kvt_tm_io *io = arg;
    struct kvt_tm *tm = io->tm;
    if (res < 0) {
        io->then(io, res);
        return;
    }
    if (tm->stopping) {
        ops_of(tm, io->src)->release(tm->tiers[io->src].t, &io->loan, 0);
        io->then(io, 0); /* abandoned */
        return;
    }
    kvt_workers_submit(tm->workers, &io->job);
}

/* Starts a whole read of e from lower tier ti into dst through a loan when the tier lends, with
 * then (promote_done or direct_done) to finish it; otherwise as read or read_stored. */
static int whole_read(struct kvt_tm *tm, struct kvt_tm_io *io, const struct kvt_entry *e,
                      uint32_t ti, void *dst, uint64_t cap, kvt_tier_done_fn then)
{
    const struct kvt_tier_ops *ops = ops_of(tm, ti);
    void *t = tm->tiers[ti].t;
    if (ops->read_lend && ops->decode && ops->release && tm->workers) {
        memset(&io->job, 0, sizeof(io->job));
        io->job.fn = lend_decode_job;
        io->job.done = lend_decoded;
        io->job.ctx = tm;
        io->job.owner = io;
        io->job.dst = dst;
        io->job.len = cap;
        io->then = then;
        return ops->read_lend(t, &e->id, e->loc[ti], &io->loan, lend_done, io);
    }
    if (io->stored && ops->read_stored)
        return ops->read_stored(t, &e->id, e->loc[ti], dst, cap, &io->form, then, io);
    return ops->read(t, &e->id, e->loc[ti], dst, cap, then, io);
}

/* Settles a tier call that may complete at once (0: run its callback now). */
static int settle(int rc, kvt_tier_done_fn done, void *arg, int res_now)
{
    if (rc == 0) {
        done(arg, res_now);
        return 0;
    }
    return rc == KVT_TIER_LATER ? 0 : rc;
}

/* Starts a pinned read. 0 (answered through a callback), KVT_E_BUSY (retry later, still pinned)
 * or an error (unpinned). */
static int read_start(struct kvt_tm *tm, struct kvt_tm_io *io)
{
    uint32_t id = io->entry;
    struct kvt_entry *e = entry(tm, id);
    if (e->at[MEM] == KVT_AT_READY) {
        /* Promoted by another read while this one waited: serve it from DRAM (still pinned). */
        io->tier = ops_of(tm, MEM)->id;
        ops_of(tm, MEM)->touch(tm->tiers[MEM].t, e->loc[MEM]);
        tm->cb->get_in_dram(tm->cb_arg, io);
        return 0;
    }
    uint32_t ti = read_source(tm, e);
    if (!ti && lower_at(tm, e, KVT_AT_WRITING))
        return KVT_E_BUSY; /* readable once its write is durable */
    if (!ti) {
        /* Its write failed while this read waited: the chunk is gone. */
        e->refs--;
        forget_if_homeless(tm, id);
        return KVT_E_NOTFOUND;
    }
    const struct kvt_tier_ops *ops = ops_of(tm, ti);
    void *t = tm->tiers[ti].t;
    io->tier = ops->id;
    io->src = ti; /* a failure concerns this copy, whatever happened to the others meanwhile */
    int rc;
    io->form = e->form[ti];
    if (io->stored && !io->range && ops->read_stored) {
        /* The copy as stored, straight into the destination (a quantized block is not what
         * DRAM serves: never promoted). */
        rc = whole_read(tm, io, e, ti, io->dst, io->cap, direct_done);
        rc = settle(rc, direct_done, io, (int)e->length);
    } else if (io->range && io->stored && ops->read_range_stored) {
        /* The rows as the copy keeps them (quantized rows are not what DRAM serves). */
        rc = ops->read_range_stored(t, &e->id, e->loc[ti], &io->r, io->dst, io->cap, &io->form,
                                    direct_done, io);
        rc = settle(rc, direct_done, io, (int)(io->r.n * io->r.row_bytes));
    } else if (io->range) {
        /* Only the rows, straight into the destination (never promoted: a few rows do not make
         * the chunk hot). */
        rc = ops->read_range(t, &e->id, e->loc[ti], &io->r, io->dst, io->cap, direct_done, io);
        rc = settle(rc, direct_done, io, (int)(io->r.n * io->r.row_bytes));
    } else {
        rc = KVT_E_FULL;
        struct kvt_tier_write w;
        /* A promotion takes DRAM that is free or clean: a read never costs a dirty chunk. */
        if (!e->promoting && mem_reserve(tm, id, &w) == 0) {
            io->slot = w.loc;
            /* Marked before the call, so that a completion is never earlier than its state. */
            e->promoting = 1;
            e->at[MEM] = KVT_AT_WRITING;
            e->loc[MEM] = w.loc;
            rc = whole_read(tm, io, e, ti, ops_of(tm, MEM)->ptr(tm->tiers[MEM].t, w.loc), e->length,
                            promote_done);
            if (rc == KVT_TIER_LATER || rc == 0)
                return settle(rc, promote_done, io, (int)e->length);
            e->promoting = 0;
            e->at[MEM] = KVT_AT_NONE;
            ops_of(tm, MEM)->cancel(tm->tiers[MEM].t, &w);
        }
        if (rc != KVT_E_NOTFOUND && !io->want_dram) {
            /* No DRAM slot (or a promotion already running): read into the client's buffer. */
            rc = whole_read(tm, io, e, ti, io->dst, io->cap, direct_done);
            rc = settle(rc, direct_done, io, (int)e->length);
            if (rc == 0)
                return 0;
        }
        if (rc == KVT_E_FULL && io->want_dram)
            return KVT_E_BUSY; /* an inline answer needs the chunk in DRAM: wait for a slot */
    }
    if (rc == 0 || rc == KVT_E_BUSY)
        return rc;
    e->refs--;
    if (rc == KVT_E_NOTFOUND || rc == KVT_E_CORRUPT) {
        read_miss(tm, id, ti, rc);
        rc = KVT_E_NOTFOUND;
    } else if (io->range && rc == KVT_E_INVAL) {
        /* The copy carries no geometry (written while its namespace was unknown): its rows cannot
         * be addressed; a whole-chunk read still works. */
        rc = KVT_E_GEOMETRY;
    }
    return rc;
}

uint32_t kvt_tm_lower_form(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    uint32_t ti = read_source(tm, e);
    return ti ? e->form[ti] : 0;
}

int kvt_tm_read(struct kvt_tm *tm, struct kvt_tm_io *io, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    if (!read_source(tm, e) && !lower_at(tm, e, KVT_AT_WRITING))
        return KVT_E_NOTFOUND;
    io->entry = id;
    io->gen = e->gen;
    io->tm = tm;
    e->refs++;
    int rc = tm->rd_head ? KVT_E_BUSY : read_start(tm, io);
    if (rc != KVT_E_BUSY)
        return rc;
    /* Every buffer is busy: the read waits its turn (pinned), first come first served. */
    io->next = NULL;
    if (tm->rd_tail)
        tm->rd_tail->next = io;
    else
        tm->rd_head = io;
    tm->rd_tail = io;
    return 0;
}

static void drain_reads(struct kvt_tm *tm)
{
    while (tm->rd_head) {
        struct kvt_tm_io *io = tm->rd_head;
        int rc = read_start(tm, io);
        if (rc == KVT_E_BUSY)
            return;
        tm->rd_head = io->next;
        if (!tm->rd_head)
            tm->rd_tail = NULL;
        if (rc)
            tm->cb->get_failed(tm->cb_arg, io, rc);
    }
}

/* ---- learning from selections -------------------------------------------------------------- */

static uint64_t tm_now_ms(const struct kvt_tm *tm)
{
    if (tm->cfg.clock)
        return tm->cfg.clock(tm->cfg.clock_arg);
    return tm->loop ? kvt_loop_now_ms(tm->loop) : kvt_now_ms();
}

static uint32_t sel_epoch(const struct kvt_tm *tm)
{
    return (uint32_t)(tm_now_ms(tm) / tm->cfg.select_window_ms);
}

/* Evidence of entry e in window `epoch`: the current window's, plus the previous one's at half
 * weight (a sliding window of about 1.5 windows at the cost of one stamp per entry). */
static uint64_t heat_bytes(const struct kvt_entry *e, uint32_t epoch)
{
    uint64_t b = e->heat_sel_bytes > e->heat_read_bytes ? e->heat_sel_bytes : e->heat_read_bytes;
    if (e->heat_epoch == epoch)
        return b;
    return e->heat_epoch + 1u == epoch ? b / 2 : 0;
}

static void heat_roll(struct kvt_entry *e, uint32_t epoch)
{
    if (e->heat_epoch == epoch)
        return;
    if (e->heat_epoch + 1u == epoch) {
        e->heat_sel_bytes /= 2;
        e->heat_read_bytes /= 2;
    } else {
        e->heat_sel_bytes = e->heat_read_bytes = 0;
    }
    e->heat_epoch = epoch;
}

double kvt_tm_sel_heat(const struct kvt_tm *tm, const struct kvt_entry *e)
{
    if (!tm->cfg.select_promote || !e->length)
        return 0;
    return (double)heat_bytes(e, sel_epoch(tm)) / (double)e->length;
}

void kvt_tm_note_rows(struct kvt_tm *tm, uint32_t id, uint64_t bytes, int selected)
{
    struct kvt_entry *e = entry(tm, id);
    if (!tm->cfg.select_promote || e->state != KVT_ENTRY_READY)
        return;
    uint32_t epoch = sel_epoch(tm);
    heat_roll(e, epoch);
    uint64_t before = heat_bytes(e, epoch);
    uint32_t *c = selected ? &e->heat_sel_bytes : &e->heat_read_bytes;
    *c = bytes >= (uint64_t)(UINT32_MAX - *c) ? UINT32_MAX : *c + (uint32_t)bytes;
    if (e->at[MEM] == KVT_AT_READY) {
        /* Recently used: under LRU, what Selects keep choosing stays in DRAM. */
        if (selected)
            ops_of(tm, MEM)->touch(tm->tiers[MEM].t, e->loc[MEM]);
        return;
    }
    /* Queued when the evidence crosses the threshold, and again at each further multiple of it:
     * a promotion that found no room is tried again only once the chunk got that much hotter. */
    double th = tm->cfg.select_promote_ratio * (double)e->length;
    if (e->sel_queued || e->promoting || e->at[MEM] != KVT_AT_NONE || th <= 0 ||
        floor((double)heat_bytes(e, epoch) / th) <= floor((double)before / th) ||
        (double)heat_bytes(e, epoch) < th || !read_source(tm, e))
        return;
    if (tm->sel_q_n == KVT_TM_SEL_QUEUE) {
        tm->st.sel_promote_dropped++;
        return;
    }
    uint32_t at = (tm->sel_q_head + tm->sel_q_n++) % KVT_TM_SEL_QUEUE;
    tm->sel_q[at].id = id;
    tm->sel_q[at].gen = e->gen;
    e->sel_queued = 1;
    tm->st.sel_promotes_queued++;
}

static void sel_io_put(struct kvt_tm *tm, struct kvt_tm_io *io)
{
    io->next = tm->sel_free;
    tm->sel_free = io;
    tm->sel_inflight--;
}

static void sel_promote_done(void *arg, int res)
{
    struct kvt_tm_io *io = arg;
    struct kvt_tm *tm = io->tm;
    struct kvt_entry *e = entry(tm, io->entry);
    e->promoting = 0;
    e->refs--;
    if (tm->stopping || res < 0) {
        ops_of(tm, MEM)->remove(tm->tiers[MEM].t, NULL, io->slot);
        e->at[MEM] = KVT_AT_NONE;
        if (!tm->stopping) {
            tm->st.sel_promote_dropped++;
            read_miss(tm, io->entry, io->src, res);
        }
        sel_io_put(tm, io);
        return;
    }
    e->at[MEM] = KVT_AT_READY;
    e->loc[MEM] = io->slot;
    if (e->form[io->src] == 1 || e->form[io->src] == 2)
        e->lossy = 1; /* dequantized from a q8 or q4 copy, as promote_done says */
    tm->st.promotions++;
    tm->st.sel_promotions++;
    sel_io_put(tm, io);
}

/* The background work of learning from selections: starts the queued promotions, oldest first,
 * while fewer than select_promote_inflight run and no client read waits for a lower tier's
 * buffer. Each takes DRAM only if free memory or clean chunks worth less than it can be had
 * (tm_evict while sel_reserving); one that finds none waits for its next multiple. Bounded:
 * at most KVT_TM_SEL_QUEUE entries are looked at per call. */
static void promote_selected(struct kvt_tm *tm)
{
    uint32_t max = tm->cfg.select_promote_inflight;
    for (uint32_t n = 0; n < KVT_TM_SEL_QUEUE && tm->sel_q_n && tm->sel_free && !tm->rd_head &&
                         tm->sel_inflight < max;
         n++) {
        uint32_t id = tm->sel_q[tm->sel_q_head].id, gen = tm->sel_q[tm->sel_q_head].gen;
        tm->sel_q_head = (tm->sel_q_head + 1) % KVT_TM_SEL_QUEUE;
        tm->sel_q_n--;
        struct kvt_entry *e = entry(tm, id);
        if (e->gen != gen || e->state != KVT_ENTRY_READY || e->sel_queued != 1)
            continue; /* gone (its slot reused) meanwhile */
        e->sel_queued = 0;
        uint32_t ti = read_source(tm, e);
        if (e->at[MEM] != KVT_AT_NONE || e->promoting || !ti)
            continue; /* promoted by a Get meanwhile, or no readable copy below */
        struct kvt_tier_write w;
        tm->sel_floor = sel_worth(tm, e);
        tm->sel_reserving = 1;
        int rc = mem_reserve(tm, id, &w);
        tm->sel_reserving = 0;
        if (rc) {
            tm->st.sel_promote_no_room++;
            continue;
        }
        struct kvt_tm_io *io = tm->sel_free;
        tm->sel_free = io->next;
        tm->sel_inflight++;
        memset(io, 0, sizeof(*io));
        io->tm = tm;
        io->entry = id;
        io->gen = e->gen;
        io->slot = w.loc;
        io->src = ti;
        e->promoting = 1;
        e->at[MEM] = KVT_AT_WRITING;
        e->loc[MEM] = w.loc;
        e->refs++; /* the read fills the slot: nothing may evict, delete or drop the chunk */
        /* As a Get's promotion reads: through a loan verified and decoded on a worker when the
         * tier lends. */
        rc = whole_read(tm, io, e, ti, ops_of(tm, MEM)->ptr(tm->tiers[MEM].t, w.loc), e->length,
                        sel_promote_done);
        if (rc == KVT_TIER_LATER)
            continue;
        if (rc == 0) {
            sel_promote_done(io, (int)e->length);
            continue;
        }
        e->promoting = 0;
        e->at[MEM] = KVT_AT_NONE;
        e->refs--;
        ops_of(tm, MEM)->cancel(tm->tiers[MEM].t, &w);
        sel_io_put(tm, io);
        tm->st.sel_promote_dropped++;
        if (rc == KVT_E_BUSY)
            return; /* every lower-tier buffer is taken: the next tick */
        if (rc == KVT_E_NOTFOUND || rc == KVT_E_CORRUPT)
            read_miss(tm, id, ti, rc);
    }
}

/* ---- deletes ------------------------------------------------------------------------------- */

int kvt_tm_delete(struct kvt_tm *tm, uint32_t id)
{
    struct kvt_entry *e = entry(tm, id);
    /* A chunk whose lower write is in flight is in use too: deleting it now would leave an object
     * that becomes durable after the answer, and a crash could bring it back. */
    if (e->refs || e->promoting || lower_at(tm, e, KVT_AT_WRITING))
        return KVT_E_INUSE;
    for (uint32_t i = 1; i < tm->n_tiers; i++) {
        if (e->at[i] != KVT_AT_READY)
            continue;
        int rc = ops_of(tm, i)->remove(tm->tiers[i].t, &e->id, e->loc[i]);
        if (rc == KVT_E_BUSY)
            return rc;
        e->at[i] = KVT_AT_NONE;
        if (rc == 0)
            tm->del_staged |= 1u << i;
    }
    free_mem(tm, e);
    kvt_index_remove(tm->idx, id);
    return 0;
}

/* Where n statuses fit in the ring, which is used in FIFO order: [tail, head) or, wrapped,
 * [tail, end) and [0, head). */
static int del_ring_fit(struct kvt_tm *tm, uint32_t n, uint32_t *off)
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

int32_t *kvt_tm_delete_begin(struct kvt_tm *tm, uint32_t n)
{
    tm->del_staged = 0;
    if (n > KVT_TM_DEL_KEYS_MAX)
        return NULL;
    if (tm->n_tiers < 2)
        return tm->immediate;
    if (!tm->free_dels || !del_ring_fit(tm, n, &tm->del_off)) {
        tm->st.delete_busy++;
        return NULL;
    }
    return tm->del_status + tm->del_off;
}

/* Answers the waiting Deletes whose barriers all completed, oldest first (the ring's order). */
static void dels_answer(struct kvt_tm *tm)
{
    while (tm->del_head && tm->del_head->waiting == 0) {
        struct kvt_tm_del *d = tm->del_head;
        tm->del_head = d->next;
        if (!tm->del_head)
            tm->del_tail = NULL;
        if (!tm->stopping)
            tm->cb->delete_done(tm->cb_arg, d->ctx, d->status, d->n);
        tm->ds_tail = d->off + d->n;
        if (--tm->n_dels_waiting == 0)
            tm->ds_head = tm->ds_tail = 0;
        d->ctx = NULL;
        d->next = tm->free_dels;
        tm->free_dels = d;
    }
}

static void delete_durable(void *arg, int res)
{
    struct kvt_tm_del *d = arg;
    if (res)
        KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier", "delete answered without a durable tombstone: %s",
                            kvt_strerror(res));
    KVT_ASSERT(d->waiting > 0);
    d->waiting--;
    dels_answer(d->tm);
}

int kvt_tm_delete_end(struct kvt_tm *tm, void *ctx, int32_t *status, uint32_t n)
{
    if (tm->n_tiers < 2 || !tm->del_staged)
        return 0;
    struct kvt_tm_del *d = tm->free_dels;
    /* begin handed this ring space out, or returned NULL and nothing was deleted. */
    KVT_ASSERT(d && status == tm->del_status + tm->del_off);
    d->waiting = 1; /* held until every barrier is asked for */
    d->tm = tm;
    for (uint32_t i = 1; i < tm->n_tiers; i++) {
        if (!(tm->del_staged & (1u << i)))
            continue;
        d->sync[i].done = delete_durable;
        d->sync[i].arg = d;
        int rc = ops_of(tm, i)->sync(tm->tiers[i].t, &d->sync[i]);
        if (rc == KVT_TIER_LATER)
            d->waiting++;
        else if (rc < 0)
            KVT_LOG_RATELIMITED(KVT_LOG_WARN, "tier",
                                "delete answered without a durable tombstone: %s",
                                kvt_strerror(rc));
    }
    if (--d->waiting == 0)
        return 0;
    tm->free_dels = d->next;
    d->ctx = ctx;
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

/* ---- start, stop -------------------------------------------------------------------------- */

struct load_ctx {
    struct kvt_tm *tm;
    uint32_t tier;
    uint64_t loaded, skipped;
    struct kvt_obj_id orphans[256]; /* objects the index could not take, per pass */
    kvt_tier_loc orphan_locs[256];
    uint32_t n_orphans;
};

static int load_object(void *arg, const struct kvt_tier_obj *o, kvt_tier_loc loc)
{
    struct load_ctx *lc = arg;
    struct kvt_tm *tm = lc->tm;
    uint32_t id = kvt_index_find(tm->idx, &o->id);
    if (id != KVT_INDEX_NIL) {
        struct kvt_entry *e = entry(tm, id);
        if (e->length != o->length) {
            lc->skipped++; /* another tier's copy disagrees: this one goes */
            return 0;
        }
    } else if (kvt_index_insert(tm->idx, &o->id, &id)) {
        lc->skipped++;
        return 0;
    } else {
        lc->loaded++;
    }
    struct kvt_entry *e = entry(tm, id);
    e->state = KVT_ENTRY_READY;
    e->at[lc->tier] = KVT_AT_READY;
    e->loc[lc->tier] = loc;
    e->form[lc->tier] = (uint8_t)o->form;
    e->form_want = (uint8_t)o->form; /* a copy written again keeps its form */
    e->length = o->length;
    e->n_tokens = o->n_tokens;
    return 0;
}

static int collect_orphan(void *arg, const struct kvt_tier_obj *o, kvt_tier_loc loc)
{
    struct load_ctx *lc = arg;
    uint32_t id = kvt_index_find(lc->tm->idx, &o->id);
    if (id != KVT_INDEX_NIL && entry(lc->tm, id)->at[lc->tier] == KVT_AT_READY &&
        entry(lc->tm, id)->length == o->length)
        return 0;
    lc->orphan_locs[lc->n_orphans] = loc;
    lc->orphans[lc->n_orphans++] = o->id;
    return lc->n_orphans == sizeof(lc->orphans) / sizeof(lc->orphans[0]);
}

/* Objects that did not fit in the index would hold space no chunk can ever reach: remove them, a
 * batch per pass over the tier, waiting whenever the tier has staged as many removals as it can. */
static uint64_t remove_orphans(struct kvt_tm *tm, struct load_ctx *lc)
{
    const struct kvt_tier_ops *ops = ops_of(tm, lc->tier);
    void *t = tm->tiers[lc->tier].t;
    uint64_t removed = 0;
    for (uint64_t pass = 0; pass <= lc->skipped / 256 + 1; pass++) {
        lc->n_orphans = 0;
        ops->enumerate(t, collect_orphan, lc);
        if (lc->n_orphans == 0)
            break;
        for (uint32_t i = 0; i < lc->n_orphans; i++) {
            int rc = ops->remove(t, &lc->orphans[i], lc->orphan_locs[i]);
            for (int tries = 0; rc == KVT_E_BUSY && tries < 100; tries++) {
                ops->wait(t, 100);
                rc = ops->remove(t, &lc->orphans[i], lc->orphan_locs[i]);
            }
            if (rc)
                return removed; /* latched failed: nothing more to do */
            removed++;
        }
    }
    return removed;
}

static void recover(struct kvt_tm *tm)
{
    uint64_t t0 = kvt_now_ms();
    struct load_ctx *lc = kvt_calloc(KVT_ALLOC_TIER, 1, sizeof(*lc));
    if (!lc)
        return;
    for (uint32_t i = 1; i < tm->n_tiers; i++) {
        const struct kvt_tier_ops *ops = ops_of(tm, i);
        if (!ops->enumerate)
            continue;
        memset(lc, 0, sizeof(*lc));
        lc->tm = tm;
        lc->tier = i;
        ops->enumerate(tm->tiers[i].t, load_object, lc);
        tm->st.recovered_objects += lc->loaded;
        if (lc->skipped) {
            uint64_t removed = remove_orphans(tm, lc);
            tm->st.recovery_removed += removed;
            KVT_WARN("tier",
                     "%llu %s objects do not fit in the index (index.max_objects too small): "
                     "%llu removed",
                     (unsigned long long)lc->skipped, ops->name, (unsigned long long)removed);
        }
    }
    kvt_free(KVT_ALLOC_TIER, lc);
    tm->st.recovery_ms = kvt_now_ms() - t0;
}

/* ---- metadata at start ---------------------------------------------------------------------- */

#define LOAD_INFLIGHT 64
#define LOAD_BYTES_MAX (64u << 20)
#define LOAD_LOG_MS 2000

/* A chunk whose metadata is to be read: its entry and how many bytes a buffer needs. */
struct load_item {
    uint32_t entry;
    uint32_t len;
};

struct load_slot {
    struct load_meta *lm;
    uint32_t entry;
    void *buf;
    uint32_t len;
};

struct load_meta {
    struct kvt_tm *tm;
    uint32_t tier;
    struct load_item *items;
    uint64_t n, cap;
    struct load_slot slots[LOAD_INFLIGHT];
    uint32_t free_slots[LOAD_INFLIGHT];
    uint32_t n_free;
    uint64_t bytes_inflight, done;
};

static int collect_meta(void *arg, const struct kvt_tier_obj *o, kvt_tier_loc loc)
{
    struct load_meta *lm = arg;
    struct kvt_tm *tm = lm->tm;
    (void)loc;
    if (!o->meta_len || lm->n == lm->cap)
        return lm->n == lm->cap;
    uint32_t id = kvt_index_find(tm->idx, &o->id);
    /* Only a copy the index serves from this tier: one it disagreed with was dropped. */
    if (id == KVT_INDEX_NIL || entry(tm, id)->at[lm->tier] != KVT_AT_READY ||
        entry(tm, id)->length != o->length)
        return 0;
    lm->items[lm->n++] = (struct load_item){.entry = id, .len = o->meta_len};
    return 0;
}

static void load_finish(struct load_meta *lm, uint32_t slot, int res)
{
    struct kvt_tm *tm = lm->tm;
    struct load_slot *sl = &lm->slots[slot];
    if (res >= 0) {
        tm->st.meta_loaded++;
        tm->st.meta_load_bytes += (uint64_t)res;
        tm->cb->meta_loaded(tm->cb_arg, sl->entry, sl->len, sl->buf, (size_t)res, 0);
    } else {
        tm->st.meta_load_failures++;
        tm->cb->meta_loaded(tm->cb_arg, sl->entry, sl->len, NULL, 0, res);
    }
    kvt_free(KVT_ALLOC_TIER, sl->buf);
    sl->buf = NULL;
    lm->bytes_inflight -= sl->len;
    lm->free_slots[lm->n_free++] = slot;
    lm->done++;
}

static void load_done(void *arg, int res)
{
    struct load_slot *sl = arg;
    load_finish(sl->lm, (uint32_t)(sl - sl->lm->slots), res);
}

/* Reads the metadata of the listed chunks of tier lm->tier, as many at once as the slots, the
 * byte bound and the tier allow, waiting for completions in between. */
static int load_tier(struct load_meta *lm)
{
    struct kvt_tm *tm = lm->tm;
    const struct kvt_tier_ops *ops = ops_of(tm, lm->tier);
    void *t = tm->tiers[lm->tier].t;
    uint64_t next = 0, t0 = kvt_now_ms(), logged = t0;
    int rc = 0;

    lm->n_free = LOAD_INFLIGHT;
    for (uint32_t i = 0; i < LOAD_INFLIGHT; i++)
        lm->free_slots[i] = LOAD_INFLIGHT - 1 - i;
    lm->done = 0;
    while (lm->done < lm->n) {
        while (next < lm->n && lm->n_free &&
               (lm->bytes_inflight == 0 ||
                lm->bytes_inflight + lm->items[next].len <= LOAD_BYTES_MAX)) {
            const struct load_item *it = &lm->items[next];
            /* Asked just before the read, so that what the caller keeps bounds what is read. */
            if (!tm->cb->meta_want(tm->cb_arg, it->entry, it->len)) {
                next++;
                lm->done++;
                continue;
            }
            uint32_t slot = lm->free_slots[--lm->n_free];
            struct load_slot *sl = &lm->slots[slot];
            sl->lm = lm;
            sl->entry = it->entry;
            sl->len = it->len;
            sl->buf = kvt_malloc(KVT_ALLOC_TIER, it->len);
            lm->bytes_inflight += it->len;
            if (!sl->buf) {
                load_finish(lm, slot, KVT_E_NOMEM);
                rc = KVT_E_NOMEM;
                next++;
                continue;
            }
            struct kvt_entry *e = entry(tm, it->entry);
            int r = ops->read_meta(t, &e->id, e->loc[lm->tier], sl->buf, it->len, load_done, sl);
            next++;
            if (r == KVT_TIER_LATER)
                continue;
            if (r == KVT_E_BUSY && lm->n_free + 1 < LOAD_INFLIGHT) {
                /* The tier's buffers are taken by our reads: this one waits for a completion
                 * (and is asked for again: the caller counted it as wanted). */
                kvt_free(KVT_ALLOC_TIER, sl->buf);
                sl->buf = NULL;
                lm->bytes_inflight -= it->len;
                lm->free_slots[lm->n_free++] = slot;
                tm->cb->meta_loaded(tm->cb_arg, it->entry, it->len, NULL, 0, KVT_E_BUSY);
                next--;
                break;
            }
            /* Refused at once (a tier that is busy with nothing of ours in flight, too): this
             * chunk goes without its metadata. A metadata read always completes later. */
            load_finish(lm, slot, r ? r : KVT_E_INVAL);
        }
        if (lm->done < lm->n)
            ops->wait(t, 100);
        uint64_t now = kvt_now_ms();
        if (now - logged >= LOAD_LOG_MS) {
            logged = now;
            KVT_INFO("tier", "reading metadata from %s: %llu of %llu chunks (%llu MiB) in %llu ms",
                     ops->name, (unsigned long long)lm->done, (unsigned long long)lm->n,
                     (unsigned long long)(tm->st.meta_load_bytes >> 20),
                     (unsigned long long)(now - t0));
        }
    }
    return rc;
}

int kvt_tm_load_meta(struct kvt_tm *tm)
{
    uint64_t t0 = kvt_now_ms();
    int rc = 0;
    if (!tm->cb->meta_want || !tm->cb->meta_loaded)
        return 0;
    struct load_meta *lm = kvt_calloc(KVT_ALLOC_TIER, 1, sizeof(*lm));
    if (!lm)
        return KVT_E_NOMEM;
    for (uint32_t i = 1; i < tm->n_tiers && rc == 0; i++) {
        const struct kvt_tier_ops *ops = ops_of(tm, i);
        if (!(ops->caps & KVT_TIER_CAP_META) || !ops->read_meta || !ops->enumerate)
            continue;
        struct kvt_tier_stats ts;
        ops->stats(tm->tiers[i].t, &ts);
        lm->tm = tm;
        lm->tier = i;
        lm->n = 0;
        lm->cap = ts.objects < tm->idx->cap ? ts.objects : tm->idx->cap;
        lm->items = lm->cap ? kvt_malloc(KVT_ALLOC_TIER, lm->cap * sizeof(*lm->items)) : NULL;
        if (lm->cap && !lm->items) {
            rc = KVT_E_NOMEM;
            break;
        }
        ops->enumerate(tm->tiers[i].t, collect_meta, lm);
        rc = load_tier(lm);
        kvt_free(KVT_ALLOC_TIER, lm->items);
        lm->items = NULL;
    }
    kvt_free(KVT_ALLOC_TIER, lm);
    tm->st.meta_load_ms = kvt_now_ms() - t0;
    return rc;
}

int kvt_tm_create(const struct kvt_tm_config *cfg, struct kvt_index *idx,
                  const struct kvt_tier *tiers, uint32_t n_tiers, struct kvt_workers *workers,
                  struct kvt_loop *loop, const struct kvt_tm_callbacks *cb, void *cb_arg,
                  struct kvt_tm **out)
{
    if (!n_tiers || n_tiers > KVT_TM_TIERS_MAX || !(tiers[0].ops->caps & KVT_TIER_CAP_MEMORY) ||
        !cb || (n_tiers > 1 && !workers))
        return KVT_E_INVAL;
    struct kvt_tm *tm = kvt_calloc(KVT_ALLOC_TIER, 1, sizeof(*tm));
    if (!tm)
        return KVT_E_NOMEM;
    tm->cfg = *cfg;
    tm->idx = idx;
    memcpy(tm->tiers, tiers, n_tiers * sizeof(*tiers));
    tm->n_tiers = n_tiers;
    tm->workers = workers;
    tm->loop = loop;
    tm->cb = cb;
    tm->cb_arg = cb_arg;
    if (tm->cfg.select_window_ms == 0)
        tm->cfg.select_window_ms = 1;
    if (tm->cfg.select_promote_inflight == 0)
        tm->cfg.select_promote_inflight = 1;
    if (tm->cfg.select_promote_inflight > KVT_TM_SEL_INFLIGHT_MAX)
        tm->cfg.select_promote_inflight = KVT_TM_SEL_INFLIGHT_MAX;
    for (uint32_t i = 0; i < KVT_TM_SEL_INFLIGHT_MAX; i++) {
        tm->sel_io[i].next = tm->sel_free;
        tm->sel_free = &tm->sel_io[i];
    }
    ops_of(tm, MEM)->set_evict(tm->tiers[MEM].t, tm_evict, tm);
    int rc = KVT_E_NOMEM;
    if (cfg->eviction_cost) {
        if (kvt_freq_init(&tm->freq, idx->cap))
            goto fail;
        if (ops_of(tm, MEM)->set_value)
            ops_of(tm, MEM)->set_value(tm->tiers[MEM].t, tm_value, tm);
    }
    if (n_tiers > 1) {
        tm->n_demotes = cfg->writes_max ? cfg->writes_max : 1;
        tm->demotes = kvt_calloc(KVT_ALLOC_TIER, tm->n_demotes, sizeof(*tm->demotes));
        tm->dels = kvt_calloc(KVT_ALLOC_TIER, KVT_TM_DELS_MAX, sizeof(*tm->dels));
        tm->del_status = kvt_calloc(KVT_ALLOC_TIER, KVT_TM_DEL_STATUS_MAX, sizeof(int32_t));
        if (!tm->demotes || !tm->dels || !tm->del_status)
            goto fail;
        for (uint32_t i = 0; i < tm->n_demotes; i++) {
            tm->demotes[i].next_free = tm->free_demotes;
            tm->free_demotes = &tm->demotes[i];
        }
        for (uint32_t i = 0; i < KVT_TM_DELS_MAX; i++) {
            tm->dels[i].next = tm->free_dels;
            tm->free_dels = &tm->dels[i];
        }
        recover(tm);
    }
    if (loop) {
        for (; tm->attached < n_tiers; tm->attached++) {
            uint32_t i = tm->attached;
            if ((rc = ops_of(tm, i)->attach(tm->tiers[i].t, loop)))
                goto fail;
        }
        kvt_loop_before_sleep(loop, &tm->hook, tick_hook, tm);
    } else {
        tm->attached = 0;
    }
    *out = tm;
    return 0;
fail:
    kvt_tm_destroy(tm);
    return rc;
}

void kvt_tm_destroy(struct kvt_tm *tm)
{
    if (!tm)
        return;
    kvt_tm_stop(tm);
    ops_of(tm, MEM)->set_evict(tm->tiers[MEM].t, NULL, NULL);
    kvt_free(KVT_ALLOC_TIER, tm->demotes);
    kvt_free(KVT_ALLOC_TIER, tm->dels);
    kvt_free(KVT_ALLOC_TIER, tm->del_status);
    kvt_freq_deinit(&tm->freq);
    kvt_free(KVT_ALLOC_TIER, tm);
}
