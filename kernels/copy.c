/*
 * Copy entry points: the streaming copy is the kernel table's (kernels/kernels.h: AVX2 or
 * AVX-512 non-temporal stores where the CPU has them, memcpy in the reference), and the guarded
 * copies wrap it and memcpy in the SIGBUS guard of common/memguard.
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
#include "kernels/kernels.h"
#include "kvtier/errors.h"

void kvt_copy_ref(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

void kvt_copy_stream(void *dst, const void *src, size_t n)
{
    kvt_kernels()->copy_stream(dst, src, n);
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
