/*
 * The disk tier's recovery at start: superblocks, then the checkpoint loaded into the index and
 * both journals replayed, then the header of each object written after the checkpoint checked
 * against the index. When the checkpoint or a journal is damaged, a scan of the data files
 * rebuilds the index from the self-describing objects instead. Extents are rebuilt from the
 * index last.
 */

#include "tiers/disk/disk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <liburing.h>
#include <xxhash.h>

#include "common/alloc.h"
#include "common/log.h"
#include "kvtier/errors.h"
#include "tiers/disk/extent.h"
#include "tiers/disk/object.h"

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

/* A PUT record's geometry must give exactly its lengths, or range reads would miss their blocks.
 * Records carry no length for a metadata section (they predate it): an extent may extend past the
 * body by at most the largest section, and the section names its own length. */
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
        (!kvt_object_blocked(r->codec) && r->stored_len > r->raw_len))
        return 0;
    uint64_t body = kvt__disk_blocks_for(kvt_object_body_bytes(&m));
    return r->blocks >= body &&
           r->blocks - body <= kvt__disk_blocks_for(KVT_OBJECT_SECTION_HEAD_BYTES +
                                                    (uint64_t)KVT_OBJECT_SECTION_BYTES_MAX);
}

/* Applies one PUT or DEL record in history order. A PUT wins over an older entry; a DEL turns
 * the entry into a tombstone, kept until recovery ends so that a scan of the data files (when the
 * metadata turns out damaged) does not bring the removed object back. */
static void apply_rec(struct kvt_disk *d, const struct rec *r, int unknown, uint64_t *max_seq)
{
    struct kvt_obj_id id = {
        .ns_seed = r->ns_seed, .key = {.lo = r->key_lo, .hi = r->key_hi}, .variant = r->variant};
    struct ient *e = kvt__disk_index_find(d, &id);

    if (r->seq > *max_seq)
        *max_seq = r->seq;
    if (r->type == REC_DEL) {
        if (!e) {
            e = kvt__disk_index_claim_as(d, &id, 1);
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
    e = kvt__disk_claim_or_revive(d, &id, e);
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
    /* A version 2 checkpoint differs only in its records (version 1, read as variant 0): it is
     * read as it is and replaced by a current one when recovery ends. */
    if (rc || got != CKPT_HEADER_BYTES || kvt__disk_get_le(h, 4) != CKPT_MAGIC ||
        (kvt__disk_get_le(h + 4, 4) != CKPT_VERSION &&
         kvt__disk_get_le(h + 4, 4) != CKPT_VERSION_V2) ||
        kvt__disk_get_le(h + 56, 8) != XXH3_64bits(h, 56))
        goto out_close;
    count = kvt__disk_get_le(h + 24, 8);
    if (count > d->cfg.objects_max || CKPT_HEADER_BYTES + count * REC_BYTES > d->ckpt_buf_bytes)
        goto out_close;
    if (kvt__disk_get_le(h + 48, 8) != d->store_id)
        goto out_close;
    *gen = kvt__disk_get_le(h + 8, 8);
    *next_seq = kvt__disk_get_le(h + 16, 8);
    whole = kvt__disk_get_le(h + 40, 8);
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
        if (kvt__disk_rec_decode(h + CKPT_HEADER_BYTES + i * REC_BYTES, &r) != 0 ||
            r.type != REC_PUT) {
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
        if (kvt__disk_rec_decode(d->ckpt_buf + k, &r) == 0)
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
            if (kvt__disk_rec_decode(buf + k, &r) != 0) {
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
            kvt__disk_index_delete(d, &d->index[i]);
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
    struct kvt_obj_id id = {.ns_seed = m->ns_seed, .key = m->key, .variant = m->variant};
    struct ient *e = kvt__disk_index_find(d, &id);

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
    e = kvt__disk_claim_or_revive(d, &id, e);
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
            /* The object's extent, and the part verified here: its header and body (a metadata
             * section is checked when it is read; a torn one costs the object nothing else). */
            uint64_t nb = kvt__disk_blocks_for(kvt_object_bytes(&m));
            uint64_t nv = kvt__disk_blocks_for(kvt_object_body_bytes(&m));
            if (b + nb > n_blocks) {
                b++;
                continue;
            }
            if (b + nv > ws + wn) {
                rc = scan_window(d, f, b, n_blocks, &ws, &wn);
                if (rc)
                    return rc;
                p = d->staging;
                if (nv > wn) {
                    b++;
                    continue;
                }
            }
            if (kvt_object_verify(p, (size_t)(nv * BLOCK), &m) != 0) {
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
            kvt__disk_index_delete(d, e);
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
           m.key.lo == e->key_lo && m.key.hi == e->key_hi && m.variant == e->variant &&
           m.seq == e->seq && m.raw_len == e->raw_len && m.stored_len == e->stored_len &&
           m.codec == e->codec && m.g.n_layers == e->n_layers &&
           m.g.block_tokens == e->block_tokens && m.row_bytes == e->row_bytes &&
           kvt__disk_blocks_for(kvt_object_bytes(&m)) == e->blocks;
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
            kvt__disk_prep_read(d, sqe, e->file, d->staging + (size_t)b * BLOCK, BLOCK,
                                e->start * BLOCK);
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
            kvt__disk_index_delete(d, e);
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
    kvt__disk_put_le(b + 0, SB_MAGIC, 4);
    kvt__disk_put_le(b + 4, SB_VERSION, 4);
    kvt__disk_put_le(b + 8, store_id, 8);
    kvt__disk_put_le(b + 16, k, 4);
    kvt__disk_put_le(b + 20, n, 4);
    kvt__disk_put_le(b + 24, bytes, 8);
    kvt__disk_put_le(b + 32, XXH3_64bits(b, 32), 8);
}

static int sb_valid(const unsigned char *b, uint32_t k, uint32_t n, uint64_t bytes)
{
    return kvt__disk_get_le(b, 4) == SB_MAGIC && kvt__disk_get_le(b + 4, 4) == SB_VERSION &&
           kvt__disk_get_le(b + 32, 8) == XXH3_64bits(b, 32) && kvt__disk_get_le(b + 16, 4) == k &&
           kvt__disk_get_le(b + 20, 4) == n && kvt__disk_get_le(b + 24, 8) == bytes;
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
        if (got == BLOCK && kvt__disk_get_le(b, 4) == SB_MAGIC && kvt__disk_get_le(b + 4, 4) == 1 &&
            kvt__disk_get_le(b + 32, 8) == XXH3_64bits(b, 32)) {
            kvt__disk_set_err(
                &d->cfg,
                "%s: disk store format v1 (written by an older kvtier); this build reads "
                "only format v2: remove the data files and %s/" CKPT_NAME
                " to start empty, or use the older build",
                d->cfg.paths[k], d->meta_dir);
            return KVT_E_BADCONFIG;
        }
        ok = got == BLOCK && sb_valid(b, k, d->n_files, d->files[k].bytes) &&
             (k == 0 || kvt__disk_get_le(b + 8, 8) == id);
        id = kvt__disk_get_le(b + 8, 8);
    }
    if (ok) {
        d->store_id = id;
        return 0;
    }
    if (getrandom(&id, sizeof(id), 0) != (ssize_t)sizeof(id))
        id = kvt__disk_now_ms() ^ ((uint64_t)getpid() << 32);
    for (uint32_t k = 0; k < d->n_files; k++) {
        sb_encode(b, id, k, d->n_files, d->files[k].bytes);
        if (pwrite(d->files[k].fd, b, BLOCK, 0) != (ssize_t)BLOCK || fdatasync(d->files[k].fd))
            return errno ? -errno : -EIO;
    }
    d->store_id = id;
    d->st.formats++;
    return 1;
}

int kvt__disk_recover(struct kvt_disk *d)
{
    static const char *const ck_why[] = {"", "missing", "unreadable", "damaged"};
    uint64_t t0 = kvt__disk_now_ms(), gen = 0, next_seq = 0, max_seq = 0;
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
    kvt__disk_form_recount(d);
    /* Start every run from a fresh checkpoint and empty journals. */
    rc = kvt__disk_checkpoint_sync(d);
    d->st.recovery_ms = kvt__disk_now_ms() - t0;
    return rc;
}
