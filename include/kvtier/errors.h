/*
 * kvtier error space: the one list that generates the C enum, kvt_strerror() and the status codes
 * carried by protocol responses. 0 is success; every error is negative. Codes from -1 to -4095 are
 * reserved for system errors passed through as -errno; kvtier's own codes start at -10000 and never
 * change value once released, because they travel on the wire.
 */
#ifndef KVTIER_ERRORS_H
#define KVTIER_ERRORS_H

/* KVT_API marks the functions that libkvtier.so exports. The library is compiled with
 * -fvisibility=hidden and linked with a version script (client/lib/libkvtier.map) that names
 * the same functions, so nothing else of it (allocator, config, logger, protobuf code) can be
 * bound to by a program, and tests/integration/test_abi.sh checks that the two lists agree.
 * Defined here because every public header includes this one. */
#ifndef KVT_API
#if defined(__GNUC__) || defined(__clang__)
#define KVT_API __attribute__((visibility("default")))
#else
#define KVT_API
#endif
#endif

#define KVT_ERRORS(X)                                                                              \
    X(OK, 0, "success")                                                                            \
    X(E_INVAL, -10001, "invalid argument")                                                         \
    X(E_NOMEM, -10002, "out of memory")                                                            \
    X(E_BADFRAME, -10003, "malformed frame: protobuf message could not be parsed")                 \
    X(E_TRUNCATED, -10004, "truncated frame: connection ended inside a frame")                     \
    X(E_TOOBIG, -10005, "frame or object larger than the configured maximum")                      \
    X(E_BADOP, -10006, "unknown or missing operation")                                             \
    X(E_RANGE, -10007, "offset or length outside the transfer arena")                              \
    X(E_GEOMETRY, -10008, "size disagrees with the namespace geometry")                            \
    X(E_NONS, -10009, "unknown namespace")                                                         \
    X(E_ACCESS, -10010, "namespace belongs to another tenant")                                     \
    X(E_NOTFOUND, -10011, "key not found")                                                         \
    X(E_BUSY, -10012, "resource temporarily busy (no staging buffer or slot free); retry later")   \
    X(E_FULL, -10013, "tier full: no space could be reclaimed")                                    \
    X(E_TIMEOUT, -10014, "timed out waiting for the daemon")                                       \
    X(E_DISCONNECTED, -10015, "daemon unreachable or connection lost")                             \
    X(E_PROTO, -10016, "protocol violation or version mismatch")                                   \
    X(E_NOARENA, -10017, "no transfer arena shared on this connection")                            \
    X(E_BADCONFIG, -10018, "unknown config key or invalid value")                                  \
    X(E_READONLY, -10019, "config key cannot be changed at run time")                              \
    X(E_CORRUPT, -10020, "stored object failed its checksum")                                      \
    X(E_IO, -10021, "I/O error")                                                                   \
    X(E_TIERFAILED, -10022, "tier latched failed after repeated errors")                           \
    X(E_SMALLBUF, -10023, "destination buffer too small")                                          \
    X(E_EXISTS, -10024, "already exists")                                                          \
    X(E_SHUTDOWN, -10025, "daemon is shutting down")                                               \
    X(E_CONNLIMIT, -10026, "too many client connections (max_clients); retry later")               \
    X(E_DIRTYFULL, -10027, "CPU tier full of chunks not yet written to disk; retry later")         \
    X(E_INUSE, -10028, "chunk is being read or written; retry later")                              \
    X(E_PEERUID, -10029, "peer uid not allowed to connect (allowed_uids)")                         \
    X(E_INDEXFULL, -10030, "index full (index.max_objects) and no chunk could be evicted")         \
    X(E_TENANT, -10031, "tenant not bound to the peer's credentials (tenants)")                    \
    X(E_NOTADMIN, -10032, "config key can only be changed by an admin uid (admin_uids)")           \
    X(E_CHECKSUM, -10033,                                                                          \
      "payload does not match its checksum: the buffer changed during the copy")                   \
    X(E_FAULT, -10034, "client memory could not be accessed (arena page gone)")                    \
    X(E_QUOTA, -10035, "tenant quota exceeded")                                                    \
    X(E_UNTRUSTED, -10036, "socket is served by an untrusted uid, not kvtierd")                    \
    X(E_NOCTX, -10037, "unknown or closed context (its lease may have expired)")                   \
    X(E_CANCELED, -10038, "request canceled before it was sent")                                   \
    X(E_NOHOLD, -10039, "unknown or released hold (its lease may have expired)")                   \
    X(E_LOSSY, -10040, "lossy form asked for in a namespace not registered with allow_lossy")

#ifdef __cplusplus
extern "C" {
#endif

enum kvt_error {
#define KVT__ERR_ENUM(name, code, text) KVT_##name = (code),
    KVT_ERRORS(KVT__ERR_ENUM)
#undef KVT__ERR_ENUM
};

/* Text for any code: kvtier codes, -errno values and unknown values alike. Never NULL; the
 * returned string is static. */
KVT_API const char *kvt_strerror(int err);

/* Symbolic name ("E_RANGE", "OK", "ENOENT" for -errno, "UNKNOWN") for logs and JSON. Static. */
KVT_API const char *kvt_strerror_name(int err);

#ifdef __cplusplus
}
#endif

#endif
