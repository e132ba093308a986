"""The calls of kvtier.Client against a real daemon: round trips, batches, lookups, deletes,
ranges, chunk keys from every kind of token container, stats and config."""

import array

import numpy as np
import pytest

import kvtier


def chunk_of(ns, seed):
    return np.random.default_rng(seed).integers(0, 256, ns.chunk_bytes, dtype=np.uint8)


def test_register_reports_geometry(client, ns):
    assert ns.tokens_per_chunk == 16
    assert ns.bytes_per_token == 2 * 2 * 2 * 64 * 2
    assert ns.chunk_bytes == ns.bytes_per_token * 16
    assert (ns.layers, ns.kv_heads, ns.head_dim, ns.dtype) == (2, 2, 64, kvtier.Dtype.FP16)
    again = client.register(ns.model_id, layers=2, kv_heads=2, head_dim=64, dtype="fp16",
                            tokens_per_chunk=16)
    assert again.handle == ns.handle and again.seed == ns.seed
    other = client.register(ns.model_id, layers=2, kv_heads=2, head_dim=64, dtype="bf16",
                            tokens_per_chunk=16)
    assert other.handle != ns.handle and other.seed != ns.seed


def test_put_get_roundtrip_every_destination(client, ns):
    keys = ns.chunk_keys(range(16))
    data = chunk_of(ns, 1)
    client.put(ns, keys[0], data)
    assert client.get(ns, keys[0]) == data.tobytes()
    out = bytearray(ns.chunk_bytes)
    assert client.get(ns, keys[0], out) == ns.chunk_bytes
    assert out == data.tobytes()
    arr = np.zeros(ns.chunk_bytes, dtype=np.uint8)
    assert client.get(ns, keys[0], arr) == ns.chunk_bytes
    assert np.array_equal(arr, data)
    buf = client.arena_alloc(ns.chunk_bytes)
    assert client.get(ns, keys[0], buf) == ns.chunk_bytes
    assert bytes(buf) == data.tobytes()
    # Puts take any buffer too: bytes, memoryview slices, arena buffers.
    k2 = ns.chunk_keys(range(100, 116))[0]
    client.put(ns, k2, memoryview(data.tobytes()))
    assert client.get(ns, k2) == data.tobytes()


def test_put_existing_key_keeps_first_bytes(client, ns):
    key = ns.chunk_keys(range(16))[0]
    first, second = chunk_of(ns, 2), chunk_of(ns, 3)
    client.put(ns, key, first)
    client.put(ns, key, second)
    assert client.get(ns, key) == first.tobytes()


def test_variants_are_separate_objects(client, ns):
    key = ns.chunk_keys(range(16))[0]
    a, b = chunk_of(ns, 4), chunk_of(ns, 5)
    client.put(ns, key, a)
    client.put(ns, key, b, variant=7)
    assert client.get(ns, key) == a.tobytes()
    assert client.get(ns, key, variant=7) == b.tobytes()
    with pytest.raises(kvtier.NotFoundError):
        client.get(ns, key, variant=8)
    assert client.lookup(ns, [key], variants=[7]) == 1
    assert client.lookup(ns, [key], variants=[8]) == 0
    assert client.delete(ns, [key], variants=[7]) == [0]
    assert client.get(ns, key) == a.tobytes()


def test_lookup_counts_leading_hits_and_tiers(client, ns):
    keys = ns.chunk_keys(np.arange(16 * 5, dtype=np.int32))
    assert len(keys) == 5
    assert client.lookup(ns, keys) == 0
    assert client.lookup_tiers(ns, keys) == []
    for k in keys[:3]:
        client.put(ns, k, chunk_of(ns, 6))
    assert client.lookup(ns, keys) == 3
    assert client.lookup_tiers(ns, keys) == [kvtier.Tier.CPU] * 3
    # A hole ends the prefix even when later chunks are present.
    client.put(ns, keys[4], chunk_of(ns, 7))
    assert client.lookup(ns, keys) == 3
    # Keys packed in one buffer (n x 16 bytes) mean the same.
    assert client.lookup(ns, b"".join(keys)) == 3
    assert client.lookup(ns, []) == 0


def test_delete_reports_per_key(client, ns):
    keys = ns.chunk_keys(range(32))
    client.put(ns, keys[0], chunk_of(ns, 8))
    assert client.delete(ns, keys) == [0, kvtier.errors.E_NOTFOUND]
    assert client.lookup(ns, keys) == 0


def test_batches(client, ns):
    keys = ns.chunk_keys(range(16 * 8))
    chunks = [chunk_of(ns, 10 + i) for i in range(8)]
    assert client.put_batch(ns, list(zip(keys, chunks))) == [0] * 8
    outs = [client.arena_alloc(ns.chunk_bytes) for _ in keys]
    res = client.get_batch(ns, list(zip(keys, outs)))
    assert res == [(0, ns.chunk_bytes, kvtier.Tier.CPU)] * 8
    for o, c in zip(outs, chunks):
        assert bytes(o) == c.tobytes()
    # Per-item errors come back as statuses, not exceptions.
    missing = ns.chunk_keys(range(1000, 1016))[0]
    res = client.get_batch(ns, [(keys[0], outs[0]), (missing, outs[1])])
    assert res[0][0] == 0 and res[1][0] == kvtier.errors.E_NOTFOUND
    # Puts with n_tokens and variant fields.
    assert client.put_batch(ns, [(keys[0], chunks[1], 16, 3)]) == [0]
    assert client.get(ns, keys[0], variant=3) == chunks[1].tobytes()
    assert client.put_batch(ns, []) == [] and client.get_batch(ns, []) == []


def test_get_range_reads_rows_of_one_layer(client, ns):
    key = ns.chunk_keys(range(16))[0]
    data = chunk_of(ns, 20)
    client.put(ns, key, data)
    row = 2 * 2 * 64 * 2  # one token of one layer: k|v x heads x dims x fp16
    layer = 1
    got = client.get_range(ns, key, layer, 4, 3)
    start = layer * 16 * row + 4 * row
    assert got == data[start:start + 3 * row].tobytes()
    out = client.arena_alloc(3 * row)
    assert client.get_range(ns, key, layer, 4, 3, out) == 3 * row
    assert bytes(out) == got
    with pytest.raises(kvtier.InvalidArgumentError) as e:
        client.get_range(ns, key, 2, 0, 1)
    assert e.value.name == "E_GEOMETRY"


def test_get_range_batch(client, ns):
    keys = ns.chunk_keys(range(16 * 3))
    chunks = [chunk_of(ns, 30 + i) for i in range(3)]
    assert client.put_batch(ns, list(zip(keys, chunks))) == [0] * 3
    row = 2 * 2 * 64 * 2
    outs = [client.arena_alloc(4 * row) for _ in range(3)]
    items = [(k, i % 2, 2 * i, 4, o) for i, (k, o) in enumerate(zip(keys, outs))]
    assert client.get_range_batch(ns, items) == [(0, 4 * row, kvtier.Tier.CPU)] * 3
    for i, (c, o) in enumerate(zip(chunks, outs)):
        start = (i % 2) * 16 * row + 2 * i * row
        assert bytes(o) == c[start:start + 4 * row].tobytes()
    small = bytearray(row)
    res = client.get_range_batch(ns, [(keys[0], 0, 0, 4, small), (keys[1], 5, 0, 1, small)])
    assert res[0] == (kvtier.errors.E_SMALLBUF, 4 * row, 0)
    assert res[1][0] == kvtier.errors.E_GEOMETRY


def test_chunk_keys_accepts_lists_arrays_and_numpy(ns):
    toks = list(range(7, 7 + 16 * 3 + 5))
    want = ns.chunk_keys(toks)
    assert len(want) == 3 and all(isinstance(k, bytes) and len(k) == 16 for k in want)
    assert ns.chunk_keys(tuple(toks)) == want
    assert ns.chunk_keys(range(7, 7 + 16 * 3 + 5)) == want
    assert ns.chunk_keys(array.array("i", toks)) == want
    assert ns.chunk_keys(array.array("q", toks)) == want
    assert ns.chunk_keys(array.array("H", toks)) == want
    assert ns.chunk_keys(np.array(toks, dtype=np.int32)) == want
    assert ns.chunk_keys(np.array(toks, dtype=np.int64)) == want
    assert ns.chunk_keys(np.array(toks, dtype=np.uint32)) == want
    assert kvtier.chunk_keys(ns, toks) == want
    # Chained: continuing from a parent gives the rest of the chain.
    assert ns.chunk_keys(toks[16:], parent=want[0]) == want[1:]
    # A different prefix changes every later key.
    assert ns.chunk_keys([0] + toks[1:])[2] != want[2]
    assert ns.chunk_keys(toks[:15]) == []


def test_chunk_keys_large_numpy_input(ns):
    toks = np.arange(256 * 1024, dtype=np.int32)
    keys = ns.chunk_keys(toks)
    assert len(keys) == 16 * 1024
    assert keys[:4] == ns.chunk_keys(toks[:64].tolist())


def test_key_text_roundtrip(ns):
    key = ns.chunk_keys(range(16))[0]
    text = kvtier.key_format(key)
    assert len(text) == 32
    assert kvtier.key_parse(text) == key
    # Hi word first, as the C library and CLI print it.
    assert text[:16] == key[8:][::-1].hex()


def test_stats_config_ping(client, ns):
    client.ping()
    st = client.stats()
    assert isinstance(st, dict) and len(st) > 10
    assert all(isinstance(v, int) for v in st.values())
    level = client.config_get("log_level")
    client.config_set("log_level", "debug")
    assert client.config_get("log_level") == "debug"
    client.config_set("log_level", level)
    with pytest.raises(kvtier.InvalidArgumentError):
        client.config_get("no.such.key")


def test_dtype_size_and_version():
    assert [kvtier.dtype_size(d) for d in ("fp16", "bf16", "fp32", "fp8")] == [2, 2, 4, 1]
    assert kvtier.dtype_size(kvtier.Dtype.FP32) == 4
    assert kvtier.__version__.count(".") == 2
    assert kvtier.ABI_VERSION >= 2


def test_socket_path_and_repr(shared_daemon):
    with kvtier.Client(shared_daemon.socket) as c:
        assert c.socket_path == shared_daemon.socket
        assert shared_daemon.socket in repr(c)
        assert not c.closed
    assert c.closed and "closed" in repr(c)
