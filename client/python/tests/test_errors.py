"""Bad input, from Python and from the daemon: every mistake raises a clear exception (a
KvtierError subclass carrying the daemon's code and text, or TypeError/ValueError for arguments
Python can check itself) and changes nothing."""

import os
import pickle

import numpy as np
import pytest

import kvtier
from kvtier import errors


def test_every_code_has_a_class_in_the_hierarchy():
    listed = kvtier._kvtier.error_list()
    assert ("OK", 0, "success") in listed
    for name, code, text in listed:
        assert getattr(errors, name) == code
        if code == 0:
            continue
        # A code added to errors.h needs a deliberate place in the hierarchy.
        assert name in errors._CATEGORY, f"{name}: give it a category in kvtier/errors.py"
        cls = errors.by_code[code]
        base, cls_name = errors._CATEGORY[name]
        assert issubclass(cls, base) and cls.__name__ == cls_name
        e = cls(code)
        assert (e.code, e.name, e.text) == (code, name, text)
        assert str(e) == f"{name} ({code}): {text}"
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is cls and again.code == code
    assert issubclass(errors.by_name["E_NOTFOUND"], kvtier.NotFoundError)
    assert issubclass(errors.by_name["E_TIMEOUT"], kvtier.KvtierTimeoutError)
    assert issubclass(errors.by_name["E_TIMEOUT"], TimeoutError)
    assert issubclass(errors.by_name["E_DISCONNECTED"], kvtier.ConnectionLostError)
    assert issubclass(errors.by_name["E_INVAL"], ValueError)
    for name in ("E_BUSY", "E_DIRTYFULL", "E_INUSE", "E_CONNLIMIT"):
        assert errors.by_name[name].retryable
    assert not errors.by_name["E_NOTFOUND"].retryable
    assert errors.error_class(-2) is kvtier.KvtierOSError
    assert kvtier.KvtierOSError(-2).errno == 2


def test_connect_errors():
    with pytest.raises(kvtier.ConnectionLostError) as e:
        kvtier.Client("/nonexistent/kvtier.sock", timeout=0.5)
    assert e.value.name == "E_DISCONNECTED" and e.value.code == errors.E_DISCONNECTED
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        kvtier.Client("/tmp/" + "x" * 200)
    assert e.value.name == "E_INVAL"
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            kvtier.Client("/tmp/x.sock", timeout=bad)
    with pytest.raises(ValueError):
        kvtier.Client("/tmp/x.sock", arena_bytes=-1)
    with pytest.raises(TypeError):
        kvtier.Client(123)


def test_tenant_not_bound_to_our_uid_is_refused(shared_daemon):
    with pytest.raises(kvtier.PermissionDeniedError) as e:
        kvtier.Client(shared_daemon.socket, tenant="somebody-else")
    assert e.value.name == "E_TENANT"


def test_daemon_rejects_bad_geometry_and_sizes(client, ns):
    with pytest.raises(kvtier.InvalidArgumentError):
        client.register("bad", layers=0, kv_heads=1, head_dim=64)
    key = ns.chunk_keys(range(16))[0]
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        client.put(ns, key, b"\0" * (ns.chunk_bytes - 4096))
    assert e.value.name == "E_GEOMETRY"
    assert client.lookup(ns, [key]) == 0  # nothing changed
    client.put(ns, key, np.zeros(ns.chunk_bytes, np.uint8))
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        client.get(ns, key, bytearray(ns.chunk_bytes - 1))
    assert e.value.name == "E_SMALLBUF"
    with pytest.raises(kvtier.NotFoundError) as e:
        client.get(ns, ns.chunk_keys(range(1, 17))[0])
    assert e.value.name == "E_NOTFOUND" and "not found" in e.value.text
    with pytest.raises(kvtier.NotFoundError) as e:
        client.lookup(999, [key])
    assert e.value.name == "E_NONS"
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        client.config_set("socket", "/tmp/elsewhere.sock")
    assert e.value.name == "E_READONLY"


def test_python_side_argument_checks(client, ns):
    key = ns.chunk_keys(range(16))[0]
    with pytest.raises(ValueError):
        client.get(ns, key[:15])
    with pytest.raises(TypeError):
        client.get(ns, 12345)
    with pytest.raises(TypeError):
        client.get(ns, "0" * 32)
    with pytest.raises(ValueError):
        client.put(ns, key, b"x" * ns.chunk_bytes, variant=-1)
    with pytest.raises(ValueError):
        client.put(ns, key, b"x" * ns.chunk_bytes, n_tokens=2**32)
    with pytest.raises(ValueError):
        client.get_range(ns, key, -1, 0, 1)
    with pytest.raises(BufferError):
        client.get(ns, key, b"\0" * ns.chunk_bytes)  # read-only destination
    with pytest.raises(TypeError):
        client.get(ns.handle, key)  # a bare handle cannot size the result
    with pytest.raises(ValueError):
        client.lookup(ns, [key, key], variants=[0])
    with pytest.raises(ValueError):
        client.lookup(ns, b"\0" * 17)
    with pytest.raises(TypeError):
        client.put_batch(ns, [key])
    with pytest.raises(TypeError):
        client.get_batch(ns, [(key,)])
    with pytest.raises(ValueError):
        client.register("x" * 200, layers=1, kv_heads=1, head_dim=64)
    with pytest.raises(ValueError):
        client.register("m", layers=-1, kv_heads=1, head_dim=64)
    with pytest.raises(ValueError):
        client.register("m", layers=1, kv_heads=1, head_dim=64, dtype="fp12")
    with pytest.raises(ValueError):
        client.arena_alloc(0)
    with pytest.raises(kvtier.CapacityError) as e:
        client.arena_alloc(1 << 40)
    assert e.value.name == "E_NOMEM"


def test_bad_tokens(ns):
    with pytest.raises(TypeError):
        ns.chunk_keys(["a"] * 16)
    with pytest.raises(TypeError):
        ns.chunk_keys(np.zeros(16, dtype=np.float32))
    with pytest.raises(TypeError):
        ns.chunk_keys(np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(OverflowError):
        ns.chunk_keys([2**40] * 16)
    with pytest.raises(OverflowError):
        ns.chunk_keys(np.full(16, 2**40, dtype=np.int64))
    with pytest.raises(OverflowError):
        ns.chunk_keys(np.full(16, 2**31, dtype=np.uint32))
    with pytest.raises(TypeError):
        ns.chunk_keys(42)
    with pytest.raises(TypeError):
        kvtier.chunk_keys("not a namespace", [1] * 16)
    with pytest.raises(kvtier.InvalidArgumentError):
        kvtier.key_parse("xyz")


def test_namespace_of_another_client_is_refused(shared_daemon, ns):
    with kvtier.Client(shared_daemon.socket) as other:
        with pytest.raises(ValueError, match="another client"):
            other.lookup(ns, ns.chunk_keys(range(16)))


def test_closed_client_raises(shared_daemon):
    c = kvtier.Client(shared_daemon.socket)
    ns = c.register(f"closed-{os.getpid()}", layers=1, kv_heads=1, head_dim=64)
    c.close()
    c.close()  # idempotent
    for call in (c.ping, c.stats, lambda: c.lookup(ns, []), lambda: c.arena_alloc(4096),
                 lambda: c.register("m", layers=1, kv_heads=1, head_dim=64)):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError):
        c.socket_path
    with pytest.raises(ValueError):
        with c:
            pass
