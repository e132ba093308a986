"""kvtier's errors as a class hierarchy.

Every code of include/kvtier/errors.h (read from the extension, which generates the list from the
same X-macro) gets a class under one of a few categories, so callers catch what they can act on:

    KvtierError                       .code (negative int), .name ("E_NOTFOUND"), .text
    ├── InvalidArgumentError          also a ValueError: the request was wrong, retrying won't help
    ├── NotFoundError                 the chunk, namespace or context is not there
    ├── ConnectionLostError           the daemon is down, restarted, timed out or misbehaved; the
    │   └── KvtierTimeoutError        next call reconnects by itself (also a TimeoutError)
    ├── RetryableError                busy, CPU tier full of unwritten chunks, chunk in use,
    │                                 connection limit: the same call may succeed later
    ├── CapacityError                 out of memory, tier or index full, quota
    ├── PermissionDeniedError         tenant, uid, admin or trust checks refused the call
    ├── DataError                     corrupt object, checksum, I/O error, failed tier, fault
    ├── ProtocolError                 malformed frames, unknown operations (a bug on one side)
    └── KvtierOSError                 a system error passed through as -errno (.errno)

The codes themselves are constants here (errors.E_NOTFOUND == -10011, errors.OK == 0), for
the per-item statuses of batches and deletes. Each code also has its own class (kvtier.errors.by_code[-10011] is NotFound, a NotFoundError),
named after the code without its E_ prefix, in CamelCase where a name is listed below.
"""

from . import _kvtier


class KvtierError(Exception):
    """An error answered by libkvtier or the daemon: code, name and text of errors.h."""

    retryable = False

    def __init__(self, code, name=None, text=None):
        code = int(code)
        if name is None:
            name = _kvtier.error_name(code)
        if text is None:
            text = _kvtier.strerror(code)
        super().__init__(code, name, text)
        self.code = code
        self.name = name
        self.text = text

    def __str__(self):
        return f"{self.name} ({self.code}): {self.text}"

    def __reduce__(self):
        return (type(self), (self.code, self.name, self.text))


class InvalidArgumentError(KvtierError, ValueError):
    pass


class NotFoundError(KvtierError):
    pass


class ConnectionLostError(KvtierError):
    pass


class KvtierTimeoutError(ConnectionLostError, TimeoutError):
    pass


class RetryableError(KvtierError):
    retryable = True


class CapacityError(KvtierError):
    pass


class PermissionDeniedError(KvtierError):
    pass


class DataError(KvtierError):
    pass


class ProtocolError(KvtierError):
    pass


class KvtierOSError(KvtierError):
    """-errno from a system call; .errno is the positive errno value."""

    @property
    def errno(self):
        return -self.code


_CATEGORY = {
    "E_INVAL": (InvalidArgumentError, "InvalidArgument"),
    "E_TOOBIG": (InvalidArgumentError, "TooBig"),
    "E_RANGE": (InvalidArgumentError, "OutOfRange"),
    "E_GEOMETRY": (InvalidArgumentError, "Geometry"),
    "E_SMALLBUF": (InvalidArgumentError, "BufferTooSmall"),
    "E_BADCONFIG": (InvalidArgumentError, "BadConfig"),
    "E_READONLY": (InvalidArgumentError, "ReadOnlyConfig"),
    "E_NOTFOUND": (NotFoundError, "NotFound"),
    "E_NONS": (NotFoundError, "UnknownNamespace"),
    "E_NOCTX": (NotFoundError, "UnknownContext"),
    "E_NOHOLD": (NotFoundError, "UnknownHold"),
    "E_TIMEOUT": (KvtierTimeoutError, "Timeout"),
    "E_DISCONNECTED": (ConnectionLostError, "Disconnected"),
    "E_SHUTDOWN": (ConnectionLostError, "Shutdown"),
    "E_PROTO": (ConnectionLostError, "ProtocolMismatch"),
    "E_BUSY": (RetryableError, "Busy"),
    "E_DIRTYFULL": (RetryableError, "DirtyFull"),
    "E_INUSE": (RetryableError, "InUse"),
    "E_CONNLIMIT": (RetryableError, "ConnectionLimit"),
    "E_NOMEM": (CapacityError, "NoMemory"),
    "E_FULL": (CapacityError, "Full"),
    "E_INDEXFULL": (CapacityError, "IndexFull"),
    "E_QUOTA": (CapacityError, "Quota"),
    "E_EXISTS": (CapacityError, "Exists"),
    "E_ACCESS": (PermissionDeniedError, "Access"),
    "E_PEERUID": (PermissionDeniedError, "PeerUid"),
    "E_TENANT": (PermissionDeniedError, "Tenant"),
    "E_NOTADMIN": (PermissionDeniedError, "NotAdmin"),
    "E_UNTRUSTED": (PermissionDeniedError, "Untrusted"),
    "E_LOSSY": (PermissionDeniedError, "LossyNotAllowed"),
    "E_CORRUPT": (DataError, "Corrupt"),
    "E_IO": (DataError, "IOFailure"),
    "E_TIERFAILED": (DataError, "TierFailed"),
    "E_CHECKSUM": (DataError, "Checksum"),
    "E_FAULT": (DataError, "Fault"),
    "E_BADFRAME": (ProtocolError, "BadFrame"),
    "E_TRUNCATED": (ProtocolError, "Truncated"),
    "E_BADOP": (ProtocolError, "BadOperation"),
    "E_NOARENA": (ProtocolError, "NoArena"),
    "E_CANCELED": (KvtierError, "Canceled"),  # the caller's own kvt_cancel: a status, not a fault
}

by_code = {}
by_name = {}

for _name, _code, _text in _kvtier.error_list():
    globals()[_name] = _code  # the codes as constants: errors.E_NOTFOUND == -10011
    if _code == 0:
        continue
    _base, _cls_name = _CATEGORY.get(_name, (KvtierError, _name[2:].title().replace("_", "")))
    _cls = type(_cls_name, (_base,),
                {"__doc__": f"{_name} ({_code}): {_text}", "__module__": __name__})
    globals()[_cls_name] = _cls
    by_code[_code] = _cls
    by_name[_name] = _cls


def error_class(code):
    """The class raised for a code: its own, KvtierOSError for -errno, else KvtierError."""
    cls = by_code.get(code)
    if cls is not None:
        return cls
    if -4095 <= code <= -1:
        return KvtierOSError
    return KvtierError


_kvtier._set_errors(KvtierError, by_code, KvtierOSError)

del _name, _code, _text, _base, _cls_name, _cls
