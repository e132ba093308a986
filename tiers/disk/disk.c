/*
 * The disk tier (see disk.h and docs/disk.md). Objects live in 4 KiB-aligned extents of
 * preallocated files; an in-memory hash index maps (namespace seed, key) to extent, lengths and
 * sequence number. Durability is a group commit: once data writes have completed, one journal
 * write (records naming each new object and each tombstone) and one fdatasync per touched file
 * make the whole batch durable, and only then do callbacks report success. The journal is folded
 * into a checkpoint file every checkpoint_records records, at start and at clean shutdown, so
 * restart reads one checkpoint plus a bounded journal and validates the header of each object
 * written after the checkpoint.
 *
 * Every operation owns a run of 4 KiB staging pages in one registered buffer for its whole life
 * (encode, I/O, verify, decode), sized by what it transfers: a whole object takes its extent's
 * size, a range read only the covering blocks. The pages come from a first-fit allocator over the
 * buffer (the extent allocator again), so the data path never allocates, and operations in flight
 * are bounded by queue_depth and by the pages free.
 */
#include "common/alloc.h"
#include "tiers/disk/disk.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>
#include <liburing.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/time.h"
#include "kvtier/errors.h"
#include "tiers/disk/extent.h"
#include "tiers/disk/object.h"

#define BLOCK KVT_EXTENT_BLOCK_BYTES
#define OP_NONE UINT32_MAX
#define CKPT_NAME "kvtier-disk.ckpt"
#define CKPT_TMP_NAME "kvtier-disk.ckpt.tmp"
/* Two journals alternate: while a checkpoint is being written from a snapshot, new records go to
 * the other one, so that the previous checkpoint and both journals stay a valid history until the
 * new checkpoint is in place. */
#define JOURNAL_NAME_0 "kvtier-disk.journal"
#define JOURNAL_NAME_1 "kvtier-disk.journal.1"
/* Tombstones staged per group commit; past it kvt_disk_remove answers KVT_E_BUSY. */
#define DELS_PER_COMMIT 4096u
/* Journal and checkpoint records. */
#define REC_BYTES 96u
#define REC_MAGIC 0x4a54564bu /* "KVTJ" */
#define REC_PUT 1u
#define REC_DEL 2u
#define CKPT_MAGIC 0x4354564bu /* "KVTC" */
#define CKPT_VERSION 2u
#define CKPT_HEADER_BYTES 64u
#define SB_MAGIC 0x5354564bu /* "KVTS" */
/* Version 2: objects in format v2 (object.h). A v1 store is refused at start (see superblocks). */
#define SB_VERSION 2u
/* Journal bytes read per pread during recovery. */
#define RECOVERY_READ_BYTES (1u << 20)
#define UD_OP 1u
#define UD_COMMIT 2u

struct ient {
    uint64_t ns_seed, key_lo, key_hi, seq;
    uint64_t raw_len, stored_len, start;
    uint32_t blocks, n_tokens;
    uint32_t row_bytes; /* geometry of the blocked layout, for range reads */
    uint16_t n_layers;  /* without reading the header */
    uint16_t block_tokens;
    uint16_t codec;
    uint8_t file;
    uint8_t used;    /* slot in use */
    uint8_t unknown; /* recovery: written after the checkpoint, header not validated yet */
    uint8_t dead;    /* recovery only: a tombstone (seq is the removal's), not an object */
    uint8_t found;   /* recovery scan: the object was read back whole and verified */
};

enum op_kind { OP_WRITE = 1, OP_READ = 2 };
enum op_state { ST_FREE = 0, ST_RESERVED, ST_INFLIGHT, ST_READY, ST_COMMITTING, ST_DONE, ST_LENT };

struct op {
    uint8_t kind, state, file;
    uint8_t range; /* a range read: rows [t0, t0 + n_rows) of one layer */
    uint32_t next;
    uint32_t codec, n_tokens, blocks;
    uint32_t sp_start, sp_pages; /* staging pages */
    uint64_t io_off, io_bytes;   /* the transfer, relative to the extent */
    uint32_t layer, t0, n_rows;
    struct kvt_object_meta m; /* writes: the layout; range reads: the layout from the index */
    struct kvt_obj_id id;
    uint64_t start, seq, raw_len, stored_len;
    void *dst;
    size_t cap;
    kvt_tier_done_fn done;
    kvt_disk_lent_fn lent_done; /* set for reads that lend the undecoded object */
    void *arg;
    int res;
    uint64_t submit_ns; /* when the read or data write went to the ring (latency stats) */
};

struct olist {
    uint32_t head, tail, n;
};

struct pfree {
    uint64_t start, blocks, gen;
    uint8_t file;
};

struct dfile {
    int fd;
    int odirect;
    struct kvt_extent *ext;
    uint64_t bytes;
};

struct kvt_disk {
    struct kvt_disk_config cfg;
    char meta_dir[PATH_MAX];
    struct dfile files[KVT_DISK_PATHS_MAX];
    uint32_t n_files;
    int journal_fds[2];
    int jactive; /* journal the commits append to (registered file n_files + jactive) */
    int event_fd;
    struct io_uring ring;
    int ring_ready;
    struct kvt_codec *codec;

    unsigned char *staging; /* registered as buffer 0 */
    size_t staging_bytes;
    struct kvt_extent *sp; /* staging pages */
    struct op *ops;        /* queue_depth */
    uint32_t n_ops;
    uint32_t *free_ops;
    uint32_t n_free_ops;
    struct olist ready; /* data written, waiting for a group commit */
    struct olist done;  /* completed, callback pending */
    uint32_t inflight;  /* ops not free */
    uint32_t reserved;  /* of which reserved writes not yet submitted (no I/O) */
    uint32_t lent;      /* of which read buffers lent to the caller */

    struct ient *index;
    uint64_t index_mask;
    uint32_t index_count;
    uint32_t index_dead; /* recovery only: tombstones among index_count */
    uint64_t *used_bits; /* one bit per index slot: a snapshot visits only used slots */
    uint64_t allocated;  /* extents allocated in all files */

    struct pfree *pfree;
    uint32_t n_pfree, pfree_max;

    /* Group commit: journal buffers alternate between staging and in flight. */
    unsigned char *jbuf[2];
    uint32_t jrecs[2];
    uint32_t jcap;  /* records per buffer */
    uint32_t jdels; /* tombstones in the staging buffer */
    int jstage;
    uint64_t journal_off;
    uint64_t journal_since_ckpt;
    struct {
        int inflight;
        uint32_t pending;
        int res;
        uint64_t gen;
        struct olist ops;
    } commit;
    uint64_t gen_next;    /* generation the next commit will get */
    uint64_t gen_durable; /* last generation known durable */
    uint64_t ckpt_gen;    /* journal records carry the generation of their checkpoint */

    /* Checkpoint thread. The loop copies the index into snap (live entries only) and hands
     * snap, ckpt_buf and the journal to empty to the thread, which owns them until it reports
     * done; the loop touches neither until then, so they need no lock. The mutex guards only
     * the request and done flags. */
    unsigned char *ckpt_buf; /* encoded checkpoint; recovery's read buffer before the thread */
    size_t ckpt_buf_bytes;
    struct ient *snap; /* objects_max entries */
    struct {
        pthread_t thread;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int started;   /* thread running */
        int stop;      /* destroy: thread exits */
        int requested; /* a job is handed to the thread */
        int done;      /* the thread finished the job; res is its result */
        int busy;      /* loop side: a job is out (requested and not yet reaped) */
        int res;
        uint64_t count, gen, next_seq;
        int trunc_fd;      /* journal the thread empties once the checkpoint is in place */
        uint64_t write_us; /* how long the thread took */
    } ck;

    struct kvt_disk_sync *sync_head, *sync_tail;   /* waiting for their generation */
    struct kvt_disk_sync *sdone_head, *sdone_tail; /* durable: callback pending */

    uint64_t store_id; /* in every superblock and in the checkpoint */
    uint64_t next_seq;
    uint32_t next_file;
    uint32_t io_err_streak;
    int failed;
    int plugged;
    int in_poll;
    struct kvt_disk_stats st;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static void set_err(const struct kvt_disk_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(const struct kvt_disk_config *cfg, const char *fmt, ...)
{
    va_list ap;

    if (!cfg->err_buf || cfg->err_buf_bytes == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(cfg->err_buf, cfg->err_buf_bytes, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t blocks_for(uint64_t bytes)
{
    return (bytes + BLOCK - 1) / BLOCK;
}

/* ---- index: open addressing, linear probing, backward-shift deletion ----------------------- */

static uint64_t id_hash(uint64_t ns, uint64_t lo, uint64_t hi)
{
    uint64_t h = ns * 0x9e3779b97f4a7c15ull ^ lo ^ (hi * 0xc2b2ae3d27d4eb4full);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

static void slot_mark(struct kvt_disk *d, uint64_t i, int used)
{
    d->index[i].used = (uint8_t)used;
    if (used)
        d->used_bits[i / 64] |= 1ull << (i % 64);
    else
        d->used_bits[i / 64] &= ~(1ull << (i % 64));
}

static struct ient *index_find(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    uint64_t i = id_hash(id->ns_seed, id->key.lo, id->key.hi) & d->index_mask;

    for (uint64_t n = 0; n <= d->index_mask; n++, i = (i + 1) & d->index_mask) {
        struct ient *e = &d->index[i];
        if (!e->used)
            return NULL;
        if (e->ns_seed == id->ns_seed && e->key_lo == id->key.lo && e->key_hi == id->key.hi)
            return e;
    }
    return NULL;
}

/* Returns the entry for id, claiming an empty slot when absent; NULL when the index holds
 * objects_max objects already. A tombstone (recovery only) may take any slot but the last free
 * one, which keeps every probe run finite. */
static struct ient *index_claim_as(struct kvt_disk *d, const struct kvt_obj_id *id, int dead)
{
    uint64_t i = id_hash(id->ns_seed, id->key.lo, id->key.hi) & d->index_mask;

    for (uint64_t n = 0; n <= d->index_mask; n++, i = (i + 1) & d->index_mask) {
        struct ient *e = &d->index[i];
        if (!e->used) {
            if (d->index_count >= d->index_mask ||
                (!dead && d->index_count - d->index_dead >= d->cfg.objects_max))
                return NULL;
            memset(e, 0, sizeof(*e));
            slot_mark(d, i, 1);
            e->ns_seed = id->ns_seed;
            e->key_lo = id->key.lo;
            e->key_hi = id->key.hi;
            e->dead = (uint8_t)dead;
            d->index_count++;
            d->index_dead += (uint32_t)dead;
            return e;
        }
        if (e->ns_seed == id->ns_seed && e->key_lo == id->key.lo && e->key_hi == id->key.hi)
            return e;
    }
    return NULL;
}

static struct ient *index_claim(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    return index_claim_as(d, id, 0);
}

/* Recovery's entry for id: e when it is live, e again when it was removed and is written again
 * (its write was in flight when it was removed) and there is room, a new entry when there was
 * none; NULL when the index is full. */
static struct ient *claim_or_revive(struct kvt_disk *d, const struct kvt_obj_id *id, struct ient *e)
{
    if (!e)
        return index_claim(d, id);
    if (e->dead) {
        if (d->index_count - d->index_dead >= d->cfg.objects_max)
            return NULL;
        e->dead = 0;
        d->index_dead--;
    }
    return e;
}

static void index_delete(struct kvt_disk *d, struct ient *e)
{
    uint64_t i = (uint64_t)(e - d->index), j = i;

    assert(e->used && d->index_count > 0);
    slot_mark(d, i, 0);
    d->index_count--;
    if (e->dead)
        d->index_dead--;
    /* Shift later members of the probe run back so lookups never stop at the hole early. */
    for (uint64_t n = 0; n < d->index_mask; n++) {
        j = (j + 1) & d->index_mask;
        struct ient *f = &d->index[j];
        if (!f->used)
            break;
        uint64_t home = id_hash(f->ns_seed, f->key_lo, f->key_hi) & d->index_mask;
        /* f may move to i when its home is not cyclically within (i, j]. */
        if (((j - home) & d->index_mask) >= ((j - i) & d->index_mask)) {
            d->index[i] = *f;
            slot_mark(d, i, 1);
            slot_mark(d, j, 0);
            i = j;
        }
    }
}

static void ient_info(const struct ient *e, struct kvt_disk_obj_info *out)
{
    out->id.ns_seed = e->ns_seed;
    out->id.key.lo = e->key_lo;
    out->id.key.hi = e->key_hi;
    out->n_tokens = e->n_tokens;
    out->codec = e->codec;
    out->raw_len = e->raw_len;
    out->stored_len = e->stored_len;
    out->seq = e->seq;
    out->n_layers = e->n_layers;
    out->row_bytes = e->row_bytes;
    out->block_tokens = e->block_tokens;
    out->file = e->file;
    out->offset_bytes = e->start * BLOCK;
}

/* ---- journal and checkpoint records --------------------------------------------------------- */

struct rec {
    uint32_t type, codec, gen, n_tokens, blocks;
    uint32_t n_layers, block_tokens, row_bytes;
    uint8_t file;
    uint64_t seq, ns_seed, key_lo, key_hi, start, raw_len, stored_len;
};

static void rec_encode(unsigned char *p, const struct rec *r)
{
    memset(p, 0, REC_BYTES);
    put_le(p + 0, REC_MAGIC, 4);
    put_le(p + 4, r->type, 1);
    put_le(p + 5, r->file, 1);
    put_le(p + 6, r->codec, 2);
    put_le(p + 8, r->gen, 4);
    put_le(p + 12, r->n_tokens, 4);
    put_le(p + 16, r->seq, 8);
    put_le(p + 24, r->ns_seed, 8);
    put_le(p + 32, r->key_lo, 8);
    put_le(p + 40, r->key_hi, 8);
    put_le(p + 48, r->start, 8);
    put_le(p + 56, r->blocks, 4);
    put_le(p + 64, r->raw_len, 8);
    put_le(p + 72, r->stored_len, 8);
    put_le(p + 80, r->n_layers, 2);
    put_le(p + 82, r->block_tokens, 2);
    put_le(p + 84, r->row_bytes, 4);
    put_le(p + 88, XXH3_64bits(p, 88), 8);
}

static int rec_decode(const unsigned char *p, struct rec *r)
{
    if (get_le(p, 4) != REC_MAGIC || get_le(p + 88, 8) != XXH3_64bits(p, 88))
        return KVT_E_CORRUPT;
    r->type = (uint32_t)get_le(p + 4, 1);
    r->file = (uint8_t)get_le(p + 5, 1);
    r->codec = (uint32_t)get_le(p + 6, 2);
    r->gen = (uint32_t)get_le(p + 8, 4);
    r->n_tokens = (uint32_t)get_le(p + 12, 4);
    r->seq = get_le(p + 16, 8);
    r->ns_seed = get_le(p + 24, 8);
    r->key_lo = get_le(p + 32, 8);
    r->key_hi = get_le(p + 40, 8);
    r->start = get_le(p + 48, 8);
    r->blocks = (uint32_t)get_le(p + 56, 4);
    r->raw_len = get_le(p + 64, 8);
    r->stored_len = get_le(p + 72, 8);
    r->n_layers = (uint32_t)get_le(p + 80, 2);
    r->block_tokens = (uint32_t)get_le(p + 82, 2);
    r->row_bytes = (uint32_t)get_le(p + 84, 4);
    if (r->type != REC_PUT && r->type != REC_DEL)
        return KVT_E_CORRUPT;
    return 0;
}

static void rec_from_ient(const struct ient *e, uint32_t type, uint32_t gen, struct rec *r)
{
    memset(r, 0, sizeof(*r));
    r->type = type;
    r->gen = gen;
    r->file = e->file;
    r->codec = e->codec;
    r->n_tokens = e->n_tokens;
    r->seq = e->seq;
    r->ns_seed = e->ns_seed;
    r->key_lo = e->key_lo;
    r->key_hi = e->key_hi;
    r->start = e->start;
    r->blocks = e->blocks;
    r->raw_len = e->raw_len;
    r->stored_len = e->stored_len;
    r->n_layers = e->n_layers;
    r->block_tokens = e->block_tokens;
    r->row_bytes = e->row_bytes;
}

static void jstage_rec(struct kvt_disk *d, const struct rec *r)
{
    int b = d->jstage;

    assert(d->jrecs[b] < d->jcap);
    rec_encode(d->jbuf[b] + (size_t)d->jrecs[b] * REC_BYTES, r);
    d->jrecs[b]++;
}

/* ---- op lists and slots --------------------------------------------------------------------- */

static void olist_push(struct kvt_disk *d, struct olist *l, uint32_t i)
{
    d->ops[i].next = OP_NONE;
    if (l->n == 0)
        l->head = i;
    else
        d->ops[l->tail].next = i;
    l->tail = i;
    l->n++;
}

static uint32_t olist_pop(struct kvt_disk *d, struct olist *l)
{
    uint32_t i = l->head;

    if (l->n == 0)
        return OP_NONE;
    l->head = d->ops[i].next;
    l->n--;
    return i;
}

static void olist_splice(struct kvt_disk *d, struct olist *dst, struct olist *src)
{
    uint32_t i;
    while ((i = olist_pop(d, src)) != OP_NONE)
        olist_push(d, dst, i);
}

static unsigned char *slot_of(struct kvt_disk *d, uint32_t i)
{
    return d->staging + (size_t)d->ops[i].sp_start * BLOCK;
}

/* Takes an op and bytes of staging (rounded up to pages); OP_NONE when either is exhausted. */
static uint32_t op_get(struct kvt_disk *d, uint64_t bytes)
{
    uint64_t pages = blocks_for(bytes ? bytes : 1), start = 0;
    uint32_t i;

    if (d->n_free_ops == 0 || kvt_extent_alloc(d->sp, pages, &start) != 0)
        return OP_NONE;
    i = d->free_ops[--d->n_free_ops];
    memset(&d->ops[i], 0, sizeof(d->ops[i]));
    d->ops[i].next = OP_NONE;
    d->ops[i].sp_start = (uint32_t)start;
    d->ops[i].sp_pages = (uint32_t)pages;
    d->inflight++;
    return i;
}

static void op_put(struct kvt_disk *d, uint32_t i)
{
    kvt_extent_free(d->sp, d->ops[i].sp_start, d->ops[i].sp_pages);
    d->ops[i].state = ST_FREE;
    d->free_ops[d->n_free_ops++] = i;
    d->inflight--;
}

static void op_finish(struct kvt_disk *d, uint32_t i, int res)
{
    d->ops[i].res = res;
    d->ops[i].state = ST_DONE;
    olist_push(d, &d->done, i);
}

/* ---- extents across files ------------------------------------------------------------------- */

static int extent_alloc(struct kvt_disk *d, uint64_t blocks, uint8_t *file, uint64_t *start)
{
    if (d->allocated >= d->cfg.objects_max)
        return KVT_E_FULL;
    /* Round-robin over files so that several devices share the load. */
    for (uint32_t k = 0; k < d->n_files; k++) {
        uint32_t f = (d->next_file + k) % d->n_files;
        if (kvt_extent_alloc(d->files[f].ext, blocks, start) == 0) {
            *file = (uint8_t)f;
            d->next_file = (f + 1) % d->n_files;
            d->allocated++;
            return 0;
        }
    }
    return KVT_E_FULL;
}

static int extent_being_read(struct kvt_disk *d, uint8_t file, uint64_t start)
{
    for (uint32_t i = 0; i < d->n_ops; i++) {
        const struct op *o = &d->ops[i];
        if (o->state == ST_INFLIGHT && o->kind == OP_READ && o->file == file && o->start == start)
            return 1;
    }
    return 0;
}

/* Returns an extent to its allocator once generation gen is durable and no read targets it;
 * until then it waits in the pending list, which cannot overflow because every entry is an
 * allocated extent and those are bounded by objects_max. */
static void extent_release(struct kvt_disk *d, uint8_t file, uint64_t start, uint64_t blocks,
                           uint64_t gen)
{
    if (gen <= d->gen_durable && !extent_being_read(d, file, start)) {
        kvt_extent_free(d->files[file].ext, start, blocks);
        d->allocated--;
        return;
    }
    assert(d->n_pfree < d->pfree_max);
    d->pfree[d->n_pfree++] =
        (struct pfree){.start = start, .blocks = blocks, .gen = gen, .file = file};
}

static void pfree_sweep(struct kvt_disk *d)
{
    uint32_t keep = 0;

    for (uint32_t i = 0; i < d->n_pfree; i++) {
        struct pfree *p = &d->pfree[i];
        if (p->gen <= d->gen_durable && !extent_being_read(d, p->file, p->start)) {
            kvt_extent_free(d->files[p->file].ext, p->start, p->blocks);
            d->allocated--;
        } else {
            d->pfree[keep++] = *p;
        }
    }
    d->n_pfree = keep;
}

/* ---- submission ----------------------------------------------------------------------------- */

static struct io_uring_sqe *get_sqe(struct kvt_disk *d)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);

    if (!sqe) {
        io_uring_submit(&d->ring);
        sqe = io_uring_get_sqe(&d->ring);
    }
    /* The ring has room for every op plus a full commit, so this is a programmer error. */
    assert(sqe);
    return sqe;
}

static void submit(struct kvt_disk *d)
{
    if (!d->plugged && io_uring_sq_ready(&d->ring) > 0)
        io_uring_submit(&d->ring);
}

static void latch(struct kvt_disk *d)
{
    d->failed = 1;
    d->st.tier.failed = 1;
}

static void count_io_error(struct kvt_disk *d)
{
    d->st.tier.io_errors++;
    if (++d->io_err_streak >= d->cfg.io_errors_max)
        latch(d);
}

/* ---- public operations ---------------------------------------------------------------------- */

int kvt_disk_write_reserve(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                           uint32_t n_tokens, struct kvt_disk_wslot *ws)
{
    return kvt_disk_write_reserve_geom(d, id, len, n_tokens, NULL, ws);
}

int kvt_disk_write_reserve_geom(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                                uint32_t n_tokens, const struct kvt_disk_geom *geom,
                                struct kvt_disk_wslot *ws)
{
    struct kvt_object_meta m;
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (!d || !id || !ws)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    if (len > d->cfg.object_bytes_max)
        return KVT_E_TOOBIG;
    memset(&m, 0, sizeof(m));
    m.ns_seed = id->ns_seed;
    m.key = id->key;
    m.n_tokens = n_tokens;
    m.raw_len = len;
    m.codec = KVT_CODEC_RAW;
    if (geom)
        m.g = geom->g;
    if (kvt_object_layout(&m) != 0)
        return KVT_E_INVAL;
    /* The blocked layout is the largest form (a packed body is at most raw_len bytes). */
    if (kvt_object_bytes(&m) > d->staging_bytes)
        return KVT_E_TOOBIG;
    e = index_find(d, id);
    if (e && e->raw_len == len)
        return KVT_E_EXISTS;
    i = op_get(d, kvt_object_bytes(&m));
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_WRITE;
    o->state = ST_RESERVED;
    o->id = *id;
    o->n_tokens = n_tokens;
    o->raw_len = len;
    /* The sequence number is taken now, in call order on the owner thread, so it orders
     * writes of the same key however long their encoding takes. */
    o->seq = d->next_seq++;
    m.seq = o->seq;
    d->reserved++;
    memset(ws, 0, sizeof(*ws));
    ws->handle = i;
    ws->buf = slot_of(d, i);
    ws->cap = (size_t)o->sp_pages * BLOCK;
    ws->m = m;
    ws->sparse = geom ? geom->sparse : 0;
    ws->id = *id;
    ws->n_tokens = n_tokens;
    ws->raw_len = len;
    ws->seq = o->seq;
    return 0;
}

int kvt_disk_encode(struct kvt_codec *codec, struct kvt_disk_wslot *ws, const void *src,
                    uint32_t elem_bytes)
{
    unsigned char *slot = ws->buf;
    struct kvt_object_meta m = ws->m;
    size_t stored = 0, total;
    uint32_t id = KVT_CODEC_RAW;
    int rc;

    if (!codec || (!src && ws->raw_len))
        return KVT_E_INVAL;
    /* Compression applies to the whole object and only when it pays (the codec's min_saving);
     * a sparse namespace never compresses, so that every object of it stays range-readable. */
    if (!ws->sparse && ws->raw_len > 0) {
        rc = kvt_codec_encode(codec, src, ws->raw_len, elem_bytes, slot + KVT_OBJECT_HEADER_BYTES,
                              ws->cap - KVT_OBJECT_HEADER_BYTES, &stored, &id);
        if (rc)
            return rc;
    }
    if (id == KVT_CODEC_RAW) {
        m.codec = KVT_CODEC_RAW;
        rc = kvt_object_layout(&m);
        if (rc)
            return rc;
        kvt_object_put_rows(slot + KVT_OBJECT_HEADER_BYTES, &m, src);
    } else {
        m.codec = id;
        m.stored_len = stored;
    }
    /* Zero the tail of the last block so no stale staging bytes reach the disk. */
    total = (size_t)blocks_for(kvt_object_bytes(&m)) * BLOCK;
    memset(slot + kvt_object_bytes(&m), 0, total - (size_t)kvt_object_bytes(&m));
    kvt_object_seal(slot, &m);
    ws->m = m;
    ws->stored_len = (size_t)m.stored_len;
    ws->codec = m.codec;
    ws->sealed = 1;
    return 0;
}

void kvt_disk_write_cancel(struct kvt_disk *d, struct kvt_disk_wslot *ws)
{
    assert(ws->handle < d->n_ops && d->ops[ws->handle].state == ST_RESERVED &&
           d->ops[ws->handle].seq == ws->seq);
    d->reserved--;
    op_put(d, ws->handle);
    ws->buf = NULL;
}

int kvt_disk_write_submit(struct kvt_disk *d, struct kvt_disk_wslot *ws, kvt_tier_done_fn done,
                          void *arg)
{
    struct io_uring_sqe *sqe;
    struct op *o;
    uint32_t i = ws->handle;
    int rc;

    /* A handle that is not a live reservation is a programmer error. */
    assert(i < d->n_ops && d->ops[i].state == ST_RESERVED && d->ops[i].seq == ws->seq);
    o = &d->ops[i];
    if (!done || !ws->sealed) {
        rc = KVT_E_INVAL;
        goto err_cancel;
    }
    if (d->failed) {
        rc = KVT_E_TIERFAILED;
        goto err_cancel;
    }
    o->blocks = (uint32_t)blocks_for(kvt_object_bytes(&ws->m));
    o->m = ws->m;
    o->io_bytes = (uint64_t)o->blocks * BLOCK;
    rc = extent_alloc(d, o->blocks, &o->file, &o->start);
    if (rc) {
        d->st.full_rejects++;
        goto err_cancel;
    }
    d->reserved--;
    o->state = ST_INFLIGHT;
    o->codec = ws->codec;
    o->stored_len = ws->stored_len;
    o->done = done;
    o->arg = arg;
    sqe = get_sqe(d);
    io_uring_prep_write_fixed(sqe, o->file, slot_of(d, i), o->blocks * BLOCK, o->start * BLOCK, 0);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_OP << 32) | i);
    o->submit_ns = kvt_now_ns();
    d->st.writes++;
    d->st.raw_bytes_written += o->raw_len;
    d->st.stored_bytes_written += o->stored_len;
    if (o->codec != KVT_CODEC_RAW)
        d->st.compressed_objects++;
    submit(d);
    return 0;

err_cancel:
    kvt_disk_write_cancel(d, ws);
    return rc;
}

int kvt_disk_write(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf, size_t len,
                   uint32_t n_tokens, uint32_t elem_bytes, kvt_tier_done_fn done, void *arg)
{
    return kvt_disk_write_geom(d, id, buf, len, n_tokens, NULL, elem_bytes, done, arg);
}

int kvt_disk_write_geom(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf,
                        size_t len, uint32_t n_tokens, const struct kvt_disk_geom *geom,
                        uint32_t elem_bytes, kvt_tier_done_fn done, void *arg)
{
    struct kvt_disk_wslot ws;
    int rc;

    if (!d || !id || (!buf && len) || !done)
        return KVT_E_INVAL;
    rc = kvt_disk_write_reserve_geom(d, id, len, n_tokens, geom, &ws);
    if (rc)
        return rc;
    rc = kvt_disk_encode(d->codec, &ws, buf, elem_bytes);
    if (rc) {
        kvt_disk_write_cancel(d, &ws);
        return rc;
    }
    return kvt_disk_write_submit(d, &ws, done, arg);
}

/* Submits the read of bytes [off, off + bytes) of e's extent into op i's staging pages. */
static void read_go(struct kvt_disk *d, uint32_t i, const struct ient *e, uint64_t off,
                    uint64_t bytes)
{
    struct op *o = &d->ops[i];
    struct io_uring_sqe *sqe;

    o->state = ST_INFLIGHT;
    o->file = e->file;
    o->start = e->start;
    o->blocks = e->blocks;
    o->seq = e->seq;
    o->raw_len = e->raw_len;
    o->io_off = off;
    o->io_bytes = bytes;
    sqe = get_sqe(d);
    io_uring_prep_read_fixed(sqe, o->file, slot_of(d, i), (unsigned)bytes, o->start * BLOCK + off,
                             0);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_OP << 32) | i);
    o->submit_ns = kvt_now_ns();
    d->st.reads++;
    d->st.bytes_read += bytes;
    submit(d);
}

static int read_submit(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                       kvt_tier_done_fn done, kvt_disk_lent_fn lent_done, void *arg)
{
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (d->failed)
        return KVT_E_TIERFAILED;
    e = index_find(d, id);
    if (!e) {
        d->st.tier.misses++;
        return KVT_E_NOTFOUND;
    }
    if (done && cap < e->raw_len)
        return KVT_E_SMALLBUF;
    i = op_get(d, (uint64_t)e->blocks * BLOCK);
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_READ;
    o->id = *id;
    o->dst = dst;
    o->cap = cap;
    o->done = done;
    o->lent_done = lent_done;
    o->arg = arg;
    read_go(d, i, e, 0, (uint64_t)e->blocks * BLOCK);
    return 0;
}

/* The layout of e's blocked body as the index knows it (no header read). */
static void ient_meta(const struct ient *e, const struct kvt_obj_id *id, struct kvt_object_meta *m)
{
    memset(m, 0, sizeof(*m));
    m->ns_seed = id->ns_seed;
    m->key = id->key;
    m->n_tokens = e->n_tokens;
    m->raw_len = e->raw_len;
    m->seq = e->seq;
    m->codec = e->codec;
    m->stored_len = e->stored_len;
    m->g.n_layers = e->n_layers;
    m->g.block_tokens = e->block_tokens;
    (void)kvt_object_layout(m);
}

int kvt_disk_read_range(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                        uint32_t token_first, uint32_t n_tokens, void *dst, size_t cap,
                        kvt_tier_done_fn done, void *arg)
{
    struct kvt_object_meta m;
    uint64_t off = 0, len = 0, a0, a1, need;
    struct ient *e;
    struct op *o;
    uint32_t i;

    if (!d || !id || !done || !dst || n_tokens == 0)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    e = index_find(d, id);
    if (!e) {
        d->st.tier.misses++;
        return KVT_E_NOTFOUND;
    }
    if (e->row_bytes == 0 || layer >= e->n_layers || token_first > e->n_tokens ||
        n_tokens > e->n_tokens - token_first)
        return KVT_E_INVAL;
    if (cap < (uint64_t)n_tokens * e->row_bytes)
        return KVT_E_SMALLBUF;
    ient_meta(e, id, &m);
    if (e->codec == KVT_CODEC_RAW) {
        /* Only the covering blocks and their trailers, rounded out to whole 4 KiB pages. */
        kvt_object_range(&m, layer, token_first, n_tokens, &off, &len);
        a0 = (KVT_OBJECT_HEADER_BYTES + off) / BLOCK * BLOCK;
        a1 = blocks_for(KVT_OBJECT_HEADER_BYTES + off + len) * BLOCK;
        need = a1 - a0;
    } else {
        /* A packed object is read whole and decoded behind itself in the same staging run. */
        a0 = 0;
        a1 = (uint64_t)e->blocks * BLOCK;
        need = a1 + e->raw_len;
    }
    i = op_get(d, need);
    if (i == OP_NONE) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    o = &d->ops[i];
    o->kind = OP_READ;
    o->range = 1;
    o->m = m;
    o->layer = layer;
    o->t0 = token_first;
    o->n_rows = n_tokens;
    o->id = *id;
    o->dst = dst;
    o->cap = cap;
    o->done = done;
    o->arg = arg;
    d->st.range_reads++;
    read_go(d, i, e, a0, a1 - a0);
    return 0;
}

int kvt_disk_read(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                  kvt_tier_done_fn done, void *arg)
{
    if (!d || !id || !done || (!dst && cap))
        return KVT_E_INVAL;
    return read_submit(d, id, dst, cap, done, NULL, arg);
}

int kvt_disk_read_lend(struct kvt_disk *d, const struct kvt_obj_id *id, kvt_disk_lent_fn done,
                       void *arg)
{
    if (!d || !id || !done)
        return KVT_E_INVAL;
    return read_submit(d, id, NULL, 0, NULL, done, arg);
}

static int object_matches(const struct kvt_object_meta *m, const struct kvt_obj_id *id,
                          uint64_t seq, uint64_t raw_len)
{
    return m->ns_seed == id->ns_seed && m->key.lo == id->key.lo && m->key.hi == id->key.hi &&
           m->seq == seq && m->raw_len == raw_len;
}

int kvt_disk_decode(struct kvt_codec *codec, const struct kvt_disk_lent *lent, void *dst,
                    size_t cap)
{
    struct kvt_object_meta m;
    const unsigned char *p = lent->buf;

    if (!codec || (!dst && cap))
        return KVT_E_INVAL;
    if (cap < lent->raw_len)
        return KVT_E_SMALLBUF;
    if (kvt_object_decode(codec, p, lent->bytes, dst, cap, &m) != 0 ||
        !object_matches(&m, &lent->id, lent->seq, lent->raw_len))
        return KVT_E_CORRUPT;
    return 0;
}

static void drop_corrupt(struct kvt_disk *d, struct op *o);

void kvt_disk_read_release(struct kvt_disk *d, const struct kvt_disk_lent *lent, int status)
{
    uint32_t i = lent->handle;

    /* Releasing anything but a live loan is a programmer error. */
    assert(i < d->n_ops && d->ops[i].state == ST_LENT && d->ops[i].seq == lent->seq);
    if (status == KVT_E_CORRUPT) {
        drop_corrupt(d, &d->ops[i]);
    } else {
        d->st.tier.hits++;
        d->st.tier.promotions++;
    }
    d->lent--;
    op_put(d, i);
}

static void start_commit(struct kvt_disk *d);
static void sync_advance(struct kvt_disk *d);

int kvt_disk_remove(struct kvt_disk *d, const struct kvt_obj_id *id)
{
    struct ient *e;
    struct rec r;

    if (!d || !id)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    e = index_find(d, id);
    if (!e)
        return KVT_E_NOTFOUND;
    if (d->jdels >= DELS_PER_COMMIT) {
        d->st.busy_rejects++;
        return KVT_E_BUSY;
    }
    rec_from_ient(e, REC_DEL, (uint32_t)d->ckpt_gen, &r);
    r.seq = d->next_seq++;
    jstage_rec(d, &r);
    d->jdels++;
    extent_release(d, e->file, e->start, e->blocks, d->gen_next);
    d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
    index_delete(d, e);
    d->st.removes++;
    d->st.tier.evictions++;
    start_commit(d);
    submit(d);
    return 0;
}

static void wake(struct kvt_disk *d)
{
    uint64_t v = 1;
    if (write(d->event_fd, &v, sizeof(v)) < 0)
        count_io_error(d);
}

int kvt_disk_sync(struct kvt_disk *d, struct kvt_disk_sync *sy, kvt_tier_done_fn done, void *arg)
{
    if (!d || !sy || !done)
        return KVT_E_INVAL;
    if (d->failed)
        return KVT_E_TIERFAILED;
    sy->done = done;
    sy->arg = arg;
    sy->res = 0;
    sy->next = NULL;
    /* Records staged now go out in the next commit, which gets gen_next; otherwise the last
     * commit started covers everything before this call. */
    if (d->jrecs[d->jstage] > 0 || d->ready.n > 0)
        sy->gen = d->gen_next;
    else if (d->commit.inflight)
        sy->gen = d->commit.gen;
    else
        sy->gen = d->gen_durable;
    d->st.syncs++;
    if (d->sync_tail)
        d->sync_tail->next = sy;
    else
        d->sync_head = sy;
    d->sync_tail = sy;
    if (sy->gen <= d->gen_durable) {
        /* Durable already: the callback still runs from poll, never inside this call. */
        sync_advance(d);
        wake(d);
        return 0;
    }
    start_commit(d);
    submit(d);
    return 0;
}

int kvt_disk_lookup(struct kvt_disk *d, const struct kvt_obj_id *id, struct kvt_disk_obj_info *out)
{
    struct ient *e = index_find(d, id);

    if (!e)
        return KVT_E_NOTFOUND;
    if (out)
        ient_info(e, out);
    return 0;
}

size_t kvt_disk_enumerate(struct kvt_disk *d, kvt_disk_enum_fn fn, void *arg)
{
    struct kvt_disk_obj_info info;
    size_t n = 0;

    for (uint64_t i = 0; i <= d->index_mask; i++) {
        if (!d->index[i].used)
            continue;
        ient_info(&d->index[i], &info);
        n++;
        if (fn(arg, &info))
            break;
    }
    return n;
}

void kvt_disk_plug(struct kvt_disk *d)
{
    d->plugged++;
}

void kvt_disk_unplug(struct kvt_disk *d)
{
    assert(d->plugged > 0);
    if (--d->plugged == 0)
        submit(d);
}

int kvt_disk_event_fd(struct kvt_disk *d)
{
    return d->event_fd;
}

uint32_t kvt_disk_inflight(const struct kvt_disk *d)
{
    return d->inflight;
}

void kvt_disk_stats(struct kvt_disk *d, struct kvt_disk_stats *out)
{
    *out = d->st;
    out->tier.objects = d->index_count;
    out->tier.failed = (uint64_t)d->failed;
}

/* ---- group commit --------------------------------------------------------------------------- */

/* Starts a group commit when none is in flight and there is something to make durable: the
 * staged records go out in one journal write linked to an fdatasync of the journal, alongside an
 * fdatasync of every data file the batch wrote to. */
static void start_commit(struct kvt_disk *d)
{
    uint32_t files_mask = 0, i, n_sqe = 0;
    struct io_uring_sqe *sqe;
    struct rec r;
    int b = d->jstage;

    if (d->commit.inflight || d->failed || (d->ready.n == 0 && d->jrecs[b] == 0))
        return;
    for (i = d->ready.head; d->ready.n && i != OP_NONE; i = d->ops[i].next) {
        struct op *o = &d->ops[i];
        memset(&r, 0, sizeof(r));
        r.type = REC_PUT;
        r.gen = (uint32_t)d->ckpt_gen;
        r.file = o->file;
        r.codec = o->codec;
        r.n_tokens = o->n_tokens;
        r.seq = o->seq;
        r.ns_seed = o->id.ns_seed;
        r.key_lo = o->id.key.lo;
        r.key_hi = o->id.key.hi;
        r.start = o->start;
        r.blocks = o->blocks;
        r.raw_len = o->raw_len;
        r.stored_len = o->stored_len;
        r.n_layers = o->m.g.n_layers;
        r.block_tokens = o->m.g.block_tokens;
        r.row_bytes = o->m.row_bytes;
        jstage_rec(d, &r);
        files_mask |= 1u << o->file;
        o->state = ST_COMMITTING;
    }
    olist_splice(d, &d->commit.ops, &d->ready);

    d->commit.inflight = 1;
    d->commit.res = 0;
    d->commit.gen = d->gen_next++;
    sqe = get_sqe(d);
    io_uring_prep_write(sqe, (int)d->n_files + d->jactive, d->jbuf[b], d->jrecs[b] * REC_BYTES,
                        d->journal_off);
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, (uint64_t)UD_COMMIT << 32);
    sqe = get_sqe(d);
    io_uring_prep_fsync(sqe, (int)d->n_files + d->jactive, IORING_FSYNC_DATASYNC);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_COMMIT << 32) | 1u);
    n_sqe = 2;
    for (uint32_t f = 0; f < d->n_files; f++) {
        if (!(files_mask & (1u << f)))
            continue;
        sqe = get_sqe(d);
        io_uring_prep_fsync(sqe, (int)f, IORING_FSYNC_DATASYNC);
        sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data64(sqe, ((uint64_t)UD_COMMIT << 32) | 2u);
        n_sqe++;
    }
    d->commit.pending = n_sqe;
    d->journal_since_ckpt += d->jrecs[b];
    d->st.journal_records += d->jrecs[b];
    d->st.commits++;
    /* Tombstones staged from now on belong to the next commit. */
    d->jstage = 1 - b;
    d->jrecs[d->jstage] = 0;
    d->jdels = 0;
}

static void checkpoint_start(struct kvt_disk *d);

/* Every write of the batch is durable: publish it in the index (unless a newer write of the same
 * key got there first) and release the extents it replaced. */
static void finish_commit(struct kvt_disk *d)
{
    uint32_t i;
    int b = 1 - d->jstage;

    d->commit.inflight = 0;
    if (d->commit.res == 0) {
        /* The journal write landed whole, so the next batch appends after it. */
        d->journal_off += (uint64_t)d->jrecs[b] * REC_BYTES;
        d->gen_durable = d->commit.gen;
    } else {
        /* After a failed fdatasync the kernel may have dropped dirty pages; nothing written
         * since can be trusted, so the tier stops rather than guess. */
        latch(d);
    }
    d->jrecs[b] = 0;
    while ((i = olist_pop(d, &d->commit.ops)) != OP_NONE) {
        struct op *o = &d->ops[i];
        struct ient *e;

        if (d->failed) {
            op_finish(d, i, KVT_E_TIERFAILED);
            continue;
        }
        e = index_find(d, &o->id);
        if (e && e->seq > o->seq) {
            extent_release(d, o->file, o->start, o->blocks, 0);
        } else {
            if (e)
                extent_release(d, e->file, e->start, e->blocks, 0);
            else
                e = index_claim(d, &o->id);
            /* The extent bound keeps the index below objects_max: a claim cannot fail here. */
            assert(e);
            if (e->blocks)
                d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
            e->seq = o->seq;
            e->file = o->file;
            e->start = o->start;
            e->blocks = o->blocks;
            e->codec = (uint16_t)o->codec;
            e->n_tokens = o->n_tokens;
            e->raw_len = o->raw_len;
            e->stored_len = o->stored_len;
            e->n_layers = (uint16_t)o->m.g.n_layers;
            e->block_tokens = (uint16_t)o->m.g.block_tokens;
            e->row_bytes = o->m.row_bytes;
            d->st.tier.bytes_used += (uint64_t)o->blocks * BLOCK;
            d->st.tier.demotions++;
        }
        d->st.writes_durable++;
        op_finish(d, i, 0);
    }
    pfree_sweep(d);
    sync_advance(d);
    /* Writes still waiting for a commit have no journal record yet, so they do not hold the
     * checkpoint back: their records will carry the new generation. */
    if (!d->failed && d->journal_since_ckpt >= d->cfg.checkpoint_records)
        checkpoint_start(d);
}

/* ---- completions ---------------------------------------------------------------------------- */

static void drop_corrupt(struct kvt_disk *d, struct op *o)
{
    struct ient *e = index_find(d, &o->id);

    d->st.tier.checksum_failures++;
    d->st.tier.misses++;
    if (e && e->seq == o->seq) {
        /* Every reader verifies, so the extent can be reused at once: a later crash can at worst
         * bring back an entry whose bytes fail the checksum again. */
        extent_release(d, e->file, e->start, e->blocks, 0);
        d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
        index_delete(d, e);
    }
}

/* A range read landed: verify every covering block (a packed object: the whole object) and copy
 * the rows asked for. Any failure drops the object and answers KVT_E_CORRUPT: never wrong bytes. */
static void range_done(struct kvt_disk *d, uint32_t i, unsigned char *slot, size_t got)
{
    struct op *o = &d->ops[i];
    const struct kvt_object_meta *m = &o->m;
    uint64_t want = (uint64_t)o->n_rows * m->row_bytes;
    struct kvt_object_meta h;
    int rc;

    if (m->codec == KVT_CODEC_RAW) {
        rc = kvt_object_get_rows(slot, o->io_off - KVT_OBJECT_HEADER_BYTES, got, m, o->layer,
                                 o->layer + 1, o->t0, o->n_rows, o->dst);
    } else {
        unsigned char *raw = slot + o->io_bytes;
        rc = kvt_object_decode(d->codec, slot, got, raw, (size_t)o->raw_len, &h);
        if (rc == 0 && !object_matches(&h, &o->id, o->seq, o->raw_len))
            rc = KVT_E_CORRUPT;
        if (rc == 0)
            memcpy(o->dst, raw + ((uint64_t)o->layer * m->n_tokens + o->t0) * m->row_bytes,
                   (size_t)want);
    }
    if (rc) {
        drop_corrupt(d, o);
        op_finish(d, i, KVT_E_CORRUPT);
        return;
    }
    d->st.tier.hits++;
    op_finish(d, i, (int)want);
}

static void read_done(struct kvt_disk *d, uint32_t i, int res)
{
    struct op *o = &d->ops[i];
    struct kvt_object_meta m;
    unsigned char *slot = slot_of(d, i);

    if (res < 0) {
        op_finish(d, i, res == -ENOSPC ? KVT_E_FULL : KVT_E_IO);
        return;
    }
    o->state = ST_DONE;
    if (o->lent_done) {
        /* Verification and decoding are the borrower's, on its own thread. */
        op_finish(d, i, res);
        return;
    }
    if (o->range) {
        range_done(d, i, slot, (size_t)res);
        return;
    }
    if (kvt_object_decode(d->codec, slot, (size_t)res, o->dst, o->cap, &m) != 0 ||
        !object_matches(&m, &o->id, o->seq, o->raw_len)) {
        drop_corrupt(d, o);
        op_finish(d, i, KVT_E_NOTFOUND);
        return;
    }
    d->st.tier.hits++;
    d->st.tier.promotions++;
    op_finish(d, i, (int)m.raw_len);
}

static void handle_cqe(struct kvt_disk *d, uint64_t ud, int res)
{
    uint32_t kind = (uint32_t)(ud >> 32), i = (uint32_t)ud;
    struct kvt_disk_faults *f = d->cfg.faults;

    if (f) {
        f->ios_completed++;
        if (f->fail_next_io > 0) {
            f->fail_next_io--;
            res = -(f->fail_errno ? f->fail_errno : EIO);
        }
    }
    if (res == -ENOSPC) {
        d->st.enospc++;
    } else if (res < 0) {
        count_io_error(d);
    } else {
        d->io_err_streak = 0;
    }

    if (kind == UD_COMMIT) {
        assert(d->commit.inflight && d->commit.pending > 0);
        if (res < 0 && d->commit.res == 0)
            d->commit.res = res;
        if (i == 0 && res >= 0 && (size_t)res != (size_t)d->jrecs[1 - d->jstage] * REC_BYTES &&
            d->commit.res == 0)
            d->commit.res = -EIO;
        if (--d->commit.pending == 0)
            finish_commit(d);
        return;
    }
    assert(kind == UD_OP && i < d->n_ops && d->ops[i].state == ST_INFLIGHT);
    kvt_hist_observe_since_ns(d->ops[i].kind == OP_READ ? &d->st.read_latency_us
                                                        : &d->st.write_latency_us,
                              d->ops[i].submit_ns);
    if (res >= 0 && (uint64_t)res != d->ops[i].io_bytes) {
        /* A short transfer on a preallocated extent means the device misbehaved. */
        count_io_error(d);
        res = -EIO;
    }
    if (d->ops[i].kind == OP_READ) {
        read_done(d, i, res);
        return;
    }
    if (res < 0) {
        struct op *o = &d->ops[i];
        extent_release(d, o->file, o->start, o->blocks, 0);
        op_finish(d, i, res == -ENOSPC ? KVT_E_FULL : d->failed ? KVT_E_TIERFAILED : KVT_E_IO);
        return;
    }
    d->ops[i].state = ST_READY;
    olist_push(d, &d->ready, i);
}

static int run_callbacks(struct kvt_disk *d)
{
    uint32_t i;
    int ran = 0;

    while ((i = olist_pop(d, &d->done)) != OP_NONE) {
        struct op *o = &d->ops[i];
        kvt_tier_done_fn fn = o->done;
        kvt_disk_lent_fn lent_fn = o->lent_done;
        void *arg = o->arg;
        int res = o->res;
        ran++;
        if (lent_fn && res >= 0) {
            struct kvt_disk_lent lent = {.handle = i,
                                         .buf = slot_of(d, i),
                                         .bytes = (size_t)res,
                                         .id = o->id,
                                         .seq = o->seq,
                                         .raw_len = o->raw_len};
            o->state = ST_LENT;
            d->lent++;
            lent_fn(arg, (int)o->raw_len, &lent);
            continue;
        }
        op_put(d, i);
        if (lent_fn)
            lent_fn(arg, res, NULL);
        else
            fn(arg, res);
    }
    return ran;
}

static int run_syncs(struct kvt_disk *d)
{
    int ran = 0;

    while (d->sdone_head) {
        struct kvt_disk_sync *sy = d->sdone_head;
        d->sdone_head = sy->next;
        if (!d->sdone_head)
            d->sdone_tail = NULL;
        ran++;
        sy->done(sy->arg, sy->res);
    }
    return ran;
}

static void checkpoint_reap(struct kvt_disk *d);

int kvt_disk_poll(struct kvt_disk *d)
{
    struct io_uring_cqe *cqe;
    uint64_t v;
    uint32_t n = 0, limit = *d->ring.cq.kring_entries;

    if (d->in_poll)
        return 0;
    d->in_poll = 1;
    if (read(d->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        count_io_error(d);
    /* Bounded: at most one completion-queue's worth per call; what is left is signalled on the
     * eventfd again below so the loop comes back for it. */
    while (n < limit && io_uring_peek_cqe(&d->ring, &cqe) == 0) {
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&d->ring, cqe);
        handle_cqe(d, ud, res);
        n++;
    }
    if (d->failed) {
        uint32_t i;
        while ((i = olist_pop(d, &d->ready)) != OP_NONE) {
            struct op *o = &d->ops[i];
            extent_release(d, o->file, o->start, o->blocks, 0);
            op_finish(d, i, KVT_E_TIERFAILED);
        }
    }
    checkpoint_reap(d);
    if (d->failed)
        sync_advance(d);
    start_commit(d);
    pfree_sweep(d);
    if (io_uring_sq_ready(&d->ring) > 0)
        io_uring_submit(&d->ring);
    if (io_uring_cq_ready(&d->ring) > 0) {
        v = 1;
        if (write(d->event_fd, &v, sizeof(v)) < 0)
            count_io_error(d);
    }
    n = (uint32_t)run_callbacks(d);
    n += (uint32_t)run_syncs(d);
    d->in_poll = 0;
    return (int)n;
}

int kvt_disk_wait(struct kvt_disk *d, int timeout_ms)
{
    struct pollfd pfd = {.fd = d->event_fd, .events = POLLIN};

    if (d->inflight == d->reserved + d->lent && !d->commit.inflight && !d->ck.busy)
        return kvt_disk_poll(d);
    /* Blocking anyway, so work queued under a plug goes out now rather than never. */
    if (io_uring_sq_ready(&d->ring) > 0)
        io_uring_submit(&d->ring);
    if (io_uring_cq_ready(&d->ring) == 0)
        poll(&pfd, 1, timeout_ms);
    return kvt_disk_poll(d);
}

/* ---- checkpoint ----------------------------------------------------------------------------- */

static int write_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return -errno;
    if (fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Encodes count snapshot entries as checkpoint gen and puts the file in place (temporary file,
 * fdatasync, rename, directory fsync), then empties the journals in trunc_fds, whose records the
 * checkpoint now holds. Uses only its arguments, ckpt_buf and what is fixed at create (meta_dir,
 * store_id, n_files), so it runs on the checkpoint thread as well as on the owner thread. A crash
 * anywhere in it leaves either the old checkpoint or the new one, each with the journals that
 * complete it. */
static int ckpt_put(struct kvt_disk *d, const struct ient *snap, uint64_t count, uint64_t gen,
                    uint64_t next_seq, const int *trunc_fds, int n_trunc)
{
    char tmp[PATH_MAX + 32], path[PATH_MAX + 32];
    unsigned char *p = d->ckpt_buf + CKPT_HEADER_BYTES, *h = d->ckpt_buf;
    struct rec r;
    size_t len;
    int fd, rc;

    assert(CKPT_HEADER_BYTES + count * REC_BYTES <= d->ckpt_buf_bytes);
    for (uint64_t i = 0; i < count; i++, p += REC_BYTES) {
        rec_from_ient(&snap[i], REC_PUT, (uint32_t)gen, &r);
        rec_encode(p, &r);
    }
    memset(h, 0, CKPT_HEADER_BYTES);
    put_le(h + 0, CKPT_MAGIC, 4);
    put_le(h + 4, CKPT_VERSION, 4);
    put_le(h + 8, gen, 8);
    put_le(h + 16, next_seq, 8);
    put_le(h + 24, count, 8);
    put_le(h + 32, d->n_files, 4);
    put_le(h + 40, XXH3_64bits(h + CKPT_HEADER_BYTES, (size_t)(count * REC_BYTES)), 8);
    put_le(h + 48, d->store_id, 8);
    put_le(h + 56, XXH3_64bits(h, 56), 8);
    len = CKPT_HEADER_BYTES + (size_t)count * REC_BYTES;

    snprintf(tmp, sizeof(tmp), "%s/%s", d->meta_dir, CKPT_TMP_NAME);
    snprintf(path, sizeof(path), "%s/%s", d->meta_dir, CKPT_NAME);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    rc = write_all(fd, d->ckpt_buf, len);
    if (rc == 0 && fdatasync(fd) != 0)
        rc = -errno;
    close(fd);
    if (rc)
        return rc;
    if (rename(tmp, path) != 0)
        return -errno;
    rc = fsync_dir(d->meta_dir);
    if (rc)
        return rc;
    for (int k = 0; k < n_trunc; k++)
        if (ftruncate(trunc_fds[k], 0) != 0 || fdatasync(trunc_fds[k]) != 0)
            return -errno;
    return 0;
}

/* Copies the live index entries (only durable objects are ever in the index) into snap: what a
 * checkpoint costs the owner thread. The used-slot bitmap keeps it proportional to the objects
 * stored, not to the index's capacity (2 x objects_max slots). */
static uint64_t snapshot(struct kvt_disk *d)
{
    uint64_t count = 0;

    for (uint64_t w = 0; w <= d->index_mask / 64; w++) {
        for (uint64_t bits = d->used_bits[w]; bits; bits &= bits - 1) {
            const struct ient *e = &d->index[w * 64 + (uint64_t)__builtin_ctzll(bits)];
            if (!e->dead)
                d->snap[count++] = *e;
        }
    }
    assert(count <= d->cfg.objects_max);
    return count;
}

/* Completes, in order, the barriers whose generation is durable (all of them, failed, once the
 * tier latched); their callbacks run from poll. */
static void sync_advance(struct kvt_disk *d)
{
    while (d->sync_head && (d->failed || d->sync_head->gen <= d->gen_durable)) {
        struct kvt_disk_sync *sy = d->sync_head;
        d->sync_head = sy->next;
        if (!d->sync_head)
            d->sync_tail = NULL;
        sy->res = d->failed ? KVT_E_TIERFAILED : 0;
        sy->next = NULL;
        if (d->sdone_tail)
            d->sdone_tail->next = sy;
        else
            d->sdone_head = sy;
        d->sdone_tail = sy;
    }
}

/* The checkpoint at start and at shutdown, on the owner thread (nothing is served then): both
 * journals are emptied and commits continue in journal 0. Tombstones still staged are in the
 * snapshot, so they count as durable as if committed. */
static int checkpoint_sync(struct kvt_disk *d)
{
    uint64_t gen = d->ckpt_gen + 1, count, t0 = now_us();
    int rc;

    assert(!d->commit.inflight && !d->ck.busy);
    count = snapshot(d);
    rc = ckpt_put(d, d->snap, count, gen, d->next_seq, d->journal_fds, 2);
    if (rc) {
        count_io_error(d);
        latch(d);
        sync_advance(d);
        return rc;
    }
    d->ckpt_gen = gen;
    d->jactive = 0;
    d->journal_off = 0;
    d->journal_since_ckpt = 0;
    if (d->jrecs[d->jstage] > 0)
        d->gen_durable = d->gen_next++;
    d->jrecs[d->jstage] = 0;
    d->jdels = 0;
    d->st.checkpoints++;
    if (now_us() - t0 > d->st.checkpoint_write_us_max)
        d->st.checkpoint_write_us_max = now_us() - t0;
    pfree_sweep(d);
    sync_advance(d);
    return 0;
}

/* Journal records carry the generation of the checkpoint they follow: those staged for the next
 * commit are re-sealed with the new one when the journals switch. */
static void jstage_regen(struct kvt_disk *d)
{
    unsigned char *p = d->jbuf[d->jstage];

    for (uint32_t k = 0; k < d->jrecs[d->jstage]; k++, p += REC_BYTES) {
        put_le(p + 8, d->ckpt_gen, 4);
        put_le(p + 80, XXH3_64bits(p, 80), 8);
    }
}

/* Starts a checkpoint without waiting for it: the index is copied into snap, commits switch to
 * the other (empty) journal under the new generation, and the thread writes the file and then
 * empties the journal the checkpoint replaces. Until the rename, the old checkpoint, the old
 * journal and the new journal together are the history recovery reads; after it, the new
 * checkpoint and the new journal. Called between commits only, so no journal write is in flight
 * on the journal being switched away from. */
static void checkpoint_start(struct kvt_disk *d)
{
    uint64_t t0 = now_us(), count;
    int old = d->jactive;

    assert(!d->commit.inflight);
    if (d->ck.busy || d->failed)
        return;
    count = snapshot(d);
    d->ckpt_gen++;
    d->jactive = 1 - old;
    d->journal_off = 0;
    d->journal_since_ckpt = 0;
    jstage_regen(d);
    pthread_mutex_lock(&d->ck.mu);
    d->ck.count = count;
    d->ck.gen = d->ckpt_gen;
    d->ck.next_seq = d->next_seq;
    d->ck.trunc_fd = d->journal_fds[old];
    d->ck.requested = 1;
    d->ck.done = 0;
    pthread_cond_signal(&d->ck.cv);
    pthread_mutex_unlock(&d->ck.mu);
    d->ck.busy = 1;
    if (now_us() - t0 > d->st.checkpoint_loop_us_max)
        d->st.checkpoint_loop_us_max = now_us() - t0;
}

/* Takes the thread's result once it reported done. */
static void checkpoint_reap(struct kvt_disk *d)
{
    int done, res = 0;

    if (!d->ck.busy)
        return;
    pthread_mutex_lock(&d->ck.mu);
    done = d->ck.done;
    if (done) {
        res = d->ck.res;
        d->ck.requested = 0;
        d->ck.done = 0;
        if (d->ck.write_us > d->st.checkpoint_write_us_max)
            d->st.checkpoint_write_us_max = d->ck.write_us;
    }
    pthread_mutex_unlock(&d->ck.mu);
    if (!done)
        return;
    d->ck.busy = 0;
    if (res) {
        count_io_error(d);
        latch(d);
        sync_advance(d);
        return;
    }
    d->st.checkpoints++;
}

static void *ckpt_main(void *arg)
{
    struct kvt_disk *d = arg;

    pthread_mutex_lock(&d->ck.mu);
    for (;;) {
        while (!d->ck.stop && (!d->ck.requested || d->ck.done))
            pthread_cond_wait(&d->ck.cv, &d->ck.mu);
        if (d->ck.stop)
            break;
        uint64_t count = d->ck.count, gen = d->ck.gen, next_seq = d->ck.next_seq, t0 = now_us();
        int fd = d->ck.trunc_fd, rc;
        pthread_mutex_unlock(&d->ck.mu);
        rc = ckpt_put(d, d->snap, count, gen, next_seq, &fd, 1);
        pthread_mutex_lock(&d->ck.mu);
        d->ck.res = rc;
        d->ck.write_us = now_us() - t0;
        d->ck.done = 1;
        /* The owner thread sleeps on the eventfd: wake it to reap the result. */
        uint64_t v = 1;
        if (write(d->event_fd, &v, sizeof(v)) < 0) {
            /* Only a saturated counter fails, and then the owner is woken already. */
        }
    }
    pthread_mutex_unlock(&d->ck.mu);
    return NULL;
}

/* ---- recovery ------------------------------------------------------------------------------- */

static int read_full(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

/* A PUT record's geometry must give exactly its lengths, or range reads would miss their blocks. */
static int rec_layout_ok(const struct rec *r)
{
    struct kvt_object_meta m;

    memset(&m, 0, sizeof(m));
    m.n_tokens = r->n_tokens;
    m.raw_len = r->raw_len;
    m.codec = r->codec;
    m.stored_len = r->stored_len;
    m.g.n_layers = r->n_layers;
    m.g.block_tokens = r->block_tokens;
    if (r->n_layers == 0 || r->block_tokens == 0 || kvt_object_layout(&m) != 0 ||
        m.row_bytes != r->row_bytes || m.stored_len != r->stored_len ||
        (r->codec != KVT_CODEC_RAW && r->stored_len > r->raw_len))
        return 0;
    return r->blocks == blocks_for(kvt_object_bytes(&m));
}

/* Applies one PUT or DEL record in history order. A PUT wins over an older entry; a DEL turns
 * the entry into a tombstone, kept until recovery ends so that a scan of the data files (when the
 * metadata turns out damaged) does not bring the removed object back. */
static void apply_rec(struct kvt_disk *d, const struct rec *r, int unknown, uint64_t *max_seq)
{
    struct kvt_obj_id id = {.ns_seed = r->ns_seed, .key = {.lo = r->key_lo, .hi = r->key_hi}};
    struct ient *e = index_find(d, &id);

    if (r->seq > *max_seq)
        *max_seq = r->seq;
    if (r->type == REC_DEL) {
        if (!e) {
            e = index_claim_as(d, &id, 1);
            if (e)
                e->seq = r->seq;
        } else if (e->seq < r->seq) {
            if (!e->dead)
                d->index_dead++;
            e->dead = 1;
            e->unknown = 0;
            e->seq = r->seq;
        }
        return;
    }
    if (e && !e->dead && e->seq >= r->seq)
        return;
    if (r->file >= d->n_files || r->blocks == 0 || r->raw_len > d->cfg.object_bytes_max ||
        !rec_layout_ok(r)) {
        d->st.recovery_dropped++;
        return;
    }
    e = claim_or_revive(d, &id, e);
    if (!e) {
        d->st.recovery_dropped++;
        return;
    }
    e->seq = r->seq;
    e->file = r->file;
    e->start = r->start;
    e->blocks = r->blocks;
    e->codec = (uint16_t)r->codec;
    e->n_tokens = r->n_tokens;
    e->raw_len = r->raw_len;
    e->stored_len = r->stored_len;
    e->n_layers = (uint16_t)r->n_layers;
    e->block_tokens = (uint16_t)r->block_tokens;
    e->row_bytes = r->row_bytes;
    e->unknown = (uint8_t)unknown;
    /* bytes_used is recomputed once extents are reserved. */
}

enum ckpt_state {
    CK_OK = 0,     /* checkpoint read whole */
    CK_NONE = 1,   /* no checkpoint file */
    CK_BADHDR = 2, /* header unreadable, foreign or inconsistent: generation unknown */
    CK_BADBODY = 3 /* header sound, records damaged or missing: the sound records are used */
};

/* Loads the checkpoint into the index and says what state it was in. */
static int load_checkpoint(struct kvt_disk *d, enum ckpt_state *state, uint64_t *gen,
                           uint64_t *next_seq, uint64_t *max_seq)
{
    char path[PATH_MAX + 32];
    unsigned char *h = d->ckpt_buf;
    uint64_t count, whole;
    size_t got = 0;
    struct rec r;
    int fd, rc;

    snprintf(path, sizeof(path), "%s/%s", d->meta_dir, CKPT_NAME);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *state = CK_NONE;
        return errno == ENOENT ? 0 : -errno;
    }
    *state = CK_BADHDR;
    rc = read_full(fd, h, CKPT_HEADER_BYTES, 0, &got);
    if (rc || got != CKPT_HEADER_BYTES || get_le(h, 4) != CKPT_MAGIC ||
        get_le(h + 4, 4) != CKPT_VERSION || get_le(h + 56, 8) != XXH3_64bits(h, 56))
        goto out_close;
    count = get_le(h + 24, 8);
    if (count > d->cfg.objects_max || CKPT_HEADER_BYTES + count * REC_BYTES > d->ckpt_buf_bytes)
        goto out_close;
    if (get_le(h + 48, 8) != d->store_id)
        goto out_close;
    *gen = get_le(h + 8, 8);
    *next_seq = get_le(h + 16, 8);
    whole = get_le(h + 40, 8);
    if (*next_seq > *max_seq + 1)
        *max_seq = *next_seq - 1;
    rc = read_full(fd, h + CKPT_HEADER_BYTES, (size_t)(count * REC_BYTES), CKPT_HEADER_BYTES, &got);
    if (rc)
        got = 0;
    *state = got == count * REC_BYTES && whole == XXH3_64bits(h + CKPT_HEADER_BYTES, got)
                 ? CK_OK
                 : CK_BADBODY;
    /* Every record has its own check: of a damaged checkpoint the sound records still count. */
    for (uint64_t i = 0; i + 1 <= got / REC_BYTES; i++) {
        if (rec_decode(h + CKPT_HEADER_BYTES + i * REC_BYTES, &r) != 0 || r.type != REC_PUT) {
            d->st.recovery_dropped++;
            continue;
        }
        apply_rec(d, &r, 0, max_seq);
    }
out_close:
    close(fd);
    return 0;
}

/* Generation of the first sound record of a journal, or UINT64_MAX when it has none. */
static uint64_t journal_gen(struct kvt_disk *d, int fd)
{
    size_t got = 0;
    struct rec r;

    if (read_full(fd, d->ckpt_buf, RECOVERY_READ_BYTES / REC_BYTES * REC_BYTES, 0, &got) != 0)
        return UINT64_MAX;
    for (size_t k = 0; k + REC_BYTES <= got; k += REC_BYTES)
        if (rec_decode(d->ckpt_buf + k, &r) == 0)
            return r.gen;
    return UINT64_MAX;
}

/* Applies the records of one journal whose generation is gen (any, for UINT64_MAX). A record
 * that fails its check with nothing sound after it is the torn end a crash leaves; a sound
 * record after a failed one means the journal itself is damaged (*damaged). */
static int replay_journal(struct kvt_disk *d, int fd, uint64_t gen, uint64_t *max_seq, int *damaged)
{
    /* Bounded by the file, which the running store keeps within about checkpoint_records plus
     * the commits made while a checkpoint is written; a longer journal is still read whole. */
    struct stat sb;
    uint64_t limit;
    unsigned char *buf = d->ckpt_buf;
    size_t chunk = RECOVERY_READ_BYTES / REC_BYTES * REC_BYTES, got;
    uint64_t off = 0;
    int bad = 0;
    struct rec r;

    if (fstat(fd, &sb) != 0)
        return -errno;
    limit = (uint64_t)sb.st_size;
    if (chunk > d->ckpt_buf_bytes)
        chunk = d->ckpt_buf_bytes / REC_BYTES * REC_BYTES;
    while (off < limit) {
        int rc = read_full(fd, buf, chunk, off, &got);
        if (rc)
            return rc;
        for (size_t k = 0; k + REC_BYTES <= got; k += REC_BYTES) {
            if (rec_decode(buf + k, &r) != 0) {
                bad = 1;
                continue;
            }
            if (bad)
                *damaged = 1;
            if (gen == UINT64_MAX || r.gen == gen)
                apply_rec(d, &r, 1, max_seq);
        }
        if (got < chunk)
            return 0;
        off += got;
    }
    return 0;
}

/* Replays both journals in history order. With the checkpoint's generation G known, journal
 * records of G come first and those of G + 1 (written while checkpoint G + 1 was being put in
 * place) after; each journal holds one generation, since it is emptied before reuse. Without it,
 * the journal whose records are older goes first. */
static int replay_journals(struct kvt_disk *d, uint64_t gen, int gen_known, uint64_t *max_seq,
                           int *damaged)
{
    int rc = 0;

    if (gen_known) {
        for (uint64_t g = gen; g <= gen + 1 && rc == 0; g++)
            for (int j = 0; j < 2 && rc == 0; j++)
                rc = replay_journal(d, d->journal_fds[j], g, max_seq, damaged);
        return rc;
    }
    uint64_t g0 = journal_gen(d, d->journal_fds[0]), g1 = journal_gen(d, d->journal_fds[1]);
    int first = g1 < g0;
    rc = replay_journal(d, d->journal_fds[first], UINT64_MAX, max_seq, damaged);
    if (rc == 0)
        rc = replay_journal(d, d->journal_fds[1 - first], UINT64_MAX, max_seq, damaged);
    return rc;
}

/* Removes the tombstones recovery kept; revisits the slot a deletion refilled. */
static void drop_dead(struct kvt_disk *d)
{
    for (uint64_t i = 0; i <= d->index_mask && d->index_dead > 0;) {
        if (d->index[i].used && d->index[i].dead) {
            index_delete(d, &d->index[i]);
            continue;
        }
        i++;
    }
}

/* One object the scan read back whole with a sound checksum: it joins the index unless the
 * history says it was removed or replaced. ck_next_seq is the first sequence number an intact
 * checkpoint did not cover (0 when none is intact): an older object missing from such a checkpoint
 * was removed before it. */
static void scan_merge(struct kvt_disk *d, uint32_t f, uint64_t start, uint64_t blocks,
                       const struct kvt_object_meta *m, uint64_t ck_next_seq, uint64_t *max_seq)
{
    struct kvt_obj_id id = {.ns_seed = m->ns_seed, .key = m->key};
    struct ient *e = index_find(d, &id);

    if (m->seq > *max_seq)
        *max_seq = m->seq;
    if (e && e->dead && e->seq > m->seq)
        return; /* removed after it was written */
    if (e && !e->dead) {
        if (e->seq > m->seq)
            return; /* an older version of the key */
        if (e->seq == m->seq) {
            e->found = e->file == f && e->start == start && e->blocks == blocks;
            return;
        }
        /* Newer than the history knows: its record went with the damaged part. */
    } else if (!e && m->seq < ck_next_seq) {
        return;
    }
    e = claim_or_revive(d, &id, e);
    if (!e) {
        d->st.scan_dropped++;
        return;
    }
    e->seq = m->seq;
    e->file = (uint8_t)f;
    e->start = start;
    e->blocks = (uint32_t)blocks;
    e->codec = (uint16_t)m->codec;
    e->n_tokens = m->n_tokens;
    e->raw_len = m->raw_len;
    e->stored_len = m->stored_len;
    e->n_layers = (uint16_t)m->g.n_layers;
    e->block_tokens = (uint16_t)m->g.block_tokens;
    e->row_bytes = m->row_bytes;
    e->unknown = 0;
    e->found = 1;
}

/* Reads a window of the data file f starting at block b into the staging area. */
static int scan_window(struct kvt_disk *d, uint32_t f, uint64_t b, uint64_t n_blocks,
                       uint64_t *w_start, uint64_t *w_blocks)
{
    size_t len = d->staging_bytes / BLOCK * BLOCK, got = 0;
    int rc;

    if (len > (n_blocks - b) * BLOCK)
        len = (size_t)((n_blocks - b) * BLOCK);
    rc = read_full(d->files[f].fd, d->staging, len, b * BLOCK, &got);
    if (rc)
        return rc;
    if (got < BLOCK)
        return -EIO;
    *w_start = b;
    *w_blocks = got / BLOCK;
    return 0;
}

/* The fallback when the checkpoint or a journal is damaged: every block of every data file is
 * tried as the start of an object (each is self-describing: header magic, version and header
 * check), and an object whose whole checksum holds joins the index (see scan_merge); a header
 * whose payload fails the checksum is a torn or overwritten object and is skipped. What the
 * metadata listed but the scan could not read back sound is dropped. Extents are rebuilt from the
 * result, so the space of everything dropped is free again. Reads sequentially through the
 * staging area, which holds at least one object of object_bytes_max. */
static int scan_files(struct kvt_disk *d, uint64_t ck_next_seq, uint64_t *max_seq)
{
    struct kvt_object_meta m;
    int rc;

    for (uint32_t f = 0; f < d->n_files; f++) {
        uint64_t n_blocks = d->files[f].bytes / BLOCK, ws = 0, wn = 0;
        for (uint64_t b = 1; b < n_blocks;) {
            if (b < ws || b >= ws + wn) {
                rc = scan_window(d, f, b, n_blocks, &ws, &wn);
                if (rc)
                    return rc;
            }
            const unsigned char *p = d->staging + (b - ws) * BLOCK;
            if (kvt_object_parse_header(p, &m) != 0 || m.raw_len > d->cfg.object_bytes_max) {
                b++;
                continue;
            }
            uint64_t nb = blocks_for(kvt_object_bytes(&m));
            if (b + nb > n_blocks) {
                b++;
                continue;
            }
            if (b + nb > ws + wn) {
                rc = scan_window(d, f, b, n_blocks, &ws, &wn);
                if (rc)
                    return rc;
                p = d->staging;
                if (nb > wn) {
                    b++;
                    continue;
                }
            }
            if (kvt_object_verify(p, (size_t)(nb * BLOCK), &m) != 0) {
                d->st.scan_dropped++;
                b++;
                continue;
            }
            scan_merge(d, f, b, nb, &m, ck_next_seq, max_seq);
            b += nb;
        }
    }
    for (uint64_t i = 0; i <= d->index_mask;) {
        struct ient *e = &d->index[i];
        if (e->used && !e->dead && !e->found) {
            index_delete(d, e);
            d->st.scan_dropped++;
            continue;
        }
        if (e->used)
            e->unknown = 0;
        i++;
    }
    return 0;
}

static int cmp_seq_desc(const void *a, const void *b, void *arg)
{
    const struct ient *ix = arg;
    uint64_t sa = ix[*(const uint64_t *)a].seq, sb = ix[*(const uint64_t *)b].seq;
    return sa < sb ? 1 : sa > sb ? -1 : 0;
}

static int header_matches(const struct ient *e, const unsigned char *blk)
{
    struct kvt_object_meta m;

    return kvt_object_parse_header(blk, &m) == 0 && m.ns_seed == e->ns_seed &&
           m.key.lo == e->key_lo && m.key.hi == e->key_hi && m.seq == e->seq &&
           m.raw_len == e->raw_len && m.stored_len == e->stored_len && m.codec == e->codec &&
           m.g.n_layers == e->n_layers && m.g.block_tokens == e->block_tokens &&
           m.row_bytes == e->row_bytes;
}

/* Reads the first block of each listed entry through the ring, as many at once as the ring and
 * the staging area allow, and marks entries whose header does not match their record (a write
 * that never reached the disk, or an extent reused since) for dropping. */
static int verify_headers(struct kvt_disk *d, const uint64_t *list, uint64_t n)
{
    uint32_t depth = d->ring.sq.ring_entries, n_free = 0;
    uint32_t *free_blk;
    uint64_t next = 0, done = 0;
    int rc = 0;

    if (depth > d->staging_bytes / BLOCK)
        depth = (uint32_t)(d->staging_bytes / BLOCK);
    free_blk = kvt_malloc(KVT_ALLOC_DISK, sizeof(*free_blk) * depth);
    if (!free_blk)
        return KVT_E_NOMEM;
    for (uint32_t b = 0; b < depth; b++)
        free_blk[n_free++] = b;
    while (done < n && rc == 0) {
        struct io_uring_cqe *cqe;
        while (n_free > 0 && next < n) {
            struct ient *e = &d->index[list[next]];
            struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
            uint32_t b;
            if (!sqe)
                break;
            b = free_blk[--n_free];
            io_uring_prep_read_fixed(sqe, e->file, d->staging + (size_t)b * BLOCK, BLOCK,
                                     e->start * BLOCK, 0);
            sqe->flags |= IOSQE_FIXED_FILE;
            io_uring_sqe_set_data64(sqe, (next << 20) | b);
            next++;
        }
        rc = io_uring_submit_and_wait(&d->ring, 1);
        if (rc < 0)
            break;
        rc = 0;
        while (io_uring_peek_cqe(&d->ring, &cqe) == 0) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            uint32_t b = (uint32_t)(ud & 0xfffffu);
            struct ient *e = &d->index[list[ud >> 20]];
            if (cqe->res != (int)BLOCK || !header_matches(e, d->staging + (size_t)b * BLOCK)) {
                kvt_extent_free(d->files[e->file].ext, e->start, e->blocks);
                d->allocated--;
                e->unknown = 2;
            } else {
                e->unknown = 0;
            }
            io_uring_cqe_seen(&d->ring, cqe);
            free_blk[n_free++] = b;
            done++;
        }
    }
    kvt_free(KVT_ALLOC_DISK, free_blk);
    return rc;
}

/* Rebuilds allocator state from the index: newer objects claim their extents first, and an
 * older entry whose extent overlaps a newer one was overwritten after its record and is dropped.
 * Entries known only from the journal then have their header read back and compared. */
static int rebuild_extents(struct kvt_disk *d)
{
    uint64_t *order, n = 0, n_verify = 0;
    int rc;

    order = kvt_malloc(KVT_ALLOC_DISK, sizeof(*order) * (d->index_count + 1u));
    if (!order)
        return KVT_E_NOMEM;
    for (uint64_t i = 0; i <= d->index_mask; i++)
        if (d->index[i].used)
            order[n++] = i;
    qsort_r(order, n, sizeof(*order), cmp_seq_desc, d->index);
    for (uint64_t k = 0; k < n; k++) {
        struct ient *e = &d->index[order[k]];
        if (kvt_extent_reserve(d->files[e->file].ext, e->start, e->blocks) != 0) {
            e->unknown = 2;
            continue;
        }
        d->allocated++;
        /* Compact the entries to verify at the front; k >= n_verify so nothing is lost. */
        if (e->unknown)
            order[n_verify++] = order[k];
    }
    rc = verify_headers(d, order, n_verify);
    kvt_free(KVT_ALLOC_DISK, order);
    if (rc)
        return rc;
    /* Deleting while iterating would shift entries under the loop, so drop in a second pass
     * (revisiting the slot a deletion refilled) and count bytes in a third. */
    for (uint64_t i = 0; i <= d->index_mask;) {
        struct ient *e = &d->index[i];
        if (e->used && e->unknown == 2) {
            index_delete(d, e);
            d->st.recovery_dropped++;
            continue;
        }
        i++;
    }
    for (uint64_t i = 0; i <= d->index_mask; i++)
        if (d->index[i].used)
            d->st.tier.bytes_used += (uint64_t)d->index[i].blocks * BLOCK;
    return 0;
}

static void sb_encode(unsigned char *b, uint64_t store_id, uint32_t k, uint32_t n, uint64_t bytes)
{
    memset(b, 0, BLOCK);
    put_le(b + 0, SB_MAGIC, 4);
    put_le(b + 4, SB_VERSION, 4);
    put_le(b + 8, store_id, 8);
    put_le(b + 16, k, 4);
    put_le(b + 20, n, 4);
    put_le(b + 24, bytes, 8);
    put_le(b + 32, XXH3_64bits(b, 32), 8);
}

static int sb_valid(const unsigned char *b, uint32_t k, uint32_t n, uint64_t bytes)
{
    return get_le(b, 4) == SB_MAGIC && get_le(b + 4, 4) == SB_VERSION &&
           get_le(b + 32, 8) == XXH3_64bits(b, 32) && get_le(b + 16, 4) == k &&
           get_le(b + 20, 4) == n && get_le(b + 24, 8) == bytes;
}

/* Block 0 of every data file holds a superblock naming the store, the file's place in it and the
 * geometry. When any file's superblock is missing or disagrees (new files, files swapped,
 * resized or replaced), the files are formatted as a new store and nothing recorded for the old
 * one is trusted, so a checkpoint can never point into the wrong file. Returns 1 when the store
 * was formatted, 0 when it was recognised, or an error. */
static int superblocks(struct kvt_disk *d)
{
    unsigned char *b = d->staging;
    uint64_t id = 0;
    size_t got;
    int ok = 1, rc;

    for (uint32_t k = 0; k < d->n_files && ok; k++) {
        rc = read_full(d->files[k].fd, b, BLOCK, 0, &got);
        if (rc)
            return rc;
        /* A store written by a build with object format v1 holds objects this build cannot
         * read. Formatting it would silently drop a cache someone may still want to serve with
         * the older build, so it is refused and the operator decides. */
        if (got == BLOCK && get_le(b, 4) == SB_MAGIC && get_le(b + 4, 4) == 1 &&
            get_le(b + 32, 8) == XXH3_64bits(b, 32)) {
            set_err(&d->cfg,
                    "%s: disk store format v1 (written by an older kvtier); this build reads "
                    "only format v2: remove the data files and %s/" CKPT_NAME
                    " to start empty, or use the older build",
                    d->cfg.paths[k], d->meta_dir);
            return KVT_E_BADCONFIG;
        }
        ok = got == BLOCK && sb_valid(b, k, d->n_files, d->files[k].bytes) &&
             (k == 0 || get_le(b + 8, 8) == id);
        id = get_le(b + 8, 8);
    }
    if (ok) {
        d->store_id = id;
        return 0;
    }
    if (getrandom(&id, sizeof(id), 0) != (ssize_t)sizeof(id))
        id = now_ms() ^ ((uint64_t)getpid() << 32);
    for (uint32_t k = 0; k < d->n_files; k++) {
        sb_encode(b, id, k, d->n_files, d->files[k].bytes);
        if (pwrite(d->files[k].fd, b, BLOCK, 0) != (ssize_t)BLOCK || fdatasync(d->files[k].fd))
            return errno ? -errno : -EIO;
    }
    d->store_id = id;
    d->st.formats++;
    return 1;
}

static int recover(struct kvt_disk *d)
{
    static const char *const ck_why[] = {"", "missing", "unreadable", "damaged"};
    uint64_t t0 = now_ms(), gen = 0, next_seq = 0, max_seq = 0;
    enum ckpt_state ck = CK_NONE;
    int rc, formatted, j_damaged = 0;

    rc = superblocks(d);
    if (rc < 0)
        return rc;
    formatted = rc == 1;
    for (uint32_t k = 0; k < d->n_files; k++) {
        rc = kvt_extent_reserve(d->files[k].ext, 0, 1);
        if (rc)
            return rc;
    }
    /* A new store trusts nothing recorded for the files' previous life. */
    if (!formatted) {
        rc = load_checkpoint(d, &ck, &gen, &next_seq, &max_seq);
        if (rc == 0)
            rc = replay_journals(d, gen, ck == CK_OK || ck == CK_BADBODY, &max_seq, &j_damaged);
        if (rc)
            return rc;
    }
    if (!formatted && (ck != CK_OK || j_damaged)) {
        uint64_t dropped0 = d->st.scan_dropped;
        rc = scan_files(d, ck == CK_OK ? next_seq : 0, &max_seq);
        if (rc)
            return rc;
        drop_dead(d);
        d->st.scans++;
        d->st.recovered_by_scan = d->index_count;
        KVT_WARN("disk", "recovered %u objects by scan (%llu dropped): checkpoint %s%s%s in %s",
                 d->index_count, (unsigned long long)(d->st.scan_dropped - dropped0),
                 ck == CK_OK ? "sound" : ck_why[ck], j_damaged ? ", journal damaged" : "",
                 ck == CK_NONE || ck == CK_OK ? "" : "; removals recorded only there may be undone",
                 d->meta_dir);
    }
    drop_dead(d);
    rc = rebuild_extents(d);
    if (rc)
        return rc;
    d->ckpt_gen = gen;
    d->next_seq = max_seq + 1;
    d->st.recovered_objects = d->index_count;
    /* Start every run from a fresh checkpoint and empty journals. */
    rc = checkpoint_sync(d);
    d->st.recovery_ms = now_ms() - t0;
    return rc;
}

/* ---- create / destroy ----------------------------------------------------------------------- */

void kvt_disk_config_init(struct kvt_disk_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->queue_depth = 64;
    cfg->staging_bytes = 64u << 20;
    cfg->object_bytes_max = 4u << 20;
    cfg->objects_max = 65536;
    cfg->io_errors_max = 8;
    cfg->checkpoint_records = 4096;
    cfg->lock_wait_ms = 5000;
    kvt_codec_config_init(&cfg->codec);
}

static int open_data_file(struct kvt_disk *d, uint32_t k)
{
    const struct kvt_disk_config *cfg = &d->cfg;
    struct dfile *f = &d->files[k];
    const char *path = cfg->paths[k];
    struct stat sb;
    int inject = cfg->faults && cfg->faults->odirect_einval, rc;

    f->fd = inject ? -1 : open(path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (inject)
        errno = EINVAL;
    f->odirect = f->fd >= 0;
    if (f->fd < 0 && errno == EINVAL) {
        if (!cfg->allow_buffered) {
            set_err(cfg,
                    "%s: O_DIRECT not supported here; set allow_buffered to accept buffered "
                    "I/O",
                    path);
            return KVT_E_BADCONFIG;
        }
        f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    }
    if (f->fd < 0) {
        rc = -errno;
        set_err(cfg, "%s: open: %s", path, strerror(errno));
        return rc;
    }
    if (fstat(f->fd, &sb) != 0) {
        rc = -errno;
        set_err(cfg, "%s: stat: %s", path, strerror(errno));
        return rc;
    }
    if (S_ISBLK(sb.st_mode)) {
        uint64_t dev_bytes = 0;
        if (ioctl(f->fd, BLKGETSIZE64, &dev_bytes) != 0) {
            rc = -errno;
            set_err(cfg, "%s: BLKGETSIZE64: %s", path, strerror(errno));
            return rc;
        }
        if (k == 0 && !cfg->meta_dir) {
            set_err(cfg, "%s: a block device needs meta_dir for the checkpoint and journal", path);
            return KVT_E_BADCONFIG;
        }
        f->bytes = cfg->file_bytes ? cfg->file_bytes : dev_bytes / BLOCK * BLOCK;
        if (f->bytes > dev_bytes) {
            set_err(cfg, "%s: device holds %llu bytes, file_bytes asks for %llu", path,
                    (unsigned long long)dev_bytes, (unsigned long long)f->bytes);
            return KVT_E_BADCONFIG;
        }
        return 0;
    }
    if (!S_ISREG(sb.st_mode)) {
        set_err(cfg, "%s: neither a regular file nor a block device", path);
        return KVT_E_BADCONFIG;
    }
    f->bytes = cfg->file_bytes;
    rc = posix_fallocate(f->fd, 0, (off_t)f->bytes);
    if (rc) {
        set_err(cfg, "%s: fallocate %llu bytes: %s", path, (unsigned long long)f->bytes,
                strerror(rc));
        return rc == ENOSPC || rc == EFBIG ? KVT_E_FULL : -rc;
    }
    return 0;
}

/* A killed previous owner's io_uring keeps the files (and their lock) until its in-flight I/O
 * has drained, so waiting for the lock also waits for that I/O; a live owner keeps it forever. */
static int lock_files(struct kvt_disk *d)
{
    uint64_t deadline = now_ms() + d->cfg.lock_wait_ms;

    for (;;) {
        if (flock(d->files[0].fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            set_err(&d->cfg, "%s: flock: %s", d->cfg.paths[0], strerror(errno));
            return -errno;
        }
        if (now_ms() >= deadline) {
            set_err(&d->cfg, "%s: locked by another kvtier disk store", d->cfg.paths[0]);
            return KVT_E_BUSY;
        }
        usleep(5000);
    }
}

static int validate(const struct kvt_disk_config *cfg)
{
    if (cfg->n_paths == 0 || cfg->n_paths > KVT_DISK_PATHS_MAX) {
        set_err(cfg, "n_paths must be 1..%d", KVT_DISK_PATHS_MAX);
        return KVT_E_BADCONFIG;
    }
    for (uint32_t k = 0; k < cfg->n_paths; k++) {
        if (!cfg->paths[k] || !cfg->paths[k][0] || strlen(cfg->paths[k]) >= PATH_MAX) {
            set_err(cfg, "paths[%u] is empty or too long", k);
            return KVT_E_BADCONFIG;
        }
    }
    if (cfg->file_bytes % BLOCK || cfg->file_bytes / BLOCK > UINT32_MAX * 64ull) {
        set_err(cfg, "file_bytes must be a multiple of 4096");
        return KVT_E_BADCONFIG;
    }
    if (cfg->queue_depth == 0 || cfg->queue_depth > 4096 || cfg->objects_max == 0 ||
        cfg->objects_max > (1u << 28) || cfg->object_bytes_max == 0 ||
        cfg->object_bytes_max > (1u << 30) || cfg->staging_bytes > (1ull << 30) ||
        cfg->io_errors_max == 0 || cfg->checkpoint_records == 0) {
        set_err(cfg, "queue_depth, objects_max, object_bytes_max, staging_bytes, "
                     "io_errors_max or checkpoint_records out of range");
        return KVT_E_BADCONFIG;
    }
    return 0;
}

static int setup_memory(struct kvt_disk *d)
{
    uint64_t cap = 1;
    struct kvt_codec_config ccfg = d->cfg.codec;

    struct kvt_extent_config scfg;
    /* Room for one object of object_bytes_max in the blocked layout: its trailers (8 bytes per
     * block, at most 1/64 of the bytes for blocks of 512 bytes or more) and a page of padding. A
     * geometry that needs more (tiny rows, many layers) is refused per write with KVT_E_TOOBIG. */
    uint64_t one = blocks_for(KVT_OBJECT_HEADER_BYTES + d->cfg.object_bytes_max +
                              d->cfg.object_bytes_max / 64 + BLOCK) *
                   BLOCK;

    d->staging_bytes = (size_t)(d->cfg.staging_bytes / BLOCK * BLOCK);
    if (d->staging_bytes < one) {
        set_err(&d->cfg, "staging_bytes %llu cannot hold one object of %llu bytes (needs %llu)",
                (unsigned long long)d->cfg.staging_bytes,
                (unsigned long long)d->cfg.object_bytes_max, (unsigned long long)one);
        return KVT_E_BADCONFIG;
    }
    d->n_ops = d->cfg.queue_depth;
    d->staging = kvt_aligned_alloc(KVT_ALLOC_DISK, BLOCK, d->staging_bytes);
    if (!d->staging)
        return KVT_E_NOMEM;
    scfg.blocks = d->staging_bytes / BLOCK;
    scfg.extents_max = d->n_ops;
    if (kvt_extent_create(&scfg, &d->sp) != 0)
        return KVT_E_NOMEM;
    d->ops = kvt_calloc(KVT_ALLOC_DISK, d->n_ops, sizeof(*d->ops));
    d->free_ops = kvt_calloc(KVT_ALLOC_DISK, d->n_ops, sizeof(*d->free_ops));
    while (cap < 2ull * d->cfg.objects_max)
        cap <<= 1;
    d->index = kvt_calloc(KVT_ALLOC_DISK, cap, sizeof(*d->index));
    d->used_bits = kvt_calloc(KVT_ALLOC_DISK, (cap + 63) / 64, sizeof(*d->used_bits));
    d->index_mask = cap - 1;
    d->pfree_max = d->cfg.objects_max;
    d->pfree = kvt_calloc(KVT_ALLOC_DISK, d->pfree_max, sizeof(*d->pfree));
    d->jcap = d->n_ops + DELS_PER_COMMIT;
    d->jbuf[0] = kvt_malloc(KVT_ALLOC_DISK, (size_t)d->jcap * REC_BYTES);
    d->jbuf[1] = kvt_malloc(KVT_ALLOC_DISK, (size_t)d->jcap * REC_BYTES);
    d->ckpt_buf_bytes = CKPT_HEADER_BYTES + (size_t)d->cfg.objects_max * REC_BYTES;
    if (d->ckpt_buf_bytes < RECOVERY_READ_BYTES)
        d->ckpt_buf_bytes = RECOVERY_READ_BYTES;
    d->ckpt_buf = kvt_malloc(KVT_ALLOC_DISK, d->ckpt_buf_bytes);
    d->snap = kvt_calloc(KVT_ALLOC_DISK, d->cfg.objects_max, sizeof(*d->snap));
    if (!d->ops || !d->free_ops || !d->index || !d->pfree || !d->jbuf[0] || !d->jbuf[1] ||
        !d->ckpt_buf || !d->snap || !d->used_bits)
        return KVT_E_NOMEM;
    for (uint32_t i = 0; i < d->n_ops; i++)
        d->free_ops[i] = d->n_ops - 1 - i;
    d->n_free_ops = d->n_ops;
    ccfg.input_bytes_max = d->cfg.object_bytes_max;
    return kvt_codec_create(&ccfg, &d->codec);
}

static int setup_ring(struct kvt_disk *d)
{
    struct io_uring_params p;
    struct iovec iov = {.iov_base = d->staging, .iov_len = d->staging_bytes};
    int fds[KVT_DISK_PATHS_MAX + 2], rc;

    memset(&p, 0, sizeof(p));
    rc = io_uring_queue_init_params(d->n_ops + d->n_files + 2, &d->ring, &p);
    if (rc) {
        set_err(&d->cfg, "io_uring_queue_init: %s", strerror(-rc));
        return rc;
    }
    d->ring_ready = 1;
    rc = io_uring_register_buffers(&d->ring, &iov, 1);
    if (rc) {
        set_err(&d->cfg,
                "io_uring_register_buffers (%zu bytes): %s; raise RLIMIT_MEMLOCK or "
                "lower staging_bytes",
                d->staging_bytes, strerror(-rc));
        return rc;
    }
    for (uint32_t k = 0; k < d->n_files; k++)
        fds[k] = d->files[k].fd;
    fds[d->n_files] = d->journal_fds[0];
    fds[d->n_files + 1] = d->journal_fds[1];
    rc = io_uring_register_files(&d->ring, fds, d->n_files + 2);
    if (rc) {
        set_err(&d->cfg, "io_uring_register_files: %s", strerror(-rc));
        return rc;
    }
    d->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->event_fd < 0)
        return -errno;
    rc = io_uring_register_eventfd(&d->ring, d->event_fd);
    if (rc)
        set_err(&d->cfg, "io_uring_register_eventfd: %s", strerror(-rc));
    return rc;
}

static void teardown(struct kvt_disk *d)
{
    if (d->ck.started) {
        pthread_mutex_lock(&d->ck.mu);
        d->ck.stop = 1;
        pthread_cond_signal(&d->ck.cv);
        pthread_mutex_unlock(&d->ck.mu);
        pthread_join(d->ck.thread, NULL);
        pthread_cond_destroy(&d->ck.cv);
        pthread_mutex_destroy(&d->ck.mu);
    }
    if (d->ring_ready)
        io_uring_queue_exit(&d->ring);
    if (d->event_fd >= 0)
        close(d->event_fd);
    for (int j = 0; j < 2; j++)
        if (d->journal_fds[j] >= 0)
            close(d->journal_fds[j]);
    for (uint32_t k = 0; k < KVT_DISK_PATHS_MAX; k++) {
        if (d->files[k].fd >= 0)
            close(d->files[k].fd);
        kvt_extent_destroy(d->files[k].ext);
    }
    kvt_codec_destroy(d->codec);
    kvt_free(KVT_ALLOC_DISK, d->ckpt_buf);
    kvt_free(KVT_ALLOC_DISK, d->snap);
    kvt_free(KVT_ALLOC_DISK, d->jbuf[0]);
    kvt_free(KVT_ALLOC_DISK, d->jbuf[1]);
    kvt_free(KVT_ALLOC_DISK, d->pfree);
    kvt_free(KVT_ALLOC_DISK, d->index);
    kvt_free(KVT_ALLOC_DISK, d->used_bits);
    kvt_free(KVT_ALLOC_DISK, d->free_ops);
    kvt_free(KVT_ALLOC_DISK, d->ops);
    kvt_extent_destroy(d->sp);
    kvt_free(KVT_ALLOC_DISK, d->staging);
    kvt_free(KVT_ALLOC_DISK, d);
}

int kvt_disk_create(const struct kvt_disk_config *cfg, struct kvt_disk **out)
{
    struct kvt_disk *d;
    char path[PATH_MAX + 32];
    int rc;

    if (!cfg || !out)
        return KVT_E_INVAL;
    rc = validate(cfg);
    if (rc)
        return rc;
    d = kvt_calloc(KVT_ALLOC_DISK, 1, sizeof(*d));
    if (!d)
        return KVT_E_NOMEM;
    d->cfg = *cfg;
    d->journal_fds[0] = d->journal_fds[1] = -1;
    d->event_fd = -1;
    for (uint32_t k = 0; k < KVT_DISK_PATHS_MAX; k++)
        d->files[k].fd = -1;
    d->n_files = cfg->n_paths;
    d->gen_next = 1;

    if (cfg->meta_dir) {
        snprintf(d->meta_dir, sizeof(d->meta_dir), "%s", cfg->meta_dir);
    } else {
        const char *slash = strrchr(cfg->paths[0], '/');
        if (!slash)
            snprintf(d->meta_dir, sizeof(d->meta_dir), ".");
        else if (slash == cfg->paths[0])
            snprintf(d->meta_dir, sizeof(d->meta_dir), "/");
        else
            snprintf(d->meta_dir, sizeof(d->meta_dir), "%.*s", (int)(slash - cfg->paths[0]),
                     cfg->paths[0]);
    }
    rc = setup_memory(d);
    if (rc)
        goto err_teardown;
    for (uint32_t k = 0; k < d->n_files; k++) {
        struct kvt_extent_config ecfg;
        rc = open_data_file(d, k);
        if (rc)
            goto err_teardown;
        if (d->files[k].bytes < 2 * BLOCK) {
            set_err(cfg, "%s: capacity below two blocks (set file_bytes)", cfg->paths[k]);
            rc = KVT_E_BADCONFIG;
            goto err_teardown;
        }
        ecfg.blocks = d->files[k].bytes / BLOCK;
        ecfg.extents_max = cfg->objects_max + 1; /* + the superblock */
        rc = kvt_extent_create(&ecfg, &d->files[k].ext);
        if (rc)
            goto err_teardown;
        d->st.tier.bytes_capacity += d->files[k].bytes;
        if (k == 0) {
            rc = lock_files(d);
            if (rc)
                goto err_teardown;
        }
    }
    for (int j = 0; j < 2; j++) {
        snprintf(path, sizeof(path), "%s/%s", d->meta_dir, j ? JOURNAL_NAME_1 : JOURNAL_NAME_0);
        d->journal_fds[j] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (d->journal_fds[j] < 0) {
            rc = -errno;
            set_err(cfg, "%s: open: %s", path, strerror(errno));
            goto err_teardown;
        }
    }
    rc = setup_ring(d);
    if (rc)
        goto err_teardown;
    rc = recover(d);
    if (rc) {
        if (rc != KVT_E_BADCONFIG) /* that one has said why already */
            set_err(cfg, "recovery in %s: %s", d->meta_dir, kvt_strerror(rc));
        goto err_teardown;
    }
    pthread_mutex_init(&d->ck.mu, NULL);
    pthread_cond_init(&d->ck.cv, NULL);
    rc = -pthread_create(&d->ck.thread, NULL, ckpt_main, d);
    if (rc) {
        pthread_cond_destroy(&d->ck.cv);
        pthread_mutex_destroy(&d->ck.mu);
        set_err(cfg, "checkpoint thread: %s", strerror(-rc));
        goto err_teardown;
    }
    d->ck.started = 1;
    *out = d;
    return 0;

err_teardown:
    teardown(d);
    return rc;
}

void kvt_disk_destroy(struct kvt_disk *d)
{
    if (!d)
        return;
    /* Bounded by the I/O in flight: every op completes or fails in the kernel, and poll starts
     * the commits that make completed writes durable. Staged tombstones need no commit: the
     * checkpoint below records their effect. */
    while (d->inflight > d->reserved + d->lent || d->commit.inflight || d->ck.busy) {
        if (io_uring_sq_ready(&d->ring) > 0)
            io_uring_submit(&d->ring);
        kvt_disk_wait(d, 100);
    }
    if (!d->failed)
        checkpoint_sync(d);
    /* The checkpoint made every removal durable (or the tier failed): barriers complete now. */
    sync_advance(d);
    run_syncs(d);
    /* Nothing is in flight: give the files back now rather than when the kernel tears the ring
     * down asynchronously, so that a new store can take the lock at once. */
    io_uring_unregister_files(&d->ring);
    flock(d->files[0].fd, LOCK_UN);
    teardown(d);
}

/* ---- tier ops table ------------------------------------------------------------------------- */

static void ops_stats(void *tier, struct kvt_tier_stats *out)
{
    struct kvt_disk_stats s;
    kvt_disk_stats(tier, &s);
    *out = s.tier;
}

static int ops_event_fd(void *tier)
{
    return kvt_disk_event_fd(tier);
}

static int ops_poll(void *tier)
{
    return kvt_disk_poll(tier);
}

const struct kvt_tier_ops kvt_disk_tier_ops = {
    .name = "disk",
    .id = KVT_TIER_DISK,
    .stats = ops_stats,
    .event_fd = ops_event_fd,
    .poll = ops_poll,
};
