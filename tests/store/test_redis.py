"""The Redis store against a real redis-server: sharing, round trips, outages, processes.

The contract every store meets is in ``tests/store/test_storage_contract.py``;
this file covers what only a shared store has: several stores (standing for
processes) on one server, the round trips a decision costs, the fail-open mode
while the server is unreachable, slow or restarted, the status command, and
real processes (spawned) sharing budgets and breakers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.errors import StorageError
from engine.events import BudgetReset, BudgetWarning, CircuitHalfOpened, Event
from engine.policy.model import BreakerSpec, BudgetSpec
from engine.store.base import open_store
from tests.redis_server import RedisServer, free_port, fresh_redis, redis_server  # noqa: F401 - fixtures

BACKEND = "engine.store.redis.store:RedisStore"
T0 = 1_767_225_600.0
BREAKER = BreakerSpec(window="count", window_size=10, minimum_calls=4, failure_rate=50.0, open_for_s=10.0,
                      half_open_permits=2, half_open_max_wait_s=5.0)
BUDGET = BudgetSpec(name="b", scope="global", target=None, period="daily", tokens=1000, cost_usd=None)
POLICY = {
    "models.yaml": """kind: models
version: 1
models:
  alpha: {tier: L1, provider: openai, context_window: 100000, price: {input_per_1m: 1.0, output_per_1m: 2.0}}
  beta: {tier: L1, provider: google, context_window: 100000, price: {input_per_1m: 1.0, output_per_1m: 2.0}}
""",
    "routing.yaml": """kind: routing
version: 1
tiers:
  L1: {candidates: [alpha, beta]}
tier_order: [L1]
""",
    "breakers.yaml": """kind: breakers
version: 1
defaults: {window: count, window_size: 20, minimum_calls: 5, failure_rate: 0.5, open_for_s: OPEN_FOR,
           half_open_permits: 3, half_open_max_wait_s: 30}
""",
    "budgets.yaml": """kind: budgets
version: 1
timezone: UTC
budgets:
  alpha-monthly: {applies_to: {model: alpha}, period: monthly, tokens: TOKENS}
""",
}


def write_policies(directory: Path, tokens: int = 10_000_000, open_for_s: float = 30.0) -> Path:
    """Two L1 models: ``alpha`` with a monthly token budget, ``beta`` with none."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in POLICY.items():
        text = text.replace("TOKENS", str(tokens)).replace("OPEN_FOR", repr(open_for_s))
        (directory / name).write_text(text)
    return directory


@pytest.fixture(autouse=True)
def redis_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", BACKEND)


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[Callable[..., Any]]:  # noqa: F811
    """Make stores (standing for processes) on one namespace of the shared server."""
    made: list[Any] = []
    uri = redis_server.uri()

    def make(**options: Any) -> Any:
        store = open_store(uri + "".join(f"&{k}={v}" for k, v in options.items()))
        made.append(store)
        return store
    yield make
    for store in made:
        store.close()


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- URI, registration, missing client -------------------------------------------------


def test_uri_options_and_defaults() -> None:
    from engine.store.redis.store import parse_uri

    opts = parse_uri("redis://:s%40cret@10.0.0.5:6380/2?namespace=billing&policy_set=eu.prod&timeout_ms=50")
    assert (opts["host"], opts["port"], opts["db"], opts["password"]) == ("10.0.0.5", 6380, 2, "s@cret")
    assert (opts["namespace"], opts["policy_set"], opts["timeout_ms"], opts["cache_ms"]) == (
        "billing", "eu.prod", 50.0, 100.0)
    defaults = parse_uri("redis://localhost")
    assert (defaults["port"], defaults["db"], defaults["namespace"]) == (6379, 0, "llm-policy-engine")


@pytest.mark.parametrize(("uri", "message"), [
    ("redis://h/0?cache=5", "unknown option 'cache'"),
    ("redis://h/0?namespace=a:b", "expected namespace of letters"),
    ("redis://h/0?timeout_ms=fast", "expected timeout_ms as milliseconds"),
    ("redis://h/0?timeout_ms=0", "expected timeout_ms as milliseconds"),
    ("redis://h/x", "numeric port and db"),
])
def test_bad_uris_are_refused_clearly(uri: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_store(uri)


def test_a_missing_redis_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.connection", None)
    with pytest.raises(StorageError, match=r"pip install 'llm-policy-engine\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


def test_open_store_gives_a_redis_store_without_history(redis_server: RedisServer) -> None:  # noqa: F811
    store = open_store(redis_server.uri())
    try:
        assert type(store).__name__ == "RedisStore" and store.keeps_history is False
        assert store.load_state() is None
    finally:
        store.close()


# -- one truth for several processes ---------------------------------------------------


def test_keys_are_namespaced_per_application_and_policy_set(redis_server: RedisServer) -> None:  # noqa: F811
    store = open_store(redis_server.uri(namespace="app1", policy_set="eu"))
    other = open_store(redis_server.uri(namespace="app1", policy_set="us"))
    try:
        events: list[Event] = []
        store.make_breaker("gpt-5", BREAKER, events).try_acquire(T0)
        led = store.make_ledger(BUDGET, events)
        led.settle(T0, led.reserve(T0, 10, 0.0), 7, 0.0)
        led.available(T0)
        keys = {k.decode() for k in redis_server.client().scan_iter(match="app1:eu:*")}
        base = f"app1:eu:b:b:daily@UTC:{T0!r}"
        assert {"app1:eu:epoch", "app1:eu:k:gpt-5", "app1:eu:b:b:daily@UTC", base} <= keys
        assert any(k.startswith("app1:eu:ack:") for k in keys)
        assert other.make_ledger(BUDGET, []).snapshot(T0)["tokens_used"] == 0  # another policy set
        assert store.make_ledger(BUDGET, []).snapshot(T0)["tokens_used"] == 7
    finally:
        store.close()
        other.close()


def test_a_breaker_opened_in_one_process_is_open_in_the_others(stores: Callable[..., Any]) -> None:
    a, b = stores(), stores()
    ev_a: list[Event] = []
    ev_b: list[Event] = []
    ba, bb = a.make_breaker("m", BREAKER, ev_a), b.make_breaker("m", BREAKER, ev_b)
    assert bb.try_acquire(T0) == 1  # b caches "closed"
    for _ in range(4):
        ba.on_result(T0, True, 5.0, ticket=ba.try_acquire(T0))
    assert kinds(ev_a) == ["CircuitOpened"] and ev_b == []
    time.sleep(0.15)  # b's cached state is at most cache_ms (100 ms) old
    assert bb.try_acquire(T0 + 1) == 0 and bb.state(T0 + 1) == "open"
    assert bb.retry_at(T0 + 1) == T0 + 10.0
    assert ev_b == []  # the transition belongs to the process that made it


def test_failures_from_every_process_count_in_one_window(stores: Callable[..., Any]) -> None:
    a, b = stores(), stores()
    events: list[Event] = []
    ba, bb = a.make_breaker("m", BREAKER, events), b.make_breaker("m", BREAKER, events)
    for breaker in (ba, bb, ba):
        breaker.on_result(T0, True, 5.0, ticket=1)
    assert events == []
    bb.on_result(T0, True, 5.0, ticket=1)  # the fourth failure, from b: 4 calls in the shared window
    assert kinds(events) == ["CircuitOpened"]
    assert ba.snapshot(T0)["failures"] == 4


def test_half_open_permits_are_global(stores: Callable[..., Any]) -> None:
    breakers = [stores().make_breaker("m", BREAKER, []) for _ in range(3)]
    events: list[list[Event]] = [b._events for b in breakers]
    breakers[0].force("open", T0)
    breakers[0].restore({"state": "open", "open_until": T0 + 10, "open_for": 10.0, "consecutive_opens": 1}, T0)
    tickets = [b.try_acquire(T0 + 10) for _ in range(3) for b in breakers]
    assert sorted(t for t in tickets if t) == [2, 5]  # 2 permits for all three processes
    halves = [e for evs in events for e in evs if isinstance(e, CircuitHalfOpened)]
    assert len(halves) == 1


def test_budget_usage_is_shared_and_each_event_emitted_once(stores: Callable[..., Any]) -> None:
    a, b = stores(), stores()
    ev_a: list[Event] = []
    ev_b: list[Event] = []
    la, lb = a.make_ledger(BUDGET, ev_a), b.make_ledger(BUDGET, ev_b)
    rid = la.reserve(T0, 600, 0.0)
    assert lb.used_fraction(T0) == 0.6
    assert lb.reserve(T0, 500, 0.0) > 0
    b.link.flush()  # the reservation was sent without waiting: read its reply before looking from a
    assert not la.available(T0)  # 1.1 reserved: full
    la.settle(T0, rid, 450, 0.0)
    lb.settle(T0, None, 460, 0.0)  # 910 settled: b crosses warn_at (b's view did not foresee it:
    assert lb.snapshot(T0)["warned"]  # the event comes with b's next round trip)
    assert kinds(ev_a) == [] and ev_b == [BudgetWarning(T0, "b", 0.91, 910, 1000, 0.0, None, T0)]
    assert la.available(T0 + 86400) and lb.available(T0 + 86400)
    resets = [e for e in ev_a + ev_b if isinstance(e, BudgetReset)]
    assert resets == [BudgetReset(T0 + 86400, "b", T0 + 86400)]  # one reset across processes


def test_a_reservation_admitted_by_the_client_is_booked_even_if_the_budget_filled_meanwhile(
        stores: Callable[..., Any]) -> None:
    a, b = stores(), stores()
    la, lb = a.make_ledger(BUDGET, []), b.make_ledger(BUDGET, [])
    assert la.available(T0)  # a's view: empty
    lb.settle(T0, None, 1000, 0.0)  # b fills the budget
    rid = la.reserve(T0, 30, 0.0)  # admitted on a's fresh view; booked on the server regardless
    a.link.flush()  # the reservation was sent without waiting: wait for its reply before looking from b
    assert rid > 0 and lb.snapshot(T0)["tokens_reserved"] == 30
    assert not la.available(T0 + 0.5) and la.reserve(T0 + 0.5, 30, 0.0) == 0


# -- round trips -------------------------------------------------------------------------


def _pairs(eng: PolicyEngine, n: int, model: str | None = None) -> bool:
    """``n`` decide/record pairs; False (so ``_pairs(...) or condition`` runs them, then checks)."""
    for _ in range(n):
        d = eng.decide("L1", model=model, estimated_tokens=10)
        eng.record(d, Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6))
    return False


def test_a_decision_with_one_budget_costs_one_round_trip(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=redis_server.uri(cache_ms=60000))
    try:
        _pairs(eng, 20)
        stats = eng.store.stats()  # type: ignore[attr-defined]
        server = redis_server.client()
        server.config_resetstat()
        _pairs(eng, 100)
        after = eng.store.stats()  # type: ignore[attr-defined]
        assert after["round_trips"] - stats["round_trips"] == 100  # available(): exact, so waited for
        # + reserve and settle, pipelined; the breaker's successes wait in a batch (sent within cache_ms)
        assert after["commands"] - stats["commands"] == 300
        eng.store.link.flush()  # type: ignore[attr-defined]
        assert server.info("commandstats")["cmdstat_evalsha"]["calls"] == 300
        eng.store.flush()  # type: ignore[attr-defined]
        assert eng.store.stats()["commands"] - after["commands"] == 1  # type: ignore[attr-defined]
        assert server.info("commandstats")["cmdstat_evalsha"]["calls"] == 301
    finally:
        eng.close()


def test_a_model_without_budgets_decides_from_the_cache(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=redis_server.uri(cache_ms=60000))
    try:
        _pairs(eng, 5, "beta")
        before = eng.store.stats()["round_trips"]  # type: ignore[attr-defined]
        _pairs(eng, 200, "beta")
        assert eng.store.stats()["round_trips"] - before <= 1  # type: ignore[attr-defined]  # replies read once MAX_PENDING wait
        d = eng.decide("L1", model="beta")
        eng.record(d, Outcome(latency_ms=5.0, error="timeout"))  # a failure is sent and waited for
        assert eng.state("beta")["breaker"]["failures"] == 1
    finally:
        eng.close()


# -- outages -------------------------------------------------------------------------------


def test_an_unreachable_server_degrades_to_local_decisions(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="the redis package is not installed")
    port = free_port()  # nothing listens there
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p", tokens=100),
                                 store=f"redis://127.0.0.1:{port}/0?retry_ms=60000&timeout_ms=50")
    seen: list[Event] = []
    eng.subscribe(seen.append)
    try:
        models = []
        for _ in range(15):
            d = eng.decide("L1", estimated_tokens=10)
            models.append(d.model)
            eng.record(d, Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6))
        assert models[:10] == ["alpha"] * 10 and models[10:] == ["beta"] * 5  # the local budget holds
        assert kinds(seen).count("StorageDegraded") == 1
        assert eng.state("alpha")["budgets"][0]["tokens_used"] == 100
        assert eng.store.stats()["round_trips"] == 0  # type: ignore[attr-defined]
    finally:
        eng.close()


def _server_tokens(server: RedisServer, uri: str, budget: str = "alpha-monthly") -> int:
    """Tokens settled on the server in every period of ``budget`` under ``uri``'s namespace."""
    namespace = uri.split("namespace=")[1].split("&")[0]
    client = server.client()
    total = 0
    for key in client.scan_iter(match=f"{namespace}:default:b:{budget}:*"):
        if client.type(key) == b"hash":
            value = client.hget(key, "tok")
            total += int(float(value)) if value is not None else 0
    return total


def _until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_restarted_server_gets_all_usage_back(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    uri = fresh_redis.uri(retry_ms=20, max_retry_ms=50)
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=uri)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    calls = 0

    def pairs(n: int) -> bool:
        nonlocal calls
        _pairs(eng, n, "alpha")
        calls += n
        return False
    try:
        pairs(50)
        eng.force("beta", "open")
        fresh_redis.kill()
        pairs(30)  # no exception: decided and recorded locally
        assert kinds(seen).count("StorageDegraded") == 1
        eng.force("beta", "disabled")  # a manual change while down is replayed
        fresh_redis.start()
        assert _until(lambda: pairs(1) or "StorageRecovered" in kinds(seen))
        recovered = next(e for e in seen if type(e).__name__ == "StorageRecovered")
        assert recovered.data_lost is True  # type: ignore[attr-defined]
        eng.store.link.flush()  # type: ignore[attr-defined]
        assert _server_tokens(fresh_redis, uri) == eng.state("alpha")["budgets"][0]["tokens_used"] == 10 * calls
        assert eng.state("beta")["breaker"]["state"] == "disabled"
        assert kinds(seen).count("StorageDegraded") == 1
    finally:
        eng.close()


def test_a_paused_server_times_out_and_nothing_is_counted_twice(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    uri = fresh_redis.uri(timeout_ms=50, retry_ms=20, max_retry_ms=100)
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=uri)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    calls = 0
    try:
        _pairs(eng, 20, "alpha")
        calls += 20
        fresh_redis.client().execute_command("CLIENT", "PAUSE", 400, "ALL")  # slow, not lost: data stays
        _pairs(eng, 20, "alpha")
        calls += 20

        def seen_event(kind: str) -> Callable[[], bool]:
            def check() -> bool:
                nonlocal calls
                _pairs(eng, 1, "alpha")
                calls += 1
                return kind in kinds(seen)
            return check
        assert _until(seen_event("StorageDegraded"))  # timeouts one after another: an outage
        assert _until(seen_event("StorageRecovered"))
        event = next(e for e in seen if type(e).__name__ == "StorageRecovered")
        assert event.data_lost is False  # type: ignore[attr-defined]
        eng.store.link.flush()  # type: ignore[attr-defined]
        assert _server_tokens(fresh_redis, uri) == 10 * calls  # replayed settlements applied exactly once
    finally:
        eng.close()


def test_no_exception_escapes_while_the_server_flaps(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    uri = fresh_redis.uri(retry_ms=5, max_retry_ms=10)
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=uri)
    tokens = 0
    for _ in range(3):
        for i in range(60):
            if i == 20:
                fresh_redis.kill()
            if i == 40:
                fresh_redis.start()
            try:
                d = eng.decide("L1", estimated_tokens=10)
            except NoModelAvailable:
                continue
            eng.record(d, Outcome(latency_ms=5.0, input_tokens=4, output_tokens=6))
            tokens += 10 if d.model == "alpha" else 0
        time.sleep(0.02)
    assert _until(lambda: _pairs(eng, 1, "beta") or not eng.store.link.degraded)  # type: ignore[attr-defined]
    eng.close()
    assert _server_tokens(fresh_redis, uri) == tokens


# -- status ----------------------------------------------------------------------------------


def test_status_shows_the_shared_state(redis_server: RedisServer, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.report import main_shared_status as main_status

    uri = redis_server.uri(namespace="statusapp")
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p", tokens=1000), store=uri)
    try:
        _pairs(eng, 3, "alpha")
        eng.force("beta", "open")
        eng.store.link.flush()  # type: ignore[attr-defined]
        assert main_status(["--store", uri]) == 0
        text = capsys.readouterr().out
        assert "beta" in text and "forced_open" in text
        assert "alpha-monthly" in text and "30 (+0 reserved) / 1,000 tokens = 3.0%" in text
        assert f"policy set {eng.store.guard.ours} (revision" in text  # type: ignore[attr-defined]
        assert main_status(["--store", uri, "--format", "json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["budgets"]["alpha-monthly"]["tokens_used"] == 30
        assert status["breakers"]["beta"]["state"] == "forced_open"
    finally:
        eng.close()
    assert main_status(["--store", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    with pytest.raises(SystemExit) as exc:
        main_status(["--store", "memory://"])
    assert exc.value.code == 2


# -- credentials and misconfiguration ----------------------------------------------------------

SECRET = "TopSecret"  # noqa: S105 - a test password, to look for in messages


def _chain(exc: BaseException | None) -> str:
    """The text of ``exc`` and of every exception behind it."""
    parts = []
    while exc is not None:
        parts.append(f"{exc!r} {exc}")
        exc = exc.__cause__ or exc.__context__
    return " | ".join(parts)


@pytest.mark.parametrize("uri", [
    f"redis://admin:{SECRET}@127.0.0.1:6379/0?timeout=5",  # unknown option
    f"redis://admin:{SECRET}@127.0.0.1:port/0",  # bad port
    f"redis://admin:{SECRET}@127.0.0.1:6379/x",  # bad db
    f"redis://admin:Top/{SECRET}@127.0.0.1:6379/0",  # an unescaped '/' in the password
])
def test_a_password_never_appears_in_uri_errors(uri: str) -> None:
    with pytest.raises(StorageError) as exc:
        open_store(uri)
    assert SECRET not in _chain(exc.value) and "Top/" not in _chain(exc.value)
    assert "***@" in str(exc.value)


def test_a_password_never_appears_when_the_client_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.connection", None)
    with pytest.raises(StorageError) as exc:
        open_store(f"redis://admin:{SECRET}@127.0.0.1:6379/0")
    assert SECRET not in _chain(exc.value) and "***@127.0.0.1:6379/0" in str(exc.value)


def test_redact_drops_the_userinfo() -> None:
    from engine.store.redis.store import redact

    assert redact(f"redis://admin:{SECRET}@h:1/0?namespace=a") == "redis://***@h:1/0?namespace=a"
    assert redact(f"redis://:{SECRET}@h") == "redis://***@h"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def _protect(server: RedisServer, password: str = SECRET) -> Any:
    """Require ``password`` on ``server``; returns an admin client that has it."""
    import redis

    server.client().config_set("requirepass", password)
    return redis.Redis(host="127.0.0.1", port=server.port, password=password, socket_timeout=1.0)


def _with_auth(uri: str, userinfo: str) -> str:
    return uri.replace("redis://", f"redis://{userinfo}@", 1)


def test_the_status_command_never_shows_the_password(fresh_redis: RedisServer,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.report import main_shared_status as main_status

    _protect(fresh_redis)
    wrong = _with_auth(fresh_redis.uri(), f"admin:{SECRET}x")
    assert main_status(["--store", wrong]) == 1
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "***@" in out.err and "misconfigured" in out.err
    assert main_status(["--store", f"redis://admin:{SECRET}@127.0.0.1:{fresh_redis.port}/0?timeout=5"]) == 1
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "unknown option 'timeout'" in out.err
    with pytest.raises(SystemExit):
        main_status(["--store", f"rediss://admin:{SECRET}@127.0.0.1:{fresh_redis.port}/0"])
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    right = _with_auth(fresh_redis.uri(), f":{SECRET}")
    assert main_status(["--store", right]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err


def test_a_store_with_a_password_works_and_does_not_show_it(fresh_redis: RedisServer) -> None:  # noqa: F811
    _protect(fresh_redis)
    store = open_store(_with_auth(fresh_redis.uri(), f"admin:{SECRET}".replace("admin", "default")))
    try:
        led = store.make_ledger(BUDGET, [])
        led.settle(T0, None, 7, 0.0)
        assert led.snapshot(T0)["tokens_used"] == 7 and not store.link.degraded  # type: ignore[attr-defined]
        assert SECRET not in store.uri and SECRET not in repr(store)
    finally:
        store.close()


@pytest.mark.parametrize(("userinfo", "db", "message"), [
    (f":{SECRET}x", 0, "authentication failed"),  # wrong password
    (None, 0, "authentication failed"),  # none given
    (f":{SECRET}", 99, "the database index was refused"),
    ("noscript:pw", 0, "permission denied"),  # may not SCRIPT LOAD
    ("noevalsha:pw", 0, "permission denied"),  # may load but not run scripts
])
def test_a_misconfigured_store_is_refused_at_once(fresh_redis: RedisServer, tmp_path: Path,  # noqa: F811
                                                  userinfo: str | None, db: int, message: str) -> None:
    admin = _protect(fresh_redis)
    admin.execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-script")
    admin.execute_command("ACL", "SETUSER", "noevalsha", "on", ">pw", "~*", "+@all", "-evalsha")
    uri = fresh_redis.uri().replace("/0?", f"/{db}?")
    if userinfo is not None:
        uri = _with_auth(uri, userinfo)
    before = admin.info("clients")["connected_clients"]
    with pytest.raises(StorageError, match=f"misconfigured: {message}") as exc:
        open_store(uri)
    assert SECRET not in _chain(exc.value)
    with pytest.raises(StorageError, match=f"misconfigured: {message}"):
        PolicyEngine.from_path(write_policies(tmp_path / "p"), store=uri)
    assert _until(lambda: admin.info("clients")["connected_clients"] == before)  # refused connections closed


def test_a_server_down_at_start_degrades_then_recovers(fresh_redis: RedisServer, tmp_path: Path,  # noqa: F811
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fresh_redis.stop()
    caplog.set_level(logging.WARNING, logger="engine.redis")
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=fresh_redis.uri(retry_ms=20, max_retry_ms=20))
    seen: list[Event] = []
    eng.subscribe(seen.append)
    try:
        _pairs(eng, 5, "alpha")
        assert kinds(seen) == ["StorageDegraded"]
        assert "misconfigured" not in seen[0].error  # type: ignore[attr-defined]
        assert "unreachable" in caplog.text and "misconfigured" not in caplog.text
        fresh_redis.start()
        assert _until(lambda: _pairs(eng, 1, "alpha") or "StorageRecovered" in kinds(seen))
    finally:
        eng.close()


@pytest.mark.parametrize("change", ["rotate the password", "revoke EVALSHA"])
def test_a_misconfiguration_seen_later_is_logged_and_decisions_go_on(
        fresh_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str) -> None:  # noqa: F811
    admin = _protect(fresh_redis)
    admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all")
    uri = _with_auth(fresh_redis.uri(retry_ms=20, max_retry_ms=20), "app:pw")
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=uri)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    caplog.set_level(logging.WARNING, logger="engine.redis")
    try:
        _pairs(eng, 3, "alpha")
        assert seen == []
        if change == "rotate the password":
            admin.execute_command("ACL", "SETUSER", "app", "resetpass", ">new")
            admin.client_kill_filter(_type="normal")  # the next connection must authenticate again
        else:
            admin.execute_command("ACL", "SETUSER", "app", "-evalsha")

        def misconfigured() -> bool:
            _pairs(eng, 1, "alpha")  # no exception: decided on local state
            return any("misconfigured" in getattr(e, "error", "") for e in seen)
        assert _until(misconfigured)
        assert "StorageDegraded" in kinds(seen) and "StorageRecovered" not in kinds(seen)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "misconfigured" in r.getMessage()]
        assert len(errors) == 1 and "pw" not in errors[0].getMessage().replace("permission", "")
        _pairs(eng, 5, "alpha")
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # once per outage
        admin.execute_command("ACL", "SETUSER", "app", ">pw", "+evalsha")  # fixed: sharing resumes
        assert _until(lambda: _pairs(eng, 1, "alpha") or "StorageRecovered" in kinds(seen))
    finally:
        eng.close()


# -- real processes ---------------------------------------------------------------------------

SPAWN = multiprocessing.get_context("spawn")


def _engine(policies: str, uri: str) -> PolicyEngine:
    engine.store.base.BACKENDS["redis"] = BACKEND
    return PolicyEngine.from_path(policies, store=uri)


def _budget_worker(policies: str, uri: str, calls: int, start: Any, out: Any) -> None:
    eng = _engine(policies, uri)
    admitted, errors = 0, []
    start.wait(30)
    for _ in range(calls):
        try:
            d = eng.decide("L1", estimated_tokens=10)
            eng.record(d, Outcome(latency_ms=1.0, input_tokens=4, output_tokens=6))
            admitted += d.model == "alpha"
        except Exception as exc:
            errors.append(repr(exc))
    eng.close()
    out.put({"admitted": admitted, "errors": errors[:5]})


def _breaker_worker(policies: str, uri: str, opened: Any, out: Any) -> None:
    eng = _engine(policies, uri)
    assert eng.decide("L1").model == "alpha"  # caches "closed" before the breaker opens
    out.put("ready")
    opened.wait(30)
    deadline, seen_at = time.monotonic() + 5.0, None
    while time.monotonic() < deadline:
        if eng.decide("L1").model == "beta":
            seen_at = time.monotonic()
            break
    state = eng.state("alpha")["breaker"]["state"]
    eng.close()
    out.put({"seen_at": seen_at, "state": state})


def _probe_worker(policies: str, uri: str, start: Any, out: Any) -> None:
    eng = _engine(policies, uri)
    start.wait(30)
    probes = sum(eng.decide("L1").model == "alpha" for _ in range(200))  # decisions never recorded
    half = sum(isinstance(e, CircuitHalfOpened) for e in eng.store.events())
    eng.close()
    out.put({"probes": probes, "half_opened": half})


def _steady_worker(policies: str, uri: str, seconds: float, start: Any, out: Any) -> None:
    eng = _engine(policies, uri)
    events: Counter[str] = Counter()
    eng.subscribe(lambda e: events.update([type(e).__name__]))
    tokens, errors = 0, []
    out.put("ready")
    start.wait(30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            d = eng.decide("L1", model="alpha", estimated_tokens=10)
            eng.record(d, Outcome(latency_ms=1.0, input_tokens=4, output_tokens=6))
            tokens += 10
        except Exception as exc:
            errors.append(repr(exc))
        time.sleep(0.001)
    eng.close()
    out.put({"tokens": tokens, "errors": errors[:5], "events": dict(events)})


def _run(target: Callable[..., None], args: list[tuple[Any, ...]], queue: Any, timeout: float = 60.0) -> list[Any]:
    procs = [SPAWN.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=timeout) for _ in procs]
        for p in procs:
            p.join(timeout)
            assert p.exitcode == 0
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_four_processes_never_overshoot_one_budget(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    limit, per_call, workers, calls = 20_000, 10, 4, 5_000
    policies = str(write_policies(tmp_path / "p", tokens=limit))
    uri = redis_server.uri()
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_budget_worker, args=(policies, uri, calls, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r["errors"] for r in results] == [[]] * workers
    settled = _server_tokens(redis_server, uri)
    assert settled == per_call * sum(r["admitted"] for r in results)  # nothing lost
    # each process has at most one call in flight: that is what the budget may be overshot by
    assert limit <= settled <= limit + workers * per_call


def test_a_breaker_opened_by_one_process_is_open_in_all(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = str(write_policies(tmp_path / "p"))
    uri = redis_server.uri()
    opened, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_breaker_worker, args=(policies, uri, opened, out)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        assert [out.get(timeout=60) for _ in procs] == ["ready"] * 3
        eng = _engine(policies, uri)
        for _ in range(5):
            eng.record(eng.decide("L1", model="alpha"), Outcome(latency_ms=5.0, error="server_error"))
        assert eng.state("alpha")["breaker"]["state"] == "open"
        opened_at = time.monotonic()
        opened.set()
        results = [out.get(timeout=30) for _ in procs]
        eng.close()
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(r["state"] == "open" for r in results)
    assert all(r["seen_at"] is not None and r["seen_at"] - opened_at < 0.5 for r in results)  # cache_ms = 100


def test_half_open_permits_hold_across_processes(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = str(write_policies(tmp_path / "p", open_for_s=0.3))
    uri = redis_server.uri()
    eng = _engine(policies, uri)
    for _ in range(5):
        eng.record(eng.decide("L1", model="alpha"), Outcome(latency_ms=5.0, error="server_error"))
    eng.close()
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_probe_worker, args=(policies, uri, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(0.35)  # past open_until
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(r["probes"] for r in results) == 3  # half_open_permits, across all processes
    assert sum(r["half_opened"] for r in results) == 1


def test_redis_killed_and_restarted_mid_run(fresh_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = str(write_policies(tmp_path / "p"))
    uri = fresh_redis.uri(retry_ms=50, max_retry_ms=200)
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_steady_worker, args=(policies, uri, 3.0, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        assert [out.get(timeout=60) for _ in procs] == ["ready"] * 4  # spawn imports take a while under load
        start.set()
        time.sleep(0.8)
        fresh_redis.kill()
        time.sleep(0.5)
        fresh_redis.start()
        results = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert [r["errors"] for r in results] == [[]] * 4
    assert all(r["events"].get("StorageDegraded", 0) >= 1 for r in results)
    assert all(r["events"].get("StorageRecovered", 0) >= 1 for r in results)
    assert _server_tokens(fresh_redis, uri) == sum(r["tokens"] for r in results)  # all usage reconciled


def test_after_a_reload_the_store_tracks_the_breakers_the_engine_uses(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    policies = write_policies(tmp_path / "p")
    eng = PolicyEngine.from_path(policies, store=redis_server.uri())
    try:
        models = policies / "models.yaml"
        models.write_text(models.read_text() + "\n# an edit that changes only the revision\n")
        assert eng.reload() is True
        for name in ("alpha", "beta"):
            assert eng.store._breakers[name] is eng._models[name].breaker  # type: ignore[attr-defined]
    finally:
        eng.close()


def test_an_engine_whose_clock_stepped_back_gives_the_server_the_clocks_own_time(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from engine.testing import FakeClock

    policies = write_policies(tmp_path / "p")
    uri = redis_server.uri() + "&cache_ms=0"
    clock_a, clock_b = FakeClock(), FakeClock()
    a = PolicyEngine.from_path(policies, clock=clock_a, store=uri)
    b = PolicyEngine.from_path(policies, clock=clock_b, store=uri)
    try:
        a.state("alpha")
        clock_a.step_back(3600.0)  # a's host stepped back an hour, then corrected: its engine time runs ahead
        a.state("alpha")
        clock_a.advance(3600.0)
        a.state("alpha")
        for _ in range(40):  # b's failures open the shared breaker on the true time
            if b.state("alpha")["breaker"]["state"] != "closed":
                break
            b.record(b.decide("L1", model="alpha"), Outcome(latency_ms=5.0, error="server_error"))
        assert b.state("alpha")["breaker"]["state"] == "open"
        assert a.state("alpha")["breaker"]["state"] == "open"
        with pytest.raises(NoModelAvailable):
            a.decide("L1", model="alpha")
    finally:
        a.close()
        b.close()


def test_with_cache_ms_0_a_decision_on_a_model_without_budgets_costs_one_round_trip(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """No cache: the breaker's state is asked once per decision (and a success once per record), not
    refreshed ahead of the ask as well."""
    eng = PolicyEngine.from_path(write_policies(tmp_path / "p"), store=redis_server.uri(cache_ms=0))
    try:
        _pairs(eng, 5, "beta")
        before = eng.store.stats()  # type: ignore[attr-defined]
        _pairs(eng, 100, "beta")
        after = eng.store.stats()  # type: ignore[attr-defined]
        assert after["round_trips"] - before["round_trips"] <= 200
        assert after["commands"] - before["commands"] <= 200
    finally:
        eng.close()
