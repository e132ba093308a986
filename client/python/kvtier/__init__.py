"""kvtier: the Python client of kvtierd, the node-local KV-cache daemon.

    import kvtier
    with kvtier.Client(socket="/run/kvtier/kvtier.sock", tenant="team-a", timeout=2.0) as c:
        ns = c.register("llama-3-8b", layers=32, kv_heads=8, head_dim=128, dtype="fp16",
                        tokens_per_chunk=256)
        keys = ns.chunk_keys(token_ids)          # chained 128-bit keys, one per full chunk
        hits = c.lookup(ns, keys)                # leading chunks cached
        buf = c.arena_alloc(ns.chunk_bytes)      # zero-copy buffer in the shared arena
        c.get(ns, keys[0], buf)                  # the daemon writes straight into buf
        kv = numpy.frombuffer(buf, numpy.float16)

The binding is a C extension over libkvtier (see include/kvtier/kvtier.h for every call's
contract); this file adds the error classes and enums. Calls release the GIL. A Client is not
thread-safe: use one per thread, or guard it with a lock (a second thread calling into a busy
client gets RuntimeError rather than a corrupted session).
"""
import enum

from . import _kvtier
from . import errors
from ._kvtier import (ArenaBuffer, Client, Namespace, chunk_keys, dtype_size, key_format,
                      key_parse)
from .errors import (CapacityError, ConnectionLostError, DataError, InvalidArgumentError,
                     KvtierError, KvtierOSError, KvtierTimeoutError, NotFoundError,
                     PermissionDeniedError, ProtocolError, RetryableError)

__version__ = _kvtier.version()
ABI_VERSION = _kvtier.ABI_VERSION


class Tier(enum.IntEnum):
    """Where a chunk was found (lookup_tiers, get_batch)."""

    NONE = 0
    GPU = 1
    CPU = 2
    DISK = 3
    REMOTE = 4


class Dtype(enum.IntEnum):
    """Element type of a namespace's K and V (register also takes "fp16", ...)."""

    FP16 = 0
    BF16 = 1
    FP32 = 2
    FP8 = 3


KEY_BYTES = 16

__all__ = [
    "ABI_VERSION", "ArenaBuffer", "CapacityError", "Client", "ConnectionLostError", "DataError",
    "Dtype", "InvalidArgumentError", "KEY_BYTES", "KvtierError", "KvtierOSError",
    "KvtierTimeoutError", "Namespace", "NotFoundError", "PermissionDeniedError", "ProtocolError",
    "RetryableError", "Tier", "chunk_keys", "dtype_size", "errors", "key_format", "key_parse",
]
