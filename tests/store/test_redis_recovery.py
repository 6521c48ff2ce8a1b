"""The Redis store coming back from outages: bounded backlog, prompt recovery, no stalled decisions.

A long outage is simulated cheaply: what matters is the backlog, so the
tests record the settlements of a long outage (the engine's fake clock
advancing through it) while the test's own ``redis-server`` is stopped with
SIGSTOP for a few seconds, then let it go on (SIGCONT) and measure how long
the store takes to be back on the server, whether the server's usage is
exact, and the slowest ``decide()`` meanwhile.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import Outcome, PolicyEngine
from engine.events import Event
from engine.testing import FakeClock
from tests.redis_server import RedisServer, fresh_redis  # noqa: F401 - a fixture
from tests.store.test_redis import _server_tokens, _until, kinds, write_policies

T0 = 1_767_225_600.0
OK = Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6)  # 10 tokens per call
#: Settlements per second of outage in the incident (17,753 unconfirmed after a 25 s SIGSTOP).
RATE = 700


@pytest.fixture(autouse=True)
def redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", "engine.store.redis.store:RedisStore")


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server frozen (SIGSTOP): connections hang rather than fail, as with a stalled host."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


class Driver:
    """decide+record pairs on ``alpha`` (a monthly token budget), timing every decide."""

    def __init__(self, eng: PolicyEngine, clock: FakeClock) -> None:
        self.eng, self.clock, self.calls = eng, clock, 0

    def pair(self, advance: float = 0.0) -> float:
        start = time.perf_counter()
        d = self.eng.decide("L1", model="alpha", estimated_tokens=10)
        took = time.perf_counter() - start
        self.eng.record(d, OK)
        self.calls += 1
        self.clock.advance(advance)
        return took


def recover(store: Any, driver: Driver, seconds: float = 10.0) -> tuple[float, list[float]]:
    """Drive decisions until the store is back on the server: (seconds it took, every decide's duration).

    The garbage collector is off meanwhile: its pauses (the outage's traffic leaves many objects) are
    the interpreter's, with or without a store, and would blur what is measured here.
    """
    start, took = time.monotonic(), []
    gc.disable()
    try:
        while store.link.disrupted and time.monotonic() - start < seconds:
            took.append(driver.pair(0.01))
            time.sleep(0.002)
        back = time.monotonic() - start
        took.append(driver.pair(0.01))  # brings the events of the recovery
    finally:
        gc.enable()
    return back, took


@pytest.mark.parametrize("outage_s", [5, 30, 120])
def test_the_store_recovers_promptly_after_a_long_outage(fresh_redis: RedisServer, tmp_path: Path,  # noqa: F811
                                                        outage_s: int) -> None:
    clock = FakeClock(T0)
    uri = fresh_redis.uri()  # the defaults: timeout_ms 100, retry_ms 500 doubling up to max_retry_ms
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), clock=clock, store=uri)
    store: Any = eng.store
    seen: list[Event] = []
    eng.subscribe(seen.append)
    driver = Driver(eng, clock)
    try:
        for _ in range(50):
            driver.pair()
        with stopped(fresh_redis):
            settlements = outage_s * RATE
            for _ in range(settlements):  # the outage's traffic, on local state
                driver.pair(1.0 / RATE)
            until = time.monotonic() + 4.0  # long enough for the retries to back off to their longest
            while time.monotonic() < until:
                driver.pair(0.01)
                time.sleep(0.005)
            assert store.link.degraded
            assert store.stats()["backlog"] <= 4  # one aggregate per budget and period, not one per call
        took, decides = recover(store, driver)
        assert not store.link.disrupted and "StorageRecovered" in kinds(seen)
        assert took < 5.0, f"recovered after {took:.2f} s"
        assert max(decides) < 0.010, f"slowest decide during recovery {1000 * max(decides):.1f} ms"
        store.link.flush()
        assert store.stats()["unconfirmed"] == 0
        assert _server_tokens(fresh_redis, uri) == 10 * driver.calls  # every settlement, exactly once
    finally:
        eng.close()


def test_a_backlog_larger_than_a_batch_is_replayed_in_batches(fresh_redis: RedisServer, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Many periods settled offline (60 hours of an hourly budget): sent in confirmed batches off the lock."""
    import engine.store.redis.link as link

    monkeypatch.setattr(link, "BATCH", 8)
    monkeypatch.setattr(link, "FINAL_MAX", 4)
    clock = FakeClock(T0)
    policies = write_policies(tmp_path / "p")
    (policies / "budgets.yaml").write_text("""kind: budgets
version: 1
timezone: UTC
budgets:
  alpha-hourly: {applies_to: {model: alpha}, period: hourly, tokens: 10000000}
""")
    uri = fresh_redis.uri(retry_ms=50, max_retry_ms=100)
    eng = PolicyEngine.from_path(policies, clock=clock, store=uri)
    store: Any = eng.store
    driver = Driver(eng, clock)
    try:
        driver.pair()
        with stopped(fresh_redis):
            for _ in range(600):  # 10 calls an hour for 60 hours
                driver.pair(360.0)
            assert _drive(driver, lambda: store.link.degraded)
            assert store.stats()["backlog"] >= 60
        took, _ = recover(store, driver)
        assert not store.link.disrupted and took < 5.0
        store.link.flush()
        assert _server_tokens(fresh_redis, uri, "alpha-hourly") == 10 * driver.calls
    finally:
        eng.close()


# -- one slow reply is not an outage -----------------------------------------------------------


def _engine(server: RedisServer, tmp_path: Path, **options: Any) -> tuple[PolicyEngine, list[Event], Driver]:
    clock = FakeClock(T0)
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), clock=clock, store=server.uri(**options))
    seen: list[Event] = []
    eng.subscribe(seen.append)
    driver = Driver(eng, clock)
    for _ in range(20):
        driver.pair()
    return eng, seen, driver


def _drive(driver: Driver, until: Callable[[], bool], seconds: float = 3.0) -> bool:
    def step() -> bool:
        driver.pair(0.01)
        return until()
    return _until(step, seconds)


def test_one_slow_reply_does_not_degrade_the_store(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    eng, seen, driver = _engine(fresh_redis, tmp_path)
    store: Any = eng.store
    try:
        fresh_redis.client().execute_command("CLIENT", "PAUSE", 150, "ALL")  # one reply over the 100 ms timeout
        driver.pair()
        assert _drive(driver, lambda: not store.link.disrupted)
        assert "StorageDegraded" not in kinds(seen) and not store.link.degraded
        store.link.flush()
        assert _server_tokens(fresh_redis, eng.store.uri) == 10 * driver.calls
    finally:
        eng.close()


def test_timeouts_one_after_another_degrade_the_store(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    eng, seen, driver = _engine(fresh_redis, tmp_path, retry_ms=50, max_retry_ms=100)
    store: Any = eng.store
    try:
        with stopped(fresh_redis):
            assert _drive(driver, lambda: store.link.degraded)
            assert kinds(seen).count("StorageDegraded") == 1
        assert _drive(driver, lambda: "StorageRecovered" in kinds(seen))
        store.link.flush()
        assert _server_tokens(fresh_redis, eng.store.uri) == 10 * driver.calls
    finally:
        eng.close()


def test_degrade_after_one_makes_every_timeout_an_outage(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    eng, seen, driver = _engine(fresh_redis, tmp_path, degrade_after=1)
    try:
        fresh_redis.client().execute_command("CLIENT", "PAUSE", 150, "ALL")
        driver.pair()
        assert kinds(seen) == ["StorageDegraded"]
        assert _drive(driver, lambda: "StorageRecovered" in kinds(seen))
    finally:
        eng.close()


@pytest.mark.parametrize(("query", "message"), [("degrade_after=0", "expected degrade_after"),
                                                ("degrade_after=2.5", "expected degrade_after"),
                                                ("degrade_window_ms=-1", "expected degrade_window_ms")])
def test_degrade_options_are_checked(query: str, message: str) -> None:
    from engine.errors import StorageError
    from engine.store.redis.store import parse_uri

    assert (parse_uri("redis://h/0")["degrade_after"], parse_uri("redis://h/0")["degrade_window_ms"]) == (3, 10000.0)
    with pytest.raises(StorageError, match=message):
        parse_uri(f"redis://h/0?{query}")
