/*
 * The tier manager: where a chunk lives and how it moves between tiers. It is an object of its own
 * (kvt_tm_create) over an ordered list of tiers, fastest first, that it drives only through the
 * operations table of tiers/tier.h and names nowhere in its code. Tier 0 is a memory tier (the
 * CPU arena): Puts land there and reads are served from there; the lower tiers (disk now, remote
 * later) hold copies written back from it. In what follows "DRAM" is tier 0 and "disk" the lower
 * tiers. It never includes or calls request handling or the server: a request hands it an I/O
 * descriptor (struct kvt_tm_io) and is told through the callbacks it registered.
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
 * - Learning from selections (tier.select_promote): the daemon reports the rows Selects choose and
 *   GetRanges read (kvt_tm_note_rows); a chunk only on disk whose rows chosen within a window add
 *   up to a chunk's worth (tier.select_promote_ratio) is promoted into DRAM in the background,
 *   taking only free memory or clean chunks less often selected, and the evidence keeps it there
 *   (recently used under LRU, worth more under cost-aware eviction).
 * - At start the disk's objects are enumerated into the index, so a restarted daemon serves them.
 * - A lower-tier copy carries opaque metadata the daemon hands over (its span abstract; the tier
 *   manager never looks inside), and kvt_tm_load_meta gives it back at start, read from the lower
 *   tiers without their payloads.
 *
 * Writing to a lower tier (its fill: shuffle + compression + checksum for the disk) runs on the
 * worker pool; the loop only reserves and commits. So do the verification and decoding of a whole
 * read from a tier that lends it (read_lend: a promotion, a direct or stored-form read); the loop
 * only starts the I/O and finishes the read. Every asynchronous completion re-checks the
 * index entry's generation, so a chunk deleted meanwhile is never resurrected. Placement between
 * lower tiers: a write-back goes to the first lower tier that takes the chunk's size; a read
 * comes from the first lower tier with a durable copy.
 */
#ifndef KVT_DAEMON_TIERMGR_H
#define KVT_DAEMON_TIERMGR_H

#include <stdint.h>

#include "daemon/index.h"
#include "daemon/workers.h"
#include "tiers/tier.h"

struct kvt_loop;

#define KVT_TM_TIERS_MAX KVT_ENTRY_TIERS_MAX

/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_TM_STATS_DEF(X, A)                                                                     \
    X(A, demotions, KVT_STAT_COUNTER, "", "chunks written from the CPU tier to disk")              \
    X(A, demotion_failures, KVT_STAT_COUNTER, "", "writes to disk that failed")                    \
    X(A, promotions, KVT_STAT_COUNTER, "", "chunks read from disk back into the CPU tier")         \
    X(A, disk_direct_reads, KVT_STAT_COUNTER, "",                                                  \
      "Gets served straight from disk without a copy in DRAM")                                     \
    X(A, disk_read_misses, KVT_STAT_COUNTER, "", "reads of chunks the disk tier no longer had")    \
    X(A, reads_decoded_on_workers, KVT_STAT_COUNTER, "",                                           \
      "whole reads from a lower tier verified and decoded on a worker, not on the loop")           \
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
    X(A, recovery_ms, KVT_STAT_GAUGE, "ms", "time the start-up recovery from disk took")           \
    X(A, meta_loaded, KVT_STAT_COUNTER, "",                                                        \
      "chunks whose metadata (span abstract) was read back from a lower tier at start")            \
    X(A, meta_load_failures, KVT_STAT_COUNTER, "",                                                 \
      "metadata reads at start that failed (corrupt, I/O error): the chunk has none")              \
    X(A, meta_load_bytes, KVT_STAT_COUNTER, "bytes", "bytes of metadata read back at start")       \
    X(A, meta_load_ms, KVT_STAT_GAUGE, "ms", "time reading the metadata back at start took")       \
    X(A, sel_promotions, KVT_STAT_COUNTER, "",                                                     \
      "chunks promoted into DRAM in the background because Selects kept choosing their rows")      \
    X(A, sel_promotes_queued, KVT_STAT_COUNTER, "",                                                \
      "chunks whose selected rows on disk crossed tier.select_promote_ratio within the window")    \
    X(A, sel_promote_no_room, KVT_STAT_COUNTER, "",                                                \
      "selection promotions given up: DRAM had no room without evicting a hotter or dirty chunk")  \
    X(A, sel_promote_dropped, KVT_STAT_COUNTER, "",                                                \
      "selection promotions not queued or not started: queue full, chunk gone or a read failed")
#define KVT_TM_STATS(A) KVT_TM_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_tm_stats {
#define KVT__TM_STAT_FIELD(name) uint64_t name;
    KVT_TM_STATS(KVT__TM_STAT_FIELD)
#undef KVT__TM_STAT_FIELD
};

/* Deletes answered once their tombstones are durable: at most KVT_TM_DELS_MAX waiting, their
 * per-key statuses in one ring of KVT_TM_DEL_STATUS_MAX entries (twice the keys of the largest
 * Delete, so one always fits when nothing waits). */
#define KVT_TM_DELS_MAX 256u
#define KVT_TM_DEL_KEYS_MAX 65536u
#define KVT_TM_DEL_STATUS_MAX (2u * KVT_TM_DEL_KEYS_MAX)

/* Selection promotions: at most KVT_TM_SEL_QUEUE chunks waiting, KVT_TM_SEL_INFLIGHT_MAX reading.
 */
#define KVT_TM_SEL_QUEUE 64u
#define KVT_TM_SEL_INFLIGHT_MAX 16u

/* Per tier: how full it may get and what it takes. */
struct kvt_tm_tier_policy {
    /* Tier 0: write back when room for the sizes asked for falls below 1 - high_watermark.
     * Lower tiers: evict chunks only there past high_watermark of their bytes or objects_max. */
    double high_watermark;
    uint64_t objects_max;      /* 0: no bound by count */
    uint64_t object_bytes_max; /* largest chunk the tier takes; 0: any */
};

struct kvt_tm_config {
    int write_through;       /* a Put is answered when its lower-tier copy is durable */
    int admit_second_access; /* write back only chunks read at least once */
    int dirty_reject;        /* DRAM full of chunks not yet written back: refuse the Put */
    int eviction_cost;       /* evict by value (reads x tokens / bytes) among the coldest few,
                                in DRAM and in the lower tiers, instead of plain LRU / CLOCK */
    uint32_t writes_max;     /* writes to lower tiers in flight at once (>= 1) */
    /* Learning from selections (kvt_tm_note_rows): a chunk only in a lower tier whose rows chosen
     * by Selects (or read by GetRange) within a window add up to select_promote_ratio times its
     * size is promoted into DRAM in the background, at most select_promote_inflight at a time,
     * taking only free DRAM or clean chunks less hot than itself. */
    int select_promote;
    double select_promote_ratio;      /* > 0 */
    uint64_t select_window_ms;        /* >= 1 */
    uint32_t select_promote_inflight; /* 1..KVT_TM_SEL_INFLIGHT_MAX */
    /* Milliseconds on a monotonic clock (tests inject one); NULL: the loop's, else CLOCK_MONOTONIC
     */
    uint64_t (*clock)(void *arg);
    void *clock_arg;
    struct kvt_tm_tier_policy tier[KVT_TM_TIERS_MAX];
};

/* One request's I/O through the tier manager, in the request's storage until a callback hands
 * it back. The caller fills the inputs; the tier manager owns the rest while it holds the io. */
struct kvt_tm_io {
    /* inputs */
    void *dst;     /* where a read goes when not through DRAM (a client's buffer) */
    uint64_t cap;  /* bytes at dst */
    int want_dram; /* the answer needs the chunk in DRAM (an inline reply): never dst */
    int range;     /* a read of rows of one layer (r), straight into dst */
    int stored;    /* a read of a lower-tier copy as stored (its lossy form, undecoded: the
                      whole chunk, or with range its rows), straight into dst; a chunk in DRAM is
                      served from there as usual */
    struct kvt_tier_range r;
    /* outputs: the tier a read came from; the form of the copy it was read from and, for direct
     * reads, the bytes it returned (a stored read: the stored block's) */
    enum kvt_tier_id tier;
    uint32_t form;
    uint64_t got;
    /* the tier manager's */
    uint32_t entry, gen;
    kvt_tier_loc slot;
    uint32_t src; /* position of the tier a read was started on */
    struct kvt_tm *tm;
    struct kvt_tm_io *next;
    /* A whole read from a tier that lends (read_lend): the object lent to loan, verified and
     * decoded into job.dst by job on a worker, then finished by then on the loop. */
    struct kvt_tier_loan loan;
    struct kvt_job job;
    kvt_tier_done_fn then;
};

/* Opaque metadata the daemon stores with a chunk's lower-tier copy (its span abstract): len bytes
 * that write puts at dst on a worker during the copy's fill, reading only ctx, which meta_pin
 * pinned until meta_release. */
struct kvt_tm_meta {
    uint32_t len; /* 0: none */
    kvt_tier_meta_fn write;
    void *ctx;
};

/* How the tier manager reports the I/O it finishes later. Each callback owns the io again and
 * answers its request; none may call back into the tier manager's queues synchronously except
 * the kvt_tm_memory_ptr/kvt_tm_release family. After kvt_tm_stop only abandoned runs. */
struct kvt_tm_callbacks {
    /* A write-through Put's chunk is durable on `tier` (or stayed in DRAM only: tier 0's id). */
    void (*put_done)(void *arg, struct kvt_tm_io *io, enum kvt_tier_id tier);
    /* A read failed with status (the chunk is gone, or an I/O error). */
    void (*get_failed)(void *arg, struct kvt_tm_io *io, int status);
    /* A read's chunk is in DRAM now, pinned for the io (release with kvt_tm_release): deliver it
     * from kvt_tm_memory_ptr. */
    void (*get_in_dram)(void *arg, struct kvt_tm_io *io);
    /* A read went straight into io->dst (the entry is no longer pinned). */
    void (*get_read_direct)(void *arg, struct kvt_tm_io *io, const struct kvt_entry *e);
    /* A Delete's tombstones are durable: answer ctx with one status per key. */
    void (*delete_done)(void *arg, void *ctx, const int32_t *status, uint32_t n);
    /* During shutdown: the io will not be answered; the request may be freed. */
    void (*abandoned)(void *arg, struct kvt_tm_io *io);
    /* During shutdown: a Delete waiting for durability will not be answered (may be NULL). */
    void (*delete_abandoned)(void *arg, void *ctx);
    /* The lossy form (enum kvt_form) entry id's lower-tier copy is to be kept in, asked for just
     * before it is written to a tier that keeps forms (read_stored); 0 keeps the bytes as they
     * are. May be NULL. */
    uint32_t (*form)(void *arg, uint32_t id);
    /* The shape of entry e's chunk, for range-readable lower-tier copies; nonzero: unknown. */
    int (*geom)(void *arg, const struct kvt_entry *e, struct kvt_chunk_geom *out);
    /* The metadata to store with entry id's lower-tier copy, pinned until meta_release (which
     * runs once the copy's fill returned, whatever became of the write); nonzero or len 0: none.
     * Only for tiers with KVT_TIER_CAP_META. May be NULL, with the three below. */
    int (*meta_pin)(void *arg, uint32_t id, struct kvt_tm_meta *out);
    void (*meta_release)(void *arg, struct kvt_tm_meta *m);
    /* kvt_tm_load_meta, just before a read: whether to read entry id's metadata, at most want_len
     * bytes; nonzero: read it, and meta_loaded follows, with the same want_len. */
    int (*meta_want)(void *arg, uint32_t id, uint32_t want_len);
    /* kvt_tm_load_meta: entry id's metadata, len bytes at bytes (borrowed for the call), or,
     * with status < 0 (KVT_E_CORRUPT, KVT_E_IO...), none; KVT_E_BUSY: not read yet, it is asked
     * for again later. */
    void (*meta_loaded)(void *arg, uint32_t id, uint32_t want_len, const void *bytes, size_t len,
                        int status);
    /* Entry id's copy on lower tier `tier` is durable now (its loc recorded), written or found
     * there already (reserve said KVT_E_EXISTS). May be NULL. */
    void (*copied)(void *arg, uint32_t id, uint32_t tier);
};

struct kvt_tm;

/* Takes the tiers (borrowed until destroy; tiers[0] must be a memory tier), registers as tier 0's
 * evictor, attaches every tier to loop with a before-sleep hook for its background work, and
 * indexes what the lower tiers list (a restarted daemon serves them; objects the index cannot
 * take are removed). Returns 0, KVT_E_INVAL (no memory tier first, too many tiers), KVT_E_NOMEM
 * or an attach error. */
int kvt_tm_create(const struct kvt_tm_config *cfg, struct kvt_index *idx,
                  const struct kvt_tier *tiers, uint32_t n_tiers, struct kvt_workers *workers,
                  struct kvt_loop *loop, const struct kvt_tm_callbacks *cb, void *cb_arg,
                  struct kvt_tm **out);
/* Start only, after kvt_tm_create and before the loop runs: reads back, from the lower tiers that
 * store metadata, the metadata of every chunk they hold that meta_want asks for, without reading
 * any payload, and hands each to meta_loaded. Reads are batched (at most 64 and 64 MiB in flight)
 * and waited for here; a progress line is logged every 2 s of a long pass. Returns 0 (failures of
 * single chunks are counted in meta_load_failures and given to meta_loaded) or KVT_E_NOMEM. */
int kvt_tm_load_meta(struct kvt_tm *tm);
/* Shutdown, in this order: kvt_tm_stop; settle the workers' jobs and destroy the lower tiers (their
 * last callbacks, which now only release what they hold and abandon their requests, need the tier
 * manager); kvt_tm_destroy; then the memory tier and the index. The tiers stay their owner's.
 * kvt_tm_stop detaches from the loop and hands back (abandoned, delete_abandoned) what waits in
 * its queues; from then on requests are abandoned, never answered. */
void kvt_tm_stop(struct kvt_tm *tm);
/* NULL-safe. */
void kvt_tm_destroy(struct kvt_tm *tm);
/* Shutdown: write back every chunk only in DRAM. */
void kvt_tm_flush(struct kvt_tm *tm);
/* 1 while lower-tier work is in flight or a flush has chunks left. */
int kvt_tm_busy(const struct kvt_tm *tm);
/* The background work (before-sleep hook; tests call it directly). */
void kvt_tm_tick(struct kvt_tm *tm);
void kvt_tm_stats(const struct kvt_tm *tm, struct kvt_tm_stats *out);
/* The tier at position i (0 = the memory tier), or NULL. */
const struct kvt_tier *kvt_tm_tier(const struct kvt_tm *tm, uint32_t i);

/* ---- Put --------------------------------------------------------------------------------- */

/* Inserts a new PENDING entry. When the index is full it first evicts the coldest chunk that can
 * go: one only in lower tiers (CLOCK hand) is removed from them; a clean chunk in DRAM loses
 * every copy; a dirty one only when DRAM-full chunks may be dropped (counted as dropped_dirty);
 * never one with readers or writers or in flight. 0, or KVT_E_INDEXFULL. The id must be absent. */
int kvt_tm_index_insert(struct kvt_tm *tm, const struct kvt_obj_id *oid, uint32_t *id_out);
/* A DRAM slot of len bytes for the PENDING entry id (its owner, length, tokens set), pinned for
 * the writer; *dst is where the bytes go. Evicts clean chunks, dirty ones only when nothing else
 * frees memory (dirty_reject: KVT_E_DIRTYFULL instead). KVT_E_FULL, KVT_E_TOOBIG. */
int kvt_tm_reserve(struct kvt_tm *tm, uint32_t id, void **dst);
/* A Put's copy failed: frees its slot and removes the entry. */
void kvt_tm_abort(struct kvt_tm *tm, uint32_t id);
/* A Put's bytes are good: the entry is READY and unpinned. Returns 1 when the tier manager answers
 * io later (write-through: put_done), 0 when the caller answers now, saying *tier_now. */
int kvt_tm_put_committed(struct kvt_tm *tm, struct kvt_tm_io *io, uint32_t id,
                         enum kvt_tier_id *tier_now);
/* Evicts up to max of the coldest DRAM chunks pick accepts (a tenant's, for its quota), looking
 * at no more than scan_max; returns how many went. */
size_t kvt_tm_evict_coldest(struct kvt_tm *tm, kvt_tier_pick_fn pick, void *arg, size_t max,
                            size_t scan_max);
/* What a chunk of bytes occupies in DRAM (0: too big), and DRAM's capacity. */
uint64_t kvt_tm_memory_slot_bytes(const struct kvt_tm *tm, uint64_t bytes);
uint64_t kvt_tm_memory_bytes(const struct kvt_tm *tm);

/* ---- reads ------------------------------------------------------------------------------- */

/* The tier a READY entry is served from, or KVT_TIER_NONE when no readable copy exists yet. */
enum kvt_tier_id kvt_tm_tier_of(const struct kvt_tm *tm, const struct kvt_entry *e);
/* The form (enum kvt_form) of the lower-tier copy a read of e would come from (0: fp16, or none).
 */
uint32_t kvt_tm_lower_form(const struct kvt_tm *tm, const struct kvt_entry *e);
/* Whether entry e has a readable copy in DRAM (tier 0). */
static inline int kvt_tm_in_memory(const struct kvt_entry *e)
{
    return e->at[0] == KVT_AT_READY;
}
/* Where entry e's DRAM copy is, or NULL when it has none. */
void *kvt_tm_memory_ptr(const struct kvt_tm *tm, const struct kvt_entry *e);
/* A read served from DRAM now: counts the hit, marks it most recently used, pins it (refs) for
 * the copy out; returns its bytes, or NULL when it has no DRAM copy (then nothing changed). */
const void *kvt_tm_acquire(struct kvt_tm *tm, uint32_t id);
/* Unpins what kvt_tm_acquire or get_in_dram pinned. */
void kvt_tm_release(struct kvt_tm *tm, uint32_t id);
/* Pins READY entry id in whatever tiers it is (a Lookup hold): never evicted, demoted or written
 * back while pinned. kvt_tm_unpin lets go, only when the entry's generation is still gen (a slot
 * removed meanwhile, e.g. a copy that failed its checksum, is not touched). */
void kvt_tm_pin(struct kvt_tm *tm, uint32_t id);
void kvt_tm_unpin(struct kvt_tm *tm, uint32_t id, uint32_t gen);
/* Counts a read that found no DRAM copy (a miss of tier 0). */
void kvt_tm_count_miss(struct kvt_tm *tm);
/* A client asked to read object id, stored or not: with tier.eviction = cost, its read count
 * (daemon/freq.h) is what cost-aware eviction expects of its reuse. */
void kvt_tm_note_read(struct kvt_tm *tm, const struct kvt_obj_id *id);
/* Evidence for learning from selections (tier.select_promote): bytes of entry id's rows that a
 * Select chose (selected = 1) or a GetRange read (selected = 0), from whatever tier. The two are
 * counted apart and the larger counts, so a SelectFetch (a Select, then the GetRanges of its runs)
 * is not counted twice. A chunk in DRAM is marked recently used; a chunk only in a lower tier
 * whose evidence within the window reaches select_promote_ratio times its length, and again each
 * further multiple of it, is queued for a background promotion (kvt_tm_tick). Cheap: a few
 * compares and adds, no I/O. */
void kvt_tm_note_rows(struct kvt_tm *tm, uint32_t id, uint64_t bytes, int selected);
/* How hot entry e is by selection: its evidence in the current window (the previous window's at
 * half weight) over its length, in chunks' worth. 0 with tier.select_promote off. */
double kvt_tm_sel_heat(const struct kvt_tm *tm, const struct kvt_entry *e);
/* Reads entry id from a lower tier for io: the whole chunk (promoted into DRAM when a slot can be
 * had, else straight into io->dst unless want_dram), or rows (io->range: only what covers them,
 * verified, into io->dst; KVT_E_GEOMETRY when the copy's rows cannot be addressed). A copy that
 * fails its checksum drops the chunk and answers KVT_E_NOTFOUND, never wrong bytes. With every
 * lower-tier buffer busy the io waits, first come first served. Returns 0 when io will be
 * answered through a callback, or an error for the caller to answer. */
int kvt_tm_read(struct kvt_tm *tm, struct kvt_tm_io *io, uint32_t id);

/* ---- Delete ------------------------------------------------------------------------------ */

/* Delete of n keys, durable before it is answered:
 *   status = kvt_tm_delete_begin(tm, n)   NULL: answer the whole Delete KVT_E_BUSY; else room
 *   status[i] = kvt_tm_delete(tm, entry) or the caller's own per-key code
 *   kvt_tm_delete_end(tm, ctx, status, n) 1: delete_done(ctx) once every tombstone staged since
 *                                           begin is durable; 0: answer now with status
 * status belongs to the tier manager until ctx is answered. */
int32_t *kvt_tm_delete_begin(struct kvt_tm *tm, uint32_t n);
int kvt_tm_delete_end(struct kvt_tm *tm, void *ctx, int32_t *status, uint32_t n);
/* Deletes a chunk from every tier: 0; KVT_E_INUSE when it is being read, promoted or written
 * (retry); KVT_E_BUSY when a tier has too many removals staged (retry). */
int kvt_tm_delete(struct kvt_tm *tm, uint32_t entry);

#endif
