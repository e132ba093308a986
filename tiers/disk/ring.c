/*
 * The disk tier's io_uring ring: setting it up with the staging buffer and files registered,
 * getting submission entries and submitting them (held back while plugged), reaping completions
 * and dispatching them to reads, data writes and commits, running callbacks, and waiting on the
 * event fd. An I/O error streak past io_errors_max latches the tier failed.
 */

#include "tiers/disk/disk_internal.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <liburing.h>

#include "common/log.h"
#include "kvtier/errors.h"
#include "tiers/disk/object.h"

/* ---- submission ----------------------------------------------------------------------------- */

struct io_uring_sqe *kvt__disk_get_sqe(struct kvt_disk *d)
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

void kvt__disk_submit(struct kvt_disk *d)
{
    if (!d->plugged && io_uring_sq_ready(&d->ring) > 0)
        io_uring_submit(&d->ring);
}

void kvt__disk_latch(struct kvt_disk *d)
{
    d->failed = 1;
    d->st.tier.failed = 1;
}

void kvt__disk_count_io_error(struct kvt_disk *d)
{
    d->st.tier.io_errors++;
    if (++d->io_err_streak >= d->cfg.io_errors_max)
        kvt__disk_latch(d);
}

void kvt__disk_wake(struct kvt_disk *d)
{
    uint64_t v = 1;
    if (write(d->event_fd, &v, sizeof(v)) < 0)
        kvt__disk_count_io_error(d);
}

void kvt_disk_plug(struct kvt_disk *d)
{
    d->plugged++;
}

void kvt_disk_unplug(struct kvt_disk *d)
{
    assert(d->plugged > 0);
    if (--d->plugged == 0)
        kvt__disk_submit(d);
}

/* ---- completions ---------------------------------------------------------------------------- */

void kvt__disk_drop_corrupt(struct kvt_disk *d, struct op *o)
{
    struct ient *e = kvt__disk_index_find(d, &o->id);

    d->st.tier.checksum_failures++;
    d->st.tier.misses++;
    if (e && e->seq == o->seq) {
        /* Every reader verifies, so the extent can be reused at once: a later crash can at worst
         * bring back an entry whose bytes fail the checksum again. */
        kvt__disk_extent_release(d, e->file, e->start, e->blocks, 0);
        d->st.tier.bytes_used -= (uint64_t)e->blocks * BLOCK;
        kvt__disk_index_delete(d, e);
    }
}

/* A range read landed: verify every covering block (a packed object: the whole object) and copy
 * the rows asked for. Any failure drops the object and answers KVT_E_CORRUPT: never wrong bytes. */
static void range_done(struct kvt_disk *d, uint32_t i, unsigned char *slot, size_t got)
{
    struct op *o = &d->ops[i];
    const struct kvt_object_meta *m = &o->m;
    uint64_t want = (uint64_t)o->n_rows * kvt_object_out_row_bytes(m);
    struct kvt_object_meta h;
    int rc;

    if (o->stored) {
        /* A quantized object's rows as stored: verified, gathered by head, not dequantized. */
        want = (uint64_t)o->n_rows * m->row_bytes;
        rc = kvt_object_get_rows_stored(slot, o->io_off - KVT_OBJECT_HEADER_BYTES, got, m, o->layer,
                                        o->t0, o->n_rows, o->head_dim, o->dst);
        if (rc == KVT_E_INVAL)
            rc = KVT_E_CORRUPT; /* the index's geometry no longer fits the rows it names */
    } else if (kvt_object_blocked(m->codec)) {
        rc = kvt_object_get_rows(slot, o->io_off - KVT_OBJECT_HEADER_BYTES, got, m, o->layer,
                                 o->layer + 1, o->t0, o->n_rows, o->dst);
    } else {
        unsigned char *raw = slot + o->io_bytes;
        rc = kvt_object_decode(d->codec, slot, got, raw, (size_t)o->raw_len, &h);
        if (rc == 0 && !kvt__disk_object_matches(&h, &o->id, o->seq, o->raw_len))
            rc = KVT_E_CORRUPT;
        if (rc == 0)
            memcpy(o->dst, raw + ((uint64_t)o->layer * m->n_tokens + o->t0) * m->row_bytes,
                   (size_t)want);
    }
    if (rc) {
        kvt__disk_drop_corrupt(d, o);
        kvt__disk_op_finish(d, i, KVT_E_CORRUPT);
        return;
    }
    d->st.tier.hits++;
    kvt__disk_op_finish(d, i, (int)want);
}

/* A metadata section landed: it names its object and length and carries its check. A section
 * that fails is reported, never its bytes, and the object stays: its payload is checked on its
 * own when it is read. */
static void meta_done(struct kvt_disk *d, uint32_t i, const unsigned char *slot, size_t got)
{
    struct op *o = &d->ops[i];
    struct kvt_object_meta m;
    const void *payload;
    uint32_t len;

    memset(&m, 0, sizeof(m));
    m.ns_seed = o->id.ns_seed;
    m.key = o->id.key;
    m.variant = o->id.variant;
    m.seq = o->seq;
    m.raw_len = o->raw_len;
    if (kvt_object_section_get(slot, got, &m, &payload, &len) != 0 || len > o->cap) {
        d->st.meta_checksum_failures++;
        kvt__disk_op_finish(d, i, KVT_E_CORRUPT);
        return;
    }
    memcpy(o->dst, payload, len);
    kvt__disk_op_finish(d, i, (int)len);
}

static void read_done(struct kvt_disk *d, uint32_t i, int res)
{
    struct op *o = &d->ops[i];
    struct kvt_object_meta m;
    unsigned char *slot = kvt__disk_slot_of(d, i);

    if (res < 0) {
        kvt__disk_op_finish(d, i, res == -ENOSPC ? KVT_E_FULL : KVT_E_IO);
        return;
    }
    o->state = ST_DONE;
    if (o->lent_done) {
        /* Verification and decoding are the borrower's, on its own thread. */
        kvt__disk_op_finish(d, i, res);
        return;
    }
    if (o->range) {
        range_done(d, i, slot, (size_t)res);
        return;
    }
    if (o->meta) {
        meta_done(d, i, slot, (size_t)res);
        return;
    }
    size_t len = 0;
    int rc = o->stored
                 ? kvt_object_decode_stored(d->codec, slot, (size_t)res, o->dst, o->cap, &m, &len)
                 : kvt_object_decode(d->codec, slot, (size_t)res, o->dst, o->cap, &m);
    if (rc != 0 || !kvt__disk_object_matches(&m, &o->id, o->seq, o->raw_len)) {
        kvt__disk_drop_corrupt(d, o);
        kvt__disk_op_finish(d, i, KVT_E_NOTFOUND);
        return;
    }
    d->st.tier.hits++;
    if (o->stored) {
        /* Straight to the caller, in the form it is stored in: not a promotion. */
        *o->form_out = KVT_CODEC_ID_FORM(m.codec);
        kvt__disk_op_finish(d, i, (int)len);
        return;
    }
    d->st.tier.promotions++;
    kvt__disk_op_finish(d, i, (int)m.raw_len);
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
        kvt__disk_count_io_error(d);
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
            kvt__disk_finish_commit(d);
        return;
    }
    assert(kind == UD_OP && i < d->n_ops && d->ops[i].state == ST_INFLIGHT);
    if (!d->ops[i].meta) /* metadata reads are a start-up pass, not the data path */
        kvt_hist_observe_since_ns(d->ops[i].kind == OP_READ ? &d->st.read_latency_us
                                                            : &d->st.write_latency_us,
                                  d->ops[i].submit_ns);
    if (res >= 0 && (uint64_t)res != d->ops[i].io_bytes) {
        /* A short transfer on a preallocated extent means the device misbehaved. */
        kvt__disk_count_io_error(d);
        res = -EIO;
    }
    if (d->ops[i].kind == OP_READ) {
        read_done(d, i, res);
        return;
    }
    if (res < 0) {
        struct op *o = &d->ops[i];
        kvt__disk_extent_release(d, o->file, o->start, o->blocks, 0);
        kvt__disk_op_finish(d, i,
                            res == -ENOSPC ? KVT_E_FULL
                            : d->failed    ? KVT_E_TIERFAILED
                                           : KVT_E_IO);
        return;
    }
    d->ops[i].state = ST_READY;
    kvt__disk_olist_push(d, &d->ready, i);
}

static int run_callbacks(struct kvt_disk *d)
{
    uint32_t i;
    int ran = 0;

    while ((i = kvt__disk_olist_pop(d, &d->done)) != OP_NONE) {
        struct op *o = &d->ops[i];
        kvt_tier_done_fn fn = o->done;
        kvt_disk_lent_fn lent_fn = o->lent_done;
        void *arg = o->arg;
        int res = o->res;
        ran++;
        if (lent_fn && res >= 0) {
            struct kvt_disk_lent lent = {.handle = i,
                                         .buf = kvt__disk_slot_of(d, i),
                                         .bytes = (size_t)res,
                                         .id = o->id,
                                         .seq = o->seq,
                                         .raw_len = o->raw_len};
            o->state = ST_LENT;
            d->lent++;
            lent_fn(arg, (int)o->raw_len, &lent);
            continue;
        }
        kvt__disk_op_put(d, i);
        if (lent_fn)
            lent_fn(arg, res, NULL);
        else
            fn(arg, res);
    }
    return ran;
}

int kvt__disk_run_syncs(struct kvt_disk *d)
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

int kvt_disk_poll(struct kvt_disk *d)
{
    struct io_uring_cqe *cqe;
    uint64_t v;
    uint32_t n = 0, limit = *d->ring.cq.kring_entries;

    if (d->in_poll)
        return 0;
    d->in_poll = 1;
    if (read(d->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        kvt__disk_count_io_error(d);
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
        while ((i = kvt__disk_olist_pop(d, &d->ready)) != OP_NONE) {
            struct op *o = &d->ops[i];
            kvt__disk_extent_release(d, o->file, o->start, o->blocks, 0);
            kvt__disk_op_finish(d, i, KVT_E_TIERFAILED);
        }
    }
    kvt__disk_checkpoint_reap(d);
    if (d->failed)
        kvt__disk_sync_advance(d);
    kvt__disk_start_commit(d);
    kvt__disk_pfree_sweep(d);
    if (io_uring_sq_ready(&d->ring) > 0)
        io_uring_submit(&d->ring);
    if (io_uring_cq_ready(&d->ring) > 0) {
        v = 1;
        if (write(d->event_fd, &v, sizeof(v)) < 0)
            kvt__disk_count_io_error(d);
    }
    n = (uint32_t)run_callbacks(d);
    n += (uint32_t)kvt__disk_run_syncs(d);
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

void kvt__disk_prep_read(struct kvt_disk *d, struct io_uring_sqe *sqe, int file, void *buf,
                         unsigned bytes, uint64_t off)
{
    if (d->st.registered_buffers)
        io_uring_prep_read_fixed(sqe, file, buf, bytes, off, 0);
    else
        io_uring_prep_read(sqe, file, buf, bytes, off);
    sqe->flags |= IOSQE_FIXED_FILE;
}

void kvt__disk_prep_write(struct kvt_disk *d, struct io_uring_sqe *sqe, int file, const void *buf,
                          unsigned bytes, uint64_t off)
{
    if (d->st.registered_buffers)
        io_uring_prep_write_fixed(sqe, file, buf, bytes, off, 0);
    else
        io_uring_prep_write(sqe, file, buf, bytes, off);
    sqe->flags |= IOSQE_FIXED_FILE;
}

int kvt__disk_setup_ring(struct kvt_disk *d)
{
    struct io_uring_params p;
    struct iovec iov = {.iov_base = d->staging, .iov_len = d->staging_bytes};
    int fds[KVT_DISK_PATHS_MAX + 2], rc;

    memset(&p, 0, sizeof(p));
    rc = io_uring_queue_init_params(d->n_ops + d->n_files + 2, &d->ring, &p);
    if (rc) {
        kvt__disk_set_err(&d->cfg, "io_uring_queue_init: %s", strerror(-rc));
        if (d->cfg.ring_errno_out)
            *d->cfg.ring_errno_out = -rc;
        return rc;
    }
    d->ring_ready = 1;
    rc = d->cfg.faults && d->cfg.faults->register_buffers_refused
             ? -ENOMEM
             : io_uring_register_buffers(&d->ring, &iov, 1);
    if (rc) {
        /* Pinning the staging area counts against RLIMIT_MEMLOCK (64 KiB in most containers)
         * unless the process holds CAP_IPC_LOCK. The same aligned memory still serves O_DIRECT
         * through plain reads and writes: slower (the kernel pins the pages on every I/O), but a
         * disk tier rather than none. */
        struct rlimit rl = {0, 0};
        getrlimit(RLIMIT_MEMLOCK, &rl);
        if (rc == -ENOMEM)
            KVT_WARN("disk",
                     "io_uring_register_buffers (%zu bytes) refused: %s (RLIMIT_MEMLOCK %llu "
                     "bytes); using unregistered buffers, slower: raise the memlock limit or "
                     "lower disk.staging_bytes for registered ones",
                     d->staging_bytes, strerror(-rc),
                     rl.rlim_cur == RLIM_INFINITY ? ~0ull : (unsigned long long)rl.rlim_cur);
        else
            KVT_WARN("disk",
                     "io_uring_register_buffers (%zu bytes) refused: %s (errno %d); using "
                     "unregistered buffers, slower",
                     d->staging_bytes, strerror(-rc), -rc);
        d->st.registered_buffers = 0;
    } else {
        d->st.registered_buffers = 1;
    }
    for (uint32_t k = 0; k < d->n_files; k++)
        fds[k] = d->files[k].fd;
    fds[d->n_files] = d->journal_fds[0];
    fds[d->n_files + 1] = d->journal_fds[1];
    rc = io_uring_register_files(&d->ring, fds, d->n_files + 2);
    if (rc) {
        /* A seccomp profile may allow the ring but not io_uring_register: io_uring is refused
         * as surely as when the ring itself is. */
        kvt__disk_set_err(&d->cfg, "io_uring_register_files: %s", strerror(-rc));
        if (d->cfg.ring_errno_out && (rc == -EPERM || rc == -ENOSYS || rc == -EACCES))
            *d->cfg.ring_errno_out = -rc;
        return rc;
    }
    d->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->event_fd < 0)
        return -errno;
    rc = io_uring_register_eventfd(&d->ring, d->event_fd);
    if (rc)
        kvt__disk_set_err(&d->cfg, "io_uring_register_eventfd: %s", strerror(-rc));
    return rc;
}
