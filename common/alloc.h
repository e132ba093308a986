/*
 * The one allocation wrapper. Every heap allocation names a tag, so that stats can say how many
 * bytes each subsystem holds, and tests can make the Nth allocation fail to exercise error paths.
 * Data paths do not allocate: pools and arenas are sized at start through these calls.
 */
#ifndef KVT_COMMON_ALLOC_H
#define KVT_COMMON_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#define KVT_ALLOC_TAGS(X)                                                                          \
    X(MISC)                                                                                        \
    X(CONFIG)                                                                                      \
    X(CONN)                                                                                        \
    X(INDEX)                                                                                       \
    X(TIER)                                                                                        \
    X(DISK)                                                                                        \
    X(PROTO)                                                                                       \
    X(CLIENT)                                                                                      \
    X(ABSTRACT)

enum kvt_alloc_tag {
#define KVT__TAG_ENUM(name) KVT_ALLOC_##name,
    KVT_ALLOC_TAGS(KVT__TAG_ENUM)
#undef KVT__TAG_ENUM
        KVT_ALLOC_TAG_COUNT
};

/* Allocate zeroed memory. Returns NULL on failure (or injected failure). */
void *kvt_calloc(enum kvt_alloc_tag tag, size_t n, size_t size);
void *kvt_malloc(enum kvt_alloc_tag tag, size_t size);
/* Uninitialized memory aligned to align (a power of two, at least 16), e.g. for O_DIRECT. */
void *kvt_aligned_alloc(enum kvt_alloc_tag tag, size_t align, size_t size);
/* Frees memory from any of the above with the same tag. NULL-safe. */
void kvt_free(enum kvt_alloc_tag tag, void *p);

/* Bytes currently held under a tag. */
uint64_t kvt_alloc_bytes(enum kvt_alloc_tag tag);
const char *kvt_alloc_tag_name(enum kvt_alloc_tag tag);

/* Test hook: the nth allocation from now (1 = the next) fails; 0 disables. */
void kvt_alloc_fail_nth(uint64_t nth);

#endif
