from __future__ import annotations

import threading

from engine import locks
from engine.locks import YieldingLock


def test_mutual_exclusion_under_threads() -> None:
    lock = YieldingLock()
    state = {"n": 0, "inside": 0, "overlap": 0}

    def work() -> None:
        for _ in range(20_000):
            with lock:
                state["inside"] += 1
                if state["inside"] != 1:
                    state["overlap"] += 1
                state["n"] += 1
                state["inside"] -= 1

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert state == {"n": 160_000, "inside": 0, "overlap": 0}
    assert not lock.locked()


def test_falls_back_to_blocking_after_its_spins(monkeypatch: object) -> None:
    lock = YieldingLock()
    lock.acquire()
    got = threading.Event()

    def waiter() -> None:
        with lock:
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.05)  # still held: the waiter spun out and now blocks
    lock.release()
    assert got.wait(5)
    t.join(5)
    assert not t.is_alive() and locks.SPINS > 0
