/*
 * Chunk keys and small helpers declared in the public header, shared by the client library and
 * the daemon. Keys chain: key_i = XXH3-128(seed, key_{i-1} || tokens_i), so a key names a chunk
 * and everything before it, the property exact-prefix reuse needs.
 */
#include <stdio.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "kvtier/kvtier.h"

size_t kvt_dtype_size(enum kvt_dtype dtype)
{
    switch (dtype) {
    case KVT_DTYPE_FP16:
    case KVT_DTYPE_BF16:
        return 2;
    case KVT_DTYPE_FP32:
        return 4;
    case KVT_DTYPE_FP8:
        return 1;
    }
    return 0;
}

uint32_t kvt_form_group(uint32_t head_dim)
{
    for (uint32_t g = 32; g >= 2; g /= 2)
        if (head_dim % g == 0)
            return g;
    return 0;
}

size_t kvt_chunk_keys(const struct kvt_ns_info *ns, const struct kvt_key *parent,
                      const int32_t *tokens, size_t n_tokens, struct kvt_key *keys, size_t max_keys)
{
    if (!ns || !ns->tokens_per_chunk || (!tokens && n_tokens))
        return 0;
    size_t n = n_tokens / ns->tokens_per_chunk;
    if (n > max_keys)
        n = max_keys;
    struct kvt_key prev = parent ? *parent : (struct kvt_key){0, 0};
    for (size_t i = 0; i < n; i++) {
        /* Fixed little-endian encoding of the parent so keys are portable across hosts. */
        uint8_t pk[16];
        for (int b = 0; b < 8; b++) {
            pk[b] = (uint8_t)(prev.lo >> (8 * b));
            pk[8 + b] = (uint8_t)(prev.hi >> (8 * b));
        }
        XXH3_state_t st;
        XXH3_128bits_reset_withSeed(&st, ns->seed);
        XXH3_128bits_update(&st, pk, sizeof(pk));
        XXH3_128bits_update(&st, tokens + i * ns->tokens_per_chunk,
                            ns->tokens_per_chunk * sizeof(int32_t));
        XXH128_hash_t h = XXH3_128bits_digest(&st);
        prev.lo = h.low64;
        prev.hi = h.high64;
        keys[i] = prev;
    }
    return n;
}

char *kvt_key_format(const struct kvt_key *key, char *buf)
{
    snprintf(buf, 33, "%016llx%016llx", (unsigned long long)key->hi, (unsigned long long)key->lo);
    return buf;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int kvt_key_parse(const char *text, struct kvt_key *out)
{
    if (!text || strlen(text) != 32)
        return KVT_E_INVAL;
    uint64_t w[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
        int v = hexval(text[i]);
        if (v < 0)
            return KVT_E_INVAL;
        w[i / 16] = (w[i / 16] << 4) | (uint64_t)v;
    }
    out->hi = w[0];
    out->lo = w[1];
    return 0;
}
