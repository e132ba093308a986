/*
 * Bulk copy kernels. kvt_copy_stream writes with non-temporal stores: storing a new chunk into
 * the CPU tier lands in memory that is cold in every cache, where ordinary stores first read each
 * line in (read-for-ownership); streaming stores skip that and measure about twice as fast on
 * large copies. kvt_copy_ref is the portable reference the kernel is tested against. Both are
 * the streaming copy of the kernel table (kernels/kernels.h), which picks the variant.
 *
 * The guarded copies are the ones used on memory a client shares with the daemon (its arena):
 * the client can make those pages vanish, and a copy that touches one then returns KVT_E_FAULT
 * instead of killing the process with SIGBUS (common/memguard.h says how and what is covered).
 * kvt_memguard_init must have run for the guard to take effect.
 */
#ifndef KVT_KERNELS_COPY_H
#define KVT_KERNELS_COPY_H

#include <stddef.h>
#include <stdint.h>

/* Same result as memcpy (regions must not overlap): kvt_kernels()->copy_stream, streaming stores
 * when the active variant has them; any alignment and size are accepted. */
void kvt_copy_stream(void *dst, const void *src, size_t n);

/* Reference implementation: memcpy. */
void kvt_copy_ref(void *dst, const void *src, size_t n);

/* memcpy (stream == 0) or kvt_copy_stream (stream != 0) under the SIGBUS guard, over both the
 * source and the destination range. 0, or KVT_E_FAULT when a page of either vanished: dst then
 * holds an unspecified mix of old and new bytes. */
int kvt_copy_guarded(void *dst, const void *src, size_t n, int stream);

/* Copies n bytes with ordinary stores and computes the payload checksum (common/checksum.h) of
 * what was stored: each 64 KiB block is hashed from dst right after it was copied, while it is
 * still in cache, so the sum verifies the destination, not a second read of a source the client
 * may be changing. first_off is the payload offset of src[0] and must be a multiple of
 * KVT_CHECKSUM_BLOCK_BYTES (asserted); *sum gets kvt_checksum_part(dst, n, first_off). Under the
 * SIGBUS guard like kvt_copy_guarded: 0, or KVT_E_FAULT with *sum untouched. */
int kvt_copy_guarded_sum(void *dst, const void *src, size_t n, uint64_t first_off, uint64_t *sum);

#endif
