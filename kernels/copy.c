/*
 * Copy kernels: SSE2 streaming stores on x86-64 (every x86-64 CPU has SSE2, so no run-time
 * dispatch is needed), memcpy elsewhere. The head up to the first 16-byte boundary of dst and the
 * tail are copied with memcpy; the body with 64 bytes per iteration.
 */
#include <stdint.h>
#include <string.h>

#include "kernels/copy.h"

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
