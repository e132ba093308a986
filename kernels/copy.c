/*
 * Copy kernels: SSE2 streaming stores on x86-64 (every x86-64 CPU has SSE2, so no run-time
 * dispatch is needed), memcpy elsewhere. The head up to the first 16-byte boundary of dst and the
 * tail are copied with memcpy; the body with 64 bytes per iteration. The guarded copies wrap
 * these in the SIGBUS guard of common/memguard.
 */
#include <assert.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's run-time dispatch: the AVX2/AVX-512 XXH3 where the CPU has it, three times the
 * SSE2 default the plain entry points were built with (same hash values). */
#include <xxh_x86dispatch.h>
#endif

#include "common/checksum.h"
#include "common/memguard.h"
#include "kernels/copy.h"
#include "kvtier/errors.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

void kvt_copy_ref(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

void kvt_copy_stream(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__)
    enum { SMALL_BYTES = 4096 };
    if (n < SMALL_BYTES) {
        memcpy(dst, src, n);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    size_t body = n & ~(size_t)63;
    for (size_t i = 0; i < body; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
    }
    /* Streaming stores are weakly ordered: fence so the bytes are visible before the caller
     * publishes the chunk to other threads. */
    _mm_sfence();
    memcpy(d + body, s + body, n - body);
#else
    memcpy(dst, src, n);
#endif
}

/* The guarded functions below keep nothing in locals that is read after a fault: siglongjmp
 * restores registers to their values at sigsetjmp, so only constants are used on that path. */

int kvt_copy_guarded(void *dst, const void *src, size_t n, int stream)
{
    struct kvt_memguard g;
    if (sigsetjmp(g.env, 0))
        return KVT_E_FAULT;
    kvt_memguard_arm(&g, dst, n, src, n);
    if (stream)
        kvt_copy_stream(dst, src, n);
    else
        memcpy(dst, src, n);
    kvt_memguard_disarm(&g);
    return 0;
}

int kvt_copy_guarded_sum(void *dst, const void *src, size_t n, uint64_t first_off, uint64_t *sum)
{
    assert(first_off % KVT_CHECKSUM_BLOCK_BYTES == 0);
    struct kvt_memguard g;
    if (sigsetjmp(g.env, 0))
        return KVT_E_FAULT;
    kvt_memguard_arm(&g, dst, n, src, n);
    uint8_t *d = dst;
    const uint8_t *s = src;
    uint64_t acc = 0, block = first_off / KVT_CHECKSUM_BLOCK_BYTES;
    for (size_t at = 0; at < n; at += KVT_CHECKSUM_BLOCK_BYTES) {
        size_t len = n - at < KVT_CHECKSUM_BLOCK_BYTES ? n - at : KVT_CHECKSUM_BLOCK_BYTES;
        memcpy(d + at, s + at, len);
        acc += XXH3_64bits_withSeed(d + at, len, block++); /* the dispatching one on x86-64 */
    }
    kvt_memguard_disarm(&g);
    *sum = acc;
    return 0;
}
