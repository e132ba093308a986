/*
 * Encoding and verification of self-describing disk objects (see object.h). Fields are written
 * byte by byte in little-endian order so that the format does not depend on the host or on struct
 * padding.
 */
#include "tiers/disk/object.h"

#include <string.h>

#include <xxhash.h>

#include "kvtier/errors.h"
#include "tiers/codec.h"

#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_HDR_BYTES 6
#define OFF_CODEC 8
#define OFF_NTOKENS 12
#define OFF_NS 16
#define OFF_KEY_LO 24
#define OFF_KEY_HI 32
#define OFF_RAW 40
#define OFF_STORED 48
#define OFF_SEQ 56
#define OFF_HCHECK 112
#define OFF_CHECKSUM 120

static void put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint64_t payload_checksum(const unsigned char *buf, uint64_t stored_len)
{
    XXH64_hash_t seed = XXH3_64bits(buf, OFF_CHECKSUM);
    return XXH3_64bits_withSeed(buf + KVT_OBJECT_HEADER_BYTES, (size_t)stored_len, seed);
}

void kvt_object_seal(void *buf, const struct kvt_object_meta *m)
{
    unsigned char *p = buf;

    memset(p, 0, KVT_OBJECT_HEADER_BYTES);
    put_le(p + OFF_MAGIC, KVT_OBJECT_MAGIC, 4);
    put_le(p + OFF_VERSION, KVT_OBJECT_VERSION, 2);
    put_le(p + OFF_HDR_BYTES, KVT_OBJECT_HEADER_BYTES, 2);
    put_le(p + OFF_CODEC, m->codec, 4);
    put_le(p + OFF_NTOKENS, m->n_tokens, 4);
    put_le(p + OFF_NS, m->ns_seed, 8);
    put_le(p + OFF_KEY_LO, m->key.lo, 8);
    put_le(p + OFF_KEY_HI, m->key.hi, 8);
    put_le(p + OFF_RAW, m->raw_len, 8);
    put_le(p + OFF_STORED, m->stored_len, 8);
    put_le(p + OFF_SEQ, m->seq, 8);
    put_le(p + OFF_HCHECK, XXH3_64bits(p, OFF_HCHECK), 8);
    put_le(p + OFF_CHECKSUM, payload_checksum(p, m->stored_len), 8);
}

int kvt_object_parse_header(const void *buf, struct kvt_object_meta *out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m;

    if (get_le(p + OFF_MAGIC, 4) != KVT_OBJECT_MAGIC ||
        get_le(p + OFF_VERSION, 2) != KVT_OBJECT_VERSION ||
        get_le(p + OFF_HDR_BYTES, 2) != KVT_OBJECT_HEADER_BYTES ||
        get_le(p + OFF_HCHECK, 8) != XXH3_64bits(p, OFF_HCHECK))
        return KVT_E_CORRUPT;
    m.codec = (uint32_t)get_le(p + OFF_CODEC, 4);
    m.n_tokens = (uint32_t)get_le(p + OFF_NTOKENS, 4);
    m.ns_seed = get_le(p + OFF_NS, 8);
    m.key.lo = get_le(p + OFF_KEY_LO, 8);
    m.key.hi = get_le(p + OFF_KEY_HI, 8);
    m.raw_len = get_le(p + OFF_RAW, 8);
    m.stored_len = get_le(p + OFF_STORED, 8);
    m.seq = get_le(p + OFF_SEQ, 8);
    /* A codec never expands, and raw objects store exactly their raw length. */
    if (m.stored_len > m.raw_len || (m.codec == KVT_CODEC_RAW && m.stored_len != m.raw_len))
        return KVT_E_CORRUPT;
    *out = m;
    return 0;
}

int kvt_object_verify(const void *buf, size_t buf_bytes, struct kvt_object_meta *out)
{
    const unsigned char *p = buf;
    struct kvt_object_meta m;

    if (buf_bytes < KVT_OBJECT_HEADER_BYTES || kvt_object_parse_header(p, &m) != 0)
        return KVT_E_CORRUPT;
    if (m.stored_len > buf_bytes - KVT_OBJECT_HEADER_BYTES)
        return KVT_E_CORRUPT;
    if (get_le(p + OFF_CHECKSUM, 8) != payload_checksum(p, m.stored_len))
        return KVT_E_CORRUPT;
    *out = m;
    return 0;
}
