/*
 * Internals of the disk tier shared by its files (disk.c: the public entry points and
 * create/destroy; ring.c; journal.c; recovery.c; dindex.c; staging.c). Only the .c files of
 * tiers/disk/ include this header; everything outside the tier goes through disk.h.
 */
#ifndef KVT_TIERS_DISK_DISK_INTERNAL_H
#define KVT_TIERS_DISK_DISK_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#include <liburing.h>

#include "tiers/disk/disk.h"
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
/* Journal and checkpoint records (journal.c has the layout). Version 2 records carry the
 * variant and have their own magic; version 1 records ("KVTJ", written before variants existed)
 * are still read, as variant 0, and a store holding them is rewritten in v2 at start, since every
 * start writes a fresh checkpoint and empties both journals. */
#define REC_BYTES 96u
#define REC_MAGIC 0x324a564bu    /* "KVJ2": record version 2 */
#define REC_MAGIC_V1 0x4a54564bu /* "KVTJ": record version 1, read only */
#define REC_CHECK_OFF 88u        /* XXH3-64 of the bytes before it */
#define REC_PUT 1u
#define REC_DEL 2u
#define CKPT_MAGIC 0x4354564bu /* "KVTC" */
/* Version 3: records of version 2. A version 2 checkpoint (version 1 records) is read too. */
#define CKPT_VERSION 3u
#define CKPT_VERSION_V2 2u
#define CKPT_HEADER_BYTES 64u
#define SB_MAGIC 0x5354564bu /* "KVTS" */
/* Version 2: objects in format v2, v3 or v4 (object.h; all read, v4 written). A v1 store is
 * refused at start (see superblocks). */
#define SB_VERSION 2u
/* Journal bytes read per pread during recovery. */
#define RECOVERY_READ_BYTES (1u << 20)
#define UD_OP 1u
#define UD_COMMIT 2u

struct ient {
    uint64_t ns_seed, key_lo, key_hi, seq;
    uint64_t raw_len, stored_len, start;
    uint32_t variant; /* with ns_seed and the key: the object's identity */
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
    uint8_t range;  /* a range read: rows [t0, t0 + n_rows) of one layer */
    uint8_t meta;   /* a read of the metadata section alone */
    uint8_t stored; /* a read that returns a lossy object as stored (kvt_disk_read_stored, and
                       kvt_disk_read_range_stored) */
    uint32_t next;
    uint32_t codec, n_tokens, blocks;
    uint32_t sp_start, sp_pages; /* staging pages */
    uint64_t io_off, io_bytes;   /* the transfer, relative to the extent */
    uint32_t layer, t0, n_rows;
    uint32_t head_dim;        /* stored range reads of a quantized object: the chunk's head_dim */
    struct kvt_object_meta m; /* writes: the layout; range reads: the layout from the index */
    struct kvt_obj_id id;
    uint64_t start, seq, raw_len, stored_len;
    void *dst;
    size_t cap;
    uint32_t *form_out; /* stored reads: where the object's form goes before done runs */
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

struct rec {
    uint32_t type, codec, gen, n_tokens, blocks, variant;
    uint32_t n_layers, block_tokens, row_bytes;
    uint8_t file;
    uint64_t seq, ns_seed, key_lo, key_hi, start, raw_len, stored_len;
};

/* disk.c: small helpers shared by the others. */
void kvt__disk_set_err(const struct kvt_disk_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t kvt__disk_now_ms(void);
void kvt__disk_put_le(unsigned char *p, uint64_t v, unsigned bytes);
uint64_t kvt__disk_get_le(const unsigned char *p, unsigned bytes);
uint64_t kvt__disk_blocks_for(uint64_t bytes);
/* Blocks of e's header and body (what a whole read reads), and the bytes of its extent after them:
 * the metadata section (a v4 object with metadata), else 0. */
uint64_t kvt__disk_body_blocks(const struct ient *e);
uint64_t kvt__disk_section_bytes(const struct ient *e);
int kvt__disk_object_matches(const struct kvt_object_meta *m, const struct kvt_obj_id *id,
                             uint64_t seq, uint64_t raw_len);

/* dindex.c: the object index and extents across files. */
struct ient *kvt__disk_index_find(struct kvt_disk *d, const struct kvt_obj_id *id);
struct ient *kvt__disk_index_claim_as(struct kvt_disk *d, const struct kvt_obj_id *id, int dead);
struct ient *kvt__disk_index_claim(struct kvt_disk *d, const struct kvt_obj_id *id);
struct ient *kvt__disk_claim_or_revive(struct kvt_disk *d, const struct kvt_obj_id *id,
                                       struct ient *e);
void kvt__disk_index_delete(struct kvt_disk *d, struct ient *e);
/* Counts live object e into (sign +1) or out of (-1) the per-form gauges; and recounts them all
 * from the index (the end of recovery). */
void kvt__disk_form_account(struct kvt_disk *d, const struct ient *e, int sign);
void kvt__disk_form_recount(struct kvt_disk *d);
void kvt__disk_ient_info(const struct ient *e, struct kvt_disk_obj_info *out);
int kvt__disk_extent_alloc(struct kvt_disk *d, uint64_t blocks, uint8_t *file, uint64_t *start);
void kvt__disk_extent_release(struct kvt_disk *d, uint8_t file, uint64_t start, uint64_t blocks,
                              uint64_t gen);
void kvt__disk_pfree_sweep(struct kvt_disk *d);

/* journal.c: records, group commit, checkpoint and its thread. */
int kvt__disk_rec_decode(const unsigned char *p, struct rec *r);
void kvt__disk_rec_from_ient(const struct ient *e, uint32_t type, uint32_t gen, struct rec *r);
void kvt__disk_jstage_rec(struct kvt_disk *d, const struct rec *r);
void kvt__disk_start_commit(struct kvt_disk *d);
void kvt__disk_finish_commit(struct kvt_disk *d);
void kvt__disk_sync_advance(struct kvt_disk *d);
int kvt__disk_checkpoint_sync(struct kvt_disk *d);
void kvt__disk_checkpoint_reap(struct kvt_disk *d);
void *kvt__disk_ckpt_main(void *arg);

/* staging.c: operation slots, their lists and staging pages. */
void kvt__disk_olist_push(struct kvt_disk *d, struct olist *l, uint32_t i);
uint32_t kvt__disk_olist_pop(struct kvt_disk *d, struct olist *l);
void kvt__disk_olist_splice(struct kvt_disk *d, struct olist *dst, struct olist *src);
unsigned char *kvt__disk_slot_of(struct kvt_disk *d, uint32_t i);
uint32_t kvt__disk_op_get(struct kvt_disk *d, uint64_t bytes);
void kvt__disk_op_put(struct kvt_disk *d, uint32_t i);
void kvt__disk_op_finish(struct kvt_disk *d, uint32_t i, int res);

/* ring.c: submission, completions, the ring itself. */
struct io_uring_sqe *kvt__disk_get_sqe(struct kvt_disk *d);
void kvt__disk_submit(struct kvt_disk *d);
void kvt__disk_latch(struct kvt_disk *d);
void kvt__disk_count_io_error(struct kvt_disk *d);
void kvt__disk_wake(struct kvt_disk *d);
void kvt__disk_drop_corrupt(struct kvt_disk *d, struct op *o);
int kvt__disk_run_syncs(struct kvt_disk *d);
/* Creates the ring and registers the staging area as buffer 0; when the kernel refuses the
 * registration (RLIMIT_MEMLOCK), says why in the log and keeps going with unregistered buffers
 * (st.registered_buffers = 0). */
int kvt__disk_setup_ring(struct kvt_disk *d);
/* A read or write of the registered file `file` into or from staging memory: the fixed-buffer op
 * when the staging area is registered, the plain one otherwise. */
void kvt__disk_prep_read(struct kvt_disk *d, struct io_uring_sqe *sqe, int file, void *buf,
                         unsigned bytes, uint64_t off);
void kvt__disk_prep_write(struct kvt_disk *d, struct io_uring_sqe *sqe, int file, const void *buf,
                          unsigned bytes, uint64_t off);

/* recovery.c: superblocks, checkpoint load, journal replay, scan. */
int kvt__disk_recover(struct kvt_disk *d);

#endif /* KVT_TIERS_DISK_DISK_INTERNAL_H */
