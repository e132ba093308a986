/*
 * The operations table every storage tier implements (CPU DRAM, disk, GPU, remote), so that the
 * daemon's tier manager can place, move and account chunks without knowing how a tier stores them.
 * The tier manager holds an ordered list of tiers, fastest first, and names none of them.
 *
 * A tier stores objects named by struct kvt_obj_id (namespace seed, key, variant). Space is
 * reserved first, filled, then committed; only committed objects are visible to read. Where the
 * tier keeps an object is a kvt_tier_loc the caller records (an arena offset in a memory tier;
 * tiers that name objects by id ignore it).
 *
 * Calls that may complete later return KVT_TIER_LATER and run their callback on the loop thread
 * (inside the tier's own event handler, wait or destroy), never inside the call; 0 means done
 * now and no callback runs; a negative kvtier error means nothing was done and no callback runs.
 *
 * A tier with KVT_TIER_CAP_META also stores opaque metadata beside an object (the daemon keeps a
 * chunk's span abstract there) and reads it back alone, without the object's bytes (read_meta),
 * so that a restart can restore it without reading payloads. It never looks inside.
 *
 * A memory tier (KVT_TIER_CAP_MEMORY) holds bytes in this process's memory: ptr() reaches them,
 * the caller moves bytes in and out itself (on worker threads), and the tier keeps a recency order
 * and evicts on its own by asking its owner (set_evict). A tier never includes a daemon header.
 */
#ifndef KVT_TIERS_TIER_H
#define KVT_TIERS_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "common/stats.h"
#include "kvtier/kvtier.h"

struct kvt_loop;

/* Per-tier statistics, generated from one list so that stats output and docs stay in step.
 * bytes_used is what the tier's objects occupy (slots, blocks); bytes_payload what their bytes
 * are, before rounding, compression or metadata (0 in a tier that does not track it). */
/* name, type, unit, help: see common/stats.h. The help is one line of docs/stats.md. */
#define KVT_TIER_STATS_DEF(X, A)                                                                   \
    X(A, bytes_used, KVT_STAT_GAUGE, "bytes", "bytes the tier holds, with allocation overhead")    \
    X(A, bytes_payload, KVT_STAT_GAUGE, "bytes", "bytes of chunk data the tier holds")             \
    X(A, bytes_capacity, KVT_STAT_GAUGE, "bytes", "bytes the tier may hold")                       \
    X(A, objects, KVT_STAT_GAUGE, "", "chunks the tier holds")                                     \
    X(A, hits, KVT_STAT_COUNTER, "", "reads that found their chunk in the tier")                   \
    X(A, misses, KVT_STAT_COUNTER, "", "reads of chunks the tier did not have")                    \
    X(A, evictions, KVT_STAT_COUNTER, "",                                                          \
      "chunks removed from the tier to make room or by Delete")                                    \
    X(A, demotions, KVT_STAT_COUNTER, "", "chunks moved from this tier to a lower one")            \
    X(A, promotions, KVT_STAT_COUNTER, "", "chunks moved into a higher tier from this one")        \
    X(A, checksum_failures, KVT_STAT_COUNTER, "", "reads whose data failed its checksum")          \
    X(A, io_errors, KVT_STAT_COUNTER, "", "I/O errors the tier saw")                               \
    X(A, failed, KVT_STAT_GAUGE, "", "1 once the tier latched failed after unrecoverable errors")
#define KVT_TIER_STATS(A) KVT_TIER_STATS_DEF(KVT_STAT_NAME_ONLY, A)

struct kvt_tier_stats {
#define KVT__TIER_STAT_FIELD(name) uint64_t name;
    KVT_TIER_STATS(KVT__TIER_STAT_FIELD)
#undef KVT__TIER_STAT_FIELD
};

/* Identity of a stored object: the namespace (its seed, stable across restarts), the chunk's key
 * (a hash of its tokens and their prefix) and a variant, so that several versions of one chunk
 * (computed at different positions, for reuse) and several representations of it (fp16,
 * quantized, clustered) coexist as separate objects. Variant 0 is the chunk as first stored. */
struct kvt_obj_id {
    uint64_t ns_seed;
    struct kvt_key key;
    uint32_t variant;
};

static inline int kvt_obj_id_eq(const struct kvt_obj_id *a, const struct kvt_obj_id *b)
{
    return a->ns_seed == b->ns_seed && a->key.lo == b->key.lo && a->key.hi == b->key.hi &&
           a->variant == b->variant;
}

/* Completion of an asynchronous tier operation: res is 0/bytes or a negative kvtier error. */
typedef void (*kvt_tier_done_fn)(void *arg, int res);

/* Returned by a call whose callback will run later. */
#define KVT_TIER_LATER 1

/* Where a tier keeps one object: its own handle, recorded by the caller. A persistent tier that
 * names objects by id may give instead a stamp of the copy that no other copy it ever stores has
 * (the disk tier: the object's sequence number), set by reserve (also when it answers
 * KVT_E_EXISTS) and listed again by enumerate, so that a caller can tie what it keeps beside the
 * copy to that copy alone. */
typedef uint64_t kvt_tier_loc;

enum kvt_tier_caps {
    KVT_TIER_CAP_MEMORY = 1u << 0,     /* bytes in process memory: ptr, touch, coldest, evicts */
    KVT_TIER_CAP_PERSISTENT = 1u << 1, /* objects survive a restart: enumerate lists them */
    KVT_TIER_CAP_RANGE = 1u << 2,      /* read_range reads only what covers the rows */
    KVT_TIER_CAP_META = 1u << 3,       /* stores metadata beside an object; read_meta reads it */
};

/* Writes len bytes of an object's metadata at dst. Called by fill, on fill's thread: it must
 * touch only ctx, which its owner keeps alive and unchanged until fill returned (or cancel). */
typedef void (*kvt_tier_meta_fn)(void *ctx, void *dst, size_t len);

/* A chunk's shape (copied), so that a tier can lay its rows out for range reads. The bytes are in
 * the canonical order [layer][token][k|v][kv_head][head_dim]. sparse: a namespace read in token
 * ranges, whose objects a compressing tier should store uncompressed. */
struct kvt_chunk_geom {
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint16_t elem_bytes;
    uint16_t dtype;
    int sparse;
};

/* An object to write (borrowed during reserve), or one a persistent tier lists (enumerate). */
struct kvt_tier_obj {
    struct kvt_obj_id id;
    uint64_t length;
    uint32_t n_tokens;
    uint32_t elem_bytes;               /* shuffle width for a compressing tier; 0 = its default */
    uint32_t cookie;                   /* owner's handle, given back to the evict callback */
    uint16_t owner;                    /* accounting owner (1-based; 0 = none) */
    const struct kvt_chunk_geom *geom; /* NULL = unknown: one opaque layer */
    /* Metadata (KVT_TIER_CAP_META; other tiers ignore it). reserve: bytes meta_write will put
     * beside the object, 0 = none; a tier may leave them out when the object with them would not
     * fit (counted), never the object. enumerate: at most this many bytes are stored with it (0:
     * none), what a read_meta buffer needs. */
    uint32_t meta_len;
    kvt_tier_meta_fn meta_write; /* reserve only: called by fill with meta_ctx */
    void *meta_ctx;
    /* Lossy form (enum kvt_form; docs/lossy.md). reserve: the form the owner wants the copy kept
     * in (0: as given); a tier that keeps forms (read_stored set) quantizes a chunk of fp16 whose
     * geometry it knows, any other keeps the bytes as they are and says so in the write's form.
     * enumerate: the form the object is stored in. */
    uint32_t form;
};

/* A write in progress, in the caller's storage: reserve, fill (any thread), commit or cancel. */
#define KVT_TIER_WRITE_PRIV_BYTES 320
struct kvt_tier_write {
    kvt_tier_loc loc; /* set by reserve: where the object will be */
    uint64_t length;
    uint32_t form; /* set by fill: the form the object is stored in (enum kvt_form) */
    union {
        uint64_t align;
        unsigned char bytes[KVT_TIER_WRITE_PRIV_BYTES];
    } priv; /* tier-private */
};

/* A durability barrier for removals, in the caller's storage until its callback ran. */
#define KVT_TIER_SYNC_PRIV_BYTES 64
struct kvt_tier_sync {
    union {
        uint64_t align;
        unsigned char bytes[KVT_TIER_SYNC_PRIV_BYTES];
    } priv; /* tier-private */
    kvt_tier_done_fn done;
    void *arg;
};

/* A lending read in progress (read_lend), in the caller's storage until release: the object as
 * stored stays in the tier's buffer, so that its verification and decoding (decode) run on
 * whatever thread the caller picks, never on the loop that reaps the I/O. */
#define KVT_TIER_LOAN_PRIV_BYTES 96
struct kvt_tier_loan {
    union {
        uint64_t align;
        unsigned char bytes[KVT_TIER_LOAN_PRIV_BYTES];
    } priv; /* tier-private */
    kvt_tier_done_fn done;
    void *arg;
};

/* Rows [first, first + n) of one layer of a chunk of n_tokens tokens, row_bytes each (fp16).
 * head_dim: the chunk's, which a stored read of quantized rows gathers by (0: unknown). */
struct kvt_tier_range {
    uint32_t layer;
    uint32_t first;
    uint32_t n;
    uint32_t n_tokens;
    uint64_t row_bytes;
    uint32_t head_dim;
};

/* Asked before a memory tier reclaims an object: 0 lets it go (the owner forgets loc; the tier
 * frees it after the call), nonzero keeps it. Must not call back into the tier. */
typedef int (*kvt_tier_evict_fn)(void *owner, uint32_t cookie, kvt_tier_loc loc);
/* What keeping an object is worth per byte, for a cost-aware eviction policy (higher: keep
 * longer); must not call into the tier. */
typedef double (*kvt_tier_value_fn)(void *owner, uint32_t cookie);
/* Filter of coldest(); must not call into the tier. */
typedef int (*kvt_tier_pick_fn)(void *arg, uint32_t cookie);
/* One object of a persistent tier at start; nonzero stops the enumeration. */
typedef int (*kvt_tier_enum_fn)(void *arg, const struct kvt_tier_obj *obj, kvt_tier_loc loc);

struct kvt_tier_ops {
    const char *name;
    enum kvt_tier_id id;
    uint32_t caps; /* enum kvt_tier_caps */

    /* Space for obj. 0; KVT_E_EXISTS (already holds obj->id: nothing to write); KVT_E_BUSY (retry
     * after completions); KVT_E_FULL (nothing could be evicted); KVT_E_TOOBIG; KVT_E_INVAL;
     * KVT_E_TIERFAILED. */
    int (*reserve)(void *tier, const struct kvt_tier_obj *obj, struct kvt_tier_write *w);
    /* Writes w->length bytes of src (borrowed for the call) into the reservation. Any thread:
     * touches only w and what it reserved. 0 or an error (then cancel). */
    int (*fill)(struct kvt_tier_write *w, const void *src);
    /* Makes a filled reservation readable (and durable, for a persistent tier): 0 or
     * KVT_TIER_LATER, then done(arg, 0 or error); an error releases the reservation. */
    int (*commit)(void *tier, struct kvt_tier_write *w, kvt_tier_done_fn done, void *arg);
    void (*cancel)(void *tier, struct kvt_tier_write *w);
    /* Reads the whole object into dst (cap bytes, valid until done): 0 (read now) or
     * KVT_TIER_LATER, done(arg, bytes or error); KVT_E_NOTFOUND, KVT_E_SMALLBUF, KVT_E_BUSY. A
     * stored object that fails its checksum is dropped and reported KVT_E_CORRUPT. */
    int (*read)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst, size_t cap,
                kvt_tier_done_fn done, void *arg);
    /* The same for rows of one layer (n x row_bytes bytes); KVT_E_INVAL for rows the object does
     * not have or an object whose rows cannot be addressed. */
    int (*read_range)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                      const struct kvt_tier_range *r, void *dst, size_t cap, kvt_tier_done_fn done,
                      void *arg);
    /* KVT_TIER_CAP_META (NULL otherwise): reads the metadata stored with an object, and none of
     * its bytes, into dst (cap bytes, valid until done): KVT_TIER_LATER, then done(arg, bytes or
     * error), KVT_E_CORRUPT when the metadata fails its check (the object stays: its bytes have
     * checks of their own). Synchronously: KVT_E_NOTFOUND (no such object, or none stored with
     * it), KVT_E_SMALLBUF (cap below what enumerate reports), KVT_E_BUSY, KVT_E_TIERFAILED. */
    int (*read_meta)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                     size_t cap, kvt_tier_done_fn done, void *arg);
    /* Tiers that keep lossy forms (NULL otherwise): read's whole object as it is stored, not
     * decoded to fp16 (a quantized block, verified by its own checksum; an fp16 object as read
     * returns it), and its form into *form_out (borrowed until done) before done(arg, bytes or
     * error). Errors as read's. */
    int (*read_stored)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                       size_t cap, uint32_t *form_out, kvt_tier_done_fn done, void *arg);
    /* Tiers whose reads verify and decode on the loop (NULL otherwise): read's whole object, or
     * read_stored's, with that work left to the caller's thread. read_lend starts the I/O: 0 or
     * KVT_TIER_LATER, then done(arg, 0 or error) on the loop; on 0 the object is lent to loan
     * (valid until release). decode (any thread; touches only the loan and dst) verifies it and
     * writes what read (stored 0) or read_stored (stored 1, with *form_out) would have: bytes or
     * KVT_E_CORRUPT, KVT_E_SMALLBUF. release (the loop) hands the buffer back with decode's
     * result; KVT_E_CORRUPT drops the object as a failed read would. Synchronous errors as
     * read's. Every loan is released before the tier is destroyed. */
    int (*read_lend)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                     struct kvt_tier_loan *loan, kvt_tier_done_fn done, void *arg);
    int (*decode)(struct kvt_tier_loan *loan, void *dst, size_t cap, int stored,
                  uint32_t *form_out);
    void (*release)(void *tier, struct kvt_tier_loan *loan, int status);
    /* Tiers that keep forms (NULL otherwise): read_range's rows as stored: rows of a quantized
     * copy in the kernels' chunk layout of one layer (kvt_quant_chunk_f16 of those rows alone,
     * n x the stored row's bytes), verified, not dequantized; rows of any other copy as
     * read_range returns them. *form_out (borrowed until done) gets the copy's form. */
    int (*read_range_stored)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                             const struct kvt_tier_range *r, void *dst, size_t cap,
                             uint32_t *form_out, kvt_tier_done_fn done, void *arg);
    /* Forgets an object: 0, KVT_E_NOTFOUND, KVT_E_BUSY (too many removals pending: retry). */
    int (*remove)(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc);
    /* A barrier: 0 when every removal made before it is already durable (or the tier keeps
     * nothing across restarts), or KVT_TIER_LATER and done(arg, 0 or error) once it is. */
    int (*sync)(void *tier, struct kvt_tier_sync *sync);
    /* Persistent tiers: lists the stored objects; returns how many were visited. */
    size_t (*enumerate)(void *tier, kvt_tier_enum_fn fn, void *arg);
    /* Fills *out with this tier's counters. Cannot fail. */
    void (*stats)(void *tier, struct kvt_tier_stats *out);
    /* Watches the tier's completions on loop (until detach); 0 or -errno. */
    int (*attach)(void *tier, struct kvt_loop *loop);
    void (*detach)(void *tier, struct kvt_loop *loop);
    /* Operations whose callback has not run; and a blocking wait for one (shutdown, tests). */
    uint32_t (*inflight)(void *tier);
    int (*wait)(void *tier, int timeout_ms);

    /* Memory tiers only (NULL otherwise). */
    void *(*ptr)(void *tier, kvt_tier_loc loc);
    void (*touch)(void *tier, kvt_tier_loc loc);
    /* Cookies of up to max coldest objects that pick accepts, looking at no more than scan_max. */
    size_t (*coldest)(void *tier, kvt_tier_pick_fn pick, void *arg, uint32_t *cookies, size_t max,
                      size_t scan_max);
    /* Nonzero when room for the sizes being asked for is below free_frac. */
    int (*pressure)(void *tier, double free_frac);
    void (*set_evict)(void *tier, kvt_tier_evict_fn fn, void *owner);
    /* Cost-aware eviction (NULL fn: least recently used): a victim is the lowest-valued of the
     * few least recently used candidates, not the least recently used one. */
    void (*set_value)(void *tier, kvt_tier_value_fn fn, void *owner);
    /* What an object of bytes occupies (0: too big for the tier). */
    uint64_t (*slot_bytes)(void *tier, uint64_t bytes);
    /* Counts a read that found (hit) or did not find its chunk, for the tier's stats. */
    void (*count)(void *tier, int hit);
};

/* A tier: its table and its state. */
struct kvt_tier {
    const struct kvt_tier_ops *ops;
    void *t;
};

#endif
