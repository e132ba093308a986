"""The daemon going away: killed, stopped, paused past the timeout, and started again. Calls fail
fast with ConnectionLostError, and the same Client, Namespace and arena buffers work again once
the daemon is back."""

import time

import numpy as np
import pytest

import kvtier


def wait_until_back(c, deadline_s=5.0):
    end = time.monotonic() + deadline_s
    while True:
        try:
            c.ping()
            return
        except kvtier.ConnectionLostError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


def setup_ns(c, tag):
    ns = c.register(f"restart-{tag}", layers=2, kv_heads=2, head_dim=64, tokens_per_chunk=16)
    keys = ns.chunk_keys(range(16 * 4))
    data = np.random.default_rng(3).integers(0, 256, ns.chunk_bytes, dtype=np.uint8)
    return ns, keys, data


def test_killed_then_restarted(daemon):
    c = kvtier.Client(daemon.socket, timeout=2.0)
    ns, keys, data = setup_ns(c, "kill")
    c.put(ns, keys[0], data)
    buf = c.arena_alloc(ns.chunk_bytes)
    addr = buf.address
    daemon.kill()

    t0 = time.monotonic()
    with pytest.raises(kvtier.ConnectionLostError) as e:
        c.ping()
    assert e.value.name == "E_DISCONNECTED"
    for call in (lambda: c.lookup(ns, keys), lambda: c.get(ns, keys[0], buf),
                 lambda: c.put(ns, keys[1], data), lambda: c.stats()):
        with pytest.raises(kvtier.ConnectionLostError):
            call()
    assert time.monotonic() - t0 < 1.0, "calls to a dead daemon must fail fast, not time out"
    # The failed Get tainted buf (the library cannot tell whether its request left), which only
    # means its space is never reused after a free; using it again is fine.
    assert buf.tainted

    daemon.start()
    wait_until_back(c)
    # Same namespace object, same arena buffer at the same address.
    assert c.lookup(ns, keys) == 0  # the CPU tier died with the daemon
    c.put(ns, keys[0], data)
    assert c.get(ns, keys[0], buf) == ns.chunk_bytes
    assert buf.address == addr and np.array_equal(np.frombuffer(buf, np.uint8), data)
    c.close()


def test_stopped_cleanly_then_restarted(daemon):
    with kvtier.Client(daemon.socket, timeout=2.0) as c:
        ns, keys, data = setup_ns(c, "stop")
        c.put(ns, keys[0], data)
        assert daemon.stop() == 0
        with pytest.raises(kvtier.ConnectionLostError):
            c.lookup(ns, keys)
        daemon.start()
        wait_until_back(c)
        c.put(ns, keys[0], data)
        assert c.lookup(ns, keys) == 1


def test_paused_past_the_timeout(daemon):
    with kvtier.Client(daemon.socket, timeout=0.3) as c:
        ns, keys, data = setup_ns(c, "pause")
        c.put(ns, keys[0], data)
        buf = c.arena_alloc(ns.chunk_bytes)
        daemon.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(kvtier.KvtierTimeoutError) as e:
                c.get(ns, keys[0], buf)
            took = time.monotonic() - t0
            assert e.value.name == "E_TIMEOUT" and isinstance(e.value, TimeoutError)
            assert 0.25 < took < 3.0
        finally:
            daemon.resume()
        # The daemon may still write into buf for the abandoned Get: its space is set aside.
        assert buf.tainted
        addr = buf.address
        buf.free()
        again = c.arena_alloc(ns.chunk_bytes)
        assert again.address != addr
        wait_until_back(c)
        assert c.get(ns, keys[0], again) == ns.chunk_bytes
        assert np.array_equal(np.frombuffer(again, np.uint8), data)


def test_connect_while_down_then_up(daemon):
    sock = daemon.socket
    daemon.kill()
    with pytest.raises(kvtier.ConnectionLostError):
        kvtier.Client(sock, timeout=0.5)
    daemon.start()
    with kvtier.Client(sock, timeout=2.0) as c:
        c.ping()
