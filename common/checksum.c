/*
 * Payload checksum: see checksum.h for the definition.
 */
#include <xxhash.h>
#if defined(__x86_64__)
/* libxxhash's run-time dispatch: the AVX2/AVX-512 XXH3 where the CPU has it (about three times
 * the SSE2 build of the plain entry points), with the same hash values. The client pays this on
 * every Put. */
#include <xxh_x86dispatch.h>
#endif

#include "common/checksum.h"

uint64_t kvt_checksum_part(const void *p, size_t n, uint64_t first_off)
{
    const uint8_t *b = p;
    uint64_t sum = 0, block = first_off / KVT_CHECKSUM_BLOCK_BYTES;
    while (n > 0) {
        size_t len = n < KVT_CHECKSUM_BLOCK_BYTES ? n : KVT_CHECKSUM_BLOCK_BYTES;
        sum += XXH3_64bits_withSeed(b, len, block++);
        b += len;
        n -= len;
    }
    return sum;
}
