/*
 * Self-describing disk objects. Every object the disk tier writes starts with a fixed 128-byte
 * little-endian header naming what it holds (namespace seed, 128-bit key, geometry, codec,
 * lengths, sequence number), so that the store can be rebuilt from the disk alone and a reader
 * can tell a stale or foreign extent from the object it asked for. Two XXH3-64 checks protect it:
 * one over the header alone, so recovery can validate a header without reading the payload, and
 * one over header and payload, verified on every read.
 *
 * Layout (byte offsets):
 *    0 magic "KVTO" (u32)      4 version (u16)         6 header bytes (u16, 128)
 *    8 codec id (u32)         12 n_tokens (u32)       16 namespace seed (u64)
 *   24 key.lo (u64)           32 key.hi (u64)         40 raw length (u64)
 *   48 stored length (u64)    56 sequence (u64)       64..111 zero
 *  112 header check: XXH3-64 of bytes 0..111
 *  120 checksum: XXH3-64 of the payload seeded with XXH3-64 of bytes 0..119
 *  128 payload (stored length bytes)
 */
#ifndef KVT_TIERS_DISK_OBJECT_H
#define KVT_TIERS_DISK_OBJECT_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/kvtier.h"

#define KVT_OBJECT_MAGIC 0x4f54564bu /* "KVTO" read as little-endian u32 */
#define KVT_OBJECT_VERSION 1u
#define KVT_OBJECT_HEADER_BYTES 128u

struct kvt_object_meta {
    uint64_t ns_seed;
    struct kvt_key key;
    uint32_t n_tokens;
    uint32_t codec;      /* codec id from tiers/codec.h */
    uint64_t raw_len;    /* bytes after decoding */
    uint64_t stored_len; /* payload bytes on disk */
    uint64_t seq;        /* store-wide write sequence number */
};

/* Writes the header for m at buf and seals it: buf must hold the header followed by
 * m->stored_len payload bytes already in place (the checksum covers them). */
void kvt_object_seal(void *buf, const struct kvt_object_meta *m);

/* Parses and validates a header (magic, version, header check, stored <= raw unless raw codec
 * equal). Returns 0 and fills *out, or KVT_E_CORRUPT. Reads KVT_OBJECT_HEADER_BYTES bytes. */
int kvt_object_parse_header(const void *buf, struct kvt_object_meta *out);

/* Validates the header and the checksum over header and payload; buf_bytes is how many bytes are
 * available at buf. Returns 0 and fills *out, or KVT_E_CORRUPT (including a payload that would
 * extend past buf_bytes). */
int kvt_object_verify(const void *buf, size_t buf_bytes, struct kvt_object_meta *out);

#endif
