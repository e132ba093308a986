/*
 * The disk tier's durability: journal and checkpoint records, the group commit (one journal
 * write and one fdatasync per touched file make a batch of writes and removals durable before
 * their callbacks run), generation tracking for kvt_disk_sync, and the checkpoint, which folds
 * the journal into a file written from an index snapshot by a thread of its own while new
 * records go to the other journal.
 */

#include "tiers/disk/disk_internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <xxhash.h>

#include "kvtier/errors.h"

/* ---- journal and checkpoint records --------------------------------------------------------- */

/* A record, version 2 (96 bytes, little-endian):
 *    0 magic "KVJ2" (u32)   4 type (u8)     5 file (u8)      6 codec (u16)    8 gen (u32)
 *   12 n_tokens (u32)      16 seq (u64)    24 ns_seed (u64) 32 key.lo (u64)  40 key.hi (u64)
 *   48 start block (u64)   56 blocks (u32) 60 variant (u32) 64 raw_len (u64) 72 stored_len (u64)
 *   80 n_layers (u16)      82 block_tokens (u16)            84 row_bytes (u32)
 *   88 check: XXH3-64 of bytes 0..87
 * Version 1 ("KVTJ") is the same with bytes 60..63 always zero: it is read as variant 0. */
static void rec_seal(unsigned char *p)
{
    kvt__disk_put_le(p + REC_CHECK_OFF, XXH3_64bits(p, REC_CHECK_OFF), 8);
}

static void rec_encode(unsigned char *p, const struct rec *r)
{
    memset(p, 0, REC_BYTES);
    kvt__disk_put_le(p + 0, REC_MAGIC, 4);
    kvt__disk_put_le(p + 4, r->type, 1);
    kvt__disk_put_le(p + 5, r->file, 1);
    kvt__disk_put_le(p + 6, r->codec, 2);
    kvt__disk_put_le(p + 8, r->gen, 4);
    kvt__disk_put_le(p + 12, r->n_tokens, 4);
    kvt__disk_put_le(p + 16, r->seq, 8);
    kvt__disk_put_le(p + 24, r->ns_seed, 8);
    kvt__disk_put_le(p + 32, r->key_lo, 8);
    kvt__disk_put_le(p + 40, r->key_hi, 8);
    kvt__disk_put_le(p + 48, r->start, 8);
    kvt__disk_put_le(p + 56, r->blocks, 4);
    kvt__disk_put_le(p + 60, r->variant, 4);
    kvt__disk_put_le(p + 64, r->raw_len, 8);
    kvt__disk_put_le(p + 72, r->stored_len, 8);
    kvt__disk_put_le(p + 80, r->n_layers, 2);
    kvt__disk_put_le(p + 82, r->block_tokens, 2);
    kvt__disk_put_le(p + 84, r->row_bytes, 4);
    rec_seal(p);
}

int kvt__disk_rec_decode(const unsigned char *p, struct rec *r)
{
    uint64_t magic = kvt__disk_get_le(p, 4);

    if ((magic != REC_MAGIC && magic != REC_MAGIC_V1) ||
        kvt__disk_get_le(p + REC_CHECK_OFF, 8) != XXH3_64bits(p, REC_CHECK_OFF))
        return KVT_E_CORRUPT;
    r->type = (uint32_t)kvt__disk_get_le(p + 4, 1);
    r->file = (uint8_t)kvt__disk_get_le(p + 5, 1);
    r->codec = (uint32_t)kvt__disk_get_le(p + 6, 2);
    r->gen = (uint32_t)kvt__disk_get_le(p + 8, 4);
    r->n_tokens = (uint32_t)kvt__disk_get_le(p + 12, 4);
    r->seq = kvt__disk_get_le(p + 16, 8);
    r->ns_seed = kvt__disk_get_le(p + 24, 8);
    r->key_lo = kvt__disk_get_le(p + 32, 8);
    r->key_hi = kvt__disk_get_le(p + 40, 8);
    r->start = kvt__disk_get_le(p + 48, 8);
    r->blocks = (uint32_t)kvt__disk_get_le(p + 56, 4);
    /* A version 1 record predates variants: it names the chunk as first stored. */
    r->variant = magic == REC_MAGIC ? (uint32_t)kvt__disk_get_le(p + 60, 4) : 0;
    r->raw_len = kvt__disk_get_le(p + 64, 8);
    r->stored_len = kvt__disk_get_le(p + 72, 8);
    r->n_layers = (uint32_t)kvt__disk_get_le(p + 80, 2);
    r->block_tokens = (uint32_t)kvt__disk_get_le(p + 82, 2);
    r->row_bytes = (uint32_t)kvt__disk_get_le(p + 84, 4);
    if (r->type != REC_PUT && r->type != REC_DEL)
        return KVT_E_CORRUPT;
    return 0;
}

void kvt__disk_rec_from_ient(const struct ient *e, uint32_t type, uint32_t gen, struct rec *r)
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
    r->variant = e->variant;
    r->start = e->start;
    r->blocks = e->blocks;
    r->raw_len = e->raw_len;
    r->stored_len = e->stored_len;
    r->n_layers = e->n_layers;
    r->block_tokens = e->block_tokens;
    r->row_bytes = e->row_bytes;
}

void kvt__disk_jstage_rec(struct kvt_disk *d, const struct rec *r)
{
    int b = d->jstage;

    assert(d->jrecs[b] < d->jcap);
    rec_encode(d->jbuf[b] + (size_t)d->jrecs[b] * REC_BYTES, r);
    d->jrecs[b]++;
}

/* ---- group commit --------------------------------------------------------------------------- */

/* Starts a group commit when none is in flight and there is something to make durable: the
 * staged records go out in one journal write linked to an fdatasync of the journal, alongside an
 * fdatasync of every data file the batch wrote to. */
void kvt__disk_start_commit(struct kvt_disk *d)
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
        r.variant = o->id.variant;
        r.start = o->start;
        r.blocks = o->blocks;
        r.raw_len = o->raw_len;
        r.stored_len = o->stored_len;
        r.n_layers = o->m.g.n_layers;
        r.block_tokens = o->m.g.block_tokens;
        r.row_bytes = o->m.row_bytes;
        kvt__disk_jstage_rec(d, &r);
        files_mask |= 1u << o->file;
        o->state = ST_COMMITTING;
    }
    kvt__disk_olist_splice(d, &d->commit.ops, &d->ready);

    d->commit.inflight = 1;
    d->commit.res = 0;
    d->commit.gen = d->gen_next++;
    sqe = kvt__disk_get_sqe(d);
    io_uring_prep_write(sqe, (int)d->n_files + d->jactive, d->jbuf[b], d->jrecs[b] * REC_BYTES,
                        d->journal_off);
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, (uint64_t)UD_COMMIT << 32);
    sqe = kvt__disk_get_sqe(d);
    io_uring_prep_fsync(sqe, (int)d->n_files + d->jactive, IORING_FSYNC_DATASYNC);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ((uint64_t)UD_COMMIT << 32) | 1u);
    n_sqe = 2;
    for (uint32_t f = 0; f < d->n_files; f++) {
        if (!(files_mask & (1u << f)))
            continue;
        sqe = kvt__disk_get_sqe(d);
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
void kvt__disk_finish_commit(struct kvt_disk *d)
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
        kvt__disk_latch(d);
    }
    d->jrecs[b] = 0;
    while ((i = kvt__disk_olist_pop(d, &d->commit.ops)) != OP_NONE) {
        struct op *o = &d->ops[i];
        struct ient *e;

        if (d->failed) {
            kvt__disk_op_finish(d, i, KVT_E_TIERFAILED);
            continue;
        }
        e = kvt__disk_index_find(d, &o->id);
        if (e && e->seq > o->seq) {
            kvt__disk_extent_release(d, o->file, o->start, o->blocks, 0);
        } else {
            if (e)
                kvt__disk_extent_release(d, e->file, e->start, e->blocks, 0);
            else
                e = kvt__disk_index_claim(d, &o->id);
            /* The extent bound keeps the index below objects_max: a claim cannot fail here. */
            assert(e);
            if (e->blocks)
                d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
            kvt__disk_form_account(d, e, -1); /* the object it replaces, if any */
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
            kvt__disk_form_account(d, e, 1);
            d->st.tier.bytes_used += (uint64_t)o->blocks * BLOCK;
            d->st.tier.demotions++;
        }
        d->st.writes_durable++;
        kvt__disk_op_finish(d, i, 0);
    }
    kvt__disk_pfree_sweep(d);
    kvt__disk_sync_advance(d);
    /* Writes still waiting for a commit have no journal record yet, so they do not hold the
     * checkpoint back: their records will carry the new generation. */
    if (!d->failed && d->journal_since_ckpt >= d->cfg.checkpoint_records)
        checkpoint_start(d);
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
        kvt__disk_rec_from_ient(&snap[i], REC_PUT, (uint32_t)gen, &r);
        rec_encode(p, &r);
    }
    memset(h, 0, CKPT_HEADER_BYTES);
    kvt__disk_put_le(h + 0, CKPT_MAGIC, 4);
    kvt__disk_put_le(h + 4, CKPT_VERSION, 4);
    kvt__disk_put_le(h + 8, gen, 8);
    kvt__disk_put_le(h + 16, next_seq, 8);
    kvt__disk_put_le(h + 24, count, 8);
    kvt__disk_put_le(h + 32, d->n_files, 4);
    kvt__disk_put_le(h + 40, XXH3_64bits(h + CKPT_HEADER_BYTES, (size_t)(count * REC_BYTES)), 8);
    kvt__disk_put_le(h + 48, d->store_id, 8);
    kvt__disk_put_le(h + 56, XXH3_64bits(h, 56), 8);
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
void kvt__disk_sync_advance(struct kvt_disk *d)
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
int kvt__disk_checkpoint_sync(struct kvt_disk *d)
{
    uint64_t gen = d->ckpt_gen + 1, count, t0 = now_us();
    int rc;

    assert(!d->commit.inflight && !d->ck.busy);
    count = snapshot(d);
    rc = ckpt_put(d, d->snap, count, gen, d->next_seq, d->journal_fds, 2);
    if (rc) {
        kvt__disk_count_io_error(d);
        kvt__disk_latch(d);
        kvt__disk_sync_advance(d);
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
    kvt__disk_pfree_sweep(d);
    kvt__disk_sync_advance(d);
    return 0;
}

/* Journal records carry the generation of the checkpoint they follow: those staged for the next
 * commit (tombstones staged while the commit that triggered the checkpoint was in flight) are
 * re-sealed with the new one when the journals switch. The check is the record's own, at
 * REC_CHECK_OFF: one written anywhere else would leave the record failing its check, and the
 * removal would be lost at the next recovery. */
static void jstage_regen(struct kvt_disk *d)
{
    unsigned char *p = d->jbuf[d->jstage];

    for (uint32_t k = 0; k < d->jrecs[d->jstage]; k++, p += REC_BYTES) {
        kvt__disk_put_le(p + 8, d->ckpt_gen, 4);
        rec_seal(p);
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
void kvt__disk_checkpoint_reap(struct kvt_disk *d)
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
        kvt__disk_count_io_error(d);
        kvt__disk_latch(d);
        kvt__disk_sync_advance(d);
        return;
    }
    d->st.checkpoints++;
}

void *kvt__disk_ckpt_main(void *arg)
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
        /* The owner thread sleeps on the eventfd: kvt__disk_wake it to reap the result. */
        uint64_t v = 1;
        if (write(d->event_fd, &v, sizeof(v)) < 0) {
            /* Only a saturated counter fails, and then the owner is woken already. */
        }
    }
    pthread_mutex_unlock(&d->ck.mu);
    return NULL;
}
