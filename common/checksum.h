/*
 * The payload checksum a client sends with a Put and the daemon verifies after its copy: it tells
 * a Put whose buffer the client changed (or reused after giving up) while the daemon was copying
 * it, so those bytes are refused instead of stored under the old key.
 *
 * Definition (it travels on the wire, so it never changes): the payload is cut into blocks of
 * KVT_CHECKSUM_BLOCK_BYTES (the last may be shorter); block i hashes to XXH3-64 with seed i; the
 * checksum is the sum of the block hashes modulo 2^64. The sum is associative, so the stripes of
 * a copy split on block boundaries are summed by the threads that copy them, in any order. It
 * guards against accidents (a race on the client's own buffer), not against a malicious client,
 * which can always store whatever bytes it likes under its own keys.
 */
#ifndef KVT_COMMON_CHECKSUM_H
#define KVT_COMMON_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#define KVT_CHECKSUM_BLOCK_BYTES (64u * 1024u)

/* Checksum of n bytes at p, whose first byte is at block-aligned payload offset first_off (0 for
 * a whole payload). Partial sums of consecutive block-aligned pieces add up to the whole. */
uint64_t kvt_checksum_part(const void *p, size_t n, uint64_t first_off);

/* Checksum of a whole payload. */
static inline uint64_t kvt_payload_checksum(const void *p, size_t n)
{
    return kvt_checksum_part(p, n, 0);
}

#endif
