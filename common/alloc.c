/*
 * Allocation accounting: each block carries a 32-byte header (size, tag, and the address malloc
 * returned, which differs for aligned blocks), so frees can be accounted without the caller
 * repeating the size. Counters are atomics because workers and the
 * event loop may allocate concurrently (rarely: only at start and for control-plane objects).
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "common/alloc.h"

struct alloc_hdr {
    uint64_t size;
    uint64_t tag;
    void *base;   /* what to pass to free() */
    uint64_t pad; /* keeps the block after the header 16-byte aligned */
};

static _Atomic uint64_t tag_bytes[KVT_ALLOC_TAG_COUNT];
static _Atomic uint64_t fail_countdown;

static const char *const tag_names[] = {
#define KVT__TAG_NAME(name) #name,
    KVT_ALLOC_TAGS(KVT__TAG_NAME)
#undef KVT__TAG_NAME
};

static int injected_failure(void)
{
    uint64_t c = atomic_load(&fail_countdown);
    while (c > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &c, c - 1))
            return c == 1;
    }
    return 0;
}

void *kvt_malloc(enum kvt_alloc_tag tag, size_t size)
{
    if (injected_failure() || size > SIZE_MAX - sizeof(struct alloc_hdr))
        return NULL;
    struct alloc_hdr *h = malloc(sizeof(*h) + size);
    if (!h)
        return NULL;
    h->size = size;
    h->tag = (uint64_t)tag;
    h->base = h;
    atomic_fetch_add(&tag_bytes[tag], size);
    return h + 1;
}

void *kvt_aligned_alloc(enum kvt_alloc_tag tag, size_t align, size_t size)
{
    if (align < 16 || (align & (align - 1)) || size > SIZE_MAX - sizeof(struct alloc_hdr) - align ||
        injected_failure())
        return NULL;
    uint8_t *base = malloc(sizeof(struct alloc_hdr) + align + size);
    if (!base)
        return NULL;
    uintptr_t p =
        ((uintptr_t)base + sizeof(struct alloc_hdr) + align - 1) & ~(uintptr_t)(align - 1);
    struct alloc_hdr *h = (struct alloc_hdr *)p - 1;
    h->size = size;
    h->tag = (uint64_t)tag;
    h->base = base;
    atomic_fetch_add(&tag_bytes[tag], size);
    return (void *)p;
}

void *kvt_calloc(enum kvt_alloc_tag tag, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t total = n * size;
    if (injected_failure() || total > SIZE_MAX - sizeof(struct alloc_hdr))
        return NULL;
    struct alloc_hdr *h = calloc(1, sizeof(*h) + total);
    if (!h)
        return NULL;
    h->size = total;
    h->tag = (uint64_t)tag;
    h->base = h;
    atomic_fetch_add(&tag_bytes[tag], total);
    return h + 1;
}

void kvt_free(enum kvt_alloc_tag tag, void *p)
{
    if (!p)
        return;
    struct alloc_hdr *h = (struct alloc_hdr *)p - 1;
    (void)tag;
    atomic_fetch_sub(&tag_bytes[h->tag], h->size);
    free(h->base);
}

uint64_t kvt_alloc_bytes(enum kvt_alloc_tag tag)
{
    return atomic_load(&tag_bytes[tag]);
}

const char *kvt_alloc_tag_name(enum kvt_alloc_tag tag)
{
    return (unsigned)tag < KVT_ALLOC_TAG_COUNT ? tag_names[tag] : "?";
}

void kvt_alloc_fail_nth(uint64_t nth)
{
    atomic_store(&fail_countdown, nth);
}
