"""Asynchronous submission from Python (submit_*, poll, cancel, pending, fileno) against a real
kvtierd, and the daemon's own words in exceptions."""

import select
import time

import numpy as np
import pytest

import kvtier
from kvtier import errors


def chunks(ns, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, ns.chunk_bytes, dtype=np.uint8) for _ in range(n)]


def keys_for(ns, n, salt):
    tokens = [(salt * 7919 + i) % 50000 for i in range(n * ns.tokens_per_chunk)]
    return ns.chunk_keys(tokens)


def drain(c, timeout=5.0):
    """Every completion until nothing is pending, as {(ticket, index): (status, length, tier)}."""
    done = {}
    deadline = time.monotonic() + timeout
    while c.pending:
        assert time.monotonic() < deadline, "completions did not arrive"
        for ticket, index, status, length, tier in c.poll(timeout=1.0):
            assert (ticket, index) not in done, "an item completed twice"
            done[(ticket, index)] = (status, length, tier)
    return done


def test_submit_put_then_get_zero_copy_and_staged(client, ns):
    n = 150  # more than one 64-request window
    keys = keys_for(ns, n, 1)
    data = chunks(ns, n, 1)
    t = client.submit_put(ns, [(k, d) for k, d in zip(keys, data)])
    assert client.pending == n
    done = drain(client)
    assert len(done) == n and all(s == 0 for s, _, _ in done.values())

    outs = [client.arena_alloc(ns.chunk_bytes) if i % 2 else bytearray(ns.chunk_bytes)
            for i in range(n)]
    missing = bytearray(ns.chunk_bytes)
    t = client.submit_get(ns, [(k, o) for k, o in zip(keys, outs)] + [(b"\x01" * 16, missing)])
    done = drain(client)
    assert len(done) == n + 1
    for i in range(n):
        status, length, tier = done[(t, i)]
        assert (status, length, tier) == (0, ns.chunk_bytes, kvtier.Tier.CPU)
        assert np.array_equal(np.frombuffer(outs[i], np.uint8), data[i])
    assert done[(t, n)][0] == errors.E_NOTFOUND

    rows = 5
    row_bytes = 2 * ns.kv_heads * ns.head_dim * 2
    outs = [bytearray(rows * row_bytes) for _ in range(8)]
    t = client.submit_get_range(ns, [(keys[i], 1, 3, rows, outs[i]) for i in range(8)])
    done = drain(client)
    for i in range(8):
        assert done[(t, i)][:2] == (0, rows * row_bytes)
        start = (ns.tokens_per_chunk + 3) * row_bytes
        assert bytes(outs[i]) == data[i].tobytes()[start:start + rows * row_bytes]


def test_cancel_drops_unsent_items(client, ns):
    n = 1000
    keys = keys_for(ns, n, 2)
    buf = chunks(ns, 1, 2)[0]
    t = client.submit_put(ns, [(k, buf) for k in keys])
    canceled = client.cancel(t)
    assert n - 64 <= canceled < n
    done = drain(client)
    statuses = [done[(t, i)][0] for i in range(n)]
    assert statuses.count(errors.E_CANCELED) == canceled
    assert statuses.count(0) == n - canceled
    assert client.lookup(ns, keys[:1]) == 1  # the first went out before the cancel
    with pytest.raises(kvtier.NotFoundError):
        client.cancel(t)


def test_fileno_and_poll_timeout(client, ns):
    keys = keys_for(ns, 4, 3)
    data = chunks(ns, 4, 3)
    client.put_batch(ns, list(zip(keys, data)))
    assert client.poll(timeout=0.01) == []  # nothing open: returns at once
    outs = [bytearray(ns.chunk_bytes) for _ in keys]
    t = client.submit_get(ns, list(zip(keys, outs)))
    readable, _, _ = select.select([client.fileno()], [], [], 2.0)
    assert readable
    done = drain(client)
    assert sorted(done) == [(t, i) for i in range(4)]


def test_stalled_daemon_times_every_item_out(daemon):
    with kvtier.Client(daemon.socket, timeout=0.3) as c:
        ns = c.register("async-stall", layers=2, kv_heads=2, head_dim=64, tokens_per_chunk=16)
        keys = keys_for(ns, 100, 4)
        data = chunks(ns, 1, 4)[0]
        c.put_batch(ns, [(k, data) for k in keys])
        bufs = [c.arena_alloc(ns.chunk_bytes) for _ in keys]
        daemon.pause()
        try:
            t = c.submit_get(ns, list(zip(keys, bufs)))
            t0 = time.monotonic()
            done = drain(c)
            assert time.monotonic() - t0 < 3.0
        finally:
            daemon.resume()
        assert [done[(t, i)][0] for i in range(100)] == [errors.E_TIMEOUT] * 100
        # The daemon may still write into them: their space is set aside.
        assert all(b.tainted for b in bufs)
        for _ in range(100):
            try:
                c.ping()
                break
            except kvtier.ConnectionLostError:
                time.sleep(0.02)
        out = bytearray(ns.chunk_bytes)
        t = c.submit_get(ns, [(keys[0], out)])
        assert drain(c)[(t, 0)][0] == 0 and bytes(out) == data.tobytes()


def test_close_with_items_open_waits_for_them(shared_daemon):
    c = kvtier.Client(shared_daemon.socket)
    ns = c.register("async-close", layers=2, kv_heads=2, head_dim=64, tokens_per_chunk=16)
    data = chunks(ns, 1, 5)[0]
    c.submit_put(ns, [(k, data) for k in keys_for(ns, 500, 5)])
    c.close()  # cancels the unsent, waits for the sent: no buffer released under the daemon
    assert c.closed and c.pending == 0


def test_error_text_carries_the_daemons_words(client):
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        client.config_get("no.such.key")
    assert "unknown config key" in str(e.value)
    assert e.value.code == errors.E_BADCONFIG


def test_lookup_hold_pins_hits_until_released(client, ns):
    keys = keys_for(ns, 4, 6)
    data = chunks(ns, 4, 6)
    client.put_batch(ns, list(zip(keys, data)))
    hits, hold = client.lookup_hold(ns, keys, 5000)
    assert hits == 4 and hold != 0
    assert client.stats()["hold_pins"] >= 4
    statuses = client.delete(ns, keys[:1])
    assert statuses == [errors.E_INUSE]  # held: not deleted
    with kvtier.Client(client.socket_path) as other_session:  # same tenant, another client
        assert other_session.release_hold(hold) == 4
    with pytest.raises(errors.UnknownHold) as e:
        client.release_hold(hold)
    assert "unknown hold" in str(e.value)
    assert client.lookup_hold(ns, [b"\x02" * 16], 5000) == (0, 0)
    with pytest.raises(kvtier.InvalidArgumentError):
        client.lookup_hold(ns, keys, 0)


def test_engine_owned_pool_as_the_arena(shared_daemon):
    import fcntl
    import mmap
    import os

    size = 1 << 20
    fd = os.memfd_create("engine-pool", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    pool = mmap.mmap(fd, size)
    with pytest.raises(kvtier.InvalidArgumentError):
        kvtier.Client(shared_daemon.socket, arena=(fd, pool))  # not sealed
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    with kvtier.Client(shared_daemon.socket, arena=(fd, pool, 512 << 10, 256 << 10)) as c:
        ns = c.register("pool-test", layers=2, kv_heads=2, head_dim=64, tokens_per_chunk=16)
        view = np.frombuffer(pool, np.uint8)
        data = chunks(ns, 1, 7)[0]
        view[:ns.chunk_bytes] = data
        key = keys_for(ns, 1, 7)[0]
        src = memoryview(pool)[:ns.chunk_bytes]
        dst = memoryview(pool)[ns.chunk_bytes:2 * ns.chunk_bytes]
        c.put(ns, key, src)  # from the engine's pool itself
        assert c.get(ns, key, dst) == ns.chunk_bytes  # into it
        assert np.array_equal(view[ns.chunk_bytes:2 * ns.chunk_bytes], data)
        before = c.stats()["get_bytes"]
        assert c.get(ns, key, dst) == ns.chunk_bytes
        assert c.stats()["get_bytes"] - before == ns.chunk_bytes
        buf = c.arena_alloc(4096)  # lent range only
        lo = np.frombuffer(pool, np.uint8).ctypes.data
        assert lo + (512 << 10) <= buf.address < lo + (768 << 10)
        del buf, src, dst, view
    pool.close()  # the client let go of its view at close
    os.close(fd)
