/*
 * CPU tier: one shared-memory arena (memfd, huge pages when available) carved by a size-class
 * slab allocator. The arena is split into equal pages; a page serves one size class at a time and
 * is cut into equal slots. Slot sizes are multiples of 4 KiB so every slot is aligned for O_DIRECT
 * and GPU registration. The allocator keeps an LRU per class and evicts on its own when a class has
 * no free slot and no free page is left, by asking the owner (through the evict callback) whether
 * an object may go; an object that is being read or written is refused and skipped, so a reader is
 * never left with freed bytes. No heap allocation happens after create.
 *
 * Eviction keeps the arena useful when sizes mix: a class that is out of slots evicts its own least
 * recently used object; whole pages move between classes only when that costs nothing (a page with
 * nothing live), when a size has no page to be stored in, or when age balancing finds a class
 * whose oldest object is much older than the requester's (it holds more than its share), and such
 * moves are rate-limited. A size with no page of its own borrows slots of a slightly larger class.
 * host.c's opening comment has the full order.
 *
 * Single-threaded: the daemon's event loop calls every function here; workers only copy bytes into
 * and out of slots the loop handed them.
 */
#ifndef KVT_TIERS_HOST_H
#define KVT_TIERS_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "tiers/tier.h"

#define KVT_HOST_GRANULE_BYTES 4096u

struct kvt_host;

struct kvt_host_config {
    uint64_t arena_bytes; /* rounded down to a multiple of page_bytes */
    uint64_t page_bytes;  /* largest object; multiple of 4 KiB */
    int hugepages;        /* try MFD_HUGETLB first */
    int prefault;         /* touch every page at create (MAP_POPULATE) */
};

/* Asked before a slot is reclaimed. Return 0 to let it go (the owner forgets the slot; the tier
 * frees it after the call) or nonzero to keep it (pinned, being read or written). The callback
 * must not call back into this tier. */
typedef int (*kvt_host_evict_fn)(void *owner, uint32_t cookie, uint64_t off);

int kvt_host_create(const struct kvt_host_config *cfg, kvt_host_evict_fn evict, void *owner,
                    struct kvt_host **out);
void kvt_host_destroy(struct kvt_host *h);

/* Reserves a slot for bytes (1 .. page_bytes), evicting least recently used objects when needed.
 * The slot is at arena offset *off_out and carries cookie (the owner's handle) for the evict
 * callback. It is at least kvt_host_slot_bytes(bytes) long (a size without a page of its own may
 * get a larger slot). KVT_E_TOOBIG when bytes exceeds page_bytes; KVT_E_FULL when nothing can be
 * evicted (or a page move that would be needed is rate-limited). */
int kvt_host_alloc(struct kvt_host *h, uint64_t bytes, uint32_t cookie, uint64_t *off_out);
/* Per-owner accounting (the daemon's owners are namespace slots, for per-tenant quotas): the
 * tier adds each owned slot's bytes to owner_bytes[owner - 1] (borrowed, n_owners entries, until
 * destroy) and takes them off when the slot is freed or evicted. */
void kvt_host_set_owners(struct kvt_host *h, uint64_t *owner_bytes, uint32_t n_owners);
/* Records the owner (1..n_owners; 0 = none) of the used slot at off. */
void kvt_host_set_owner(struct kvt_host *h, uint64_t off, uint16_t owner);
/* Returns a slot to its class. off must come from kvt_host_alloc. */
void kvt_host_free(struct kvt_host *h, uint64_t off);
/* Marks a slot most recently used. */
void kvt_host_touch(struct kvt_host *h, uint64_t off);

/* Bytes that can be allocated without evicting: free pages plus free slots of every class. Slots
 * of one class are no room for another, so this is not a measure of pressure: see below. */
uint64_t kvt_host_free_bytes(const struct kvt_host *h);

/* Whether memory is short for the sizes being asked for, so that dirty objects should be made
 * clean (written back) before eviction needs them: nonzero when some class that served (or failed)
 * an allocation during the last turnover of the tier's objects has room for less than free_frac
 * of what it could hold (its free slots plus free pages, over its pages plus free pages), or when
 * an allocation in that time found only objects the owner refused to let go. O(classes). */
int kvt_host_pressure(const struct kvt_host *h, double free_frac);

/* Pages moved from one size class to another since create (for tests and stats). */
uint64_t kvt_host_page_moves(const struct kvt_host *h);
/* Pages held by the size class objects of bytes belong to (0 when too big). */
uint32_t kvt_host_class_pages(const struct kvt_host *h, uint64_t bytes);

/* Writes the cookies of up to max least recently used objects, coldest first across every size
 * class, and returns how many. */
size_t kvt_host_coldest(const struct kvt_host *h, uint32_t *cookies, size_t max);
/* The same, keeping only objects pick(arg, cookie) accepts, looking at no more than scan_max
 * objects in all (so a long run of objects the caller has no use for, such as clean chunks for a
 * write-back, does not hide the ones it wants). pick must not call into this tier. */
typedef int (*kvt_host_pick_fn)(void *arg, uint32_t cookie);
size_t kvt_host_coldest_where(const struct kvt_host *h, kvt_host_pick_fn pick, void *arg,
                              uint32_t *cookies, size_t max, size_t scan_max);

/* Address of an arena offset; valid until destroy. */
void *kvt_host_ptr(const struct kvt_host *h, uint64_t off);
/* The arena's memfd (owned by the tier), e.g. for io_uring or CUDA registration. */
int kvt_host_fd(const struct kvt_host *h);
uint64_t kvt_host_arena_bytes(const struct kvt_host *h);
uint64_t kvt_host_page_bytes(const struct kvt_host *h);
/* Slot size that bytes would occupy (0 when too big). */
uint64_t kvt_host_slot_bytes(const struct kvt_host *h, uint64_t bytes);

/* Counts a lookup result for stats. */
void kvt_host_count(struct kvt_host *h, int hit);
/* Payload bytes of the used slot at off (as allocated), or 0 when off is not a used slot. */
uint64_t kvt_host_len(const struct kvt_host *h, uint64_t off);
/* Replaces the eviction callback given at create (NULL: nothing is evicted; allocations that
 * would need it fail with KVT_E_FULL). */
void kvt_host_set_evict(struct kvt_host *h, kvt_host_evict_fn evict, void *owner);
/* Cost-aware eviction: a class that must evict asks value(owner, cookie) of its
 * KVT_HOST_EVICT_SAMPLE least recently used objects and tries them lowest value first (ties: the
 * older first), then goes on in LRU order. NULL (the default): plain LRU. */
typedef double (*kvt_host_value_fn)(void *owner, uint32_t cookie);
#define KVT_HOST_EVICT_SAMPLE 8
void kvt_host_set_value(struct kvt_host *h, kvt_host_value_fn value, void *owner);

/* The operations table (tiers/tier.h) on a struct kvt_host: a memory tier. An object's location
 * is its arena offset; objects carry no id (read, remove take the location). */
extern const struct kvt_tier_ops kvt_host_tier_ops;

#endif
