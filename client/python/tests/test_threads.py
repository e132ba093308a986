"""Threads: calls release the GIL (a second thread makes progress while one blocks in the
library), a Client used from two threads at once refuses the second instead of corrupting
itself, and one client per thread works in parallel."""

import gc
import threading
import time

import numpy as np
import pytest

import kvtier


class Counter(threading.Thread):
    """Counts loop turns (each a short sleep, so it needs the GIL back again and again)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.turns = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.turns += 1
            time.sleep(0.001)


def test_gil_released_during_a_blocking_call(daemon):
    with kvtier.Client(daemon.socket, timeout=1.0) as c:
        c.ping()
        counter = Counter()
        counter.start()
        time.sleep(0.05)
        daemon.pause()
        try:
            before = counter.turns
            t0 = time.monotonic()
            with pytest.raises(kvtier.KvtierTimeoutError):
                c.ping()  # blocks in libkvtier for the whole 1 s timeout
            took = time.monotonic() - t0
            during = counter.turns - before
        finally:
            daemon.resume()
            counter.stop.set()
            counter.join()
        assert took >= 0.9
        # Held GIL: the counter could not take a single turn. Released: hundreds.
        # (At least 20 of the ~1000 a quiet machine gives: a loaded one delays each sleep.)
        assert during > 20, f"the other thread took {during} turns during a {took:.2f} s call"


def test_second_thread_on_a_busy_client_is_refused(daemon):
    # A long timeout: the checks below must happen while the other thread is still blocked.
    with kvtier.Client(daemon.socket, timeout=3.0) as c:
        ns = c.register("busy", layers=1, kv_heads=1, head_dim=64, tokens_per_chunk=16)
        victim = c.arena_alloc(4096)
        daemon.pause()
        errors = []

        def blocked():
            try:
                c.ping()
            except kvtier.KvtierError as e:
                errors.append(e)

        t = threading.Thread(target=blocked)
        try:
            t.start()
            deadline = time.monotonic() + 10
            while not c.busy:
                assert time.monotonic() < deadline, "the thread never entered its call"
                time.sleep(0.001)
            with pytest.raises(RuntimeError, match="another thread"):
                c.lookup(ns, [])
            with pytest.raises(RuntimeError, match="another thread"):
                c.arena_alloc(4096)
            # A buffer collected meanwhile is freed once the running call returns.
            addr = victim.address
            del victim
            gc.collect()
        finally:
            t.join()
            daemon.resume()
        assert len(errors) == 1 and isinstance(errors[0], kvtier.KvtierTimeoutError)
        assert not c.busy
        assert c.arena_alloc(4096).address == addr


def test_one_client_per_thread_in_parallel(shared_daemon):
    n_threads, rounds = 4, 50
    failures = []

    def worker(i):
        try:
            with kvtier.Client(shared_daemon.socket) as c:
                ns = c.register("threads", layers=2, kv_heads=2, head_dim=64,
                                tokens_per_chunk=16)
                buf = c.arena_alloc(ns.chunk_bytes)
                for r in range(rounds):
                    key = ns.chunk_keys(range(i * 100000 + r * 16, i * 100000 + r * 16 + 16))[0]
                    data = np.full(ns.chunk_bytes, (i * rounds + r) % 251, np.uint8)
                    c.put(ns, key, data)
                    c.get(ns, key, buf)
                    if not np.array_equal(np.frombuffer(buf, np.uint8), data):
                        failures.append((i, r))
        except Exception as e:  # reported below, with the thread that saw it
            failures.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
