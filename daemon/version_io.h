/*
 * The serialized form of a chunk's reuse version info (daemon/version.h), and of the records of
 * the version log that carry it for chunks on disk (docs/reuse.md, "Across restarts"): a record
 * is a head that names the disk copy it belongs to, then the form.
 *
 * Both are versioned, self-describing and checksummed, and a reader trusts nothing in them: every
 * field is checked (magic, version, sizes, geometry within the daemon's limits, reserved bytes
 * zero, every attention share finite and in [0, 1], every layer's shares summing to at most 1, as
 * kvt_version_set requires) and anything else is refused with KVT_E_CORRUPT, never read past its
 * end.
 *
 * Version form (little-endian):
 *    0 magic "KVTV" (u32)      4 version (u16, 1)        6 header bytes (u16, 64)
 *    8 total bytes (u32)      12 reserved (u32, 0)      16 start_pos (u64)
 *   24 n_prefix (u32)         28 layers (u32)           32 n_tokens (u32)
 *   36 reserved (12 bytes, 0) 48 check: XXH3-64 of bytes 64..total-1 seeded with the XXH3-64 of
 *                                bytes 0..47          56 reserved (8 bytes, 0)
 *   64 prefix keys (n_prefix x (lo u64, hi u64)), layer_mass (layers x (n_prefix + 1) f32),
 *      token_mass (n_tokens f32)
 *
 * Log record: a 64-byte head, then the version form, then zeros to a multiple of 8 bytes.
 *    0 magic "KVTR" (u32)      4 version (u16, 1)        6 head bytes (u16, 64)
 *    8 record bytes (u32, head + form, before the padding)   12 reserved (u32, 0)
 *   16 namespace seed (u64)   24 key lo (u64)           32 key hi (u64)
 *   40 variant (u32)          44 reserved (u32, 0)      48 the disk copy's stamp (u64, nonzero:
 *                                                          the disk tier's sequence number)
 *   56 check: XXH3-64 of bytes 64..record-1 seeded with the XXH3-64 of bytes 0..55
 *   64 the version form (its own checks apply)
 */
#ifndef KVT_DAEMON_VERSION_IO_H
#define KVT_DAEMON_VERSION_IO_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/version.h"
#include "tiers/tier.h"

#define KVT_VERSION_IO_MAGIC 0x5654564bu /* "KVTV" */
#define KVT_VERSION_IO_VERSION 1u
#define KVT_VERSION_IO_HEADER_BYTES 64u
#define KVT_VERSION_LOG_MAGIC 0x5254564bu /* "KVTR" */
#define KVT_VERSION_LOG_VERSION 1u
#define KVT_VERSION_LOG_HEAD_BYTES 64u
/* What one record may take, at the limits of version.h, with room to spare. */
#define KVT_VERSION_LOG_RECORD_MAX (KVT_VERSION_LOG_HEAD_BYTES + (64u << 20))

/* Bytes of the form of a record of this geometry (0 when it would not fit in 32 bits). */
size_t kvt_version_io_form_bytes(uint32_t n_prefix, uint32_t layers, uint32_t n_tokens);
/* Bytes of v's serialized form. */
size_t kvt_version_io_bytes(const struct kvt_version *v);
/* Writes v's form at dst, exactly kvt_version_io_bytes(v) bytes. Reads only v. */
void kvt_version_io_write(const struct kvt_version *v, void *dst);
/* Reads the form of len bytes at src into a new record laid out as the store's (version.h; its
 * used clock 0), for kvt_version_store_keep or kvt_free(KVT_ALLOC_INDEX). Returns 0,
 * KVT_E_CORRUPT (a check failed) or KVT_E_NOMEM. */
int kvt_version_io_read(const void *src, size_t len, struct kvt_version **out);

/* Bytes of the log record of v, padding included. */
size_t kvt_version_log_record_bytes(const struct kvt_version *v);
/* Writes the log record of v for object id's disk copy of stamp at dst
 * (kvt_version_log_record_bytes(v) bytes). */
void kvt_version_log_record_write(const struct kvt_version *v, const struct kvt_obj_id *id,
                                  uint64_t stamp, void *dst);
/* Checks the record at the start of src (len bytes available, maybe more than one record): 0 and
 * the object it names, its stamp, where its form lies (*form, *form_len, inside src) and the bytes
 * it takes with its padding (*step); KVT_E_CORRUPT when its head or check fails or it runs past
 * len. The form itself is checked by kvt_version_io_read. */
int kvt_version_log_record_read(const void *src, size_t len, struct kvt_obj_id *id, uint64_t *stamp,
                                const void **form, size_t *form_len, size_t *step);

#endif
