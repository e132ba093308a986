/*
 * The serialized form of a span abstract (daemon/abstract.h): what the daemon stores beside a
 * chunk's disk copy, as the tier's opaque metadata, and reads back at start so that a restarted
 * daemon scores its chunks without reading their payloads (docs/sparse.md).
 *
 * The form is versioned, self-describing and checksummed, and a reader trusts nothing in it:
 * every field is checked (magic, version, sizes, geometry within the daemon's limits, reserved
 * bytes zero, the spans of every layer tiling its tokens exactly, no bound NaN and every minimum
 * at most its maximum), and anything else is refused with KVT_E_CORRUPT, never read past its end.
 *
 * Layout (little-endian):
 *    0 magic "KVTA" (u32)      4 version (u16, 1)        6 header bytes (u16, 64)
 *    8 total bytes (u32)      12 value type (u16, 1 = fp16)   14 reserved (u16, 0)
 *   16 n_layers (u32)         20 n_kv_heads (u32)       24 head_dim (u32)
 *   28 n_tokens (u32)         32 n_spans (u32, all layers)    36 reserved (20 bytes, 0)
 *   56 check: XXH3-64 of bytes 64..total-1 seeded with the XXH3-64 of bytes 0..55
 *   64 layer_first (n_layers + 1 u32: spans of layer l are [layer_first[l], layer_first[l + 1]))
 *      span_first (n_spans u16: first token of each span in the chunk)
 *      span_len (n_spans u16: tokens of each span minus 1)
 *      bounds (n_spans x n_kv_heads x 2 x head_dim fp16: the minimums then the maximums)
 *      means (the same shape: the mean key then the mean value)
 */
#ifndef KVT_DAEMON_ABSTRACT_IO_H
#define KVT_DAEMON_ABSTRACT_IO_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/abstract.h"

#define KVT_ABS_IO_MAGIC 0x4154564bu /* "KVTA" */
#define KVT_ABS_IO_VERSION 1u
#define KVT_ABS_IO_HEADER_BYTES 64u
#define KVT_ABS_IO_FP16 1u

/* Bytes of a's serialized form; 0 when it has no spans or would not fit in 32 bits. */
size_t kvt_abs_io_bytes(const struct kvt_abs *a);

/* Writes a's serialized form at dst, exactly kvt_abs_io_bytes(a) bytes. Reads only a (which is
 * immutable once built): safe on any thread. */
void kvt_abs_io_write(const struct kvt_abs *a, void *dst);

/* Reads a serialized abstract of len bytes at src into a new abstract (one reference, for the
 * caller). Returns 0, KVT_E_CORRUPT (anything in it fails a check) or KVT_E_NOMEM. */
int kvt_abs_io_read(const void *src, size_t len, struct kvt_abs **out);

#endif
