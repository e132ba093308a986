/*
 * Size-class slab allocator over a memfd arena, with per-class LRU and page moves between classes.
 *
 * Metadata is one record per 4 KiB granule of the arena (slots start on granule boundaries), plus
 * one record per page and per class, all allocated at create. Free slots and used slots of a class
 * live on two doubly-linked lists threaded through the granule records: a slot is on exactly one of
 * them, so a page taken from one class can unlink its slots in O(slots per page).
 *
 * When a class is out of slots, make_room decides, in this order:
 * 1. a page some class holds with nothing live on it moves over (it costs nothing);
 * 2. a class with no page uses free slots of the next larger class that has pages, if they are at
 *    most FALLBACK_RATIO times its size (no page is torn down for a size that is rarely asked
 *    for); it takes one of that class's pages when it has several (rate-limited, below), else
 *    evicts from its LRU. When no such class exists, a page must move to it, whatever it holds;
 * 3. age balancing, as memcached's slab automover does: when another class's least recently used
 *    object is more than AGE_RATIO times older than the requesting class's, that class holds more
 *    memory than its share of traffic, and one of its pages (the one with the fewest live bytes,
 *    then the coldest) moves over. A class gives up its last page only when it is idle (its newest
 *    object is older than the requester's oldest) or a larger class can serve its size. Moves other
 *    than those of 1 and 2 are rate-limited: after a page goes to a class, the next one waits for
 *    as many allocations as that page has slots, the time it takes to fill it;
 * 4. otherwise the class evicts its own least recently used object, so a miss never costs other
 *    classes their objects;
 * 5. if the owner refused every candidate (pinned or dirty), a page of another class may move,
 * still rate-limited; a page move stops at the first object the owner refuses, so a failed move
 * costs at most the objects evicted from one page before it. Every loop is bounded by the number of
 * slots, classes or pages.
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
/* A class whose oldest object is this many times older than the requester's gives up a page. */
#define AGE_RATIO 2
/* Victim pages tried by one allocation when a page must move. */
#define MOVE_TRIES_MAX 2
/* A class with no page borrows slots of a larger class at most this many times its slot size. */
#define FALLBACK_RATIO 8
/* A class with no page gets one when its share of demand is worth this many pages. */
#define DESERVE_PAGES 0.5
/* Demand counters halve every this many allocations (a power of two), so they follow the mix. */
#define DEMAND_DECAY_ALLOCS 4096u

enum { SLOT_NONE = 0, SLOT_FREE = 1, SLOT_USED = 2 };

struct granule {
    uint32_t prev, next; /* list links (free list or LRU of the slot's class) */
    uint32_t cookie;
    uint32_t tick;  /* last use, on the tier's wrapping clock */
    uint32_t slack; /* slot bytes a used slot's payload leaves unused (< slot_bytes <= 4 GiB) */
    uint8_t state;
    uint8_t cls;
    uint16_t owner; /* kvt_host_set_owner; 0 = none */
};

struct page {
    int32_t cls; /* -1 when free */
    uint32_t used;
    uint32_t next_free; /* free-page list */
    uint32_t tick;      /* last allocation or touch of one of its slots */
};

struct dlist {
    uint32_t head, tail; /* LRU: head is most recent */
    uint64_t n;
};

struct size_class {
    uint64_t slot_bytes;
    uint32_t slots_per_page;
    uint32_t pages;        /* pages this class holds */
    uint32_t want_tick;    /* last allocation served from (or refused by) this class */
    uint64_t demand_bytes; /* slot bytes asked for recently (decaying) */
    uint8_t wanted;        /* want_tick is set */
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
    uint32_t empty_pages;  /* pages held by a class with no used slot */
    uint32_t clock;        /* advances on every alloc and touch */
    uint32_t move_tick;    /* rate-limited page moves wait until the clock reaches this */
    uint32_t refused_tick; /* last allocation that found only objects the owner refused */
    uint8_t refused;       /* refused_tick is set */
    struct size_class cls[CLASSES_MAX];
    uint32_t n_cls;
    kvt_host_evict_fn evict;
    kvt_host_value_fn value; /* cost-aware eviction (NULL: LRU) */
    void *value_owner;
    uint64_t *owner_bytes; /* borrowed (kvt_host_set_owners): slot bytes per owner */
    uint32_t n_owners;
    void *owner;
    uint64_t demand_bytes; /* sum over classes */
    struct kvt_tier_stats st;
    uint64_t page_moves;
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
    if (!cfg || !out || cfg->page_bytes < KVT_HOST_GRANULE_BYTES ||
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

/* Ticks are compared by wrapping difference: "a is older than b". */
static int older(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) < 0;
}

static uint32_t age(const struct kvt_host *h, uint32_t tick)
{
    return h->clock - tick;
}

static uint32_t page_of(const struct kvt_host *h, uint32_t gi)
{
    return gi / h->granules_per_page;
}

/* Gives a free page to class ci: all its slots go on the class's free list. */
static void page_assign(struct kvt_host *h, uint32_t pi, uint32_t ci)
{
    struct size_class *c = &h->cls[ci];
    h->pages[pi].cls = (int32_t)ci;
    h->pages[pi].used = 0;
    h->pages[pi].tick = h->clock;
    h->empty_pages++;
    c->pages++;
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    for (uint32_t s = c->slots_per_page; s-- > 0;) {
        uint32_t gi = g0 + s * step;
        h->g[gi].state = SLOT_FREE;
        h->g[gi].cls = (uint8_t)ci;
        list_push_head(h, &c->free_slots, gi);
    }
}

/* Takes an empty page away from its class (all its slots are free). */
static void page_detach(struct kvt_host *h, uint32_t pi)
{
    struct page *p = &h->pages[pi];
    struct size_class *c = &h->cls[p->cls];
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    for (uint32_t s = 0; s < c->slots_per_page; s++) {
        uint32_t gi = g0 + s * step;
        list_unlink(h, &c->free_slots, gi);
        h->g[gi].state = SLOT_NONE;
    }
    c->pages--;
    h->empty_pages--;
    p->cls = -1;
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

/* Evicts a used slot after the owner agreed, or frees it for the owner. */
static void slot_release(struct kvt_host *h, uint32_t gi)
{
    struct granule *x = &h->g[gi];
    struct size_class *c = &h->cls[x->cls];
    struct page *p = &h->pages[page_of(h, gi)];
    list_unlink(h, &c->lru, gi);
    x->state = SLOT_FREE;
    list_push_head(h, &c->free_slots, gi);
    if (--p->used == 0)
        h->empty_pages++;
    h->st.objects--;
    h->st.bytes_used -= c->slot_bytes;
    h->st.bytes_payload -= c->slot_bytes - x->slack;
    if (x->owner)
        h->owner_bytes[x->owner - 1] -= c->slot_bytes;
    x->owner = 0;
}

/* Asks the owner to let slot gi go; 1 when it went. A refusal is remembered for the pressure
 * signal: memory is short of objects that can go. */
static int slot_evict(struct kvt_host *h, uint32_t gi)
{
    if (!h->evict || h->evict(h->owner, h->g[gi].cookie, goff(gi)) != 0) {
        h->refused_tick = h->clock;
        h->refused = 1;
        return 0;
    }
    slot_release(h, gi);
    h->st.evictions++;
    return 1;
}

/* Cost-aware: the least valued of the class's KVT_HOST_EVICT_SAMPLE least recently used objects
 * is tried first (ties: the older), then the others of the sample by value. 1 when one went. */
static int evict_by_value(struct kvt_host *h, struct size_class *c)
{
    uint32_t gi[KVT_HOST_EVICT_SAMPLE];
    double v[KVT_HOST_EVICT_SAMPLE];
    uint32_t n = 0;
    for (uint32_t g = c->lru.tail; g != NIL && n < KVT_HOST_EVICT_SAMPLE; g = h->g[g].prev) {
        double x = h->value(h->value_owner, h->g[g].cookie);
        uint32_t at = n++;
        while (at > 0 && v[at - 1] > x) { /* insertion sort; equal values keep LRU order */
            gi[at] = gi[at - 1];
            v[at] = v[at - 1];
            at--;
        }
        gi[at] = g;
        v[at] = x;
    }
    for (uint32_t i = 0; i < n; i++)
        if (slot_evict(h, gi[i]))
            return 1;
    return 0;
}

static int evict_from_lru(struct kvt_host *h, uint32_t ci)
{
    struct size_class *c = &h->cls[ci];
    if (h->value && evict_by_value(h, c))
        return 1;
    uint32_t gi = c->lru.tail;
    for (int tries = 0; gi != NIL && tries < EVICT_TRIES_MAX; tries++) {
        uint32_t prev = h->g[gi].prev;
        if (slot_evict(h, gi))
            return 1;
        gi = prev;
    }
    return 0;
}

/* Empties page pi and gives it to class ci. Stops at the first object the owner refuses (the page
 * then stays with its class, and what was evicted from it are free slots there), so a page that
 * cannot move costs at most its own evictions. */
static int page_move(struct kvt_host *h, uint32_t pi, uint32_t ci)
{
    struct page *p = &h->pages[pi];
    struct size_class *c = &h->cls[p->cls];
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    for (uint32_t s = 0; s < c->slots_per_page && p->used; s++) {
        uint32_t gi = g0 + s * step;
        if (h->g[gi].state == SLOT_USED && !slot_evict(h, gi))
            return 0;
    }
    page_detach(h, pi);
    page_assign(h, pi, ci);
    h->page_moves++;
    return 1;
}

/* Moves a page with nothing live on it to class ci; 0 when there is none. */
static int move_empty_page(struct kvt_host *h, uint32_t ci)
{
    if (h->empty_pages == 0)
        return 0;
    for (uint32_t pi = 0; pi < h->n_pages; pi++)
        if (h->pages[pi].cls >= 0 && (uint32_t)h->pages[pi].cls != ci && h->pages[pi].used == 0)
            return page_move(h, pi, ci);
    return 0;
}

/* The class that stores objects of class ci while ci has no page: the smallest larger class that
 * holds pages, if its slots are at most FALLBACK_RATIO times ci's (the rounding stays bounded);
 * else -1. */
static int fallback_class(const struct kvt_host *h, uint32_t ci)
{
    for (uint32_t i = ci + 1;
         i < h->n_cls && h->cls[i].slot_bytes <= FALLBACK_RATIO * h->cls[ci].slot_bytes; i++)
        if (h->cls[i].pages)
            return (int)i;
    return -1;
}

/* Whether a victim page is a better choice than the best so far: a class's last page only when
 * nothing else will do, then the least recently used (its objects are the likeliest to be cold,
 * and written back already), then the fewest live bytes. */
/* Cost-aware: what the live objects of page pi are worth together (value per byte x bytes). */
static double page_worth(const struct kvt_host *h, uint32_t pi)
{
    const struct page *p = &h->pages[pi];
    const struct size_class *c = &h->cls[p->cls];
    uint32_t g0 = pi * h->granules_per_page;
    uint32_t step = (uint32_t)(c->slot_bytes / KVT_HOST_GRANULE_BYTES);
    double w = 0;
    for (uint32_t s = 0; s < c->slots_per_page; s++) {
        uint32_t gi = g0 + s * step;
        if (h->g[gi].state == SLOT_USED)
            w += h->value(h->value_owner, h->g[gi].cookie) * (double)c->slot_bytes;
    }
    return w;
}

static int better_victim(const struct kvt_host *h, uint32_t pi, uint32_t best)
{
    const struct page *a = &h->pages[pi], *b = &h->pages[best];
    int a_last = h->cls[a->cls].pages == 1, b_last = h->cls[b->cls].pages == 1;
    if (a_last != b_last)
        return b_last;
    if (h->value) {
        double wa = page_worth(h, pi), wb = page_worth(h, best);
        if (wa != wb)
            return wa < wb;
    }
    if (a->tick != b->tick)
        return older(a->tick, b->tick);
    return a->used * h->cls[a->cls].slot_bytes < b->used * h->cls[b->cls].slot_bytes;
}

/* The best page to move to class ci: of class only (or of any class but ci when only < 0) and
 * not in skip; NIL when there is none. */
static uint32_t pick_victim(const struct kvt_host *h, uint32_t ci, int only, uint32_t skip)
{
    uint32_t best = NIL;
    for (uint32_t pi = 0; pi < h->n_pages; pi++) {
        int32_t pc = h->pages[pi].cls;
        if (pc < 0 || (uint32_t)pc == ci || pi == skip || (only >= 0 && pc != only))
            continue;
        if (best == NIL || better_victim(h, pi, best))
            best = pi;
    }
    return best;
}

/* Moves a page from class only (or from any class when only < 0) to ci, trying at most
 * MOVE_TRIES_MAX victims. Either way the next rate-limited move waits as many allocations as a
 * page of ci has slots: after a move, the time ci needs to fill the page; after a refusal, the
 * time write-back needs to make the objects clean. The wait matters when the owner retries at
 * once, forcing evictions: the retry then evicts one object, not a page of them. */
static int move_page(struct kvt_host *h, uint32_t ci, int only)
{
    uint32_t tried = NIL;
    int moved = 0;
    for (int t = 0; t < MOVE_TRIES_MAX && !moved; t++) {
        uint32_t pi = pick_victim(h, ci, only, tried);
        if (pi == NIL)
            return 0;
        moved = page_move(h, pi, ci);
        tried = pi;
    }
    h->move_tick = h->clock + h->cls[ci].slots_per_page;
    return moved;
}

static int may_move(const struct kvt_host *h)
{
    return !older(h->clock, h->move_tick);
}

/* The class that holds more memory than its share of traffic compared with class e (which serves
 * requests of class ci): its least recently used object is more than AGE_RATIO times older than
 * e's. -1 when there is none. A class gives up its last page only when it is idle or a larger
 * class can take its objects. */
static int overprovisioned(const struct kvt_host *h, uint32_t ci, uint32_t e)
{
    uint32_t etail = h->cls[e].lru.tail;
    if (etail == NIL)
        return -1;
    uint64_t e_age = age(h, h->g[etail].tick);
    int best = -1;
    uint32_t best_age = 0;
    for (uint32_t v = 0; v < h->n_cls; v++) {
        const struct size_class *c = &h->cls[v];
        if (v == ci || v == e || c->lru.tail == NIL)
            continue;
        uint32_t v_age = age(h, h->g[c->lru.tail].tick);
        int can_give = c->pages >= 2 || older(h->g[c->lru.head].tick, h->g[etail].tick) ||
                       fallback_class(h, v) >= 0;
        if (can_give && (best < 0 || v_age > best_age)) {
            best = (int)v;
            best_age = v_age;
        }
    }
    return best >= 0 && (uint64_t)best_age > AGE_RATIO * e_age ? best : -1;
}

/* Called when the owner refused every object class e could evict (they wait for write-back, which
 * goes coldest first across the tier): objects of other classes colder than e's coldest go, as
 * far as the owner lets them, as one LRU over the tier would have it. Otherwise clean cold objects
 * of classes that have room would hold the front of the write-back forever, and e's objects
 * would never become clean. Looks at most EVICT_TRIES_MAX objects. */
static void evict_colder_elsewhere(struct kvt_host *h, uint32_t e)
{
    uint32_t etail = h->cls[e].lru.tail;
    uint32_t cur[CLASSES_MAX];
    for (uint32_t i = 0; i < h->n_cls; i++)
        cur[i] = i == e ? NIL : h->cls[i].lru.tail;
    for (int tries = 0; tries < EVICT_TRIES_MAX && etail != NIL; tries++) {
        int best = -1;
        for (uint32_t i = 0; i < h->n_cls; i++)
            if (cur[i] != NIL && (best < 0 || older(h->g[cur[i]].tick, h->g[cur[best]].tick)))
                best = (int)i;
        if (best < 0 || !older(h->g[cur[best]].tick, h->g[etail].tick))
            return;
        uint32_t gi = cur[best];
        cur[best] = h->g[gi].prev;
        slot_evict(h, gi);
    }
}

/* Whether class ci asks for enough to fill a page of its own: its share of the bytes recently
 * asked for is worth at least DESERVE_PAGES of the arena's pages. A smaller share, on a page of
 * its own, would leave most of the page empty for a long time. */
static int deserves_page(const struct kvt_host *h, uint32_t ci)
{
    return (double)h->cls[ci].demand_bytes * h->n_pages >= DESERVE_PAGES * (double)h->demand_bytes;
}

/* Makes room for an object of class ci, which has no free slot, when no free page is left.
 * Returns the class to allocate from (ci, or a larger one) or -1. */
static int make_room(struct kvt_host *h, uint32_t ci)
{
    if (move_empty_page(h, ci))
        return (int)ci;
    /* e serves the request: ci, or the class that lends ci its slots. dest receives pages. */
    int e = (int)ci, dest = (int)ci;
    if (h->cls[ci].pages == 0) {
        e = fallback_class(h, ci);
        /* No class can store this size: without a page of its own it could never be stored. */
        if (e < 0)
            return move_page(h, ci, -1) ? (int)ci : -1;
        if (h->cls[e].free_slots.n)
            return e;
        if (deserves_page(h, ci) && may_move(h)) {
            /* A size in demand gets a page of its own: from a class that holds more than its
             * share, else from the class that lends it slots while it has more than one. */
            int v = overprovisioned(h, ci, (uint32_t)e);
            if (v < 0 && h->cls[e].pages >= 2)
                v = e;
            if (v >= 0 && move_page(h, ci, v))
                return (int)ci;
        }
        dest = e;
    }
    if (may_move(h)) {
        int v = overprovisioned(h, ci, (uint32_t)e);
        if (v >= 0 && move_page(h, (uint32_t)dest, v))
            return dest;
    }
    if (evict_from_lru(h, (uint32_t)e))
        return e;
    evict_colder_elsewhere(h, (uint32_t)e);
    /* Everything the class could evict is pinned or dirty: another class may give a page. */
    if (may_move(h) && move_page(h, (uint32_t)dest, -1))
        return dest;
    return -1;
}

int kvt_host_alloc(struct kvt_host *h, uint64_t bytes, uint32_t cookie, uint64_t *off_out)
{
    int ci = class_of(h, bytes);
    if (ci < 0)
        return bytes ? KVT_E_TOOBIG : KVT_E_INVAL;
    if ((++h->clock & (DEMAND_DECAY_ALLOCS - 1)) == 0) {
        h->demand_bytes = 0;
        for (uint32_t i = 0; i < h->n_cls; i++)
            h->demand_bytes += h->cls[i].demand_bytes /= 2;
    }
    h->cls[ci].demand_bytes += h->cls[ci].slot_bytes;
    h->demand_bytes += h->cls[ci].slot_bytes;
    int sc = ci;
    if (h->cls[ci].free_slots.n == 0 && !take_free_page(h, (uint32_t)ci))
        sc = make_room(h, (uint32_t)ci);
    struct size_class *c = &h->cls[sc < 0 ? ci : sc];
    c->want_tick = h->clock;
    c->wanted = 1;
    if (sc < 0)
        return KVT_E_FULL;
    uint32_t gi = c->free_slots.head;
    list_unlink(h, &c->free_slots, gi);
    struct granule *x = &h->g[gi];
    struct page *p = &h->pages[page_of(h, gi)];
    x->state = SLOT_USED;
    x->cookie = cookie;
    x->tick = h->clock;
    x->slack = (uint32_t)(c->slot_bytes - bytes);
    x->owner = 0;
    list_push_head(h, &c->lru, gi);
    if (p->used++ == 0)
        h->empty_pages--;
    p->tick = h->clock;
    h->st.objects++;
    h->st.bytes_used += c->slot_bytes;
    h->st.bytes_payload += bytes;
    *off_out = goff(gi);
    return 0;
}

void kvt_host_set_owners(struct kvt_host *h, uint64_t *owner_bytes, uint32_t n_owners)
{
    h->owner_bytes = owner_bytes;
    h->n_owners = owner_bytes ? n_owners : 0;
}

void kvt_host_set_owner(struct kvt_host *h, uint64_t off, uint16_t owner)
{
    struct granule *x = &h->g[gidx(off)];
    if (!h->owner_bytes || x->state != SLOT_USED || owner > h->n_owners)
        return;
    uint64_t slot = h->cls[x->cls].slot_bytes;
    if (x->owner)
        h->owner_bytes[x->owner - 1] -= slot;
    x->owner = owner;
    if (owner)
        h->owner_bytes[owner - 1] += slot;
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
    h->pages[page_of(h, gi)].tick = h->clock;
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

int kvt_host_pressure(const struct kvt_host *h, double free_frac)
{
    /* Demand is what allocations asked for during one turnover of the tier's objects. */
    uint32_t window = h->st.objects > EVICT_TRIES_MAX ? (uint32_t)h->st.objects : EVICT_TRIES_MAX;
    if (h->refused && age(h, h->refused_tick) < window)
        return 1;
    uint64_t spare = (uint64_t)h->free_pages * h->cfg.page_bytes;
    for (uint32_t i = 0; i < h->n_cls; i++) {
        const struct size_class *c = &h->cls[i];
        if (!c->wanted || age(h, c->want_tick) >= window)
            continue;
        double room = (double)(spare + c->free_slots.n * c->slot_bytes);
        double held = (double)((uint64_t)c->pages * h->cfg.page_bytes + spare);
        if (room <= free_frac * held)
            return 1;
    }
    return 0;
}

uint64_t kvt_host_page_moves(const struct kvt_host *h)
{
    return h->page_moves;
}

uint32_t kvt_host_class_pages(const struct kvt_host *h, uint64_t bytes)
{
    int ci = class_of(h, bytes);
    return ci < 0 ? 0 : h->cls[ci].pages;
}

size_t kvt_host_coldest_where(const struct kvt_host *h, kvt_host_pick_fn pick, void *arg,
                              uint32_t *cookies, size_t max, size_t scan_max)
{
    /* A k-way merge of the class LRU lists by last-use tick. */
    uint32_t cur[CLASSES_MAX];
    for (uint32_t i = 0; i < h->n_cls; i++)
        cur[i] = h->cls[i].lru.tail;
    size_t n = 0;
    for (size_t seen = 0; n < max && seen < scan_max; seen++) {
        int best = -1;
        for (uint32_t i = 0; i < h->n_cls; i++)
            if (cur[i] != NIL && (best < 0 || older(h->g[cur[i]].tick, h->g[cur[best]].tick)))
                best = (int)i;
        if (best < 0)
            break;
        uint32_t cookie = h->g[cur[best]].cookie;
        if (!pick || pick(arg, cookie))
            cookies[n++] = cookie;
        cur[best] = h->g[cur[best]].prev;
    }
    return n;
}

size_t kvt_host_coldest(const struct kvt_host *h, uint32_t *cookies, size_t max)
{
    return kvt_host_coldest_where(h, NULL, NULL, cookies, max, max);
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

uint64_t kvt_host_len(const struct kvt_host *h, uint64_t off)
{
    uint32_t gi = gidx(off);
    if (off % KVT_HOST_GRANULE_BYTES || off >= h->arena_bytes || h->g[gi].state != SLOT_USED)
        return 0;
    return h->cls[h->g[gi].cls].slot_bytes - h->g[gi].slack;
}

void kvt_host_set_value(struct kvt_host *h, kvt_host_value_fn value, void *owner)
{
    h->value = value;
    h->value_owner = owner;
}

void kvt_host_set_evict(struct kvt_host *h, kvt_host_evict_fn evict, void *owner)
{
    h->evict = evict;
    h->owner = owner;
}

/* ---- the tier operations table -------------------------------------------------------------- */

/* A reservation: the slot's address, for fill on any thread. */
struct host_write {
    struct kvt_host *h;
    uint8_t *dst;
};
_Static_assert(sizeof(struct host_write) <= KVT_TIER_WRITE_PRIV_BYTES, "host write state");

static int host_reserve(void *tier, const struct kvt_tier_obj *o, struct kvt_tier_write *w)
{
    struct kvt_host *h = tier;
    uint64_t off;
    int rc = kvt_host_alloc(h, o->length, o->cookie, &off);
    if (rc)
        return rc;
    kvt_host_set_owner(h, off, o->owner);
    w->loc = off;
    w->length = o->length;
    struct host_write *hw = (struct host_write *)w->priv.bytes;
    hw->h = h;
    hw->dst = h->base + off;
    return 0;
}

static int host_fill(struct kvt_tier_write *w, const void *src)
{
    struct host_write *hw = (struct host_write *)w->priv.bytes;
    memcpy(hw->dst, src, w->length);
    return 0;
}

static int host_commit(void *tier, struct kvt_tier_write *w, kvt_tier_done_fn done, void *arg)
{
    (void)tier, (void)w, (void)done, (void)arg;
    return 0; /* the slot is readable as soon as it is filled */
}

static void host_cancel(void *tier, struct kvt_tier_write *w)
{
    kvt_host_free(tier, w->loc);
}

static int host_read(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc, void *dst,
                     size_t cap, kvt_tier_done_fn done, void *arg)
{
    struct kvt_host *h = tier;
    (void)id, (void)done, (void)arg;
    uint64_t len = kvt_host_len(h, loc);
    if (!len)
        return KVT_E_NOTFOUND;
    if (len > cap)
        return KVT_E_SMALLBUF;
    memcpy(dst, h->base + loc, len);
    return 0;
}

static int host_read_range(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc,
                           const struct kvt_tier_range *r, void *dst, size_t cap,
                           kvt_tier_done_fn done, void *arg)
{
    struct kvt_host *h = tier;
    (void)id, (void)done, (void)arg;
    uint64_t len = kvt_host_len(h, loc);
    if (!len)
        return KVT_E_NOTFOUND;
    uint64_t bytes = (uint64_t)r->n * r->row_bytes;
    uint64_t at = ((uint64_t)r->layer * r->n_tokens + r->first) * r->row_bytes;
    if (!r->n || !r->row_bytes || (uint64_t)r->first + r->n > r->n_tokens || at + bytes > len)
        return KVT_E_INVAL;
    if (bytes > cap)
        return KVT_E_SMALLBUF;
    memcpy(dst, h->base + loc + at, bytes);
    return 0;
}

static int host_remove(void *tier, const struct kvt_obj_id *id, kvt_tier_loc loc)
{
    struct kvt_host *h = tier;
    (void)id;
    if (!kvt_host_len(h, loc))
        return KVT_E_NOTFOUND;
    kvt_host_free(h, loc);
    return 0;
}

static int host_sync(void *tier, struct kvt_tier_sync *sync)
{
    (void)tier, (void)sync;
    return 0; /* nothing of DRAM outlives the process */
}

static void host_stats(void *tier, struct kvt_tier_stats *out)
{
    *out = ((struct kvt_host *)tier)->st;
}

static int host_attach(void *tier, struct kvt_loop *loop)
{
    (void)tier, (void)loop;
    return 0; /* completes everything in the call */
}

static void host_detach(void *tier, struct kvt_loop *loop)
{
    (void)tier, (void)loop;
}

static uint32_t host_inflight(void *tier)
{
    (void)tier;
    return 0;
}

static int host_wait(void *tier, int timeout_ms)
{
    (void)tier, (void)timeout_ms;
    return 0;
}

static void *host_ptr_op(void *tier, kvt_tier_loc loc)
{
    return kvt_host_ptr(tier, loc);
}

static void host_touch_op(void *tier, kvt_tier_loc loc)
{
    kvt_host_touch(tier, loc);
}

static size_t host_coldest_op(void *tier, kvt_tier_pick_fn pick, void *arg, uint32_t *cookies,
                              size_t max, size_t scan_max)
{
    if (!pick)
        return kvt_host_coldest(tier, cookies, max);
    return kvt_host_coldest_where(tier, pick, arg, cookies, max, scan_max);
}

static int host_pressure_op(void *tier, double free_frac)
{
    return kvt_host_pressure(tier, free_frac);
}

static void host_set_evict_op(void *tier, kvt_tier_evict_fn fn, void *owner)
{
    kvt_host_set_evict(tier, fn, owner);
}

static void host_set_value_op(void *tier, kvt_tier_value_fn fn, void *owner)
{
    kvt_host_set_value(tier, fn, owner);
}

static uint64_t host_slot_bytes_op(void *tier, uint64_t bytes)
{
    return kvt_host_slot_bytes(tier, bytes);
}

static void host_count_op(void *tier, int hit)
{
    kvt_host_count(tier, hit);
}

const struct kvt_tier_ops kvt_host_tier_ops = {
    .name = "cpu",
    .id = KVT_TIER_CPU,
    .caps = KVT_TIER_CAP_MEMORY | KVT_TIER_CAP_RANGE,
    .reserve = host_reserve,
    .fill = host_fill,
    .commit = host_commit,
    .cancel = host_cancel,
    .read = host_read,
    .read_range = host_read_range,
    .remove = host_remove,
    .sync = host_sync,
    .stats = host_stats,
    .attach = host_attach,
    .detach = host_detach,
    .inflight = host_inflight,
    .wait = host_wait,
    .ptr = host_ptr_op,
    .touch = host_touch_op,
    .coldest = host_coldest_op,
    .pressure = host_pressure_op,
    .set_evict = host_set_evict_op,
    .set_value = host_set_value_op,
    .slot_bytes = host_slot_bytes_op,
    .count = host_count_op,
};
