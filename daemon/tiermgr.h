/*
 * The tier manager: where a chunk lives and how it moves between the CPU tier and the disk tier.
 *
 * - Put lands in DRAM. Under write-back (the default) it is answered at once and written to disk
 *   later, when the CPU tier fills past cpu.high_watermark, coldest chunks first, so that eviction
 *   finds clean chunks it can drop instantly. Under write-through it is written at once and
 *   answered when durable (the answer says tier DISK).
 * - Eviction from DRAM keeps the chunk's index entry when a disk copy exists (or is being
 *   written); a chunk without one is written back first when admitted (disk admission policy),
 *   and dropped only when memory cannot be found otherwise (counted as dropped_dirty), unless
 *   tier.dirty_full = reject: then the Put that needs the memory gets E_DIRTYFULL instead.
 * - When the index is full, a Put evicts the coldest chunk that can go (kvt_tm_index_insert);
 *   the disk tier is kept under disk.high_watermark of its bytes and of disk.objects_max.
 * - A Delete is answered once its tombstone is durable on disk (kvt_tm_delete_begin/_end), so a
 *   crash after the answer cannot bring the chunk back.
 * - Get of a chunk only on disk reads it back into a new DRAM slot (promotion) and serves it from
 *   there; when no slot can be had it reads straight into the client's buffer.
 * - When the disk fills past disk.high_watermark, chunks that are only on disk leave it, coldest
 *   first by a CLOCK sweep over the index (a chunk read or written since the hand last passed
 *   gets a second chance): the disk is a cache too.
 * - At start the disk's objects are enumerated into the index, so a restarted daemon serves them.
 *
 * Disk encoding (shuffle + compression + checksum) runs on the worker pool; the loop only reserves
 * staging buffers and submits I/O. Every asynchronous completion re-checks the index entry's
 * generation, so a chunk deleted meanwhile is never resurrected.
 */
#ifndef KVT_DAEMON_TIERMGR_H
#define KVT_DAEMON_TIERMGR_H

#include <stdint.h>

#include "daemon/index.h"
#include "daemon/workers.h"
#include "tiers/codec.h"
#include "tiers/disk/disk.h"

struct kvt_server;
struct kvt_op;

/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_TM_STATS_DEF(X, A)                                                                     \
    X(A, demotions, KVT_STAT_COUNTER, "", "chunks written from the CPU tier to disk")              \
    X(A, demotion_failures, KVT_STAT_COUNTER, "", "writes to disk that failed")                    \
    X(A, promotions, KVT_STAT_COUNTER, "", "chunks read from disk back into the CPU tier")         \
    X(A, disk_direct_reads, KVT_STAT_COUNTER, "",                                                  \
      "Gets served straight from disk without a copy in DRAM")                                     \
    X(A, disk_read_misses, KVT_STAT_COUNTER, "", "reads of chunks the disk tier no longer had")    \
    X(A, evicted_to_disk, KVT_STAT_COUNTER, "", "CPU tier evictions of chunks that stay on disk")  \
    X(A, dropped_dirty, KVT_STAT_COUNTER, "",                                                      \
      "chunks evicted from DRAM before they were written to disk")                                 \
    X(A, rejected_dirty_full, KVT_STAT_COUNTER, "",                                                \
      "Puts refused because DRAM was full of chunks not yet on disk")                              \
    X(A, admission_skipped, KVT_STAT_COUNTER, "",                                                  \
      "chunks the disk admission policy did not write")                                            \
    X(A, too_big_for_disk, KVT_STAT_COUNTER, "", "chunks larger than the disk tier takes")         \
    X(A, orphans_removed, KVT_STAT_COUNTER, "",                                                    \
      "disk objects removed at start because the index does not name them")                        \
    X(A, disk_evictions, KVT_STAT_COUNTER, "", "objects removed from disk to make room")           \
    X(A, index_evictions, KVT_STAT_COUNTER, "", "chunks evicted to make room in a full index")     \
    X(A, index_full, KVT_STAT_COUNTER, "",                                                         \
      "index inserts that found the index full and nothing to evict")                              \
    X(A, recovered_objects, KVT_STAT_COUNTER, "", "chunks indexed from the disk tier at start")    \
    X(A, recovery_removed, KVT_STAT_COUNTER, "",                                                   \
      "disk objects dropped at start (unknown namespace or duplicate)")                            \
    X(A, deletes_deferred, KVT_STAT_COUNTER, "",                                                   \
      "Deletes answered only once their tombstones were durable")                                  \
    X(A, delete_busy, KVT_STAT_COUNTER, "",                                                        \
      "Deletes refused because too many were waiting for durability")                              \
    X(A, recovery_ms, KVT_STAT_GAUGE, "ms", "time the start-up recovery from disk took")
#define KVT_TM_STATS(A) KVT_TM_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_tm_stats {
#define KVT__TM_STAT_FIELD(name) uint64_t name;
    KVT_TM_STATS(KVT__TM_STAT_FIELD)
#undef KVT__TM_STAT_FIELD
};

struct kvt_demote;

/* Deletes answered once their tombstones are durable: at most KVT_TM_DELS_MAX waiting, their
 * per-key statuses in one ring of KVT_TM_DEL_STATUS_MAX entries (twice the keys of the largest
 * Delete, so one always fits when nothing waits). */
#define KVT_TM_DELS_MAX 256u
#define KVT_TM_DEL_KEYS_MAX 65536u
#define KVT_TM_DEL_STATUS_MAX (2u * KVT_TM_DEL_KEYS_MAX)
struct kvt_tm_del;

/* How the tier manager reports the requests it finishes later. The request layer registers these
 * (kvt_tm_set_callbacks) so that the tier manager never calls into request handling or the
 * server: each callback answers the op and queues its connection to resume before the loop
 * sleeps; none of them may call back into the tier manager's queues synchronously. */
struct kvt_tm_callbacks {
    /* A write-through Put's chunk is durable on `tier` (or stayed in DRAM only: KVT_TIER_CPU). */
    void (*put_done)(void *arg, struct kvt_op *op, enum kvt_tier_id tier);
    /* A Get from disk failed with status (the chunk is gone, or an I/O error). */
    void (*get_failed)(void *arg, struct kvt_op *op, int status);
    /* A Get's chunk is in DRAM now (promoted, or promoted by another Get meanwhile): deliver it
     * from there. */
    void (*get_in_dram)(void *arg, struct kvt_op *op);
    /* A Get was read from disk straight into the client's buffer. */
    void (*get_read_direct)(void *arg, struct kvt_op *op, const struct kvt_entry *e);
    /* A Delete's tombstones are durable: answer with one status per key. */
    void (*delete_done)(void *arg, struct kvt_op *op, const int32_t *status, uint32_t n);
};

struct kvt_tiermgr {
    const struct kvt_tm_callbacks *cb;
    void *cb_arg;
    struct kvt_workers *workers; /* encoding jobs go there */
    struct kvt_disk *disk;       /* NULL when the disk tier is off */
    struct kvt_disk_faults faults;
    struct kvt_codec_config codec_cfg;
    struct kvt_demote *demotes;
    struct kvt_demote *free_demotes;
    uint32_t n_demotes;
    uint32_t demotes_inflight;
    uint64_t encoding_bytes;          /* DRAM pinned by encoders */
    struct kvt_op *wt_head, *wt_tail; /* write-through Puts waiting for a staging buffer */
    struct kvt_op *rd_head, *rd_tail; /* Gets waiting for a staging buffer (entries pinned) */
    int evict_force;                  /* drop dirty chunks: memory could not be found otherwise */
    int write_through;
    int flushing;          /* shutdown: write back every dirty chunk */
    uint32_t flush_cursor; /* next index entry the flush looks at */
    uint32_t clock_hand;   /* next index entry the disk eviction looks at */
    struct kvt_tm_del *dels, *free_dels;
    struct kvt_tm_del *del_head, *del_tail; /* waiting, oldest first */
    int32_t *del_status;                    /* the ring */
    uint32_t ds_head, ds_tail, n_dels_waiting;
    uint32_t del_off; /* ring offset handed out by the last kvt_tm_delete_begin */
    int del_staged;   /* a tombstone was staged since kvt_tm_delete_begin */
    struct kvt_tm_stats st;
};

/* Opens the disk tier when configured and loads what it holds into the index. */
int kvt_tm_init(struct kvt_server *s);
/* Registers the request layer's completion callbacks (borrowed until deinit) and the worker pool
 * encoding runs on. */
void kvt_tm_set_callbacks(struct kvt_tiermgr *tm, const struct kvt_tm_callbacks *cb, void *arg,
                          struct kvt_workers *workers);
/* Releases everything; in-flight disk I/O is waited for. NULL-safe on a zeroed manager. */
void kvt_tm_deinit(struct kvt_server *s);
/* eventfd of the disk tier, or -1. */
int kvt_tm_event_fd(const struct kvt_server *s);
/* Runs disk completions (the eventfd was readable) and follow-up work. */
void kvt_tm_poll(struct kvt_server *s);
/* Background work after each loop iteration: queued write-through Puts, write-back under
 * pressure, the shutdown flush. Bounded per call. */
void kvt_tm_tick(struct kvt_server *s);
/* During shutdown: 1 while disk work is still in flight or a flush has chunks left. */
int kvt_tm_busy(const struct kvt_server *s);
/* Applies runtime config (fault injection). */
void kvt_tm_config_changed(struct kvt_server *s);

/* CPU-tier allocation for a new chunk (a Put): evicts clean chunks, and dirty ones only when
 * nothing else frees memory (tier.dirty_full = drop; with reject, KVT_E_DIRTYFULL instead). */
int kvt_tm_host_alloc(struct kvt_server *s, uint64_t bytes, uint32_t cookie, uint64_t *off_out);
/* The CPU tier's eviction callback (cookie = entry id). */
int kvt_tm_evict(void *server, uint32_t cookie, uint64_t off);

/* A Put's bytes are in DRAM and the entry is READY. Returns 1 when the manager answers the op
 * later (write-through), 0 when the caller answers now. */
int kvt_tm_put_committed(struct kvt_server *s, struct kvt_op *op, uint32_t entry);
/* Serves a Get of a chunk whose only copy is on disk. Returns 0 when the op will be answered
 * later, or an error for the caller to answer. */
int kvt_tm_get_from_disk(struct kvt_server *s, struct kvt_op *op, uint32_t entry);
/* Serves a GetRange (op->layer, token_first, n_tokens; op->length bytes to op->job.dst) of a
 * chunk whose only copy is on disk: only the blocks covering the rows are read and verified,
 * straight into the client's destination, and the op is answered through get_read_direct (or
 * get_in_dram when a Get promoted the chunk meanwhile). A block that fails its checksum drops the
 * chunk and answers KVT_E_NOTFOUND (never wrong rows); with every staging buffer busy the op
 * waits in the Gets' read queue. A disk copy without geometry answers KVT_E_GEOMETRY. Returns 0
 * when the op will be answered later, or an error for the caller to answer. */
int kvt_tm_get_range_from_disk(struct kvt_server *s, struct kvt_op *op, uint32_t entry);
/* Inserts a new PENDING entry for a Put. When the index is full (index.max_objects) it first
 * evicts the coldest chunk that can go: a chunk only on disk (CLOCK hand) is removed from disk; a
 * clean chunk in DRAM loses its DRAM slot and its disk copy; a dirty chunk goes only under
 * tier.dirty_full = drop (counted as dropped_dirty); never a chunk with readers or writers or in
 * flight. Returns 0, or KVT_E_INDEXFULL when nothing could go. The key must not be present. */
int kvt_tm_index_insert(struct kvt_server *s, const struct kvt_obj_id *oid, uint32_t *id_out);

/* Delete of n keys, durable before it is answered:
 *   status = kvt_tm_delete_begin(s, n)    NULL: answer the whole Delete KVT_E_BUSY (too many
 *                                           Deletes waiting for the disk); else room for n
 *   status[i] = kvt_tm_delete(s, entry) or the caller's own per-key code
 *   kvt_tm_delete_end(s, op, status, n)   1: the manager answers op once every tombstone staged
 *                                           since begin is durable; 0: answer now with status
 * status belongs to the manager; it stays valid until op is answered. Without a disk tier, or
 * when no tombstone was staged, nothing waits. Once the disk tier has latched failed, Deletes are
 * answered at once and their removal from disk is not durable. */
int32_t *kvt_tm_delete_begin(struct kvt_server *s, uint32_t n);
int kvt_tm_delete_end(struct kvt_server *s, struct kvt_op *op, int32_t *status, uint32_t n);
/* Deletes a chunk from every tier: 0; KVT_E_INUSE when it is being read, promoted or written
 * (retry); KVT_E_BUSY when the disk tier has too many removals staged for one commit (retry). */
int kvt_tm_delete(struct kvt_server *s, uint32_t entry);
/* The tier a READY entry is served from, or KVT_TIER_NONE when no readable copy exists yet. */
enum kvt_tier_id kvt_tm_tier_of(const struct kvt_entry *e);

#endif
