"""Contexts and Select from Python against a real kvtierd: a query aligned with one key finds the
span holding it under a small budget, select_fetch returns exactly that span's rows, and bad
input gets its error."""

import numpy as np
import pytest

import kvtier
from kvtier import errors

LAYERS, HEADS, DIM, T = 2, 1, 64, 64
NEEDLE_CHUNK, NEEDLE_TOKEN = 2, 37


def make_chunks(rng, n):
    """fp16 chunks in the canonical layout [layer][token][k|v][head][dim]; one strong key."""
    out = []
    for i in range(n):
        kv = (rng.standard_normal((LAYERS, T, 2, HEADS, DIM)) * 0.1).astype(np.float16)
        out.append(kv)
    direction = rng.standard_normal(DIM).astype(np.float32)
    direction /= np.linalg.norm(direction)
    if n > NEEDLE_CHUNK:
        out[NEEDLE_CHUNK][1, NEEDLE_TOKEN, 0, 0, :] = (3.0 * direction).astype(np.float16)
    return out, direction


@pytest.fixture
def sparse_ns(client):
    return client.register("py-select", layers=LAYERS, kv_heads=HEADS, head_dim=DIM,
                           tokens_per_chunk=T, spans={"kind": "fixed", "block_tokens": 16})


def test_select_finds_the_needle_and_fetches_its_rows(client, sparse_ns):
    ns = sparse_ns
    rng = np.random.default_rng(11)
    chunks, direction = make_chunks(rng, 4)
    keys = ns.chunk_keys(list(range(4 * T)))
    client.put_batch(ns, [(k, c.tobytes()) for k, c in zip(keys, chunks)])
    ctx = client.context_open(ns, ttl_ms=10000)
    assert client.context_append(ctx, keys, [i * T for i in range(4)]) == (4, 4 * T, 0)
    query = np.tile(direction, (3, 1)).astype(np.float32)  # 3 query heads share the KV head
    spans, info = client.select(ctx, 1, query, budget_tokens=48, recent_tokens=16)
    assert info["context_tokens"] == 4 * T and info["tokens_selected"] <= 48
    covered = {(s[0], t) for s in spans for t in range(s[1], s[1] + s[2])}
    assert (NEEDLE_CHUNK, NEEDLE_TOKEN) in covered
    assert all(s[5] == keys[s[0]] for s in spans)

    row = 2 * HEADS * DIM * 2
    out = bytearray(48 * row)
    spans, info = client.select_fetch(ns, ctx, 1, query, out, budget_tokens=48, recent_tokens=16)
    for chunk, first, n, tier, mass, key, variant, dst_off, status, served in spans:
        assert status == 0 and served == kvtier.Tier.CPU
        want = chunks[chunk][1, first:first + n].tobytes()
        assert bytes(out[dst_off:dst_off + n * row]) == want

    with pytest.raises(kvtier.InvalidArgumentError):
        client.select(ctx, 1, query, budget_tokens=48, top_p=0.5)  # two budgets
    with pytest.raises(ValueError):
        client.select(ctx, 1, direction, budget_tokens=48)  # not (heads, dim)
    with pytest.raises(kvtier.InvalidArgumentError):
        client.select(ctx, 5, query, budget_tokens=48)  # no such layer
    client.context_close(ctx)
    with pytest.raises(errors.UnknownContext) as e:
        client.select(ctx, 1, query, budget_tokens=48)
    assert "unknown context" in str(e.value)


def test_context_append_is_all_or_nothing(client, sparse_ns):
    ns = sparse_ns
    rng = np.random.default_rng(12)
    chunks, _ = make_chunks(rng, 2)
    keys = ns.chunk_keys(list(range(1000, 1000 + 2 * T)))
    client.put(ns, keys[0], chunks[0].tobytes())
    ctx = client.context_open(ns)
    with pytest.raises(kvtier.NotFoundError):
        client.context_append(ctx, keys, [0, T])  # the second is not stored
    assert client.context_append(ctx, keys[:1], [0]) == (1, T, 0)
    with pytest.raises(ValueError):
        client.context_append(ctx, keys[:1], [0, 1])
    with pytest.raises(ValueError):
        client.register("py-select-bad", layers=1, kv_heads=1, head_dim=8, spans={"kind": "odd"})
    client.context_close(ctx)
