"""Arena buffers: zero-copy proven by address (and by a full arena), and their lifetime: a
buffer or view kept after its client is closed stays valid memory or raises, never crashes."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kvtier

ARENA_NAME = "/memfd:kvtier-transfer"


def mappings(pid="self"):
    """(start, end, inode, name) of every mapping of a process."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5].strip() if len(parts) > 5 else ""
            out.append((lo, hi, int(parts[4]), name))
    return out


def arena_mapping_of(addr, pid="self"):
    for lo, hi, inode, name in mappings(pid):
        if lo <= addr < hi and name.startswith(ARENA_NAME):
            return lo, hi, inode
    return None


def view_address(view):
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_zero_copy_by_address(shared_daemon, client, ns):
    key = ns.chunk_keys(range(16))[0]
    data = np.random.default_rng(1).integers(0, 256, ns.chunk_bytes, dtype=np.uint8)
    client.put(ns, key, data)

    buf = client.arena_alloc(ns.chunk_bytes)
    assert buf.address % 4096 == 0 and len(buf) == ns.chunk_bytes
    mv = memoryview(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    # Every view is the arena memory itself, not a copy of it.
    assert view_address(mv) == buf.address
    assert arr.ctypes.data == buf.address
    assert np.frombuffer(mv[4096:], np.uint8).ctypes.data == buf.address + 4096
    # That memory is the shared memfd, and kvtierd maps the very same file.
    lo, hi, inode = arena_mapping_of(buf.address)
    assert lo <= buf.address and buf.address + len(buf) <= hi
    assert any(i == inode and n.startswith(ARENA_NAME)
               for _, _, i, n in mappings(shared_daemon.pid)), "daemon does not map our arena"
    # A Get lands in the views made before it: the daemon wrote into this memory.
    assert not arr.any()
    client.get(ns, key, buf)
    assert np.array_equal(arr, data)
    assert bytes(mv[:16]) == data[:16].tobytes()
    # Writes through numpy are what a Put from the buffer sends.
    arr[:] = data[::-1]
    k2 = ns.chunk_keys(range(50, 66))[0]
    client.put(ns, k2, buf)
    assert client.get(ns, k2) == data[::-1].tobytes()


def test_arena_get_needs_no_staging(shared_daemon):
    """With the arena full, a Get into an arena buffer still works (the daemon writes into it
    directly) while a Get into ordinary memory, which needs a staging buffer, cannot."""
    with kvtier.Client(shared_daemon.socket, arena_bytes=4 << 20, timeout=0.5) as c:
        # 2 layers x 2 x 4 heads x 64 x fp16 x 512 tokens = 1 MiB: above the inline limit.
        ns = c.register(f"staging-{os.getpid()}", layers=2, kv_heads=4, head_dim=64,
                        tokens_per_chunk=512)
        assert ns.chunk_bytes == 1 << 20
        key = ns.chunk_keys(range(512))[0]
        c.put(ns, key, np.full(ns.chunk_bytes, 7, np.uint8))
        dst = c.arena_alloc(ns.chunk_bytes)
        filler = []
        while True:
            try:
                filler.append(c.arena_alloc(1 << 18))
            except kvtier.CapacityError:
                break
        assert filler, "the arena had no room left to fill"
        assert c.get(ns, key, dst) == ns.chunk_bytes
        assert memoryview(dst)[0] == 7 and memoryview(dst)[-1] == 7
        with pytest.raises(kvtier.CapacityError):
            c.get(ns, key, bytearray(ns.chunk_bytes))
        for f in filler:
            f.free()
        out = bytearray(ns.chunk_bytes)
        assert c.get(ns, key, out) == ns.chunk_bytes and out[0] == 7


def test_views_outlive_close_and_then_the_arena_goes(shared_daemon):
    c = kvtier.Client(shared_daemon.socket)
    buf = c.arena_alloc(8192)
    addr = buf.address
    mv = memoryview(buf)
    arr = np.frombuffer(buf, dtype=np.uint32)
    arr[:] = 0xabcd
    c.close()
    assert c.closed
    # The views still read and write real memory: the arena stays mapped for them.
    assert arena_mapping_of(addr) is not None
    assert arr[5] == 0xabcd and mv[0] == 0xcd
    arr[1] = 1
    mv[0] = 0x11
    assert arr[0] & 0xff == 0x11
    # The buffer itself gives out nothing new.
    with pytest.raises(ValueError, match="closed"):
        memoryview(buf)
    with pytest.raises(ValueError, match="closed"):
        np.frombuffer(buf, np.uint8)
    with pytest.raises(ValueError, match="closed"):
        buf.address
    with pytest.raises(ValueError, match="closed"):
        c.ping()
    # The last view released ends the session and unmaps the arena.
    del mv
    assert arena_mapping_of(addr) is not None
    del arr
    gc.collect()
    assert arena_mapping_of(addr) is None
    buf.free()  # a no-op now
    del buf


def test_buffer_keeps_its_client_alive(shared_daemon):
    buf = kvtier.Client(shared_daemon.socket).arena_alloc(4096)
    # The Client object has no other reference, yet the session lives with the buffer.
    memoryview(buf)[:4] = b"abcd"
    assert bytes(memoryview(buf)[:4]) == b"abcd"
    addr = buf.address
    del buf
    gc.collect()
    assert arena_mapping_of(addr) is None


def test_free_and_reuse(client):
    a = client.arena_alloc(64 << 10)
    addr = a.address
    mv = memoryview(a)
    with pytest.raises(BufferError):
        a.free()
    del mv
    a.free()
    a.free()
    with pytest.raises(ValueError, match="freed"):
        memoryview(a)
    with pytest.raises(ValueError, match="freed"):
        a.address
    b = client.arena_alloc(64 << 10)
    assert b.address == addr  # the space came back to the arena
    with client.arena_alloc(4096) as c:
        caddr = c.address
    with pytest.raises(ValueError):
        c.address
    d = client.arena_alloc(4096)
    assert d.address == caddr


def test_collected_buffers_give_their_space_back(client):
    addrs = set()
    for _ in range(200):
        b = client.arena_alloc(1 << 20)
        addrs.add(b.address)
        del b
    assert len(addrs) == 1


def test_misuse_never_crashes_the_process(shared_daemon):
    """Every way of touching memory after close, in a process of its own: it must end with
    exceptions and exit 0, not with SIGSEGV."""
    script = textwrap.dedent(f"""
        import gc, numpy as np, kvtier
        sock = {shared_daemon.socket!r}
        raised = 0
        def expect(fn):
            global raised
            try:
                fn()
            except (ValueError, BufferError):
                raised += 1
            else:
                raise SystemExit("no exception from " + fn.__name__)
        c = kvtier.Client(sock)
        bufs = [c.arena_alloc(4096) for _ in range(8)]
        arr = np.frombuffer(bufs[0], np.uint8)
        c.close()
        arr[:] = 1; assert arr.sum() == 4096
        for b in bufs:
            expect(lambda: memoryview(b))
            expect(lambda: bytes(b))
            expect(lambda: np.frombuffer(b, np.uint8))
            expect(lambda: b.address)
        del arr; gc.collect()
        for b in bufs:
            expect(lambda: memoryview(b))
            b.free()
        c2 = kvtier.Client(sock)
        ns = c2.register("misuse", layers=1, kv_heads=1, head_dim=64, tokens_per_chunk=16)
        b = c2.arena_alloc(ns.chunk_bytes)
        del c2
        k = ns.chunk_keys(range(16))[0]
        b.free()
        expect(lambda: memoryview(b))
        print("ok", raised)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    assert p.stdout.startswith("ok ") and int(p.stdout.split()[1]) == 8 * 5 + 1
