"""The Redis store against values it did not write and clocks that go back.

Every script must run in bounded time and keep working whatever is stored
under its keys: a value that does not parse, is out of range or contradicts
the others is reported (``StorageCorrupt`` and a logged warning) and reset to
a safe state. ``policy-engine status`` shows such values instead of failing.
Budget periods never go back and open breakers never stay open longer after
a backward clock step; half-open starts with a fresh window.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import Outcome, PolicyEngine, StorageCorrupt
from engine.events import Event
from engine.policy.model import BreakerSpec, BudgetSpec
from engine.store.base import open_store
from tests.redis_server import RedisServer, fresh_redis, redis_server  # noqa: F401 - fixtures

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BREAKER = BreakerSpec(window="count", window_size=10, minimum_calls=4, failure_rate=50.0, open_for_s=10.0,
                      half_open_permits=2, half_open_max_wait_s=5.0)
BUDGET = BudgetSpec(name="b", scope="global", target=None, period="daily", tokens=1000, cost_usd=None)


@pytest.fixture(autouse=True)
def redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", "engine.store.redis.store:RedisStore")


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[Any]:  # noqa: F811
    """A store that never answers from its cache (every call reads the server)."""
    made = open_store(redis_server.uri(cache_ms=0))
    yield made
    made.close()


def corrupt(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.key.rsplit(":", 1)[-1] if e.field else e.key, e.field, e.value)
            for e in events if isinstance(e, StorageCorrupt)]


def tripped(store: Any, events: list[Event], spec: BreakerSpec = BREAKER) -> Any:
    breaker = store.make_breaker("m", spec, events)
    for _ in range(4):
        breaker.on_result(T0, True, 5.0, ticket=breaker.try_acquire(T0))
    assert breaker.state(T0) == "open"
    events.clear()
    return breaker


def busy_for(server: RedisServer, operation: Callable[[], Any]) -> float:
    """Seconds from the start of ``operation`` until another client's PING is answered."""
    import redis

    other = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=3.0)
    other.ping()
    start = time.perf_counter()
    operation()
    other.ping()  # waits while a script runs; a timeout (> 3 s) fails the test
    return time.perf_counter() - start


# -- bounded time whatever is stored -------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("pm", "1000000"), ("pm", "30000000"), ("us", "0")])
def test_a_planted_breaker_field_never_blocks_the_server(fresh_redis: RedisServer, field: str,  # noqa: F811
                                                         value: str) -> None:
    store = open_store(fresh_redis.uri(namespace="app", cache_ms=0))
    events: list[Event] = []
    try:
        breaker = tripped(store, events)
        assert [breaker.try_acquire(T0 + 10), breaker.try_acquire(T0 + 10)] == [2, 5]  # both permits in flight
        events.clear()
        fresh_redis.client().hset("app:default:k:m", field, value)  # us=0: "no permit used" with both taken
        assert busy_for(fresh_redis, lambda: breaker.try_acquire(T0 + 10)) < 0.5
        assert ("app:default:k:m", field, value) in [(e.key, e.field, e.value) for e in events
                                                     if isinstance(e, StorageCorrupt)]
        assert not store.link.degraded and breaker.state(T0 + 10) == "closed"  # reset to a safe state
        assert breaker.try_acquire(T0 + 10) == 1
    finally:
        store.close()


def test_a_planted_rolling_bucket_never_blocks_the_server(fresh_redis: RedisServer) -> None:  # noqa: F811
    store = open_store(fresh_redis.uri(namespace="app", cache_ms=0))
    events: list[Event] = []
    spec = replace(BUDGET, period="rolling", rolling_s=600.0)
    try:
        led = store.make_ledger(spec, events)
        led.settle(T0, None, 1000, 0.0)  # exhausted: the script looks for when it frees up
        client = fresh_redis.client()
        key = next(k.decode() for k in client.scan_iter(match="app:default:b:b:*:roll"))
        client.hset(key, "bucket", "1e300")
        assert busy_for(fresh_redis, lambda: led.available(T0 + 1)) < 0.5
        assert (key, "bucket", "1e300") in [(e.key, e.field, e.value) for e in events
                                            if isinstance(e, StorageCorrupt)]
        assert not store.link.degraded and not led.available(T0 + 2)  # recounted from the buckets: 1000
    finally:
        store.close()


# -- corrupt values are reported and reset ---------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "abc", "inf", "1e400", "-inf"])
def test_a_bad_open_until_is_reset_with_an_event(store: Any, value: str, caplog: pytest.LogCaptureFixture) -> None:
    events: list[Event] = []
    breaker = tripped(store, events)
    key = f"{store.prefix}:k:m"
    store.link.raw("HSET", key, "ou", value)
    caplog.set_level(logging.WARNING, logger="engine.redis")
    assert breaker.try_acquire(T0 + 1) == 1  # was: refused forever, silently
    assert [(e.key, e.field, e.value) for e in events if isinstance(e, StorageCorrupt)] == [(key, "ou", value)]
    assert breaker.state(T0 + 1) == "closed" and breaker.snapshot(T0 + 1)["calls"] == 0
    assert f"corrupt value {value!r} in {key} field 'ou'" in caplog.text
    events.clear()
    breaker.try_acquire(T0 + 2)
    assert corrupt(events) == []  # reset once: written back sound


@pytest.mark.parametrize(("field", "value"), [("st", "bogus"), ("co", "-1"), ("of", "1e9"), ("fl", "7"),
                                              ("wc", "nan"), ("sq", "1e300")])
def test_other_bad_breaker_fields_reset_the_breaker(store: Any, field: str, value: str) -> None:
    events: list[Event] = []
    breaker = tripped(store, events)
    store.link.raw("HSET", f"{store.prefix}:k:m", field, value)
    breaker.try_acquire(T0 + 1)
    assert (field, value) in [(f, v) for _, f, v in corrupt(events)]
    assert breaker.state(T0 + 1) == "closed" and not store.link.degraded


def test_a_bad_window_value_resets_the_window(store: Any) -> None:
    events: list[Event] = []
    breaker = store.make_breaker("m", BREAKER, events)
    for _ in range(10):
        breaker.on_result(T0, False, 5.0, ticket=1)
    store.link.raw("LSET", f"{store.prefix}:k:m:w", 0, "junk")
    breaker.on_result(T0, True, 5.0, ticket=1)  # pops the junk value
    assert [e.key for e in events if isinstance(e, StorageCorrupt)] == [f"{store.prefix}:k:m:w"]
    assert breaker.snapshot(T0)["calls"] == 0 and not store.link.degraded


@pytest.mark.parametrize("suffix", ["k:m", "k:m:w", "b:b:daily@UTC", "b:b:daily@UTC:P", "b:b:daily@UTC:P:r",
                                    "b:b:daily@UTC:P:x"])
def test_a_key_of_the_wrong_type_is_replaced(store: Any, suffix: str) -> None:
    events: list[Event] = []
    breaker = store.make_breaker("m", BREAKER, events)
    led = store.make_ledger(BUDGET, events)
    breaker.on_result(T0, False, 5.0, ticket=breaker.try_acquire(T0))
    led.settle(T0, led.reserve(T0, 10, 0.0), 10, 0.0)
    store.link.flush()
    key = f"{store.prefix}:{suffix.replace('P', repr(T0))}"
    store.link.raw("DEL", key)
    store.link.raw("SET", key, "x")
    breaker.on_result(T0, True, 5.0, ticket=breaker.try_acquire(T0))
    led.settle(T0, led.reserve(T0, 10, 0.0), 10, 0.0)
    assert led.available(T0) and breaker.state(T0) == "closed" and not store.link.degraded
    assert [(e.key, e.field, e.value) for e in events if isinstance(e, StorageCorrupt)] == [(key, "", "type string")]


@pytest.mark.parametrize(("field", "value", "used"), [("tok", "nan", 0), ("tok", "abc", 0), ("tok", "-5", 0),
                                                      ("cost", "inf", 300), ("rt", "x", 300)])
def test_bad_budget_usage_is_reset_with_an_event(store: Any, field: str, value: str, used: int) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    led.settle(T0, None, 300, 0.0)
    led.reserve(T0, 50, 0.0)
    store.link.flush()
    store.link.raw("HSET", f"{store.prefix}:b:b:daily@UTC:{T0!r}", field, value)
    snap = led.snapshot(T0 + 1)
    assert (field, value) in [(f, v) for _, f, v in corrupt(events)]
    assert (snap["tokens_used"], snap["tokens_reserved"]) == (used, 50)  # reservations recounted
    assert not store.link.degraded
    led.settle(T0 + 2, None, 10, 0.0)
    assert led.snapshot(T0 + 2)["tokens_used"] == used + 10


def test_a_bad_reservation_and_ack_are_reset(store: Any) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    rid = led.reserve(T0, 50, 0.0)
    led.settle(T0, None, 1, 0.0)
    store.link.flush()
    base = f"{store.prefix}:b:b:daily@UTC:{T0!r}"
    store.link.raw("HSET", f"{base}:r", f"{store.link.client}:{rid}", "lots of")
    store.link.raw("SET", store.link.ack_key, "nan")
    led.settle(T0 + 1, rid, 20, 0.0)
    snap = led.snapshot(T0 + 1)
    assert {f for _, f, _ in corrupt(events)} == {f"{store.link.client}:{rid}", ""}
    assert (snap["tokens_used"], snap["tokens_reserved"], snap["reservations"]) == (21, 0, 0)


# -- policy-engine status ----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "field", "value"), [("k:m", "ou", "abc"), ("k:m", "ou", "1e400"),
                                                     ("k:m", "ou", "1e300"), ("k:m", "co", "nan"),
                                                     ("b", "tok", "nan"), ("b", "cost", "1e400"),
                                                     ("meta", "tl", "abc"), ("meta", "cur", "x")])
def test_status_shows_corrupt_values_and_exits_cleanly(redis_server: RedisServer, key: str, field: str,  # noqa: F811
                                                       value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.report import main_shared_status

    uri = redis_server.uri()
    store = open_store(uri)
    try:
        tripped(store, [])
        led = store.make_ledger(BUDGET, [])
        led.settle(T0, None, 300, 0.0)
        store.link.flush()
        names = {"k:m": f"{store.prefix}:k:m", "b": f"{store.prefix}:b:b:daily@UTC:{T0!r}",
                 "meta": f"{store.prefix}:b:b:daily@UTC"}
        redis_server.client().hset(names[key], field, value)
    finally:
        store.close()
    assert main_shared_status(["--store", uri]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and f"corrupt {field}={value!r}" in out.out
    assert main_shared_status(["--store", uri, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    entry = status["breakers"]["m"] if key == "k:m" else status["budgets"]["b"]
    assert entry["corrupt"] == {field: value}


# -- clocks that go back, half-open ------------------------------------------------------------


class SteppedClock:
    """An engine clock (epoch seconds) that tests may set back."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


HOURLY = """kind: budgets
version: 1
timezone: UTC
budgets:
  alpha-hourly: {applies_to: {model: alpha}, period: hourly, tokens: 100}
"""


def _policies(directory: Path, budgets: str = HOURLY, open_for_s: float = 30.0) -> Path:
    from tests.store.test_redis import write_policies

    write_policies(directory, open_for_s=open_for_s)
    (directory / "budgets.yaml").write_text(budgets)
    return directory


def test_a_clock_stepped_back_never_reopens_an_exhausted_hourly_budget(redis_server: RedisServer,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    clock = SteppedClock(T0 + 1800)
    eng = PolicyEngine.from_path(_policies(tmp_path / "p"), clock=clock, store=redis_server.uri(cache_ms=0))
    try:
        for _ in range(10):
            eng.record(eng.decide("L1", model="alpha", estimated_tokens=10),
                       Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6))
        assert eng.decide("L1").model == "beta"  # 100 of 100 tokens: exhausted
        clock.now -= 3600  # NTP steps the clock back an hour
        assert eng.decide("L1").model == "beta"  # was: a fresh hour of alpha
        assert eng.state("alpha")["budgets"][0]["tokens_used"] == 100
        clock.now = T0 + 3600  # the next hour really starts
        assert eng.decide("L1").model == "alpha"
    finally:
        eng.close()


def test_a_clock_stepped_back_never_lengthens_an_open_breaker(store: Any) -> None:
    events: list[Event] = []
    breaker = tripped(store, events)  # open from T0 for 10 s
    back = T0 - 3600 + 1
    assert breaker.try_acquire(back) == 0
    assert breaker.retry_at(back) == back + 10.0  # was: T0 + 10, an hour and 10 s away
    assert breaker.try_acquire(back + 10.0) >= 2  # half-open after open_for, by this clock


def test_half_open_starts_with_a_fresh_window(store: Any) -> None:
    events: list[Event] = []
    breaker = tripped(store, events)  # 4 failures in the window
    ticket = breaker.try_acquire(T0 + 10)
    assert breaker.snapshot(T0 + 10)["calls"] == 0  # was: 4, the closed state's calls
    breaker.on_result(T0 + 10, False, 5.0, ticket=ticket)
    assert breaker.snapshot(T0 + 10)["calls"] == 1


# -- one policy set per namespace ----------------------------------------------------------------


def _shared(directory: Path, uri: str, tokens: int = 1000, **kwargs: Any) -> PolicyEngine:
    from tests.store.test_redis import write_policies

    return PolicyEngine.from_path(write_policies(directory, tokens=tokens), store=uri, **kwargs)


def _fingerprint(directory: Path) -> str:
    from engine import load_policies
    from engine.store.redis.fingerprint import fingerprint

    return fingerprint(load_policies(directory))


def test_a_second_policy_set_on_a_namespace_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from engine import StorageError

    uri = redis_server.uri()
    first = _shared(tmp_path / "a", uri, tokens=1000)
    try:
        with pytest.raises(StorageError) as refused:
            _shared(tmp_path / "b", uri, tokens=2000)  # was: shared usage, and wrote its own limits
        message = str(refused.value)
        assert _fingerprint(tmp_path / "a") in message and _fingerprint(tmp_path / "b") in message
        assert "policy_set=" in message and "on_conflict=replace" in message
        prefix = first.store.prefix  # type: ignore[attr-defined]
        assert redis_server.client().hget(f"{prefix}:b:alpha-monthly:monthly@UTC", "tl") == b"1000.0"
        same = _shared(tmp_path / "c", uri, tokens=1000)  # another process of the same policy set
        own = _shared(tmp_path / "b", uri + "&policy_set=other", tokens=2000)  # a policy set of its own
        same.close()
        own.close()
    finally:
        first.close()


def test_a_reload_that_changes_shared_definitions_replaces_the_fingerprint(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from engine import StorageError, StoragePolicyChanged
    from tests.store.test_redis import write_policies

    uri = redis_server.uri()
    eng = _shared(tmp_path / "a", uri, tokens=1000)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    old = _fingerprint(tmp_path / "a")
    try:
        write_policies(tmp_path / "a", tokens=5000)
        assert eng.reload() is True
        new = _fingerprint(tmp_path / "a")
        changed = [e for e in seen if isinstance(e, StoragePolicyChanged)]
        assert [(e.previous, e.fingerprint, e.reason) for e in changed] == [(old, new, "reload")]
        prefix = eng.store.prefix  # type: ignore[attr-defined]
        assert redis_server.client().hget(f"{prefix}:policy", "fp") == new.encode()
        with pytest.raises(StorageError, match=old):
            _shared(tmp_path / "old", uri, tokens=1000)
        _shared(tmp_path / "new", uri, tokens=5000).close()
    finally:
        eng.close()


def test_on_conflict_replace_takes_the_namespace_over(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from engine import StoragePolicyChanged

    uri = redis_server.uri()
    _shared(tmp_path / "a", uri, tokens=1000).close()
    eng = _shared(tmp_path / "b", uri + "&on_conflict=replace", tokens=2000)
    try:
        eng.decide("L1")  # events of the start come with the first call
        changed = [e for e in eng.store.events() if isinstance(e, StoragePolicyChanged)]
        assert [(e.previous, e.fingerprint, e.reason) for e in changed] == [
            (_fingerprint(tmp_path / "a"), _fingerprint(tmp_path / "b"), "replace")]
    finally:
        eng.close()


def test_a_conflict_found_when_the_server_comes_back_keeps_the_store_off_it(
        fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    import signal

    uri = fresh_redis.uri(retry_ms=20, max_retry_ms=50)
    _shared(tmp_path / "a", uri, tokens=1000).close()
    assert fresh_redis.proc is not None
    fresh_redis.proc.send_signal(signal.SIGSTOP)
    try:
        eng = _shared(tmp_path / "b", uri, tokens=2000)  # cannot check yet: starts on local state
    finally:
        fresh_redis.proc.send_signal(signal.SIGCONT)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    try:
        def refused() -> bool:
            eng.record(eng.decide("L1", model="alpha", estimated_tokens=10),
                       Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6))
            return any("another policy set" in getattr(e, "error", "") for e in seen)
        assert _until(refused)
        assert "StorageRecovered" not in [type(e).__name__ for e in seen]
        prefix = eng.store.prefix  # type: ignore[attr-defined]
        assert fresh_redis.client().hget(f"{prefix}:b:alpha-monthly:monthly@UTC", "tl") == b"1000.0"
    finally:
        eng.close()


def test_a_process_learns_at_reconnection_that_another_replaced_the_definitions(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from engine import StoragePolicyChanged
    from tests.store.test_redis import write_policies

    uri = redis_server.uri()
    a, b = _shared(tmp_path / "a", uri), _shared(tmp_path / "b", uri)
    seen: list[Event] = []
    b.subscribe(seen.append)
    try:
        write_policies(tmp_path / "a", tokens=5000)
        a.reload()
        b.store.link.fail(ConnectionResetError("test: the connection drops"))  # type: ignore[attr-defined]

        def warned() -> bool:
            b.decide("L1", model="beta")
            return any(isinstance(e, StoragePolicyChanged) for e in seen)
        assert _until(warned)
        event = next(e for e in seen if isinstance(e, StoragePolicyChanged))
        assert (event.previous, event.fingerprint, event.reason) == (
            _fingerprint(tmp_path / "b"), _fingerprint(tmp_path / "a"), "other")
    finally:
        a.close()
        b.close()


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_clock_stepped_back_never_lengthens_a_probe_wait(store: Any) -> None:
    events: list[Event] = []
    breaker = tripped(store, events)
    assert [breaker.try_acquire(T0 + 10), breaker.try_acquire(T0 + 10)] == [2, 5]  # probes due by T0 + 15
    back = T0 - 3600
    assert breaker.state(back) == "half_open"
    assert breaker.state(back + 5.5) == "open"  # the probes expired half_open_max_wait_s after the step
    assert events[-1].reason == "probe_expired"  # type: ignore[attr-defined]
