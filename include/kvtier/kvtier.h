/*
 * libkvtier: the client library an inference engine links to keep its attention KV cache in the
 * kvtier daemon (kvtierd). This header is the specification: every function says what it returns,
 * who owns the memory it touches and how long a pointer must stay valid.
 *
 * Model of use:
 *   1. kvt_connect() opens a Unix-socket session and shares a transfer arena (a sealed memfd the
 *      library creates) with the daemon. Buffers from kvt_arena_alloc() live in that arena, so
 *      Put and Get move bytes with one copy by the daemon and none through the socket.
 *   2. kvt_register() declares a namespace: a model's KV geometry plus the tenant of the session.
 *   3. kvt_chunk_keys() turns token ids into chained 128-bit chunk keys; kvt_lookup() says how many
 *      leading chunks are cached; kvt_get()/kvt_put() move chunk bytes in the canonical layout
 *      [layer][token][k|v][kv_head][head_dim].
 *
 * Failure model: every call is bounded by the session timeout. When the daemon is down or restarts
 * the call fails fast with KVT_E_DISCONNECTED (a lookup also reports zero hits); the next call
 * reconnects, shares the same arena again and re-registers every namespace, so handles and arena
 * pointers stay valid across daemon restarts. An engine never hangs because its cache went away.
 *
 * Trust: the arena holds every byte the engine moves, so the library shares it only with a daemon
 * it trusts. After connecting (and on every reconnect) it asks the kernel for the uid of the
 * process serving the socket (SO_PEERCRED) and goes on only when that uid is the caller's euid,
 * root, or the daemon uid configured in kvt_connect_opts.daemon_uid / $KVTIER_DAEMON_UID;
 * otherwise the call fails with KVT_E_UNTRUSTED and nothing (no memfd, no Hello) is sent.
 *
 * Socket path: kvt_connect_opts.socket_path, else $KVTIER_SOCKET, else the default that kvtierd
 * uses too: /run/kvtier/kvtier.sock for root, $XDG_RUNTIME_DIR/kvtier/kvtier.sock when that
 * variable is set to an absolute path (and the result fits a socket address), else
 * /tmp/kvtier-<euid>/kvtier.sock. A directory of the daemon's own, not /tmp itself: any user can
 * bind a name in /tmp first. (There is no KVT_DEFAULT_SOCKET constant any more, since the
 * default depends on the caller; kvt_socket_path() says which path a session uses.)
 *
 * Retryable errors: KVT_E_BUSY (a daemon slot or staging buffer is briefly taken),
 * KVT_E_DIRTYFULL (a Put while the CPU tier is full of chunks not yet written to disk) and
 * KVT_E_INUSE (a Delete of a chunk being read or written) mean "the same call may succeed
 * later"; KVT_E_CONNLIMIT (the daemon's max_clients) fails kvt_connect or the reconnect of a
 * call, and the next call tries to reconnect again.
 *
 * Threads: a struct kvt_client is not thread-safe; use one per thread (they may share nothing).
 * All functions return 0 or a negative code from <kvtier/errors.h> unless stated otherwise.
 *
 * Memory: every pointer below says who owns it, in these words.
 *   borrowed     the library uses it during the call only, unless the comment names a later
 *                end ("borrowed until kvt_close(c)" for a pointer the library returns);
 *   copied       the library keeps its own copy: the caller may reuse its storage on return;
 *   transferred  ownership moves with the pointer: to the caller, who releases it with the
 *                function named, or back to the library, after which the pointer is invalid;
 *   pinned       must stay valid, at the same address, for longer than the call: the arena is
 *                mapped at one address from kvt_connect() to kvt_close(), and the daemon writes
 *                and reads arena buffers directly.
 * Output parameters (*_out, buffers the library fills) are written during the call and never
 * after it returns, with the one exception below.
 *
 * After a timeout: a call that fails with KVT_E_TIMEOUT (or KVT_E_DISCONNECTED, KVT_E_PROTO)
 * after its requests were sent leaves them with the daemon. The library drops that socket and
 * never reads an answer from it again: a late answer is discarded, the next call connects anew.
 * Dropping the socket does not stop the daemon's copies: it drops the requests it had not
 * started yet, but one it had started (a copy or a disk read into the arena) runs to its end,
 * however long after the call returned. So:
 *   - A buffer outside the arena is never touched after the call returns. Get data reaches it
 *     through the frame or a library staging buffer, copied only on a success answer; Put bytes
 *     were copied out before the call returned.
 *   - A Put source in the arena may still be read. Writing it is safe: the Put's checksum makes
 *     the daemon store nothing (KVT_E_CHECKSUM, never seen by the caller) if the bytes changed.
 *   - A Get destination in the arena may still be written by the daemon, until the daemon
 *     finishes that request. The library does not track the caller's own arena buffers and
 *     offers no way to wait for that moment; kvt_close() is the one sure end (the arena is then
 *     unmapped from this process). Until then the buffer's bytes are not the chunk: do not read
 *     them as such (a later kvt_get into the buffer that succeeds rewrites it, though a write of
 *     the abandoned request could still land after it), and do not kvt_arena_free() it, because
 *     the library could hand the space out as a staging buffer for another call. Set it aside
 *     and allocate another.
 *   - The library's own staging buffers (for buffers outside the arena) are quarantined with
 *     the old socket, which the library shuts down for writing and keeps open until the daemon
 *     closes it, i.e. until every request of that connection has finished; only then are they
 *     reused (details at kvt_put_batch). Without staging buffers in flight the socket is closed
 *     at once.
 *
 * Linking and versions: programs include <kvtier/kvtier.h> and link -lkvtier (libkvtier.so, or
 * libkvtier.a plus -lprotobuf-c -lxxhash -lm). The shared library exports exactly the functions
 * marked KVT_API in the kvtier headers, under the symbol version KVTIER_<KVT_ABI_VERSION>;
 * nothing else of it can be bound to. Its soname is libkvtier.so.<KVT_ABI_VERSION>, which changes
 * with any change a program built against an older header could not survive: a function's
 * signature or meaning, or a field added to struct kvt_connect_opts or struct kvt_item (the
 * library reads the whole struct). Releases that only add functions keep the soname.
 * kvt_version() returns the release of the library loaded; KVT_VERSION_* below are those of the
 * header compiled against.
 */
#ifndef KVTIER_KVTIER_H
#define KVTIER_KVTIER_H

#include <stddef.h>
#include <stdint.h>

#include "kvtier/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The release of kvtier this header belongs to (the daemon and CLI report the same one with
 * --version). kvt_version() says which release the library actually loaded is. */
#define KVT_VERSION_MAJOR 0
#define KVT_VERSION_MINOR 1
#define KVT_VERSION_PATCH 0
/* The ABI generation of libkvtier: the shared library's soname is libkvtier.so.<KVT_ABI_VERSION>
 * and its symbols carry the version KVTIER_<KVT_ABI_VERSION>. It goes up with any change that a
 * program built against an older header could not survive (see "Linking" at the top). */
/* 2: struct kvt_item gained variant (a program built against 1 would leave it unset). */
#define KVT_ABI_VERSION 2

/* The release of the library linked (or loaded), "MAJOR.MINOR.PATCH": a program can compare it
 * with the KVT_VERSION_* it was compiled with. Static, never NULL. */
KVT_API const char *kvt_version(void);

#define KVT_TENANT_MAX 64
#define KVT_MODEL_ID_MAX 128

struct kvt_client;

/* A 128-bit chunk key (XXH3-128). Equal keys mean equal KV bytes within one namespace. */
struct kvt_key {
    uint64_t lo;
    uint64_t hi;
};

/* Variants: one chunk key may name several stored objects, told apart by a 32-bit variant, so
 * that versions of a chunk (its KV computed at other positions, for reuse) and representations
 * of it (fp16, quantized, clustered) are stored side by side. Variant 0 is the chunk as first
 * stored; every call without a variant (kvt_put, kvt_get, kvt_lookup, ...) means variant 0, and
 * the _v forms name one. Variants are independent objects: each has its own bytes, tier, Lookup
 * hit and Delete. The library gives variants no meaning; the engine numbers them. */

enum kvt_dtype { KVT_DTYPE_FP16 = 0, KVT_DTYPE_BF16 = 1, KVT_DTYPE_FP32 = 2, KVT_DTYPE_FP8 = 3 };

/* Where a chunk was found. */
enum kvt_tier_id {
    KVT_TIER_NONE = 0,
    KVT_TIER_GPU = 1,
    KVT_TIER_CPU = 2,
    KVT_TIER_DISK = 3,
    KVT_TIER_REMOTE = 4
};

/* The form a chunk's bytes are kept or returned in (docs/lossy.md). FP16 is the chunk as stored
 * by Put, bit for bit; Q8 and Q4 are the kernels' group quantization (kernels/quant.h): keys and
 * values alike in groups of 32 channels along head_dim (fewer when head_dim is not a multiple of
 * 32, kvt_form_group), 8 or 4 bits a value plus an fp16 scale and minimum a group. Lossy forms
 * exist only in namespaces registered with allow_lossy. Values are on the wire and never change
 * meaning. */
enum kvt_form {
    KVT_FORM_FP16 = 0,
    KVT_FORM_Q8 = 1,
    KVT_FORM_Q4 = 2,
    /* A clustered variant (kernels/cluster.h, docs/lossy.md): n_entries < n_tokens merged
     * entries in the canonical layout [layer][entry][k|v][kv_head][head_dim] (fp16), followed by
     * the count of every entry, n_layers x n_kv_heads x n_entries little-endian uint32 in the order
     * [layer][kv_head][entry]; the counts of each (layer, KV head) sum to n_tokens. Kept as given
     * in every tier (bit for bit) and returned with its counts. */
    KVT_FORM_CLUSTER = 3,
};

/* Session options. Zero in every field means its default, so initialize the whole struct (e.g.
 * with a designated initializer) and set what you need. New fields are only ever appended; the
 * library reads the whole struct, so a program is rebuilt against the header it links with. */
struct kvt_connect_opts {
    const char *socket_path; /* borrowed during the call (copied); NULL means $KVTIER_SOCKET
                                or the default (see the top of this file) */
    const char *tenant;      /* borrowed during the call (copied); NULL or "" means tenant
                                "default" */
    uint64_t arena_bytes;    /* transfer arena size; 0 means 64 MiB */
    uint32_t timeout_ms;     /* per call; 0 means 5000 */
    uint32_t spin_us;        /* busy-wait this long for an answer before sleeping; 0 means 50,
                                UINT32_MAX means never spin. While bulk bytes are in flight the
                                wait goes on for their copy time (4 KiB/us, at most 2 ms),
                                yielding the core between polls. At most one thread fewer
                                than the online CPUs (at least one) spins at a time, across
                                every client of the process; the others sleep at once */
    int64_t daemon_uid;      /* one more uid trusted to serve the socket, besides the caller's
                                euid and root (e.g. a kvtierd running as user "kvtier"). 0 or -1:
                                none here, then $KVTIER_DAEMON_UID (a decimal uid) when set.
                                Valid: 0 .. 4294967294 */
    uint32_t batch_window;   /* requests a batch call keeps in flight on the connection (a
                                sliding window: one goes out as one is answered); 0 or more
                                than 64 means 64 */
};

/* Opens a session. opts (may be NULL: every default) is borrowed during the call. On success the
 * client is transferred to the caller in *out (untouched on failure): it owns the connection and
 * arena until kvt_close(). If the daemon
 * is not reachable the call still fails (KVT_E_DISCONNECTED): a session starts connected.
 * Errors besides: KVT_E_UNTRUSTED (the socket is served by a uid not trusted, see the top of
 * this file; nothing was shared), KVT_E_CONNLIMIT (the daemon serves max_clients already),
 * KVT_E_PEERUID (the daemon does not serve our uid), KVT_E_INVAL (bad options, a socket path
 * longer than 107 bytes, or $KVTIER_DAEMON_UID that is not a decimal uid). */
KVT_API int kvt_connect(const struct kvt_connect_opts *opts, struct kvt_client **out);

/* An engine's own shared memory as the transfer arena (SGLang's host KV pool, vLLM's host bounce
 * buffers): Puts from it and Gets into it are zero-copy, with no second pool. */
struct kvt_arena_spec {
    int fd;                /* a memfd (memfd_create with MFD_ALLOW_SEALING) of exactly bytes,
                              sealed with F_SEAL_SHRINK and F_SEAL_GROW; borrowed during the call
                              (the library keeps its own duplicate, shared again on reconnects) */
    void *base;            /* the caller's MAP_SHARED mapping of all bytes, 4 KiB-aligned;
                              pinned until kvt_close (the library never unmaps it) */
    uint64_t bytes;        /* a 4 KiB multiple */
    uint64_t stage_offset; /* the part the library may hand out (kvt_arena_alloc, and staging */
    uint64_t stage_bytes;  /* for buffers outside the arena): 4 KiB-aligned, inside bytes; 0
                              bytes means none: buffers outside the arena then only travel
                              inline (small ones) and larger ones fail with KVT_E_NOMEM */
};
/* kvt_connect on the caller's arena instead of one the library creates. The library writes only
 * where a Get names (and into its staging range). kvt_close does not unmap the arena; it first
 * lets the daemon finish every request of the session (waiting at most the session timeout), so
 * that after it returns the daemon no longer writes into the arena, except a copy it had started
 * and not finished within that time. KVT_E_INVAL for a spec that breaks a rule above (an
 * unsealed or wrongly sized memfd, a misaligned base or range); kvt_connect's errors besides. */
KVT_API int kvt_connect_arena(const struct kvt_connect_opts *opts,
                              const struct kvt_arena_spec *arena, struct kvt_client **out);

/* The socket path the session connects to (after $KVTIER_SOCKET and the default were applied).
 * Borrowed: valid until kvt_close(c). A static "" for a NULL c. */
KVT_API const char *kvt_socket_path(const struct kvt_client *c);

/* Closes the session and unmaps the arena: c is transferred back to the library and every arena
 * pointer becomes invalid (the daemon can no longer write into this process). NULL-safe. */
KVT_API void kvt_close(struct kvt_client *c);

/* Model geometry of a namespace. The daemon derives the chunk size from it and rejects Puts whose
 * size disagrees. Two registrations with equal fields and tenant name the same namespace. */
struct kvt_ns_spec {
    const char *model_id;      /* borrowed during the call (copied, for reconnects); at most
                                  KVT_MODEL_ID_MAX-1 bytes */
    uint32_t layers;           /* >= 1 */
    uint32_t kv_heads;         /* >= 1 */
    uint32_t head_dim;         /* >= 1 */
    enum kvt_dtype dtype;      /* element type of K and V */
    uint32_t tokens_per_chunk; /* >= 1; keys cover full chunks only */
    float rope_theta;          /* RoPE base, recorded for re-rotation; 0 if none */
    uint32_t rotary_dims;      /* dims rotated by RoPE; 0 means head_dim */
    uint32_t rope_style;       /* 0 = neox (halves), 1 = gpt-j (interleaved) */
    int allow_lossy;           /* nonzero lets the daemon quantize or cluster this namespace */
};

/* What a registered namespace is, as the library and the engine see it. Copied to the caller. */
struct kvt_ns_info {
    uint32_t handle; /* pass to the calls below; stable across daemon restarts */
    uint64_t seed;   /* namespace seed mixed into every chunk key */
    uint32_t tokens_per_chunk;
    uint64_t bytes_per_token; /* layers * 2 * kv_heads * head_dim * sizeof(dtype) */
    uint64_t chunk_bytes;     /* bytes_per_token * tokens_per_chunk */
};

/* Registers (or finds again) a namespace. spec is borrowed during the call and copied, so the
 * library can register it again after a daemon restart. *out (may be NULL) is filled on success.
 * KVT_E_FULL: the session has 64 namespaces already. */
KVT_API int kvt_register(struct kvt_client *c, const struct kvt_ns_spec *spec,
                         struct kvt_ns_info *out);

/* Computes chained keys for the full chunks of tokens: key_0 = H(seed, 0, chunk_0),
 * key_i = H(seed, key_{i-1}, chunk_i). Writes min(n_tokens / tokens_per_chunk, max_keys) keys and
 * returns that count. Pure: needs no daemon. `parent` may be NULL (start of a sequence) or the key
 * of the chunk before tokens[0], to continue a chain. ns, parent and tokens (n_tokens entries) are
 * borrowed during the call; keys is caller storage for max_keys entries. */
KVT_API size_t kvt_chunk_keys(const struct kvt_ns_info *ns, const struct kvt_key *parent,
                              const int32_t *tokens, size_t n_tokens, struct kvt_key *keys,
                              size_t max_keys);

/* Transfer arena. kvt_arena_alloc returns a 4 KiB-aligned buffer inside the arena (NULL when the
 * arena has no room). The buffer is transferred to the caller until kvt_arena_free and pinned:
 * it stays at that address across daemon restarts and is unmapped by kvt_close. Put/Get on arena
 * buffers are zero-copy on the client side; other buffers are staged through the arena (or travel
 * inline when small). kvt_arena_free transfers p (a pointer kvt_arena_alloc returned on this
 * client; others are ignored) back: the library may then use the space as a staging buffer, so
 * never free a buffer a timed-out Get named (see "After a timeout" at the top). NULL-safe. */
KVT_API void *kvt_arena_alloc(struct kvt_client *c, size_t bytes);
KVT_API void kvt_arena_free(struct kvt_client *c, void *p);

/* Stores one chunk of n_tokens tokens (0 means tokens_per_chunk); len must equal
 * n_tokens * bytes_per_token. key and buf are borrowed during the call (an arena buf may still
 * be read by the daemon after a timeout, see the top of this file). Storing a key that is already
 * present succeeds without copying. Every Put carries a checksum of its bytes
 * (kvt_payload_checksum, computed by the library: one XXH3 pass over len bytes); the daemon
 * verifies what it copied and answers KVT_E_CHECKSUM, storing nothing, when the bytes changed
 * meanwhile (an arena buffer written again while a Put from it, perhaps one that timed out, was
 * still being copied). KVT_E_DIRTYFULL and KVT_E_BUSY: retry later. */
KVT_API int kvt_put(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, const void *buf,
                    size_t len, uint32_t n_tokens);
/* kvt_put of variant `variant` of key (kvt_put is this with variant 0). Storing a variant that is
 * already present succeeds without copying; other variants of key are not touched. */
KVT_API int kvt_put_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                      uint32_t variant, const void *buf, size_t len, uint32_t n_tokens);

/* Reads one chunk into buf (capacity cap). *len_out (may be NULL) gets the chunk's length, 0 on
 * a session error; *tier_out, when not NULL, where it was found. A missing key is KVT_E_NOTFOUND.
 * The library never writes more than cap bytes into buf: a daemon that reports a longer chunk as
 * a success gets KVT_E_PROTO (and *len_out 0). key is borrowed during the call; buf is borrowed
 * during the call too, except that a buf in the arena may still be written by the daemon after a
 * call that timed out (see "After a timeout" at the top of this file). */
KVT_API int kvt_get(struct kvt_client *c, uint32_t ns, const struct kvt_key *key, void *buf,
                    size_t cap, size_t *len_out, enum kvt_tier_id *tier_out);
/* kvt_get of variant `variant` of key (kvt_get is this with variant 0); KVT_E_NOTFOUND when that
 * variant is not stored, whatever other variants of key are. */
KVT_API int kvt_get_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                      uint32_t variant, void *buf, size_t cap, size_t *len_out,
                      enum kvt_tier_id *tier_out);

/* Reads rows [token_first, token_first + n_tokens) of one layer of a stored chunk into buf
 * (capacity cap): n_tokens x 2 x kv_heads x head_dim x dtype size bytes, in the canonical order
 * [token][k|v][kv_head][head_dim]. From the CPU tier it copies only those rows; from the disk tier
 * the daemon reads only the 16-token blocks that cover them and verifies each one's checksum (a
 * block that fails drops the chunk: KVT_E_NOTFOUND, never wrong bytes). *len_out (may be NULL)
 * gets the bytes returned, 0 on an error except KVT_E_SMALLBUF, where it is the capacity needed;
 * *tier_out (may be NULL) where the rows came from. Errors: KVT_E_INVAL (n_tokens 0, key NULL, or
 * buf NULL with cap), KVT_E_GEOMETRY (layer not below the namespace's layers, or rows beyond the
 * chunk's tokens, or a disk copy stored without geometry: read it with kvt_get), KVT_E_SMALLBUF,
 * KVT_E_NOTFOUND, and kvt_get's session errors. One request, not batched; a buf in the arena is
 * written by the daemon directly, any other buf through a staging buffer in the arena (the rows
 * are never inline). key is borrowed during the call; buf as for kvt_get (an arena buf may still
 * be written after a call that timed out, see "After a timeout" at the top of this file). */
KVT_API int kvt_get_range(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                          uint32_t layer, uint32_t token_first, uint32_t n_tokens, void *buf,
                          size_t cap, size_t *len_out, enum kvt_tier_id *tier_out);
/* kvt_get_range of variant `variant` of key (kvt_get_range is this with variant 0). */
KVT_API int kvt_get_range_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                            uint32_t variant, uint32_t layer, uint32_t token_first,
                            uint32_t n_tokens, void *buf, size_t cap, size_t *len_out,
                            enum kvt_tier_id *tier_out);

/* kvt_put_v whose chunk's lower-tier copies are to be kept in form (KVT_FORM_Q8 or KVT_FORM_Q4)
 * over the daemon's disk.form policy (docs/lossy.md); KVT_FORM_FP16 is kvt_put_v. The bytes are
 * fp16 as for kvt_put (the daemon quantizes when it writes the chunk to disk; DRAM keeps them as
 * given). KVT_FORM_CLUSTER stores a clustered variant instead (see enum kvt_form): buf holds
 * n_entries merged entries and their counts, len = n_entries x (bytes_per_token + 4 x layers x
 * kv_heads) with 1 <= n_entries < n_tokens (0: tokens_per_chunk), KVT_E_GEOMETRY otherwise, and
 * KVT_E_INVAL when the counts of some (layer, KV head) are not all >= 1 or do not sum to
 * n_tokens; it is kept as given and kvt_get_v / kvt_get_form return it so (GetRange and rotation
 * refuse it). KVT_E_LOSSY in a namespace registered without allow_lossy, KVT_E_INVAL for another
 * form or a namespace that has none (not fp16, odd head_dim); nothing is stored then. */
KVT_API int kvt_put_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                         uint32_t variant, enum kvt_form form, const void *buf, size_t len,
                         uint32_t n_tokens);

/* kvt_get_v that returns the chunk in the form the daemon stores it in, undecoded, instead of
 * dequantized to fp16 (docs/lossy.md): a chunk with a DRAM copy comes from there in fp16 (what
 * DRAM holds); a chunk only in a lower tier comes back as that copy's stored block, q8 or q4 in
 * the packed chunk layout of kernels/quant.h (struct kvt_quant_chunk: keys and values in the
 * *form_out format, groups of kvt_form_group(head_dim) channels), or fp16 when stored as fp16;
 * a clustered variant comes back as stored, wherever it is (KVT_FORM_CLUSTER).
 * *form_out (may be NULL) gets the form of what was returned, *len_out its bytes. cap must hold
 * the stored block (KVT_E_SMALLBUF otherwise, *len_out the bytes needed). KVT_E_LOSSY in a
 * namespace registered without allow_lossy (nothing is read). buf as for kvt_get_rotated. */
KVT_API int kvt_get_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                         uint32_t variant, void *buf, size_t cap, size_t *len_out,
                         enum kvt_form *form_out, enum kvt_tier_id *tier_out);

/* kvt_get_range_v that returns the rows as the daemon's copy keeps them (docs/lossy.md): a chunk
 * only in a lower tier kept in q8 or q4 comes back as its quantized rows of the layer, undecoded,
 * in the packed chunk layout of kernels/quant.h for one layer (2 x n_kv_heads blocks, keys then
 * values of each KV head, each n_tokens rows of codes followed by their groups' fp16 scale and
 * minimum; groups of kvt_form_group(head_dim) channels), *form_out KVT_FORM_Q8 or KVT_FORM_Q4;
 * kvt_form_dequant turns them into the fp16 rows a plain kvt_get_range returns. A chunk with a
 * DRAM copy, or stored as fp16, comes back as fp16 rows (*form_out KVT_FORM_FP16, with the
 * daemon's checksum verified when the rows were dequantized). cap must hold what is returned
 * (KVT_E_SMALLBUF otherwise, *len_out the bytes needed). KVT_E_LOSSY in a namespace registered
 * without allow_lossy, KVT_E_INVAL for a clustered variant, KVT_E_GEOMETRY for rows the chunk
 * does not have; nothing is read then. buf as for kvt_get_rotated. */
KVT_API int kvt_get_range_form(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                               uint32_t variant, uint32_t layer, uint32_t token_first,
                               uint32_t n_tokens, void *buf, size_t cap, size_t *len_out,
                               enum kvt_form *form_out, enum kvt_tier_id *tier_out);

/* The C reference dequantization of quantized rows as kvt_get_range_form returns them: n_tokens
 * rows of one layer (src, exactly len bytes) in form (KVT_FORM_Q8 or KVT_FORM_Q4) of a namespace
 * of n_kv_heads KV heads of head_dim dims into fp16 rows [token][k|v][kv_head][head_dim] at dst
 * (dst_cap >= n_tokens x 2 x n_kv_heads x head_dim x 2 bytes), bit for bit what the daemon's
 * kernels dequantize: x = fp16(min + q x scale), a group with a NaN scale reads as NaN (0x7e00).
 * Returns 0, or KVT_E_INVAL (another form, a head_dim without groups, len not the rows' size)
 * or KVT_E_SMALLBUF, with nothing written. */
KVT_API int kvt_form_dequant(enum kvt_form form, uint32_t n_kv_heads, uint32_t head_dim,
                             uint32_t n_tokens, const void *src, size_t len, void *dst,
                             size_t dst_cap);

/* The group size along head_dim of the q8 and q4 forms: the largest power of two up to 32 that
 * divides head_dim (32 for every common model), 0 when head_dim is odd (no lossy form). */
KVT_API uint32_t kvt_form_group(uint32_t head_dim);

/* One item of a batch. The caller fills key/variant/buf/len (and n_tokens for puts); the library
 * fills status (0 or an error) and, for gets, len with the chunk length and tier. Initialize the
 * whole item (e.g. a designated initializer): an unset variant is a different object. The items
 * array and each buf are borrowed during the batch call, with kvt_put's and kvt_get's rules for
 * arena buffers after a timeout. */
struct kvt_item {
    struct kvt_key key;
    void *buf;
    size_t len;        /* put: bytes to store; get: capacity in, chunk length out; range:
                          capacity in, bytes returned out (with KVT_E_SMALLBUF: bytes needed) */
    uint32_t n_tokens; /* put: tokens of the chunk; range: rows asked for */
    int status;
    enum kvt_tier_id tier;
    uint32_t variant;     /* which variant of key (0: the chunk as first stored) */
    uint32_t layer;       /* range: the layer the rows are in */
    uint32_t token_first; /* range: the first row */
};

/* Batch forms pipeline one request per item. They return 0 when every item was answered (each
 * item then has its own status), or a session error (timeout, disconnect) after which items that
 * were not answered carry that error too.
 *
 * After a session error the daemon may still be working on the unanswered items. Buffers of the
 * caller's own in the arena may then still be read (Put) or written (Get) by the daemon, as the
 * top of this file says: a Put's checksum catches a buffer reused too early; a Get's buffer is
 * not the chunk and must not be freed until kvt_close(). The library's staging buffers (for buffers
 * outside the arena) are quarantined with the old connection, which is kept open, shut down for
 * writing, until the daemon closes it, i.e. has finished every request of it; only then are they
 * reused. So timeouts do not exhaust the arena. At most 4 old connections drain at once; the
 * buffers of an older one are then never reused (a daemon that never finishes them costs at most 64
 * staging buffers per such connection). A call that needs a staging buffer while the arena is full
 * waits for draining connections up to its timeout before it fails with KVT_E_NOMEM. */
KVT_API int kvt_put_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items, size_t n);
KVT_API int kvt_get_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items, size_t n);
/* kvt_get_range_v for every item (key, variant, layer, token_first, n_tokens rows, buf, len as
 * capacity), pipelined like the other batch forms: one system call sends a window of requests,
 * and the daemon reads, submits and answers them together, which is what makes many small range
 * reads (the spans a query selects) cheap. Each item gets kvt_get_range's status, len and tier.
 * KVT_E_INVAL (every item) when an item asks for no rows or has a NULL buf with a capacity. */
KVT_API int kvt_get_range_batch(struct kvt_client *c, uint32_t ns, struct kvt_item *items,
                                size_t n);

/* ---- Asynchronous submission (docs/connectors.md) ---------------------------------------------
 *
 * For engines that overlap KV movement with compute (vLLM's start_load_kv / get_finished, SGLang
 * HiCache prefetch): kvt_submit starts the requests of an array of items and returns at once;
 * kvt_poll returns the items as they finish, each with its own status; kvt_cancel drops the items
 * of a submission not sent yet. Requests are pipelined on the session's socket (one batch window
 * of them in flight, oldest submission first) and answered out of order; synchronous calls on the
 * same client may be mixed in freely. Per item the rules of the batch forms apply: status, len
 * and tier are filled as kvt_get_batch / kvt_put_batch / kvt_get_range_batch fill them.
 *
 * Pinned: the items array and every buf stay valid, and untouched by the caller, from kvt_submit
 * until kvt_poll has returned that item's completion (or kvt_close(c), which writes nothing
 * more). Until then an item's status reads KVT_ITEM_PENDING. Every item submitted completes
 * exactly once.
 *
 * Failure: a request the daemon has not answered within the session timeout of its sending, or a
 * lost connection, drops the socket as a synchronous call's timeout does, and every open item of
 * every submission, sent or not, completes with that error (KVT_E_TIMEOUT, KVT_E_DISCONNECTED):
 * a per-item status, never a failed kvt_poll. "After a timeout" at the top of this file says
 * what the daemon may still do with such an item's arena buffer. */

enum kvt_submit_op { KVT_SUBMIT_GET = 0, KVT_SUBMIT_PUT = 1, KVT_SUBMIT_GET_RANGE = 2 };

/* An item's status while its submission is in progress (no error code is positive). */
#define KVT_ITEM_PENDING 1

struct kvt_completion {
    uint64_t ticket;       /* of the submission */
    size_t index;          /* of the item in it */
    struct kvt_item *item; /* &items[index] of the submission: no longer pinned */
    int status;            /* item->status */
};

/* Starts a request for each of items[0..n) (op: Get, Put or GetRange of the item's variant; for
 * GetRange the item's layer, token_first and n_tokens) and writes the submission's ticket. 0 when
 * submitted: every item will complete, even one that cannot be staged (KVT_E_NOMEM) or sent.
 * Errors, with nothing submitted: KVT_E_INVAL (no items, an item with a NULL buf and a length, a
 * GetRange item with no rows), KVT_E_FULL (more than 4096 items or 256 submissions open on c),
 * KVT_E_NONS, and session errors when the daemon cannot be reached. */
KVT_API int kvt_submit(struct kvt_client *c, uint32_t ns, enum kvt_submit_op op,
                       struct kvt_item *items, size_t n, uint64_t *ticket_out);
/* Returns up to max completions in out (*n_out of them), sending more requests as the window
 * frees. Waits up to timeout_ms (0: only what is ready) for the first one; returns 0 with
 * *n_out 0 when none finished in time or nothing is open. KVT_E_INVAL for a NULL out or n_out
 * or max 0. */
KVT_API int kvt_poll(struct kvt_client *c, struct kvt_completion *out, size_t max,
                     uint32_t timeout_ms, size_t *n_out);
/* Drops the items of submission ticket that were not sent yet: they complete (in the next
 * kvt_poll) with KVT_E_CANCELED, and *n_canceled (may be NULL) says how many. Items already sent
 * complete normally. KVT_E_NOTFOUND when no item of ticket is open. */
KVT_API int kvt_cancel(struct kvt_client *c, uint64_t ticket, size_t *n_canceled);
/* Items submitted whose completion kvt_poll has not returned yet. */
KVT_API size_t kvt_pending(const struct kvt_client *c);
/* The session's socket, for an engine's own event loop: readable when an answer arrived. Valid
 * until the next call on c (a reconnect changes it); -1 when disconnected. Completions may also
 * be ready without the socket being readable (a synchronous call read their answers): call
 * kvt_poll with timeout 0 until it returns none before waiting on the descriptor. */
KVT_API int kvt_fd(const struct kvt_client *c);

/* The daemon's own words for the last error answer it sent on c, e.g. "tenant must be 1-63
 * printable non-space characters" (the code's kvt_strerror when it sent none), and that
 * answer's code in *code_out (may be NULL); "" and 0 before any error answer. Errors the
 * library finds itself (a timeout, a bad argument) are not answers and change neither, so
 * compare *code_out with what a call returned before using the text for it. Borrowed until
 * the next call on c. */
KVT_API const char *kvt_last_error(const struct kvt_client *c, int *code_out);

/* How many leading keys of a chained list are cached (*hits_out), and for each of those the tier
 * it is in (tiers_out, may be NULL, at least n entries). On any error *hits_out is 0: a cache that
 * cannot answer reports a miss. keys (n entries) is borrowed during the call. */
KVT_API int kvt_lookup(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys, size_t n,
                       size_t *hits_out, enum kvt_tier_id *tiers_out);
/* kvt_lookup of a chain whose key i is variant variants[i] (variants: n entries, borrowed during
 * the call; NULL means variant 0 for every key, which is kvt_lookup). The chain stops at the first
 * key whose named variant is not stored. */
KVT_API int kvt_lookup_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                         const uint32_t *variants, size_t n, size_t *hits_out,
                         enum kvt_tier_id *tiers_out);

/* kvt_lookup_v that also pins the leading hits against eviction (in whatever tier each is) for
 * hold_ms (> 0; the daemon cuts it to its hold.ttl_ms), so that reading them a little later
 * cannot miss because of eviction: the scheduler/worker split of vLLM's connector. The hold
 * belongs to the tenant, not the connection: any session of the tenant may release it (another
 * tenant gets KVT_E_ACCESS), and the daemon lets go by itself when its time is up. *hold_out
 * gets its id (0 when there were no hits: nothing to release). While held a chunk cannot be
 * deleted (KVT_E_INUSE), and DRAM held by holds is not available to Puts. KVT_E_FULL (and no
 * hits) when the daemon has no room for another hold (hold.max, hold.pins_max); a chunk whose
 * copy turns out corrupt is still dropped, never served. Holds do not survive a daemon restart.
 * KVT_E_INVAL for hold_ms 0 or a NULL hold_out. */
KVT_API int kvt_lookup_hold(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                            const uint32_t *variants, size_t n, uint32_t hold_ms, size_t *hits_out,
                            enum kvt_tier_id *tiers_out, uint64_t *hold_out);
/* Lets go of a hold; *released_out (may be NULL) gets the chunks it pinned. KVT_E_NOHOLD when it
 * is unknown (released already, expired, or made before a daemon restart), KVT_E_ACCESS when
 * another tenant's. */
KVT_API int kvt_hold_release(struct kvt_client *c, uint64_t hold, uint32_t *released_out);

/* Deletes keys (n entries, borrowed during the call); status_out (may be NULL, else n entries)
 * gets 0, KVT_E_NOTFOUND or KVT_E_INUSE (the chunk is being read or written: retry) per key. */
KVT_API int kvt_delete(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys, size_t n,
                       int *status_out);
/* kvt_delete of variant variants[i] of key i (variants: n entries, borrowed during the call; NULL
 * means variant 0 for every key, which is kvt_delete). Only the variant named goes: the other
 * variants of the key stay. */
KVT_API int kvt_delete_v(struct kvt_client *c, uint32_t ns, const struct kvt_key *keys,
                         const uint32_t *variants, size_t n, int *status_out);

/* ---- Reuse at any position (docs/reuse.md) ---------------------------------------------------
 *
 * Retrieval-augmented prompts repeat passages in new orders. A passage is keyed by its own tokens
 * (kvt_passage_key), whatever precedes it, and stored as one chunk of its n tokens (a namespace
 * for reuse has tokens_per_chunk >= its longest passage, and its RoPE parameters). Each stored
 * variant of a passage key is a version: its KV computed at some start position after some
 * prefix, described by the engine with kvt_version_set. kvt_chunk_lookup plans a request: per
 * passage the best version and the tokens to recompute (Cache-Craft's formulas, docs/reuse.md);
 * kvt_get_rotated reads a version with its keys re-rotated by RoPE to the new start position. */

/* H(seed, 0, tokens[0..n)): the key of a passage of n tokens (1 .. tokens_per_chunk), the same
 * wherever the passage appears; for n == tokens_per_chunk it is kvt_chunk_keys' first key. Pure.
 * KVT_E_INVAL for n 0 or too long, or a NULL argument. */
KVT_API int kvt_passage_key(const struct kvt_ns_info *ns, const int32_t *tokens, size_t n,
                            struct kvt_key *out);

/* What the engine reports about a version it computed. Borrowed during the call (copied). */
struct kvt_version_info {
    uint64_t start_pos;           /* position of the passage's first token */
    const struct kvt_key *prefix; /* passage keys of the passages before it, in order */
    uint32_t n_prefix;            /* at most 256 */
    uint32_t layers;              /* the namespace's */
    uint32_t n_tokens;            /* the passage's (the chunk's n_tokens) */
    const float *layer_mass;      /* layers x (n_prefix + 1): per layer, the share of the
                                     passage tokens' attention (averaged over its tokens and
                                     query heads) to prefix passage j, then, last, within the
                                     passage; each in [0, 1], a row summing to at most 1 (the
                                     rest went elsewhere, e.g. a system line) */
    const float *token_mass;      /* n_tokens: per token, its share of attention (averaged over
                                     layers and heads) to everything before the passage */
};
/* Attaches version info to stored variant `variant` (0 .. 31) of passage key: Put the chunk
 * first (KVT_E_NOTFOUND otherwise). A key keeps at most reuse.versions_max versions: reporting
 * one more deletes the least recently planned other one. KVT_E_GEOMETRY when layers or n_tokens
 * disagree with the namespace and the chunk; KVT_E_INVAL for a share outside [0, 1] or a layer
 * summing past 1; KVT_E_FULL when reuse.bytes_max is reached. Version info lives in the daemon's
 * DRAM and, for chunks on disk, in its version log: a restarted daemon plans with it again (a
 * crash may lose the reports of its last moments: those chunks are plain until reported again). */
KVT_API int kvt_version_set(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                            uint32_t variant, const struct kvt_version_info *vi);

/* The plan for one passage of a request. The caller sets recompute and recompute_cap; the rest
 * is filled. */
struct kvt_reuse_plan {
    int found;                               /* a version of the passage is stored and readable */
    uint32_t variant;                        /* the chosen version */
    enum kvt_tier_id tier;                   /* where it is */
    uint64_t old_start;                      /* its start_pos */
    uint32_t n_tokens;                       /* its tokens */
    float beta, gamma, beta_prime, cci, cfo; /* docs/reuse.md */
    uint32_t n_recompute;                    /* tokens to recompute: ceil(cfo * n_tokens) */
    uint32_t *recompute; /* caller storage: the first min(n_recompute, recompute_cap) of
                            them, token indices within the passage, ascending (the tokens
                            with the most attention to the old prefix) */
    uint32_t recompute_cap;
    uint32_t next_variant; /* a variant no version of this key uses, for storing a new one;
                              UINT32_MAX when variants 0 .. 31 are all taken */
};
/* Plans passages[0..n) (passage keys, at most 256) placed at start_pos[i]: for passage i the new
 * prefix is passages[0..i). Per stored version: beta, gamma, beta' = beta (1 - gamma), cci, cfo
 * = clamp(alpha cci (1 - beta')) (alpha 0: reuse.alpha); the version with the lowest cfo is
 * chosen (ties: the one at start_pos[i], then the most recently planned). A passage stored at
 * the same position after the same prefix gets cfo 0. plans: n entries. */
KVT_API int kvt_chunk_lookup(struct kvt_client *c, uint32_t ns, const struct kvt_key *passages,
                             const uint64_t *start_pos, size_t n, float alpha,
                             struct kvt_reuse_plan *plans);

/* kvt_chunk_lookup under a recompute budget: on average at most budget_per_passage tokens
 * recomputed per passage found (0: no budget). When the plans at alpha ask for more, the daemon
 * lowers alpha for the whole request (the largest that fits), so the budget goes where the
 * formulas say the passages need it most; each plan's cfo and indices are the budgeted ones. */
KVT_API int kvt_chunk_lookup_budget(struct kvt_client *c, uint32_t ns,
                                    const struct kvt_key *passages, const uint64_t *start_pos,
                                    size_t n, float alpha, uint32_t budget_per_passage,
                                    struct kvt_reuse_plan *plans);

/* kvt_get_v of a version with every key (the K half of each row, in every layer and KV head)
 * re-rotated by RoPE from the version's start_pos to new_start (kernels/rope.h; values are
 * untouched; fp32 math, rounded to fp16). KVT_E_INVAL when the namespace is not fp16 or has no
 * rope_theta; KVT_E_NOTFOUND when the variant is not stored or has no version info. buf (cap
 * bytes) is written by the daemon directly when it is in the arena, else through a staging
 * buffer; never inline. */
KVT_API int kvt_get_rotated(struct kvt_client *c, uint32_t ns, const struct kvt_key *key,
                            uint32_t variant, uint64_t new_start, void *buf, size_t cap,
                            size_t *len_out, enum kvt_tier_id *tier_out);

/* ---- Span abstracts, contexts and Select (docs/sparse.md) --------------------------------------
 *
 * On Put the daemon cuts each layer of an fp16 chunk into spans and keeps, per span and KV head,
 * the per-channel min and max of its keys (and the mean key and value) in DRAM, for the chunk in
 * any tier. A context is the ordered list of chunks of one running sequence; Select scores every
 * span of one layer of a context against a query and says which spans are worth reading. */

enum kvt_span_kind {
    KVT_SPANS_DEFAULT = 0,  /* the daemon's abstract.* settings */
    KVT_SPANS_NONE = 1,     /* no abstracts: Select keeps the chunks whole */
    KVT_SPANS_FIXED = 2,    /* spans of block_tokens tokens */
    KVT_SPANS_VARIABLE = 3, /* base blocks merged while the merged key bound stays tight */
};
#define KVT_SPANS_FINE_DEFAULT UINT32_MAX

/* How Puts of a namespace cut spans; zero fields (and fine_layers KVT_SPANS_FINE_DEFAULT) take
 * the daemon's abstract.* value. Not part of the namespace's identity: chunks are the same bytes
 * under any policy, and the latest registration's policy applies to new Puts. */
struct kvt_span_policy {
    uint32_t kind;         /* enum kvt_span_kind */
    uint32_t block_tokens; /* tokens per base span, 1..32768 */
    uint32_t max_tokens;   /* variable: most tokens of a merged span */
    float merge_tol;       /* variable: merge while width(a+b) <= (1 + tol) max(width a, b) */
    uint32_t fine_layers;  /* variable: the first layers keep base spans */
};

/* kvt_register with a span policy (spans may be NULL: the daemon's defaults). The policy is kept
 * with the namespace handle and sent again when the library re-registers after a reconnect. */
KVT_API int kvt_register_spans(struct kvt_client *c, const struct kvt_ns_spec *spec,
                               const struct kvt_span_policy *spans, struct kvt_ns_info *out);

/* Opens a context in namespace ns under a lease of ttl_ms (0: the daemon's context.ttl_ms),
 * renewed by every call that names the context; an unrenewed context is closed by the daemon.
 * Contexts do not survive a daemon restart: calls on one then fail with KVT_E_NOCTX and the
 * caller opens a new one. */
KVT_API int kvt_context_open(struct kvt_client *c, uint32_t ns, uint32_t ttl_ms, uint64_t *ctx_out);

struct kvt_context_info {
    uint32_t chunks;           /* in the context now */
    uint64_t tokens;           /* that they cover */
    uint32_t without_abstract; /* of those just appended: always selected whole */
};
/* Appends n stored chunks in sequence order: keys[i] (variant variants[i]; NULL: all 0) starts
 * at position start_pos[i], at or after the end of the chunk before. All or nothing:
 * KVT_E_NOTFOUND when one is not stored, KVT_E_INVAL for an order violation. info may be NULL. */
KVT_API int kvt_context_append(struct kvt_client *c, uint64_t ctx, const struct kvt_key *keys,
                               const uint32_t *variants, const uint64_t *start_pos, size_t n,
                               struct kvt_context_info *info);
KVT_API int kvt_context_close(struct kvt_client *c, uint64_t ctx);

/* One Select. Exactly one budget is nonzero. */
struct kvt_select_req {
    uint32_t layer;
    uint32_t n_query_heads; /* a multiple of the namespace's kv_heads */
    uint32_t head_dim;      /* the namespace's: the query holds n_query_heads x head_dim */
    const float *query;     /* query head j (belonging to KV head j / (n_query_heads /
                               kv_heads)) at query + j * head_dim; borrowed during the call */
    uint32_t budget_tokens; /* most tokens returned (the sink and recent window count) */
    float budget_fraction;  /* or: that share of the context's tokens, in (0, 1] */
    float top_p;            /* or: spans until that share of the estimated attention mass */
    uint32_t sink_tokens;   /* always kept: the context's first tokens (0: its first span) */
    uint32_t recent_tokens; /* always kept: its last tokens */
    /* Optional (RetroInfer): the n_estimates best unselected spans (at most 4096), each with its
     * mean key and mean value per KV head, so the engine can add their estimated contribution
     * instead of dropping them. est has room for n_estimates entries; est_means for
     * n_estimates x kv_heads x 2 x head_dim fp16 values (est_means_cap of them), where entry i's
     * means are [kv_head][key mean | value mean][head_dim]. */
    uint32_t n_estimates;
    struct kvt_span_est *est;
    uint16_t *est_means;
    size_t est_means_cap;
};

/* An unselected span, by its abstract's means (kvt_select_req.n_estimates). */
struct kvt_span_est {
    uint32_t chunk;
    uint32_t token_first;
    uint32_t n_tokens;     /* keys the means stand for */
    float mass;            /* its estimated share of the attention mass */
    const uint16_t *means; /* into est_means: kv_heads x 2 x head_dim fp16 */
};
/* A run of selected tokens of one chunk. */
struct kvt_span_sel {
    uint32_t chunk;       /* index in the context */
    uint32_t token_first; /* within the chunk */
    uint32_t n_tokens;
    enum kvt_tier_id tier; /* where the chunk is now; KVT_TIER_NONE when gone from every tier */
    float mass;            /* estimated share of the layer's attention mass */
    struct kvt_key key;    /* the chunk's key and variant */
    uint32_t variant;
    /* kvt_select_fetch only: where the run's rows are in dst, the fetch's status (0, or the
     * GetRange's error: KVT_E_NOTFOUND when the chunk left every tier after the Select) and the
     * tier that served them. */
    size_t dst_off;
    int status;
    enum kvt_tier_id served_from;
};
struct kvt_select_info {
    size_t n_spans;     /* runs written to spans */
    size_t n_estimates; /* estimates written to req->est */
    uint32_t spans_scored;
    uint64_t tokens_selected;
    uint64_t context_tokens;
    float mass_selected;
};
/* Runs Select on a context; the runs come in position order into spans (max_spans entries;
 * KVT_E_SMALLBUF when they do not fit). info may be NULL. */
KVT_API int kvt_select(struct kvt_client *c, uint64_t ctx, const struct kvt_select_req *req,
                       struct kvt_span_sel *spans, size_t max_spans, struct kvt_select_info *info);

/* Select, then the selected rows: each run's rows of req->layer ([token][k|v][head][dim], as a
 * GetRange returns them) one after the other into dst (dst_cap bytes; an arena buffer avoids a
 * copy), read from DRAM where the chunk is resident and by range reads from disk otherwise, all
 * runs pipelined at once (kvt_get_range_batch). ns is the context's namespace handle. 0 when the
 * Select and every fetch worked; the first run error otherwise (each run has its own status; the
 * rows of runs with status 0 are in dst). KVT_E_SMALLBUF, before any fetch, when the runs do not
 * fit dst. Two round trips (Select, then the batch); a later daemon may do it in one. */
KVT_API int kvt_select_fetch(struct kvt_client *c, uint32_t ns, uint64_t ctx,
                             const struct kvt_select_req *req, struct kvt_span_sel *spans,
                             size_t max_spans, void *dst, size_t dst_cap,
                             struct kvt_select_info *info);

/* A round trip to the daemon (reconnecting first if needed). */
KVT_API int kvt_ping(struct kvt_client *c);

/* What a statistic measures (docs/stats.md). */
enum kvt_stat_type {
    KVT_STAT_COUNTER = 0,   /* only goes up until the daemon restarts */
    KVT_STAT_GAUGE = 1,     /* a current level, or a maximum seen */
    KVT_STAT_HISTOGRAM = 2, /* a distribution: value is its count */
};

/* Daemon statistics, every one the daemon has, with type, unit and help (docs/stats.md). *out
 * is allocated by the library and freed with kvt_stats_free, which frees every string and array
 * in it. A histogram has n_buckets buckets: bucket_counts[i] observations (not cumulative) of at
 * most bucket_le[i], the last bound UINT64_MAX ("+Inf"); other stats have n_buckets 0 and NULL
 * arrays. */
struct kvt_stat {
    char *name;
    uint64_t value;
    enum kvt_stat_type type;
    char *help; /* "" when the daemon sent none */
    char *unit; /* "bytes", "ms", "us" or "" */
    size_t n_buckets;
    uint64_t *bucket_le;
    uint64_t *bucket_counts;
    uint64_t sum; /* histogram: of the observed values, in unit */
};
KVT_API int kvt_stats(struct kvt_client *c, struct kvt_stat **out, size_t *n_out);
KVT_API void kvt_stats_free(struct kvt_stat *stats, size_t n);

/* Runtime configuration. key and value are borrowed during the call; the value read is copied
 * into buf (caller storage of cap bytes; NUL-terminated, truncated to cap). */
KVT_API int kvt_config_get(struct kvt_client *c, const char *key, char *buf, size_t cap);
KVT_API int kvt_config_set(struct kvt_client *c, const char *key, const char *value);

/* One key of the daemon's config table, as kvt_config_list returns it. */
struct kvt_config_item {
    char *key;
    char *value;         /* current value, as kvt_config_get reads it */
    char *default_value; /* as the daemon's table writes it (e.g. "1G") */
    char *help;          /* the table's documentation of the key */
    int runtime;         /* nonzero: kvt_config_set may change it */
    int admin;           /* nonzero: changing it needs an admin uid (admin_uids) */
};
/* Every key of the daemon's config table, in the table's order. On success the array and its
 * strings are transferred to the caller in *out (n entries in *n_out; untouched on failure):
 * release them with kvt_config_list_free(*out, *n_out). */
KVT_API int kvt_config_list(struct kvt_client *c, struct kvt_config_item **out, size_t *n_out);
KVT_API void kvt_config_list_free(struct kvt_config_item *items, size_t n);

/* Bytes per element of a dtype (fp8: 1). 0 for an unknown dtype. */
KVT_API size_t kvt_dtype_size(enum kvt_dtype dtype);

/* Parses a key written by kvt_key_format (32 hex digits, hi then lo). text is borrowed during the
 * call; *out is filled on success. */
KVT_API int kvt_key_parse(const char *text, struct kvt_key *out);
/* Writes 32 hex digits and a NUL into buf (caller storage, at least 33 bytes; key is borrowed).
 * Returns buf. */
KVT_API char *kvt_key_format(const struct kvt_key *key, char *buf);

#ifdef __cplusplus
}
#endif
#endif
