/*
 * Bulk copy kernels. kvt_copy_stream writes with non-temporal stores: storing a new chunk into
 * the CPU tier lands in memory that is cold in every cache, where ordinary stores first read each
 * line in (read-for-ownership); streaming stores skip that and measure about twice as fast on
 * large copies. kvt_copy_ref is the portable reference the kernel is tested against.
 */
#ifndef KVT_KERNELS_COPY_H
#define KVT_KERNELS_COPY_H

#include <stddef.h>

/* Same result as memcpy (regions must not overlap). Uses streaming stores when the platform has
 * them; any alignment and size are accepted. */
void kvt_copy_stream(void *dst, const void *src, size_t n);

/* Reference implementation: memcpy. */
void kvt_copy_ref(void *dst, const void *src, size_t n);

#endif
