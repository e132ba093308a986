/*
 * kvtier disk tier: a self-contained store of checksummed, self-describing objects in preallocated
 * files (or raw block devices), driven by io_uring with O_DIRECT, registered buffers and files.
 * It knows nothing of the daemon: the daemon's event-loop thread drives it through calls that
 * never wait for I/O, an eventfd that becomes readable when completions are pending, and
 * kvt_disk_poll(), which runs completion callbacks on the calling thread.
 *
 * How the daemon drives it:
 *   - start:     kvt_disk_create() rebuilds the index from the checkpoint and journal (reading a
 *                header per object written since the last checkpoint) and may take a while;
 *                kvt_disk_enumerate() then lists what the disk holds so the daemon can fill its
 *                own index. Watch kvt_disk_event_fd() with epoll (EPOLLIN).
 *   - demotion:  kvt_disk_write() encodes the chunk into a staging buffer (the source is
 *                borrowed only during the call) and submits it; the callback runs with 0 once the
 *                object is on stable storage (group commit: one journal write and one fdatasync
 *                per file cover every write that completed before it) or with an error.
 *   - DRAM miss: kvt_disk_read() submits a read into a staging buffer; the callback runs with the
 *                raw length after the checksum was verified and the payload decoded into dst.
 *                A checksum failure drops the object and answers KVT_E_NOTFOUND.
 *   - eventfd:   kvt_disk_poll() reaps completions, starts the next group commit and runs the
 *                callbacks; call it whenever the eventfd is readable.
 *   - metadata:  a write may carry opaque metadata (kvt_disk_write_reserve_meta), stored in a
 *                section after the body; kvt_disk_read_meta() reads that section alone, without
 *                the payload (the daemon restores span abstracts at start this way).
 *   - eviction:  kvt_disk_remove() forgets an object; its extent is reused only after the
 *                tombstone is durable, so a crash can never resurrect a half-overwritten object.
 *                kvt_disk_sync() calls back once every removal made before it is durable, so
 *                that a Delete can be answered only when a crash can no longer undo it.
 *   - damage:    when the checkpoint or a journal fails its checks (not a torn journal tail,
 *                which a crash leaves), create falls back to reading every object in the data
 *                files (each is self-describing and checksummed) and rebuilds the index from
 *                them; stats say recovered_by_scan and scan_dropped.
 *   - checkpoint: every checkpoint_records journal records the owner thread copies the index
 *                into a snapshot and a thread of the store writes, syncs and renames the file;
 *                commits meanwhile go to the second journal, so the loop never waits for it.
 *
 *   - CPU work:  encoding and decoding can move to worker threads with the two-phase write
 *                (kvt_disk_write_reserve / kvt_disk_encode / kvt_disk_write_submit) and the
 *                lending read (kvt_disk_read_lend / kvt_disk_decode / kvt_disk_read_release);
 *                only kvt_disk_encode and kvt_disk_decode may run off the owner thread.
 *
 * Threads: a struct kvt_disk is owned by one thread; nothing here is thread-safe. The store runs
 * one thread of its own, which only writes checkpoints from a snapshot it is handed and wakes
 * the owner through the eventfd. Callbacks run
 * only inside kvt_disk_poll(), kvt_disk_wait() and kvt_disk_destroy(), never inside the call that
 * submitted the work, and never when that call returned an error. A callback may submit new work
 * but must not call poll, wait, destroy or enumerate.
 *
 * All functions return 0 or a negative code (kvtier codes from kvtier/errors.h, -errno for system
 * errors). Once the tier has latched failed (repeated I/O errors, a failed fdatasync) every call
 * returns KVT_E_TIERFAILED and the stats say failed=1; the process keeps running.
 */
#ifndef KVT_TIERS_DISK_DISK_H
#define KVT_TIERS_DISK_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "common/loop.h"
#include "tiers/codec.h"
#include "tiers/disk/object.h"
#include "tiers/tier.h"

#define KVT_DISK_PATHS_MAX 8

struct kvt_disk_geom; /* a chunk's shape, below */

/* Fault injection for tests: a struct the test owns and changes between calls; the tier reads
 * and counts it down. Never set in production (config.faults == NULL). */
struct kvt_disk_faults {
    uint32_t fail_next_io;        /* the next N I/O completions report fail_errno instead */
    int fail_errno;               /* errno injected by fail_next_io: 0 means EIO; ENOSPC allowed */
    int odirect_einval;           /* create behaves as if open(O_DIRECT) failed with EINVAL */
    int register_buffers_refused; /* create behaves as if io_uring_register_buffers failed */
    uint64_t ios_completed;       /* out: I/O completions seen so far (to aim a fault) */
};

struct kvt_disk_config {
    const char *paths[KVT_DISK_PATHS_MAX]; /* borrowed during create: files or block devices */
    uint32_t n_paths;                      /* >= 1 */
    uint64_t file_bytes;           /* capacity per file (multiple of 4 KiB); for a block device 0
                                      means the whole device */
    const char *meta_dir;          /* checkpoint and journal; NULL = directory of paths[0]. Required
                                      when paths[0] is a block device. Borrowed during create. */
    uint32_t queue_depth;          /* io_uring entries and most I/Os in flight; default 64 */
    uint64_t staging_bytes;        /* registered staging buffers; default 64 MiB */
    uint64_t object_bytes_max;     /* largest raw object; default 4 MiB */
    uint32_t objects_max;          /* index and extent bound; default 65536 */
    uint32_t io_errors_max;        /* consecutive failed I/Os that latch the tier; default 8 */
    uint32_t checkpoint_records;   /* journal records between checkpoints; default 4096 */
    uint32_t lock_wait_ms;         /* wait for a previous owner's I/O to drain; default 5000 */
    int allow_buffered;            /* use buffered I/O where O_DIRECT is refused; default 0 */
    struct kvt_codec_config codec; /* default: lz4, shuffle width 2, min saving 0.10 */
    struct kvt_disk_faults *faults; /* borrowed for the store's life; tests only */
    char *err_buf;                  /* optional: a one-line reason when create fails */
    size_t err_buf_bytes;
    int *ring_errno_out; /* optional: set to the errno (positive) when create failed because the
                            kernel refused io_uring itself (io_uring_queue_init, or EPERM/ENOSYS
                            from io_uring_register_files), else left */
};

/* Tier counters (tiers/tier.h) plus disk-specific ones, from one list. */
/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_DISK_STATS_DEF(X, A)                                                                   \
    X(A, writes, KVT_STAT_COUNTER, "", "object writes submitted")                                  \
    X(A, writes_durable, KVT_STAT_COUNTER, "", "object writes made durable by a group commit")     \
    X(A, reads, KVT_STAT_COUNTER, "", "object reads submitted")                                    \
    X(A, removes, KVT_STAT_COUNTER, "", "objects removed")                                         \
    X(A, busy_rejects, KVT_STAT_COUNTER, "",                                                       \
      "operations refused because every staging slot was in use")                                  \
    X(A, full_rejects, KVT_STAT_COUNTER, "", "writes refused because no extent was free")          \
    X(A, enospc, KVT_STAT_COUNTER, "", "I/O that failed with ENOSPC")                              \
    X(A, commits, KVT_STAT_COUNTER, "", "group commits (a journal write and fdatasyncs)")          \
    X(A, checkpoints, KVT_STAT_COUNTER, "", "checkpoints written")                                 \
    X(A, journal_records, KVT_STAT_COUNTER, "", "records written to the journal")                  \
    X(A, raw_bytes_written, KVT_STAT_COUNTER, "bytes",                                             \
      "bytes of objects written before compression")                                               \
    X(A, stored_bytes_written, KVT_STAT_COUNTER, "bytes",                                          \
      "bytes of objects written after compression")                                                \
    X(A, compressed_objects, KVT_STAT_COUNTER, "", "objects written compressed")                   \
    X(A, lossy_writes, KVT_STAT_COUNTER, "", "objects written in a lossy form (q8 or q4)")         \
    X(A, q8_objects, KVT_STAT_GAUGE, "", "objects the store holds in the q8 form")                 \
    X(A, q4_objects, KVT_STAT_GAUGE, "", "objects the store holds in the q4 form")                 \
    X(A, q8_bytes_saved, KVT_STAT_GAUGE, "bytes",                                                  \
      "fp16 bytes minus stored bytes of the objects held in the q8 form")                          \
    X(A, q4_bytes_saved, KVT_STAT_GAUGE, "bytes",                                                  \
      "fp16 bytes minus stored bytes of the objects held in the q4 form")                          \
    X(A, recovered_objects, KVT_STAT_COUNTER, "",                                                  \
      "objects found at start from the checkpoint and journal")                                    \
    X(A, recovery_dropped, KVT_STAT_COUNTER, "",                                                   \
      "objects dropped at start because their header did not validate")                            \
    X(A, recovered_by_scan, KVT_STAT_COUNTER, "",                                                  \
      "objects found at start by scanning the data files")                                         \
    X(A, scan_dropped, KVT_STAT_COUNTER, "", "objects a scan found invalid")                       \
    X(A, scans, KVT_STAT_COUNTER, "", "recoveries that scanned the data files")                    \
    X(A, formats, KVT_STAT_COUNTER, "", "stores formatted from empty")                             \
    X(A, recovery_ms, KVT_STAT_GAUGE, "ms", "time the store recovery took at start")               \
    X(A, checkpoint_loop_us_max, KVT_STAT_GAUGE, "us",                                             \
      "longest time the loop spent preparing one checkpoint")                                      \
    X(A, checkpoint_write_us_max, KVT_STAT_GAUGE, "us",                                            \
      "longest time the checkpoint thread took writing one")                                       \
    X(A, syncs, KVT_STAT_COUNTER, "", "durability barriers requested (kvt_disk_sync)")             \
    X(A, range_reads, KVT_STAT_COUNTER, "", "token-range reads of one layer submitted")            \
    X(A, bytes_read, KVT_STAT_COUNTER, "bytes",                                                    \
      "bytes read from the data files by object reads (whole and range, never metadata)")          \
    X(A, meta_writes, KVT_STAT_COUNTER, "", "objects written with a metadata section")             \
    X(A, meta_skipped, KVT_STAT_COUNTER, "",                                                       \
      "writes whose metadata was left out: the object with it would not fit the staging area")     \
    X(A, meta_reads, KVT_STAT_COUNTER, "", "metadata sections read alone (kvt_disk_read_meta)")    \
    X(A, meta_bytes_read, KVT_STAT_COUNTER, "bytes",                                               \
      "bytes read from the data files by metadata reads")                                          \
    X(A, meta_checksum_failures, KVT_STAT_COUNTER, "",                                             \
      "metadata sections that failed their check (the metadata is lost, the object kept)")         \
    X(A, registered_buffers, KVT_STAT_GAUGE, "",                                                   \
      "1 when the staging area is registered with io_uring, 0 when the kernel refused it "         \
      "(RLIMIT_MEMLOCK) and I/O uses unregistered buffers")
#define KVT_DISK_STATS(A) KVT_DISK_STATS_DEF(KVT_STAT_NAME_ONLY, A)

/* Latency histograms (name, unit, help), from submission to the completion of the I/O. */
#define KVT_DISK_HISTS(X)                                                                          \
    X(read_latency_us, "us", "object reads, submitted to completed")                               \
    X(write_latency_us, "us", "object data writes, submitted to completed (before the commit)")

struct kvt_disk_stats {
    struct kvt_tier_stats tier;
#define KVT__DISK_STAT_FIELD(name) uint64_t name;
    KVT_DISK_STATS(KVT__DISK_STAT_FIELD)
#undef KVT__DISK_STAT_FIELD
#define KVT__DISK_HIST_FIELD(name, unit, help) struct kvt_hist name;
    KVT_DISK_HISTS(KVT__DISK_HIST_FIELD)
#undef KVT__DISK_HIST_FIELD
};

/* What the store knows of one object (copied to the caller). */
struct kvt_disk_obj_info {
    struct kvt_obj_id id;
    uint32_t n_tokens;
    uint32_t codec;
    uint64_t raw_len;
    uint64_t stored_len;
    uint64_t seq;
    uint32_t n_layers, row_bytes, block_tokens; /* the blocked layout's geometry */
    uint32_t file;                              /* where the object lies: for tools and benches */
    uint64_t offset_bytes;
    uint32_t meta_bytes_max; /* a metadata section holds at most this many bytes (0: none) */
};

struct kvt_disk;

/* Fills cfg with the defaults above and no paths. */
void kvt_disk_config_init(struct kvt_disk_config *cfg);

/* Opens or creates the files (fallocate to file_bytes), takes an exclusive lock on them (waiting
 * up to lock_wait_ms for a killed previous owner's in-flight I/O to drain), sets up io_uring and
 * rebuilds the index. Returns 0; KVT_E_BADCONFIG (bad values; O_DIRECT refused without
 * allow_buffered); KVT_E_FULL (no space for the files); KVT_E_BUSY (another owner holds the
 * lock); KVT_E_NOMEM; -errno. On failure err_buf, when given, says why. */
int kvt_disk_create(const struct kvt_disk_config *cfg, struct kvt_disk **out);

/* Waits for in-flight I/O (running its callbacks), writes a checkpoint unless failed, closes.
 * NULL-safe. */
void kvt_disk_destroy(struct kvt_disk *d);

/* Submits a write of len bytes (<= object_bytes_max) of buf as object id. n_tokens is recorded;
 * elem_bytes picks the shuffle width for the codec (0 = configured default, 1 = none). buf is
 * borrowed during the call only. done(arg, 0) runs once the object is durable and readable;
 * done(arg, err) on failure (KVT_E_FULL for ENOSPC, KVT_E_IO, KVT_E_TIERFAILED). Returns 0, or
 * without callback: KVT_E_EXISTS (already stored with this length: nothing to do), KVT_E_BUSY
 * (all staging buffers in use: poll and retry), KVT_E_FULL, KVT_E_TOOBIG, KVT_E_INVAL,
 * KVT_E_TIERFAILED. */
int kvt_disk_write(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf, size_t len,
                   uint32_t n_tokens, uint32_t elem_bytes, kvt_tier_done_fn done, void *arg);
/* kvt_disk_write with a geometry (NULL = unknown), as kvt_disk_write_reserve_geom. */
int kvt_disk_write_geom(struct kvt_disk *d, const struct kvt_obj_id *id, const void *buf,
                        size_t len, uint32_t n_tokens, const struct kvt_disk_geom *geom,
                        uint32_t elem_bytes, kvt_tier_done_fn done, void *arg);

/* Two-phase write, so that the CPU work of a write (encoding and checksumming up to
 * object_bytes_max bytes) can run on a worker thread while the owner thread only reserves and
 * submits:
 *   owner:  kvt_disk_write_reserve(d, &id, len, n_tokens, &ws)   takes a staging buffer
 *   worker: kvt_disk_encode(worker_codec, &ws, src, elem_bytes)    touches only ws and ws.buf
 *   owner:  kvt_disk_write_submit(d, &ws, done, arg)               allocates the extent, submits
 * or kvt_disk_write_cancel(d, &ws) to give the buffer back. The worker's codec must accept
 * object_bytes_max inputs. Every reservation must be submitted or cancelled before destroy.
 * kvt_disk_write() is the three steps in one call on the owner thread. */
struct kvt_disk_wslot {
    uint32_t handle;          /* store-private */
    struct kvt_object_meta m; /* store-private: the object's layout */
    int sparse;               /* store-private: never compress */
    void *buf;                /* staging buffer owned by the store, valid until submit or cancel */
    size_t cap;               /* bytes at buf */
    struct kvt_obj_id id;
    uint32_t n_tokens;
    size_t raw_len;
    uint64_t seq;
    size_t stored_len; /* set by kvt_disk_encode */
    uint32_t codec;    /* set by kvt_disk_encode */
    int sealed;        /* set by kvt_disk_encode */
    /* Metadata: meta_len bytes (set by reserve; 0 = none) that kvt_disk_encode has meta_write
     * put after the body, with meta_ctx; the caller sets both before encoding. */
    uint32_t meta_len;
    kvt_tier_meta_fn meta_write;
    void *meta_ctx;
    /* The lossy form (enum kvt_form) to keep the object in, set by the caller before encoding
     * (0: as given). kvt_disk_encode quantizes only a chunk whose full geometry is known (fp16
     * elements; the caller asks only for fp16 chunks) and that the form makes smaller; else it
     * encodes as usual. */
    uint32_t form;
};

/* Returns 0, KVT_E_EXISTS, KVT_E_BUSY, KVT_E_TOOBIG, KVT_E_INVAL, KVT_E_TIERFAILED. The geometry
 * is unknown: one layer of n_tokens rows of len / n_tokens bytes (one opaque block when that does
 * not divide). */
int kvt_disk_write_reserve(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                           uint32_t n_tokens, struct kvt_disk_wslot *ws);

/* A chunk's shape (copied): lets kvt_disk_read_range address one layer's token rows. The bytes
 * given to encode are in the canonical order [layer][token][k|v][kv_head][head_dim]. sparse: a
 * namespace read in token ranges; its objects are never compressed (a compressed object is read
 * whole even for a range). */
struct kvt_disk_geom {
    struct kvt_object_geom g;
    int sparse;
};

/* As kvt_disk_write_reserve, with the geometry (NULL = unknown). KVT_E_INVAL when the geometry
 * does not describe len bytes of n_tokens tokens; KVT_E_TOOBIG when the object in the blocked
 * layout would not fit in the whole staging area. */
int kvt_disk_write_reserve_geom(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                                uint32_t n_tokens, const struct kvt_disk_geom *geom,
                                struct kvt_disk_wslot *ws);
/* As kvt_disk_write_reserve_geom, with room for meta_len bytes of metadata (at most
 * KVT_OBJECT_SECTION_BYTES_MAX) in a section after the body, which kvt_disk_encode has
 * ws->meta_write fill. When the object with its metadata would not fit in the staging area but
 * without it would, the metadata is left out (ws->meta_len = 0; counted in meta_skipped). */
int kvt_disk_write_reserve_meta(struct kvt_disk *d, const struct kvt_obj_id *id, size_t len,
                                uint32_t n_tokens, const struct kvt_disk_geom *geom,
                                uint32_t meta_len, struct kvt_disk_wslot *ws);
/* Encodes ws->raw_len bytes of src (borrowed for the call), writes the metadata (ws->meta_write,
 * when ws->meta_len > 0; KVT_E_INVAL without it) and seals the object. Thread-safe with respect to
 * the store: uses only codec (one per thread), ws and what meta_ctx names. Returns 0 or a codec
 * error. */
int kvt_disk_encode(struct kvt_codec *codec, struct kvt_disk_wslot *ws, const void *src,
                    uint32_t elem_bytes);
/* Submits a sealed reservation; the same callback contract as kvt_disk_write. On an error
 * (KVT_E_FULL, KVT_E_TIERFAILED, KVT_E_INVAL) the reservation is released and no callback runs. */
int kvt_disk_write_submit(struct kvt_disk *d, struct kvt_disk_wslot *ws, kvt_tier_done_fn done,
                          void *arg);
void kvt_disk_write_cancel(struct kvt_disk *d, struct kvt_disk_wslot *ws);

/* Submits a read of object id into dst (capacity cap), which must stay valid until done runs.
 * done(arg, raw_len) on success; done(arg, KVT_E_NOTFOUND) when the stored object failed its
 * checksum (it is dropped and counted); KVT_E_IO, KVT_E_TIERFAILED. Returns 0, or without
 * callback: KVT_E_NOTFOUND (a miss), KVT_E_SMALLBUF, KVT_E_BUSY, KVT_E_TIERFAILED. */
int kvt_disk_read(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                  kvt_tier_done_fn done, void *arg);

/* Reads rows [token_first, token_first + n_tokens) of one layer of object id into dst (capacity
 * cap >= n_tokens x row bytes), which must stay valid until done runs. Only the blocks covering
 * the range are read (with their trailers, rounded out to 4 KiB; a compressed object is read
 * whole), into staging sized by that read, and every one is verified. done(arg, bytes copied) on
 * success; done(arg, KVT_E_CORRUPT) when a covering block fails its checksum (the object is
 * dropped; counted as a checksum failure and a miss; dst holds no wrong rows to trust);
 * KVT_E_IO, KVT_E_TIERFAILED. Returns 0, or without callback: KVT_E_NOTFOUND (a miss),
 * KVT_E_INVAL (no such rows, or an object of unknown geometry), KVT_E_SMALLBUF, KVT_E_BUSY,
 * KVT_E_TIERFAILED. */
/* kvt_disk_read that returns an object kept in a lossy form as stored (the packed quantized
 * chunk, verified against its checksum, not dequantized; cap must hold its stored_len) and any
 * other object as kvt_disk_read does; *form_out (valid until done) gets the object's form
 * (enum kvt_form) before done(arg, bytes) runs. */
int kvt_disk_read_stored(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                         uint32_t *form_out, kvt_tier_done_fn done, void *arg);

int kvt_disk_read_range(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                        uint32_t token_first, uint32_t n_tokens, void *dst, size_t cap,
                        kvt_tier_done_fn done, void *arg);

/* kvt_disk_read_range that returns the rows of an object kept in a lossy form as stored:
 * verified, not dequantized, gathered into the kernels' chunk layout of one layer
 * (kvt_object_get_rows_stored; head_dim is the chunk's: KVT_E_INVAL when the rows cannot hold
 * whole heads of it; cap >= n_tokens x the stored row's bytes); any other object's rows as
 * kvt_disk_read_range returns them. *form_out (valid until done) gets the form returned. */
int kvt_disk_read_range_stored(struct kvt_disk *d, const struct kvt_obj_id *id, uint32_t layer,
                               uint32_t token_first, uint32_t n_tokens, uint32_t head_dim,
                               void *dst, size_t cap, uint32_t *form_out, kvt_tier_done_fn done,
                               void *arg);

/* Lending read, so that checksum verification and decoding can run on a worker thread: the
 * callback receives the stored object itself, still in the store's staging buffer.
 *   owner:  kvt_disk_read_lend(d, &id, done, arg)
 *           done(arg, raw_len, lent) on the owner thread (copy *lent; lent->buf stays valid
 *           until release), or done(arg, err, NULL) after an I/O error
 *   worker: kvt_disk_decode(worker_codec, &lent, dst, cap) -> 0 or KVT_E_CORRUPT
 *   owner:  kvt_disk_read_release(d, &lent, status) with the decode result; KVT_E_CORRUPT
 *           drops the object and counts a checksum failure and a miss, as kvt_disk_read does.
 * Every loan must be released before destroy. */
struct kvt_disk_lent {
    uint32_t handle; /* store-private */
    const void *buf; /* header + payload as stored; owned by the store until release */
    size_t bytes;    /* bytes at buf */
    struct kvt_obj_id id;
    uint64_t seq;
    uint64_t raw_len;
    uint8_t stored; /* the borrower's: set when it decoded the stored form (release counts no
                       promotion then) */
};
typedef void (*kvt_disk_lent_fn)(void *arg, int res, const struct kvt_disk_lent *lent);

/* Returns 0, or without callback KVT_E_NOTFOUND, KVT_E_BUSY, KVT_E_INVAL, KVT_E_TIERFAILED. */
int kvt_disk_read_lend(struct kvt_disk *d, const struct kvt_obj_id *id, kvt_disk_lent_fn done,
                       void *arg);
/* Verifies the lent object (header, identity, checksum) and decodes it into dst. Uses only codec
 * and the lent bytes: safe on any thread. Returns 0, KVT_E_CORRUPT, KVT_E_SMALLBUF. */
int kvt_disk_decode(struct kvt_codec *codec, const struct kvt_disk_lent *lent, void *dst,
                    size_t cap);
/* kvt_disk_decode of the stored form, as kvt_disk_read_stored returns it: *len_out the bytes
 * written, *form_out the object's form. Returns 0, KVT_E_CORRUPT, KVT_E_SMALLBUF. */
int kvt_disk_decode_stored(struct kvt_codec *codec, const struct kvt_disk_lent *lent, void *dst,
                           size_t cap, uint32_t *form_out, size_t *len_out);
void kvt_disk_read_release(struct kvt_disk *d, const struct kvt_disk_lent *lent, int status);

/* Reads the metadata section of object id alone (no byte of the header or the payload) into dst
 * (capacity cap >= the object's meta_bytes_max), which must stay valid until done runs. The
 * section is verified (its identity, length and check): done(arg, bytes) on success;
 * done(arg, KVT_E_CORRUPT) when it fails (counted in meta_checksum_failures; the object stays
 * and is served, its bytes have checks of their own); KVT_E_IO, KVT_E_TIERFAILED. Counted in
 * meta_reads and meta_bytes_read, never in reads or bytes_read. Returns 0, or without callback:
 * KVT_E_NOTFOUND (no such object, or one stored without metadata), KVT_E_SMALLBUF, KVT_E_BUSY,
 * KVT_E_INVAL, KVT_E_TIERFAILED. */
int kvt_disk_read_meta(struct kvt_disk *d, const struct kvt_obj_id *id, void *dst, size_t cap,
                       kvt_tier_done_fn done, void *arg);

/* Forgets object id; the space is reused after the tombstone is durable. Returns 0,
 * KVT_E_NOTFOUND, KVT_E_TIERFAILED. */
int kvt_disk_remove(struct kvt_disk *d, const struct kvt_obj_id *id);

/* A durability barrier, in caller-owned storage that must stay untouched until done runs. */
struct kvt_disk_sync {
    struct kvt_disk_sync *next; /* store-private */
    uint64_t gen;               /* store-private */
    kvt_tier_done_fn done;
    void *arg;
    int res;
};

/* done(arg, 0) runs (inside poll) once every kvt_disk_remove() made before this call, and every
 * write whose callback already ran, is durable; done(arg, KVT_E_TIERFAILED) when the tier latches
 * first. Barriers complete in the order they were made. Returns 0, KVT_E_INVAL or
 * KVT_E_TIERFAILED (no callback). */
int kvt_disk_sync(struct kvt_disk *d, struct kvt_disk_sync *sync, kvt_tier_done_fn done, void *arg);

/* Looks an object up without I/O. Returns 0 (and fills *out when not NULL) or KVT_E_NOTFOUND. */
int kvt_disk_lookup(struct kvt_disk *d, const struct kvt_obj_id *id, struct kvt_disk_obj_info *out);

/* Calls fn for every stored object (order unspecified) until fn returns nonzero; returns how many
 * objects were visited. fn must not call into the store. */
typedef int (*kvt_disk_enum_fn)(void *arg, const struct kvt_disk_obj_info *info);
size_t kvt_disk_enumerate(struct kvt_disk *d, kvt_disk_enum_fn fn, void *arg);

/* Batching: between plug and unplug, writes and reads are queued and submitted together at
 * unplug (or when the submission queue fills). Without plugging each call submits at once. */
void kvt_disk_plug(struct kvt_disk *d);
void kvt_disk_unplug(struct kvt_disk *d);

/* eventfd (nonblocking) that becomes readable when completions are pending. Owned by the store. */
int kvt_disk_event_fd(struct kvt_disk *d);

/* Reaps completions, advances group commits and runs callbacks; returns how many callbacks ran.
 * Never blocks. */
int kvt_disk_poll(struct kvt_disk *d);

/* Blocks up to timeout_ms (-1: no limit) until something completes, then polls. For tests,
 * tools and shutdown only; the event loop uses the eventfd. Returns callbacks run. */
int kvt_disk_wait(struct kvt_disk *d, int timeout_ms);

/* Number of operations whose callback has not run yet. */
uint32_t kvt_disk_inflight(const struct kvt_disk *d);

void kvt_disk_stats(struct kvt_disk *d, struct kvt_disk_stats *out);
/* Only the tier counters (cheap: the tier manager looks at them every loop iteration). */
void kvt_disk_tier_stats(const struct kvt_disk *d, struct kvt_tier_stats *out);

/* The operations table (tiers/tier.h), on a struct kvt_disk_tier that wraps a store (tier_ops.c):
 * a persistent tier that names objects by id (locations are unused) and reads token ranges.
 * fill encodes on any thread with a codec of its own per thread (config copied at init); it stores
 * the metadata a write carries and read_meta reads it back alone. */
struct kvt_disk_tier {
    struct kvt_disk *d;            /* borrowed */
    struct kvt_codec_config codec; /* for the per-thread encoders of fill */
    struct kvt_watch watch;        /* the eventfd, while attached */
    int attached;
};
void kvt_disk_tier_init(struct kvt_disk_tier *dt, struct kvt_disk *d,
                        const struct kvt_codec_config *codec);
extern const struct kvt_tier_ops kvt_disk_tier_ops;

#endif
