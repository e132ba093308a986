"""A prefix cache in kvtier for llama-cpp-python.

    from llama_cpp import Llama
    import kvtier, kvtier.llama_cpp

    llm = Llama(model_path="model.gguf", n_ctx=4096)
    with kvtier.Client() as c:
        cache = kvtier.llama_cpp.PrefixCache(llm, c, tokens_per_chunk=256)
        tokens = llm.tokenize(prompt)
        cache.restore(tokens)            # loads the longest cached prefix into llm's context
        out = llm.create_completion(tokens, max_tokens=64)   # evaluates only the rest
        cache.save()                     # stores the chunks kvtier does not have yet

The KV of each run of tokens_per_chunk tokens is one kvtier chunk, named by kvtier's chained keys
over the token ids, so any process on the node that loads the same model reuses the prefix
another one computed. The bytes are kvtier's canonical layout, [layer][token][k|v][kv_head]
[head_dim], converted from and to llama.cpp's per-sequence state (llama_state_seq_get_data /
llama_state_seq_set_data) with numpy: the restored cells hold exactly the bytes the first process
computed, so the logits after a restore equal those of a full recompute.

restore() leaves at least one token to evaluate (the logits of the last prompt token must come
from a decode) and sets llm's token bookkeeping (input_ids, n_tokens), so llm.eval() and
Llama.generate()/create_completion() continue after the restored prefix by themselves.

Supported: models whose KV cache is one plain attention cache with fp16, bf16 or fp32 K and V of
the same row size (llama, mistral, qwen, smollm, ... without sliding windows); either V layout
(flash attention on or off). Anything else raises NotImplementedError at construction or the
first save. A cache that cannot be reached never fails inference: restore() then returns 0 and
save() stores nothing; both count what happened in .stats.
"""

import ctypes
import hashlib
import json
import os

import numpy as np

import llama_cpp

from . import CapacityError, ConnectionLostError, RetryableError, errors

# ggml types of K/V this cache moves, and the kvtier dtype each one is.
_GGML_TYPES = {0: ("fp32", np.uint32), 1: ("fp16", np.uint16), 30: ("bf16", np.uint16)}

_CELL = np.dtype([("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])


class StateFormatError(RuntimeError):
    """llama.cpp produced a sequence state this module does not understand."""


def _model_fingerprint(llm):
    """Same model file and architecture -> same id, in every process that loads it."""
    md = dict(getattr(llm, "metadata", {}) or {})
    model = llm._model.model
    h = hashlib.sha256()
    h.update(json.dumps(md, sort_keys=True).encode())
    h.update(str(llama_cpp.llama_model_n_params(model)).encode())
    h.update(str(llama_cpp.llama_model_size(model)).encode())
    name = os.path.basename(getattr(llm, "model_path", "") or "model")
    return f"llama.cpp/{name[:64]}/{h.hexdigest()[:24]}"


class _State:
    """One sequence's cells as arrays: pos (N,), K (L, N, E), V (L, N, E), in pos order."""

    def __init__(self, raw, n_embd):
        self.raw = raw
        off = 0

        def take(dtype, count=1):
            nonlocal off
            a = np.frombuffer(raw, dtype=dtype, count=count, offset=off)
            off += a.nbytes
            return a

        self.magic, self.seq = take("<u4")[0], take("<i4")[0]
        n_stream = int(take("<u4")[0])
        self.n_stream = n_stream
        found = None
        for _ in range(n_stream):
            cells = int(take("<u4")[0])
            if cells == 0:
                continue
            if found is not None:
                raise StateFormatError("sequence spread over several streams")
            meta = take(_CELL, cells)
            if not (meta["n_seq"] == 1).all():
                raise StateFormatError("cells with extra per-cell data (M-RoPE or similar)")
            v_trans, n_layer = (int(x) for x in take("<u4", 2))
            ks, vs = [], []
            for _ in range(n_layer):
                k_type, k_row = int(take("<i4")[0]), int(take("<u8")[0])
                ks.append((k_type, k_row, take(np.uint8, cells * k_row)))
            for _ in range(n_layer):
                v_type = int(take("<i4")[0])
                if v_trans:
                    el, ne = (int(x) for x in take("<u4", 2))
                    vs.append((v_type, el * ne, take(np.uint8, cells * el * ne), el, ne))
                else:
                    v_row = int(take("<u8")[0])
                    vs.append((v_type, v_row, take(np.uint8, cells * v_row), None, None))
            found = (meta, v_trans, n_layer, ks, vs)
        if off != len(raw):
            raise StateFormatError(f"state has {len(raw) - off} bytes this parser did not expect")
        self.cells = 0 if found is None else len(found[0])
        if found is None:
            return
        meta, v_trans, n_layer, ks, vs = found
        types = {t for t, *_ in ks} | {t for t, *_ in vs}
        if len(types) != 1 or next(iter(types)) not in _GGML_TYPES:
            raise NotImplementedError(f"K/V types {sorted(types)}: only one of f32, f16, bf16")
        self.ggml_type = next(iter(types))
        dt = _GGML_TYPES[self.ggml_type][1]
        order = np.argsort(meta["pos"], kind="stable")
        self.pos = meta["pos"][order]
        e = n_embd
        self.K = np.empty((n_layer, self.cells, e), dtype=dt)
        self.V = np.empty((n_layer, self.cells, e), dtype=dt)
        for layer, (_, row, data) in enumerate(ks):
            if row != e * dt().itemsize:
                raise NotImplementedError(f"K rows of {row} bytes, expected {e} elements")
            self.K[layer] = data.view(dt).reshape(self.cells, e)[order]
        for layer, (_, row, data, el, ne) in enumerate(vs):
            if row != e * dt().itemsize:
                raise NotImplementedError(f"V rows of {row} bytes, expected {e} elements")
            if el is None:
                self.V[layer] = data.view(dt).reshape(self.cells, e)[order]
            else:
                self.V[layer] = data.view(dt).reshape(e, self.cells).T[order]
        self.v_trans = bool(v_trans)


class PrefixCache:
    """kvtier-backed prefix cache for one llama_cpp.Llama and one sequence of its context.

    client is a kvtier.Client (not shared with other threads while this cache uses it);
    tokens_per_chunk is the chunk size in tokens (a multiple of 16 keeps range reads aligned);
    window is how many chunks move per batch call (their arena buffers are allocated once)."""

    def __init__(self, llm, client, *, tokens_per_chunk=256, model_id=None, seq_id=0, window=8):
        self.llm = llm
        self.client = client
        self.seq_id = seq_id
        model = llm._model.model
        self.n_layer = llama_cpp.llama_model_n_layer(model)
        self.n_head_kv = llama_cpp.llama_model_n_head_kv(model)
        md = dict(getattr(llm, "metadata", {}) or {})
        arch = md.get("general.architecture", "llama")
        n_embd = llama_cpp.llama_model_n_embd(model)
        n_head = llama_cpp.llama_model_n_head(model)
        head_k = int(md.get(f"{arch}.attention.key_length", n_embd // n_head))
        head_v = int(md.get(f"{arch}.attention.value_length", head_k))
        if head_k != head_v:
            raise NotImplementedError("K and V heads of different sizes")
        if md.get(f"{arch}.attention.sliding_window"):
            raise NotImplementedError("sliding-window attention keeps no full prefix state")
        self.head_dim = head_k
        self.n_embd_kv = self.n_head_kv * self.head_dim
        type_k = int(getattr(llm.context_params, "type_k", 1))
        if type_k not in _GGML_TYPES:
            raise NotImplementedError(f"K cache type {type_k}: only f32, f16, bf16")
        self.dtype_name, self.elem = _GGML_TYPES[type_k]
        self.model_id = model_id or _model_fingerprint(llm)
        rope_theta = float(md.get(f"{arch}.rope.freq_base", 10000.0))
        rot = int(md.get(f"{arch}.rope.dimension_count", self.head_dim))
        self.ns = client.register(self.model_id, layers=self.n_layer,
                                  kv_heads=self.n_head_kv, head_dim=self.head_dim,
                                  dtype=self.dtype_name, tokens_per_chunk=tokens_per_chunk,
                                  rope_theta=rope_theta, rotary_dims=rot)
        self.T = tokens_per_chunk
        self.window = max(1, int(window))
        self._bufs = []
        self._v_trans = None  # the context's V layout, once a save or restore has seen it
        self.stats = {"restored_tokens": 0, "restores": 0, "misses": 0, "stored_chunks": 0,
                      "unavailable": 0}

    # ---- helpers -------------------------------------------------------------------------

    def _buffers(self, n):
        """Up to n arena buffers of one chunk each (fewer when the arena has no more room)."""
        while len(self._bufs) < min(n, self.window):
            try:
                self._bufs.append(self.client.arena_alloc(self.ns.chunk_bytes))
            except CapacityError:
                if not self._bufs:
                    raise
                self.window = len(self._bufs)
        return self._bufs[:n]

    def _chunk_view(self, buf):
        return np.frombuffer(buf, dtype=self.elem).reshape(self.n_layer, self.T, 2,
                                                           self.n_embd_kv)

    def _seq_state(self):
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, self.seq_id)
        raw = np.empty(size, dtype=np.uint8)
        ptr = raw.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        got = llama_cpp.llama_state_seq_get_data(ctx, ptr, size, self.seq_id)
        if got != size:
            raise StateFormatError(f"llama_state_seq_get_data wrote {got} of {size} bytes")
        return raw

    # ---- the two operations ----------------------------------------------------------------

    def restore(self, tokens):
        """Loads the longest cached prefix of tokens (whole chunks, at least one token left to
        evaluate) into the context. Returns the number of tokens restored, 0 on a miss."""
        tokens = list(tokens)
        keys = self.ns.chunk_keys(tokens[: max(0, len(tokens) - 1)])
        if not keys:
            return 0
        try:
            hits = self.client.lookup(self.ns, keys)
            n = self._load(keys[:hits]) if hits else 0
        except (ConnectionLostError, RetryableError):
            self.stats["unavailable"] += 1
            return 0
        if n == 0:
            self.stats["misses"] += 1
            return 0
        llm = self.llm
        llm.input_ids[:n] = tokens[:n]
        llm.n_tokens = n
        if hasattr(llm, "_requires_eval"):
            llm._requires_eval = True  # the logits of the last restored token were not computed
        self.stats["restores"] += 1
        self.stats["restored_tokens"] += n
        return n

    def _load(self, keys):
        """Fetches the chunks of keys straight into one sequence state of their cells
        (positions 0..N-1) and hands it to llama.cpp, which replaces the sequence with it.
        Returns N; a chunk that went missing since the lookup ends the prefix before it."""
        L, E, isz = self.n_layer, self.n_embd_kv, np.dtype(self.elem).itemsize
        ctx = self.llm._ctx.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(mem, self.seq_id, -1, -1)
        empty = _State(self._seq_state().tobytes(), E)
        n = len(keys) * self.T
        v_trans = self._v_trans_guess()
        blob, kview, vview = self._blank_state(empty, n, v_trans)
        start = 0
        while start < len(keys):
            bufs = self._buffers(len(keys) - start)
            part = keys[start:start + len(bufs)]
            res = self.client.get_batch(self.ns, list(zip(part, bufs)))
            for i, ((status, length, _), buf) in enumerate(zip(res, bufs)):
                if status != 0 or length != self.ns.chunk_bytes:
                    got = start + i
                    return self._load(keys[:got]) if got else 0
                c = self._chunk_view(buf)
                sl = slice((start + i) * self.T, (start + i + 1) * self.T)
                kview[:, sl, :] = c[:, :, 0, :]
                if v_trans:
                    vview[:, :, sl] = c[:, :, 1, :].transpose(0, 2, 1)
                else:
                    vview[:, sl, :] = c[:, :, 1, :]
            start += len(bufs)
        if self._set_state(blob):
            self._v_trans = v_trans
            return n
        if self._v_trans is None:
            # First restore of this context: the V layout guessed from the flash-attention
            # setting was wrong (it was "auto"); the other one it is.
            blob2, k2, v2 = self._blank_state(empty, n, not v_trans)
            k2[...] = kview
            v2[...] = vview.transpose(0, 2, 1)  # (L, E, n) <-> (L, n, E)
            if self._set_state(blob2):
                self._v_trans = not v_trans
                return n
        raise StateFormatError("llama.cpp refused the sequence state built from kvtier")

    def _v_trans_guess(self):
        if self._v_trans is not None:
            return self._v_trans
        fa = int(getattr(self.llm.context_params, "flash_attn_type", 0))
        return fa != 1  # V is stored transposed unless flash attention is on

    def _set_state(self, blob):
        ptr = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, ptr, blob.size,
                                                  self.seq_id) != 0

    def _blank_state(self, empty, n, v_trans):
        """A sequence state of n cells (positions 0..n-1) with its headers written, and views of
        where its K (L, n, E) and V ((L, E, n) when transposed, else (L, n, E)) go."""
        L, E, isz = self.n_layer, self.n_embd_kv, np.dtype(self.elem).itemsize
        ggml_type = {"fp32": 0, "fp16": 1, "bf16": 30}[self.dtype_name]
        head = np.array([empty.magic, self.seq_id & 0xFFFFFFFF, empty.n_stream, n], "<u4")
        meta = np.zeros(n, dtype=_CELL)
        meta["pos"] = np.arange(n)
        meta["n_seq"] = 1
        meta["seq"] = self.seq_id
        layer_bytes = 12 + n * E * isz
        # Streams after the first hold no cells of this sequence: their counts are the zeros
        # at the end.
        size = head.nbytes + meta.nbytes + 8 + 2 * L * layer_bytes + 4 * (empty.n_stream - 1)
        blob = np.zeros(size, dtype=np.uint8)
        o = 0
        for part in (head.view(np.uint8), meta.view(np.uint8),
                     np.array([int(v_trans), L], "<u4").view(np.uint8)):
            blob[o:o + part.size] = part
            o += part.size
        k0, v0 = o, o + L * layer_bytes
        k_head = np.zeros(12, np.uint8)
        k_head[:4] = np.array([ggml_type], "<i4").view(np.uint8)
        k_head[4:] = np.array([E * isz], "<u8").view(np.uint8)
        v_head = k_head.copy()
        if v_trans:
            v_head[4:] = np.array([isz, E], "<u4").view(np.uint8)
        for layer in range(L):
            blob[k0 + layer * layer_bytes:k0 + layer * layer_bytes + 12] = k_head
            blob[v0 + layer * layer_bytes:v0 + layer * layer_bytes + 12] = v_head
        strided = np.lib.stride_tricks.as_strided
        kview = strided(blob[k0 + 12:].view(self.elem), shape=(L, n, E),
                        strides=(layer_bytes, E * isz, isz))
        if v_trans:
            vview = strided(blob[v0 + 12:].view(self.elem), shape=(L, E, n),
                            strides=(layer_bytes, n * isz, isz))
        else:
            vview = strided(blob[v0 + 12:].view(self.elem), shape=(L, n, E),
                            strides=(layer_bytes, E * isz, isz))
        return blob, kview, vview

    def save(self, tokens=None):
        """Stores every full chunk of the evaluated tokens (llm.input_ids[:llm.n_tokens], or
        `tokens` when they are what the sequence holds) that kvtier does not hold yet. Returns
        the number of chunks stored."""
        llm = self.llm
        if tokens is None:
            tokens = llm.input_ids[: llm.n_tokens]
        tokens = np.asarray(tokens, dtype=np.int32)
        keys = self.ns.chunk_keys(tokens)
        if not keys:
            return 0
        try:
            have = self.client.lookup(self.ns, keys)
        except (ConnectionLostError, RetryableError):
            self.stats["unavailable"] += 1
            return 0
        if have == len(keys):
            return 0
        st = _State(self._seq_state(), self.n_embd_kv)
        self._v_trans = st.v_trans
        need = len(keys) * self.T
        if st.cells < need or not np.array_equal(st.pos[:need], np.arange(need)):
            raise StateFormatError("the sequence does not hold positions 0..n-1 of its tokens")
        stored = 0
        try:
            start = have
            while start < len(keys):
                bufs = self._buffers(len(keys) - start)
                part = range(start, start + len(bufs))
                start += len(bufs)
                for i, buf in zip(part, bufs):
                    view = self._chunk_view(buf)
                    sl = slice(i * self.T, (i + 1) * self.T)
                    view[:, :, 0, :] = st.K[:, sl, :]
                    view[:, :, 1, :] = st.V[:, sl, :]
                res = self.client.put_batch(self.ns,
                                            [(keys[i], b) for i, b in zip(part, bufs)])
                stored += sum(1 for r in res if r == errors.OK)
        except (ConnectionLostError, RetryableError):
            self.stats["unavailable"] += 1
        self.stats["stored_chunks"] += stored
        return stored
