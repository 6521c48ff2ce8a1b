"""Leased budgets on a real redis-server: slices, reports, exactness, events, expiry, close, outages.

Engines on one namespace stand for processes (each store is one client with
its own slices). Time is a :class:`~engine.testing.FakeClock`; the breaker's
cache age is real time, which only decides when a refresh is sent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.events import BudgetExhausted, BudgetWarning, Event
from engine.policy.loader import load_policies
from engine.store.redis.fingerprint import fingerprint
from engine.store.redis.lease import LeasedLedger
from engine.testing import FakeClock
from tests.redis_server import RedisCluster, RedisServer, fresh_redis, redis_cluster, redis_server  # noqa: F401

T0 = 1_767_225_600.0 + 3600.0  # 2026-01-01T01:00:00Z
MODELS = """kind: models
version: 1
models:
  alpha: {tier: L1, provider: openai, context_window: 100000, price: {input_per_1m: 1000.0, output_per_1m: 1000.0}}
  beta: {tier: L1, provider: google, context_window: 100000, price: {input_per_1m: 1.0, output_per_1m: 2.0}}
"""
ROUTING = """kind: routing
version: 1
tiers:
  L1: {candidates: [alpha, beta]}
tier_order: [L1]
"""
BUDGETS = """kind: budgets
version: 1
timezone: UTC
defaults: {LEASE}
budgets:
  alpha-daily: {applies_to: {model: alpha}, period: daily, tokens: TOKENS}
"""


def write_policies(directory: Path, tokens: int = 100_000, lease: str = "{size: 0.01, ttl_s: 30, sync_ms: 100}"
                   ) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "models.yaml").write_text(MODELS)
    (directory / "routing.yaml").write_text(ROUTING)
    (directory / "budgets.yaml").write_text(
        BUDGETS.replace("TOKENS", str(tokens)).replace("{LEASE}", f"{{lease: {lease}}}" if lease else "{}"))
    return directory


class _Monotonic:
    """Stands in for the ``time`` module of the breaker's cache: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


_BREAKER_CLOCK: _Monotonic | None = None


@pytest.fixture(autouse=True)
def breaker_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The breakers' cache ages with the fleet's clocks (Fleet.advance), not with how fast the machine runs."""
    import engine.store.redis.breaker_sync as breaker_sync

    global _BREAKER_CLOCK
    _BREAKER_CLOCK = _Monotonic()
    monkeypatch.setattr(breaker_sync, "time", _BREAKER_CLOCK)
    yield
    _BREAKER_CLOCK = None


@pytest.fixture(autouse=True)
def redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("redis", "redis+cluster"):
        monkeypatch.setitem(engine.store.base.BACKENDS, scheme, "engine.store.redis.store:RedisStore")


class Fleet:
    """Engines (standing for processes) on one namespace, with one fake clock each and their events."""

    def __init__(self, policies: Path, uri: str) -> None:
        self.policies, self.uri = policies, uri
        self.engines: list[PolicyEngine] = []
        self.clocks: list[FakeClock] = []
        self.events: list[Event] = []

    def engine(self) -> PolicyEngine:
        clock = FakeClock(T0)
        eng = PolicyEngine.from_path(self.policies, clock=clock, store=self.uri)
        eng.subscribe(self.events.append)
        self.engines.append(eng)
        self.clocks.append(clock)
        return eng

    def advance(self, seconds: float) -> None:
        for clock in self.clocks:
            clock.advance(seconds)
        if _BREAKER_CLOCK is not None:
            _BREAKER_CLOCK.t += seconds

    def close(self) -> None:
        for eng in self.engines:
            eng.close()


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    made = Fleet(write_policies(tmp_path / "p", tokens=10_000_000), redis_server.uri())
    try:
        yield made
    finally:
        made.close()


def pair(eng: PolicyEngine, tokens: int = 100, estimate: int | None = None) -> str:
    d = eng.decide("L1", estimated_tokens=estimate)
    eng.record(d, Outcome(latency_ms=5.0, input_tokens=tokens // 2, output_tokens=tokens - tokens // 2))
    return d.model


def server_usage(server: RedisServer, uri: str, budget: str = "alpha-daily") -> dict[str, float]:
    """The budget's current-period hash as the server holds it."""
    ns = uri.split("namespace=")[1].split("&")[0]
    client = server.client()
    meta = f"{ns}:default:b:{budget}:daily@UTC"
    cur = client.hget(meta, "cur")
    assert cur is not None
    raw = client.hgetall(f"{meta}:{cur.decode()}")
    return {k.decode(): float(v) for k, v in raw.items()}


# -- policy -------------------------------------------------------------------------


def test_lease_is_a_budget_policy_merged_over_the_defaults(tmp_path: Path) -> None:
    d = write_policies(tmp_path / "p", lease="{size: 0.02, ttl_s: 10}")
    text = (d / "budgets.yaml").read_text()
    (d / "budgets.yaml").write_text(
        text + "  exact: {applies_to: {model: beta}, period: daily, tokens: 5, lease: false}\n"
        "  own: {applies_to: {model: beta}, period: hourly, tokens: 5, lease: {sync_ms: 250}}\n")
    budgets = {b.name: b for b in load_policies(d).budgets}
    assert budgets["alpha-daily"].lease is not None
    assert (budgets["alpha-daily"].lease.size, budgets["alpha-daily"].lease.ttl_s,
            budgets["alpha-daily"].lease.sync_ms) == (0.02, 10, 100.0)
    assert budgets["exact"].lease is None
    own = budgets["own"].lease
    assert own is not None and (own.size, own.ttl_s, own.sync_ms) == (0.02, 10, 250)


def test_exact_budgets_keep_their_fingerprint(tmp_path: Path) -> None:
    """A fleet upgrading process by process agrees on the fingerprint of budgets without leases."""
    policy = load_policies(write_policies(tmp_path / "p", lease=""))
    budgets = sorted((dataclasses.asdict(b) for b in policy.budgets), key=lambda b: str(b["name"]))
    for b in budgets:
        del b["lease"]
    shared = {"budgets": budgets,
              "breakers": {name: dataclasses.asdict(m.breaker) for name, m in sorted(policy.models.items())}}
    before = hashlib.sha256(json.dumps(shared, sort_keys=True, separators=(",", ":"), default=repr).encode())
    assert fingerprint(policy) == before.hexdigest()[:16]
    leased = load_policies(write_policies(tmp_path / "q"))
    assert fingerprint(leased) != fingerprint(policy)  # the lease is a shared definition


# -- one process ----------------------------------------------------------------------


def test_a_process_at_steady_state_sends_a_command_per_sync_not_per_call(fleet: Fleet) -> None:
    eng = fleet.engine()
    for _ in range(200):  # warm: a slice, a refreshed breaker
        pair(eng)
        fleet.advance(0.001)
    store: Any = eng.store
    before = store.stats()
    for _ in range(5000):  # 5 s at 1,000 pairs/s: 50 reports of sync_ms 100, a breaker refresh per ~50 ms
        assert pair(eng) == "alpha"
        fleet.advance(0.001)
    after = store.stats()
    commands = after["commands"] - before["commands"]
    waits = after["round_trips"] - before["round_trips"]
    assert commands / 5000 <= 0.05, commands
    assert waits / 5000 <= 0.05, waits
    assert isinstance(eng._ledgers["alpha-daily"], LeasedLedger)


def test_usage_on_the_server_is_exact_after_close(fleet: Fleet, redis_server: RedisServer) -> None:  # noqa: F811
    a, b = fleet.engine(), fleet.engine()
    for i in range(300):
        pair(a if i % 3 else b, tokens=7 + i % 5, estimate=10)
        fleet.advance(0.01)
    recorded = sum(7 + i % 5 for i in range(300))
    fleet.close()
    usage = server_usage(redis_server, fleet.uri)
    assert usage["tok"] == recorded
    assert usage["rt"] == 0  # every slice given back, every reservation settled


def test_a_report_reaches_the_server_within_sync_ms(fleet: Fleet, redis_server: RedisServer) -> None:  # noqa: F811
    a = fleet.engine()
    pair(a, tokens=40)
    fleet.advance(0.05)
    pair(a, tokens=60)  # before sync_ms: still local
    assert server_usage(redis_server, fleet.uri)["tok"] < 100
    fleet.advance(0.06)  # sync_ms passed since the first report
    pair(a, tokens=1)
    a.store.flush()  # type: ignore[attr-defined]  # read the report's reply (the next call would)
    assert server_usage(redis_server, fleet.uri)["tok"] >= 100


def test_tick_reports_usage_of_a_process_that_stopped_deciding(fleet: Fleet,
                                                               redis_server: RedisServer) -> None:  # noqa: F811
    a = fleet.engine()
    pair(a, tokens=40)
    fleet.advance(0.01)
    pair(a, tokens=60)
    fleet.advance(0.2)
    a.tick()
    a.store.flush()  # type: ignore[attr-defined]
    assert server_usage(redis_server, fleet.uri)["tok"] == 100


# -- several processes ------------------------------------------------------------------


def test_exhaustion_across_processes_events_once_and_overspend_within_the_bound(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    fleet = Fleet(write_policies(tmp_path / "p", tokens=10_000, lease="{size: 0.05, ttl_s: 30, sync_ms: 100}"),
                  redis_server.uri())
    engines = [fleet.engine() for _ in range(4)]
    served: Counter[str] = Counter()
    try:
        for i in range(2000):
            served[pair(engines[i % 4], tokens=50)] += 1
            fleet.advance(0.005)
        fleet.close()
        usage = server_usage(redis_server, fleet.uri)
        spent = 50 * served["alpha"]
        assert usage["tok"] == spent  # what the server holds is what was recorded on alpha
        # no call in flight at a time (sequential): a call is admitted while its slice has room, so the
        # budget ends at most one call per process past its limit
        assert 10_000 <= spent <= 10_000 + 4 * 50
        assert served["beta"] > 0  # and then the tier fell back
        warnings = [e for e in fleet.events if isinstance(e, BudgetWarning)]
        exhausted = [e for e in fleet.events if isinstance(e, BudgetExhausted)]
        assert len(warnings) == 1 and len(exhausted) == 1
    finally:
        fleet.close()


def test_a_slice_of_a_process_that_died_returns_after_ttl(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    fleet = Fleet(write_policies(tmp_path / "p", tokens=1000, lease="{size: 0.5, ttl_s: 5, sync_ms: 100}"),
                  redis_server.uri())
    try:
        dead, alive = fleet.engine(), fleet.engine()
        assert pair(dead, tokens=10) == "alpha"  # holds a slice of 500
        dead.store.link.close()  # type: ignore[attr-defined]  # gone without close(): nothing given back
        fleet.engines.remove(dead)
        for _ in range(20):  # the other one gets half the rest (245) and then half of what is left...
            pair(alive, tokens=20)
            fleet.advance(0.01)
        held = alive._ledgers["alpha-daily"]
        assert isinstance(held, LeasedLedger)
        assert server_usage(redis_server, fleet.uri)["rt"] >= 500  # the dead slice still counts
        fleet.advance(6.0)  # past its ttl
        for _ in range(20):
            pair(alive, tokens=20)
            fleet.advance(0.01)
        alive.store.flush()  # type: ignore[attr-defined]
        assert server_usage(redis_server, fleet.uri)["rt"] < 500
    finally:
        fleet.close()


def test_without_headroom_a_process_refuses_and_asks_again_only_after_sync_ms(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    fleet = Fleet(write_policies(tmp_path / "p", tokens=100, lease="{size: 0.5, ttl_s: 30, sync_ms: 100}"),
                  redis_server.uri())
    try:
        a = fleet.engine()
        while pair(a, tokens=30) == "alpha":
            fleet.advance(0.001)
        store: Any = a.store
        before = store.stats()["round_trips"]
        for _ in range(50):
            with pytest.raises(NoModelAvailable):
                a.decide("L1", model="alpha")
        assert store.stats()["round_trips"] - before <= 1
        with pytest.raises(NoModelAvailable) as info:
            a.decide("L1", model="alpha")
        assert "budget alpha-daily exhausted" in str(info.value)
    finally:
        fleet.close()


def test_reload_between_exact_and_leased_keeps_usage_exact(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = write_policies(tmp_path / "p", lease="")
    fleet = Fleet(policies, redis_server.uri())
    try:
        a = fleet.engine()
        for _ in range(10):
            pair(a, tokens=10)
        write_policies(policies)  # leased
        a.reload()
        assert isinstance(a._ledgers["alpha-daily"], LeasedLedger)
        for _ in range(10):
            pair(a, tokens=10)
        write_policies(policies, lease="")  # exact again: the slice is given back, usage reported
        a.reload()
        assert not isinstance(a._ledgers["alpha-daily"], LeasedLedger)
        for _ in range(10):
            pair(a, tokens=10)
        a.store.flush()  # type: ignore[attr-defined]
        usage = server_usage(redis_server, fleet.uri)
        assert usage["tok"] == 300 and usage["rt"] == 0
    finally:
        fleet.close()


def test_usage_at_the_end_of_a_period_is_booked_in_it(fleet: Fleet, redis_server: RedisServer) -> None:  # noqa: F811
    a = fleet.engine()
    fleet.advance(22 * 3600 + 3599.95)  # 23:59:59.95
    pair(a, tokens=10)
    pair(a, tokens=20)  # unreported at midnight
    fleet.advance(0.1)
    pair(a, tokens=5)  # the next day
    fleet.close()
    client = redis_server.client()
    ns = fleet.uri.split("namespace=")[1].split("&")[0]
    meta = f"{ns}:default:b:alpha-daily:daily@UTC"
    day1, day2 = repr(T0 - 3600.0), repr(T0 - 3600.0 + 86400.0)
    assert float(client.hget(f"{meta}:{day1}", "tok")) == 30
    assert float(client.hget(f"{meta}:{day2}", "tok")) == 5


@pytest.mark.parametrize("fault", ["restart", "disconnect"])
def test_an_outage_mid_run_loses_no_leased_usage(fresh_redis: RedisServer, tmp_path: Path,  # noqa: F811
                                                 fault: str) -> None:
    """A restart loses the server's data (everything this client settled is pushed again); a dropped
    connection does not (what was not confirmed is replayed once)."""
    import time

    fleet = Fleet(write_policies(tmp_path / "p", tokens=10_000_000), fresh_redis.uri(retry_ms=20, max_retry_ms=50))
    try:
        a = fleet.engine()
        total = 0
        for i in range(300):
            total += 10 + i % 3
            assert pair(a, tokens=10 + i % 3) == "alpha"
            fleet.advance(0.002)
        store: Any = a.store
        if fault == "restart":
            fresh_redis.kill()
        else:
            fresh_redis.client().client_kill_filter(_type="normal", skipme=True)
        for i in range(300):  # decided locally meanwhile (a dropped connection is seen at the next call)
            total += 10 + i % 3
            assert pair(a, tokens=10 + i % 3) == "alpha"
            fleet.advance(0.002)
        if fault == "restart":
            fresh_redis.start()  # empty: it lost everything
        deadline = time.monotonic() + 10.0
        while store.link.disrupted and time.monotonic() < deadline:  # the recovery thread reconnects
            pair(a, tokens=0)
            time.sleep(0.01)
        assert not store.link.disrupted
        for i in range(300):
            total += 10 + i % 3
            assert pair(a, tokens=10 + i % 3) == "alpha"
            fleet.advance(0.002)
        fleet.close()
        seen = Counter(type(e).__name__ for e in fleet.events)
        assert seen["StorageDegraded"] >= 1 and seen["StorageRecovered"] >= 1, seen
        usage = server_usage(fresh_redis, fleet.uri)
        assert usage["tok"] == total
        assert usage["rt"] == 0
    finally:
        fleet.close()


def test_usage_made_while_a_renewal_is_in_flight_stays_backed_by_the_slice(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """A renewal takes the reported usage off the slice and tops it up; it never drops the slice the
    process goes on spending from until the reply is read, so the budget ends within the calls in flight."""
    fleet = Fleet(write_policies(tmp_path / "p", tokens=10_000, lease="{size: 0.2, ttl_s: 30, sync_ms: 100}"),
                  redis_server.uri())
    try:
        engines = [fleet.engine() for _ in range(3)]
        served: Counter[str] = Counter()
        for i in range(3000):
            served[pair(engines[i % 3], tokens=50)] += 1
            fleet.advance(0.0004)  # ~80 calls per engine between two reports
        fleet.close()
        spent = server_usage(redis_server, fleet.uri)["tok"]
        assert spent == 50 * served["alpha"]
        assert 10_000 <= spent <= 10_000 + 3 * 50
    finally:
        fleet.close()


def test_an_open_breaker_is_seen_within_cache_ms_without_a_round_trip_per_decision(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.store.redis.breaker_sync as breaker_sync

    fake = _Monotonic()
    monkeypatch.setattr(breaker_sync, "time", fake)
    a, b = fleet.engine(), fleet.engine()
    assert pair(a) == "alpha" and pair(b) == "alpha"
    a.record(a.decide("L1", model="beta"), Outcome(latency_ms=5.0))  # A knows both breakers
    b.force("alpha", "open")  # another process opens the breaker
    store: Any = a.store
    before = store.stats()
    for _ in range(9):  # up to 90 ms: A decides from its cached state, never waiting
        fake.t += 0.010
        assert pair(a) == "alpha"
    mid = store.stats()
    assert mid["round_trips"] == before["round_trips"]
    assert mid["commands"] - before["commands"] <= 2  # the refresh (with the batched successes)
    fake.t += 0.015  # 105 ms: the refresh's reply, long in, is read
    assert pair(a) == "beta"
    # alpha's refresh reply read; beta, idle for 105 ms, refreshed before it is used
    assert store.stats()["round_trips"] - mid["round_trips"] <= 2


# -- real processes ---------------------------------------------------------------------------


def _leased_worker(policies: str, uri: str, calls: int, start: Any, out: Any) -> None:
    engine.store.base.BACKENDS["redis"] = "engine.store.redis.store:RedisStore"
    eng = PolicyEngine.from_path(policies, store=uri)
    seen: Counter[str] = Counter()
    eng.subscribe(lambda e: seen.update([type(e).__name__]))
    admitted, errors = 0, []
    start.wait(30)
    for _ in range(calls):
        try:
            d = eng.decide("L1", estimated_tokens=10)
            eng.record(d, Outcome(latency_ms=1.0, input_tokens=4, output_tokens=6))
            admitted += d.model == "alpha"
        except Exception as exc:
            errors.append(repr(exc))
    commands = eng.store.stats()["commands"]  # type: ignore[attr-defined]
    eng.close()
    out.put({"admitted": admitted, "errors": errors[:5], "events": dict(seen), "commands": commands})


def test_four_leasing_processes_stay_within_the_bound_with_one_event_each(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    limit, per_call, workers, calls = 20_000, 10, 4, 2_000
    policies = str(write_policies(tmp_path / "p", tokens=limit, lease="{size: 0.05, ttl_s: 30, sync_ms: 20}"))
    uri = redis_server.uri()
    start, out = spawn.Event(), spawn.Queue()
    procs = [spawn.Process(target=_leased_worker, args=(policies, uri, calls, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        start.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [r["errors"] for r in results] == [[]] * workers
    settled = server_usage(redis_server, uri)["tok"]
    assert settled == per_call * sum(r["admitted"] for r in results)  # nothing lost, nothing twice
    assert limit <= settled <= limit + workers * per_call  # one call in flight per process
    assert sum(r["events"].get("BudgetWarning", 0) for r in results) == 1
    assert sum(r["events"].get("BudgetExhausted", 0) for r in results) == 1
    assert sum(r["commands"] for r in results) < workers * calls * 0.2  # not a command per call


def test_a_leased_rolling_budget_frees_up_as_its_window_slides(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    d = write_policies(tmp_path / "p", lease="{size: 0.1, ttl_s: 30, sync_ms: 100}")
    (d / "budgets.yaml").write_text((d / "budgets.yaml").read_text().replace(
        "alpha-daily: {applies_to: {model: alpha}, period: daily, tokens: 100000}",
        "alpha-rolling: {applies_to: {model: alpha}, period: rolling, rolling_s: 3600, tokens: 1000}"))
    fleet = Fleet(d, redis_server.uri())
    try:
        a, b = fleet.engine(), fleet.engine()
        served: Counter[str] = Counter()
        for i in range(100):
            served[pair(a if i % 2 else b, tokens=50)] += 1
            fleet.advance(1.0)
        assert 20 <= served["alpha"] <= 22  # 1,000 tokens, within one call in flight per process
        assert served["beta"] >= 78
        with pytest.raises(NoModelAvailable) as info:
            a.decide("L1", model="alpha")
        assert "budget alpha-rolling exhausted" in str(info.value)
        fleet.advance(3600.0)  # the window has slid past every call
        assert pair(a, tokens=50) == "alpha" and pair(b, tokens=50) == "alpha"
    finally:
        fleet.close()


def test_leased_budgets_on_a_cluster(redis_cluster: RedisCluster, tmp_path: Path) -> None:  # noqa: F811
    from engine.store.redis.cluster import slot_of

    uri = redis_cluster.uri()
    fleet = Fleet(write_policies(tmp_path / "p", tokens=5_000, lease="{size: 0.05, ttl_s: 30, sync_ms: 100}"), uri)
    try:
        a, b = fleet.engine(), fleet.engine()
        served: Counter[str] = Counter()
        for i in range(400):
            served[pair(a if i % 2 else b, tokens=25)] += 1
            fleet.advance(0.003)
        fleet.close()
        ns = uri.split("namespace=")[1].split("&")[0]
        prefix = "{" + ns + ":default}"
        client = redis_cluster.client(redis_cluster.owner(slot_of(prefix)))
        meta = f"{prefix}:b:alpha-daily:daily@UTC"
        period = client.hget(meta, "cur").decode()
        spent = float(client.hget(f"{meta}:{period}", "tok"))
        assert spent == 25 * served["alpha"]
        assert 5_000 <= spent <= 5_000 + 2 * 25
        assert sum(isinstance(e, BudgetExhausted) for e in fleet.events) == 1
    finally:
        fleet.close()


def test_status_shows_the_slices_processes_hold(fleet: Fleet) -> None:
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "engine", "status", "--store", fleet.uri, *extra], cwd=root,
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out

    a, b = fleet.engine(), fleet.engine()
    pair(a)
    pair(b)
    assert "2 reservations (2 of them leased slices)" in status().stdout
    a.close()
    fleet.engines.remove(a)
    assert json.loads(status("--format", "json").stdout)["budgets"]["alpha-daily"]["slices"] == 1


# -- periods, reloads, partial grants ---------------------------------------------------------


def _period_tok(server: RedisServer, uri: str, start: float) -> float:
    ns = uri.split("namespace=")[1].split("&")[0]
    raw = server.client().hget(f"{ns}:default:b:alpha-daily:daily@UTC:{start!r}", "tok")
    return float(raw) if raw is not None else 0.0


def test_a_call_decided_before_midnight_and_recorded_after_is_booked_in_the_new_day(
        fleet: Fleet, redis_server: RedisServer) -> None:  # noqa: F811
    """Usage settled after the period ended belongs to the new period, as in the exact mode, even when
    nothing was left unreported at the boundary (the slice's period end must not carry the new usage back)."""
    a = fleet.engine()
    fleet.advance(22 * 3600 + 3599.0)  # 23:59:59
    pair(a, tokens=10)
    fleet.advance(0.5)
    pair(a, tokens=20)  # reported: nothing unreported at midnight
    fleet.advance(0.2)
    a.tick()
    d = a.decide("L1")  # 23:59:59.7
    fleet.advance(0.5)  # 00:00:00.2, the next day
    a.record(d, Outcome(latency_ms=5.0, input_tokens=20, output_tokens=20))
    fleet.close()
    day1, day2 = T0 - 3600.0, T0 - 3600.0 + 86400.0
    assert _period_tok(redis_server, fleet.uri, day1) == 30
    assert _period_tok(redis_server, fleet.uri, day2) == 40


def test_a_reservation_made_in_exact_mode_is_dropped_when_settled_after_a_reload_to_leased(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = write_policies(tmp_path / "p", lease="")
    fleet = Fleet(policies, redis_server.uri())
    try:
        a = fleet.engine()
        d = a.decide("L1", estimated_tokens=5000)  # exact: a reservation of 5,000 on the server
        write_policies(policies)  # leased
        a.reload()
        a.record(d, Outcome(latency_ms=5.0, input_tokens=10, output_tokens=10))
        fleet.close()
        usage = server_usage(redis_server, fleet.uri)
        assert usage["tok"] == 20
        assert usage["rt"] == 0  # the exact reservation went with its settlement
    finally:
        fleet.close()


def test_a_warning_crossed_by_the_report_close_sends_reaches_the_subscribers(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """The last report's reply is read by close(): the event it carries is the fleet's only one."""
    fleet = Fleet(write_policies(tmp_path / "p", tokens=1000, lease="{size: 0.5, ttl_s: 30, sync_ms: 100}"),
                  redis_server.uri())
    try:
        a = fleet.engine()
        assert pair(a, tokens=900) == "alpha"  # 90 %: reported at once (the slice ran out), reply unread
        a.close()
        assert server_usage(redis_server, fleet.uri)["tok"] == 900
        assert sum(isinstance(e, BudgetWarning) for e in fleet.events) == 1
    finally:
        fleet.close()


def test_a_limit_lowered_below_the_usage_refuses_at_once_in_leased_mode(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """A reload that lowers the limit below what is spent exhausts the budget at once, as in the exact
    mode: the slice leased under the old limit is not spent on."""
    policies = write_policies(tmp_path / "p", tokens=100_000)  # slices of 1,000
    fleet = Fleet(policies, redis_server.uri())
    try:
        a = fleet.engine()
        for _ in range(5):
            assert pair(a, tokens=100) == "alpha"
            fleet.advance(0.2)  # each reported
        a.tick()
        write_policies(policies, tokens=400)  # below the 500 spent
        a.reload()
        assert sum(isinstance(e, BudgetExhausted) for e in fleet.events) == 1
        with pytest.raises(NoModelAvailable):
            a.decide("L1", model="alpha")
    finally:
        fleet.close()


def test_a_budget_removed_by_a_reload_gives_its_slice_back_and_is_not_leased_again(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = write_policies(tmp_path / "p", tokens=100_000)
    fleet = Fleet(policies, redis_server.uri())
    try:
        a = fleet.engine()
        pair(a, tokens=100)
        pair(a, tokens=50)  # unreported
        budgets = policies / "budgets.yaml"
        budgets.write_text(budgets.read_text().replace("alpha-daily: {applies_to: {model: alpha}",
                                                       "beta-daily: {applies_to: {model: beta}"))
        assert a.reload() is True
        assert list(a._ledgers) == ["beta-daily"]
        for _ in range(5):  # past the slice's ttl_s: a process that goes on deciding (and ticking)
            fleet.advance(10.0)
            pair(a, tokens=10)
            a.tick()
        a.store.flush()  # type: ignore[attr-defined]
        usage = server_usage(redis_server, fleet.uri)
        assert usage["tok"] == 150  # what was settled while the budget existed
        assert usage["rt"] == 0  # no slice held for a budget no longer in the policy
    finally:
        fleet.close()


def test_tick_sends_the_batched_successes_of_a_process_that_stopped_deciding(fleet: Fleet) -> None:
    """Another process's failures are judged against every success the fleet had: a process that stops
    deciding still sends its batched successes when it ticks."""
    a, b = fleet.engine(), fleet.engine()
    pair(a)  # A's breaker state is cached: the next successes are batched
    for _ in range(8):
        pair(a)
    fleet.advance(1.0)
    a.tick()
    a.store.link.flush()  # type: ignore[attr-defined]  # read what the tick sent
    assert b.state("alpha")["breaker"]["calls"] == 9



def test_a_slice_with_cost_but_no_tokens_refuses_and_asks_again_only_after_sync_ms(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """A budget with tokens and cost: when the token headroom is all in other slices but cost is not,
    the grant is cost only; the process cannot spend it and must not ask the server at every decision."""
    d = write_policies(tmp_path / "p", tokens=1000, lease="{size: 0.5, ttl_s: 30, sync_ms: 100}")
    (d / "budgets.yaml").write_text((d / "budgets.yaml").read_text().replace("tokens: 1000}",
                                                                             "tokens: 1000, cost_usd: 1000000}"))
    fleet = Fleet(d, redis_server.uri())
    try:
        a = fleet.engine()
        a.decide("L1", model="alpha", estimated_tokens=100_000)  # in flight: A's renewals take the headroom
        for _ in range(30):
            fleet.advance(0.2)
            a.tick()
        a.store.link.flush()  # type: ignore[attr-defined]
        assert server_usage(redis_server, fleet.uri)["rt"] == 1000  # every token in A's slice
        b = fleet.engine()
        with pytest.raises(NoModelAvailable):
            b.decide("L1", model="alpha")
        store: Any = b.store
        before = store.stats()["round_trips"]
        for _ in range(50):
            with pytest.raises(NoModelAvailable):
                b.decide("L1", model="alpha")
        assert store.stats()["round_trips"] - before <= 1
    finally:
        fleet.close()


def test_calls_in_flight_against_the_slice_count_in_the_local_ledger_of_an_outage(
        fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    fleet = Fleet(write_policies(tmp_path / "p", tokens=1000, lease="{size: 0.5, ttl_s: 30, sync_ms: 100}"),
                  fresh_redis.uri(retry_ms=60000, max_retry_ms=60000))
    try:
        a = fleet.engine()
        held = [a.decide("L1", estimated_tokens=50) for _ in range(8)]  # 400 in flight, not recorded
        assert {d.model for d in held} == {"alpha"}
        fresh_redis.kill()
        admitted = 0
        while a.decide("L1", estimated_tokens=50).model == "alpha":  # never recorded either
            admitted += 1
            assert admitted < 100
        # 1,000 tokens: 8 calls held, so 12 more; the local ledger of the outage counts the 8
        assert admitted == 12
        for d in held:
            a.record(d, Outcome(latency_ms=5.0, input_tokens=20, output_tokens=30))
    finally:
        fleet.close()


def test_a_leased_budget_follows_its_slot_to_another_master(redis_cluster: RedisCluster,  # noqa: F811
                                                             tmp_path: Path) -> None:
    from engine.store.redis.cluster import slot_of
    from tests.store.test_redis_cluster import _until, reshard

    uri = redis_cluster.uri(timeout_ms=1000, retry_ms=50, max_retry_ms=100, degrade_window_ms=60000)
    fleet = Fleet(write_policies(tmp_path / "p", tokens=10_000_000), uri)
    try:
        a = fleet.engine()
        store: Any = a.store
        recorded = 0

        def pairs(n: int) -> bool:
            nonlocal recorded
            for _ in range(n):
                assert pair(a, tokens=10) == "alpha"
                recorded += 10
                fleet.advance(0.02)
            return False

        pairs(50)
        slot = slot_of(store.prefix)
        source = redis_cluster.owner(slot)
        target = next(n.port for n in redis_cluster.nodes if n.port != source)
        for _ in reshard(redis_cluster, slot, target):
            pass
        assert _until(lambda: pairs(5) or store.stats()["redirects"].get("moved", 0) > 0)
        assert _until(lambda: pairs(5) or not store.link.disrupted)
        pairs(50)
        fleet.close()
        assert store.stats()["node"] == f"127.0.0.1:{target}"
        client = redis_cluster.client(target)
        meta = f"{store.prefix}:b:alpha-daily:daily@UTC"
        period = client.hget(meta, "cur").decode()
        assert float(client.hget(f"{meta}:{period}", "tok")) == recorded  # exactly once each, on the new master
        assert float(client.hget(f"{meta}:{period}", "rt")) == 0  # the slice given back there
        assert not any(type(e).__name__ == "StorageDegraded" for e in fleet.events)
    finally:
        fleet.close()


def test_prometheus_shows_the_slice_each_process_holds(fleet: Fleet) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from engine.observe.prometheus import exposition, registry_for

    a = fleet.engine()
    for _ in range(10):
        pair(a, tokens=100)
        fleet.advance(0.01)
    registry, _ = registry_for(a)
    text = exposition(registry)[0].decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    # the scrape reports the usage and tops the slice up: 1% of 10,000,000 tokens
    assert samples[("llm_policy_budget_lease_tokens", (("budget", "alpha-daily"),))] == 100_000
    assert not any(name == "llm_policy_budget_lease_usd" for name, _ in samples)  # a token-only budget


def test_the_engine_snapshot_reads_a_shared_breakers_open_until(fleet: Fleet) -> None:
    a, b = fleet.engine(), fleet.engine()
    pair(a)
    assert a.snapshot()["models"]["alpha"]["open_until"] is None
    b.force("alpha", "open")
    fleet.advance(0.2)  # past cache_ms: a reads the shared state
    assert a.snapshot()["models"]["alpha"]["open_until"] == math.inf
