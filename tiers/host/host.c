/*
 * Size-class slab allocator over a memfd arena, with per-class LRU and page reassignment.
 *
 * Metadata is one record per 4 KiB granule of the arena (slots start on granule boundaries), plus
 * one record per page and per class, all allocated at create. Free slots and used slots of a class
 * live on two doubly-linked lists threaded through the granule records: a slot is on exactly one of
 * them, so a page taken from one class can unlink its slots in O(slots per page).
 *
 * Reclaim order when a class is out of slots: a free page; else, when the tier's oldest object
 * (by a wrapping use clock) is in another class, that object's whole page moves over; else the
 * class's own LRU tail; else any page whose objects can all go. Every loop is bounded by the
 * number of slots, classes or pages.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "tiers/host/host.h"

#define NIL UINT32_MAX
#define CLASSES_MAX 96
#define EVICT_TRIES_MAX 64

enum { SLOT_NONE = 0, SLOT_FREE = 1, SLOT_USED = 2 };

struct granule {
    uint32_t prev, next; /* list links (free list or LRU of the slot's class) */
    uint32_t cookie;
    uint32_t tick; /* last use, on the tier's wrapping clock */
    uint8_t state;
    uint8_t cls;
};

struct page {
    int32_t cls; /* -1 when free */
    uint32_t used;
    uint32_t next_free; /* free-page list */
};

struct dlist {
    uint32_t head, tail; /* LRU: head is most recent */
    uint64_t n;
};

struct size_class {
    uint64_t slot_bytes;
    uint32_t slots_per_page;
    struct dlist free_slots;
    struct dlist lru;
};

struct kvt_host {
    struct kvt_host_config cfg;
    int fd;
    uint8_t *base;
    uint64_t arena_bytes;
    uint32_t n_pages;
    uint32_t granules_per_page;
    struct granule *g;
    struct page *pages;
    uint32_t free_page_head;
    uint32_t free_pages;
    uint32_t steal_cursor;
    uint32_t clock; /* advances on every alloc and touch */
    struct size_class cls[CLASSES_MAX];
    uint32_t n_cls;
    kvt_host_evict_fn evict;
    void *owner;
    struct kvt_tier_stats st;
};

static uint32_t gidx(uint64_t off)
{
    return (uint32_t)(off / KVT_HOST_GRANULE_BYTES);
}

static uint64_t goff(uint32_t gi)
{
    return (uint64_t)gi * KVT_HOST_GRANULE_BYTES;
}

static void list_unlink(struct kvt_host *h, struct dlist *l, uint32_t gi)
{
    struct granule *x = &h->g[gi];
    if (x->prev != NIL)
        h->g[x->prev].next = x->next;
    else
        l->head = x->next;
    if (x->next != NIL)
        h->g[x->next].prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = NIL;
    l->n--;
}

static void list_push_head(struct kvt_host *h, struct dlist *l, uint32_t gi)
{
    struct granule *x = &h->g[gi];
    x->prev = NIL;
    x->next = l->head;
    if (l->head != NIL)
        h->g[l->head].prev = gi;
    else
        l->tail = gi;
    l->head = gi;
    l->n++;
}

static void build_classes(struct kvt_host *h)
{
    uint64_t size = KVT_HOST_GRANULE_BYTES;
    h->n_cls = 0;
    while (h->n_cls < CLASSES_MAX) {
        if (size > h->cfg.page_bytes || h->n_cls == CLASSES_MAX - 1)
            size = h->cfg.page_bytes;
        struct size_class *c = &h->cls[h->n_cls++];
        c->slot_bytes = size;
        c->slots_per_page = (uint32_t)(h->cfg.page_bytes / size);
        c->free_slots = (struct dlist){NIL, NIL, 0};
        c->lru = (struct dlist){NIL, NIL, 0};
        if (size == h->cfg.page_bytes)
            break;
        /* Grow by about 1.25x, rounded up to the granule, so waste stays under ~20%. */
        uint64_t next = size + size / 4;
        next =
            (next + KVT_HOST_GRANULE_BYTES - 1) / KVT_HOST_GRANULE_BYTES * KVT_HOST_GRANULE_BYTES;
        size = next > size ? next : size + KVT_HOST_GRANULE_BYTES;
    }
}

static int class_of(const struct kvt_host *h, uint64_t bytes)
{
    if (bytes == 0 || bytes > h->cfg.page_bytes)
        return -1;
    /* Binary search over increasing slot sizes. */
    uint32_t lo = 0, hi = h->n_cls - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (h->cls[mid].slot_bytes >= bytes)
            hi = mid;
        else
            lo = mid + 1;
    }
    return (int)lo;
}

static int map_arena(struct kvt_host *h)
{
    int fd = -1;
    if (h->cfg.hugepages) {
        fd = memfd_create("kvtier-cpu", MFD_CLOEXEC | MFD_HUGETLB);
        if (fd >= 0 && ftruncate(fd, (off_t)h->arena_bytes) != 0) {
            close(fd);
            fd = -1;
        }
    }
    int huge = fd >= 0;
    if (fd < 0) {
        fd = memfd_create("kvtier-cpu", MFD_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (ftruncate(fd, (off_t)h->arena_bytes) != 0) {
            int rc = -errno;
            close(fd);
            return rc;
        }
    }
    int flags = MAP_SHARED | (h->cfg.prefault ? MAP_POPULATE : 0);
    void *p = mmap(NULL, h->arena_bytes, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED && huge) {
        /* Huge pages reserved but not enough of them: fall back to normal pages. */
        close(fd);
        h->cfg.hugepages = 0;
        return map_arena(h);
    }
    if (p == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    if (!huge)
        madvise(p, h->arena_bytes, MADV_HUGEPAGE);
    h->fd = fd;
    h->base = p;
    KVT_INFO("host", "cpu arena mapped bytes=%llu pages=%u page_bytes=%llu hugetlb=%d",
             (unsigned long long)h->arena_bytes, h->n_pages, (unsigned long long)h->cfg.page_bytes,
             huge);
    return 0;
}

int kvt_host_create(const struct kvt_host_config *cfg, kvt_host_evict_fn evict, void *owner,
                    struct kvt_host **out)
{
    if (!cfg || !evict || !out || cfg->page_bytes < KVT_HOST_GRANULE_BYTES ||
        cfg->page_bytes % KVT_HOST_GRANULE_BYTES || cfg->arena_bytes < cfg->page_bytes)
        return KVT_E_INVAL;
    uint64_t pages = cfg->arena_bytes / cfg->page_bytes;
    if (pages >= NIL || cfg->page_bytes / KVT_HOST_GRANULE_BYTES * pages >= NIL)
        return KVT_E_INVAL;

    struct kvt_host *h = kvt_calloc(KVT_ALLOC_TIER, 1, sizeof(*h));
    if (!h)
        return KVT_E_NOMEM;
    h->cfg = *cfg;
    h->evict = evict;
    h->owner = owner;
    h->n_pages = (uint32_t)pages;
    h->arena_bytes = pages * cfg->page_bytes;
    h->granules_per_page = (uint32_t)(cfg->page_bytes / KVT_HOST_GRANULE_BYTES);
    build_classes(h);

    int rc = KVT_E_NOMEM;
    h->g = kvt_calloc(KVT_ALLOC_TIER, (size_t)h->n_pages * h->granules_per_page,
                      sizeof(struct granule));
    if (!h->g)
        goto err_free_host;
    h->pages = kvt_calloc(KVT_ALLOC_TIER, h->n_pages, sizeof(struct page));
    if (!h->pages)
        goto err_free_granules;
    for (uint32_t i = 0; i < h->n_pages; i++) {
        h->pages[i].cls = -1;
        h->pages[i].next_free = i + 1 < h->n_pages ? i + 1 : NIL;
    }
    h->free_page_head = 0;
    h->free_pages = h->n_pages;
    rc = map_arena(h);
    if (rc)
        goto err_free_pages;
    h->st.bytes_capacity = h->arena_bytes;
    *out = h;
    return 0;

err_free_pages:
    kvt_free(KVT_ALLOC_TIER, h->pages);
err_free_granules:
    kvt_free(KVT_ALLOC_TIER, h->g);
err_free_host:
    kvt_free(KVT_ALLOC_TIER, h);
    return rc;
}

void kvt_host_destroy(struct kvt_host *h)
{
    if (!h)
        return;
    munmap(h->base, h->arena_bytes);
    close(h->fd);
    kvt_free(KVT_ALLOC_TIER, h->pages);
    kvt_free(KVT_ALLOC_TIER, h->g);
    kvt_free(KVT_ALLOC_TIER, h);
}

/* Gives a free page to class ci: all its slots go on the class's free list. */
static void page_assign(struct kvt_host *h, uint32_t pi, uint32_t ci)
{
    struct size_class *c = &h->cls[ci];
    h->pages[pi].cls = (int32_t)ci;
    h->pages[pi].used = 0;
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    for (uint32_t s = c->slots_per_page; s-- > 0;) {
        uint32_t gi = g0 + s * step;
        h->g[gi].state = SLOT_FREE;
        h->g[gi].cls = (uint8_t)ci;
        list_push_head(h, &c->free_slots, gi);
    }
}

static int take_free_page(struct kvt_host *h, uint32_t ci)
{
    if (h->free_page_head == NIL)
        return 0;
    uint32_t pi = h->free_page_head;
    h->free_page_head = h->pages[pi].next_free;
    h->free_pages--;
    page_assign(h, pi, ci);
    return 1;
}

/* Evicts a used slot after the owner agreed. */
static void slot_release(struct kvt_host *h, uint32_t gi)
{
    struct granule *x = &h->g[gi];
    struct size_class *c = &h->cls[x->cls];
    list_unlink(h, &c->lru, gi);
    x->state = SLOT_FREE;
    list_push_head(h, &c->free_slots, gi);
    h->pages[gi / h->granules_per_page].used--;
    h->st.objects--;
    h->st.bytes_used -= c->slot_bytes;
}

static int evict_from_lru(struct kvt_host *h, uint32_t ci)
{
    struct size_class *c = &h->cls[ci];
    uint32_t gi = c->lru.tail;
    for (int tries = 0; gi != NIL && tries < EVICT_TRIES_MAX; tries++) {
        uint32_t prev = h->g[gi].prev;
        if (h->evict(h->owner, h->g[gi].cookie, goff(gi)) == 0) {
            slot_release(h, gi);
            h->st.evictions++;
            return 1;
        }
        gi = prev;
    }
    return 0;
}

static int reclaim_page(struct kvt_host *h, uint32_t pi, uint32_t ci);

/* Last resort: any page of another class whose objects can all go. */
static int steal_page(struct kvt_host *h, uint32_t ci)
{
    for (uint32_t n = 0; n < h->n_pages; n++) {
        uint32_t pi = h->steal_cursor;
        h->steal_cursor = (h->steal_cursor + 1) % h->n_pages;
        if (h->pages[pi].cls >= 0 && (uint32_t)h->pages[pi].cls != ci && reclaim_page(h, pi, ci))
            return 1;
    }
    return 0;
}

/* Ticks are compared by wrapping difference: "a is older than b". */
static int older(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) < 0;
}

/* The class whose least recently used slot is the oldest in the tier, or -1. */
static int oldest_class(const struct kvt_host *h)
{
    int best = -1;
    for (uint32_t i = 0; i < h->n_cls; i++) {
        uint32_t tail = h->cls[i].lru.tail;
        if (tail != NIL && (best < 0 || older(h->g[tail].tick, h->g[h->cls[best].lru.tail].tick)))
            best = (int)i;
    }
    return best;
}

/* Empties page pi (every used slot must be evictable) and gives it to class ci. */
static int reclaim_page(struct kvt_host *h, uint32_t pi, uint32_t ci)
{
    struct page *p = &h->pages[pi];
    struct size_class *c = &h->cls[p->cls];
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    /* Evict what the owner lets go; if anything stays pinned, the page cannot move. */
    for (uint32_t s = 0; s < c->slots_per_page; s++) {
        uint32_t gi = g0 + s * step;
        if (h->g[gi].state == SLOT_USED && h->evict(h->owner, h->g[gi].cookie, goff(gi)) == 0) {
            slot_release(h, gi);
            h->st.evictions++;
        }
    }
    if (p->used)
        return 0;
    for (uint32_t s = 0; s < c->slots_per_page; s++) {
        uint32_t gi = g0 + s * step;
        list_unlink(h, &c->free_slots, gi);
        h->g[gi].state = SLOT_NONE;
    }
    page_assign(h, pi, ci);
    return 1;
}

/* Makes room in class ci when it has no free slot and no free page is left. Approximates one LRU
 * across all classes: when the oldest object of the tier belongs to another class, its whole page
 * moves to ci (as memcached's slab rebalancing does), so a size that stops being used does not
 * hold its memory forever. */
static int make_room(struct kvt_host *h, uint32_t ci)
{
    int oc = oldest_class(h);
    if (oc >= 0 && (uint32_t)oc != ci &&
        reclaim_page(h, h->cls[oc].lru.tail / h->granules_per_page, ci))
        return 1;
    return evict_from_lru(h, ci) || steal_page(h, ci);
}

int kvt_host_alloc(struct kvt_host *h, uint64_t bytes, uint32_t cookie, uint64_t *off_out)
{
    int ci = class_of(h, bytes);
    if (ci < 0)
        return bytes ? KVT_E_TOOBIG : KVT_E_INVAL;
    struct size_class *c = &h->cls[ci];
    if (c->free_slots.n == 0 && !take_free_page(h, (uint32_t)ci) && !make_room(h, (uint32_t)ci))
        return KVT_E_FULL;
    uint32_t gi = c->free_slots.head;
    list_unlink(h, &c->free_slots, gi);
    struct granule *x = &h->g[gi];
    x->state = SLOT_USED;
    x->cookie = cookie;
    x->tick = ++h->clock;
    list_push_head(h, &c->lru, gi);
    h->pages[gi / h->granules_per_page].used++;
    h->st.objects++;
    h->st.bytes_used += c->slot_bytes;
    *off_out = goff(gi);
    return 0;
}

void kvt_host_free(struct kvt_host *h, uint64_t off)
{
    uint32_t gi = gidx(off);
    if (off % KVT_HOST_GRANULE_BYTES || off >= h->arena_bytes || h->g[gi].state != SLOT_USED) {
        KVT_ERR("host", "free of a slot that is not in use off=%llu", (unsigned long long)off);
        return;
    }
    slot_release(h, gi);
}

void kvt_host_touch(struct kvt_host *h, uint64_t off)
{
    uint32_t gi = gidx(off);
    if (off >= h->arena_bytes || h->g[gi].state != SLOT_USED)
        return;
    struct dlist *l = &h->cls[h->g[gi].cls].lru;
    h->g[gi].tick = ++h->clock;
    if (l->head == gi)
        return;
    list_unlink(h, l, gi);
    list_push_head(h, l, gi);
}

uint64_t kvt_host_free_bytes(const struct kvt_host *h)
{
    uint64_t b = (uint64_t)h->free_pages * h->cfg.page_bytes;
    for (uint32_t i = 0; i < h->n_cls; i++)
        b += h->cls[i].free_slots.n * h->cls[i].slot_bytes;
    return b;
}

size_t kvt_host_coldest(const struct kvt_host *h, uint32_t *cookies, size_t max)
{
    /* A k-way merge of the class LRU lists by last-use tick. */
    uint32_t cur[CLASSES_MAX];
    for (uint32_t i = 0; i < h->n_cls; i++)
        cur[i] = h->cls[i].lru.tail;
    size_t n = 0;
    while (n < max) {
        int best = -1;
        for (uint32_t i = 0; i < h->n_cls; i++)
            if (cur[i] != NIL && (best < 0 || older(h->g[cur[i]].tick, h->g[cur[best]].tick)))
                best = (int)i;
        if (best < 0)
            break;
        cookies[n++] = h->g[cur[best]].cookie;
        cur[best] = h->g[cur[best]].prev;
    }
    return n;
}

void *kvt_host_ptr(const struct kvt_host *h, uint64_t off)
{
    return h->base + off;
}

int kvt_host_fd(const struct kvt_host *h)
{
    return h->fd;
}

uint64_t kvt_host_arena_bytes(const struct kvt_host *h)
{
    return h->arena_bytes;
}

uint64_t kvt_host_page_bytes(const struct kvt_host *h)
{
    return h->cfg.page_bytes;
}

uint64_t kvt_host_slot_bytes(const struct kvt_host *h, uint64_t bytes)
{
    int ci = class_of(h, bytes);
    return ci < 0 ? 0 : h->cls[ci].slot_bytes;
}

void kvt_host_count(struct kvt_host *h, int hit)
{
    if (hit)
        h->st.hits++;
    else
        h->st.misses++;
}

static void host_stats(void *tier, struct kvt_tier_stats *out)
{
    *out = ((struct kvt_host *)tier)->st;
}

static int host_event_fd(void *tier)
{
    (void)tier;
    return -1;
}

static int host_poll(void *tier)
{
    (void)tier;
    return 0;
}

const struct kvt_tier_ops kvt_host_tier_ops = {
    .name = "cpu",
    .id = KVT_TIER_CPU,
    .stats = host_stats,
    .event_fd = host_event_fd,
    .poll = host_poll,
};
