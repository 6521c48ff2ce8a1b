"""A mutex that does not convoy under the GIL.

A contended ``threading.Lock`` puts the waiter to sleep in the kernel; when
the holder releases, the waiter must be woken *and* win the GIL back, and by
then the holder has usually taken the lock again: every later acquisition
becomes a sleep/wake cycle (a lock convoy). With 8 threads deciding at once
this cut the engine's throughput to a quarter of one thread's.

:class:`YieldingLock` tries the lock without blocking and, while it is held,
yields the GIL (``time.sleep(0)``) so the holder can finish its short
critical section; after ``SPINS`` yields it falls back to a blocking
acquire, so no thread waits forever behind a holder that is itself blocked.
Use it only around short, non-blocking critical sections.
"""

from __future__ import annotations

import threading
import time

SPINS = 256


class YieldingLock:
    """``with lock:`` works; hot paths may inline the fast path as
    ``if not lock.try_acquire(False): lock.acquire()`` ... ``lock.release()``."""

    __slots__ = ("_acquire", "_lock", "release", "try_acquire")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acquire = self.try_acquire = self._lock.acquire
        self.release = self._lock.release

    def acquire(self) -> None:
        if self._acquire(False):
            return
        sleep = time.sleep
        for _ in range(SPINS):
            sleep(0)
            if self._acquire(False):
                return
        self._acquire()

    def __enter__(self) -> None:
        if not self._acquire(False):
            self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()
