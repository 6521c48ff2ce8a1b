"""The observe HTTP server on a real loopback port: /, /status, /healthz, /metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.observe.server import ObserveServer, serve
from engine.testing import FakeClock
from tests.conftest import POLICIES


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - a loopback test server
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def eng(clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(POLICIES, clock=clock)


@pytest.fixture
def server(eng: PolicyEngine) -> Iterator[ObserveServer]:
    with serve(eng) as s:
        yield s


def test_it_binds_loopback_by_default_on_a_free_port(server: ObserveServer) -> None:
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_status_shows_breakers_budgets_in_flight_health_revision_and_events(
        eng: PolicyEngine, clock: FakeClock, server: ObserveServer) -> None:
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
        clock.advance(0.1)
    held = eng.decide("L2")
    code, ctype, body = _get(server.url + "status")
    assert code == 200 and ctype == "application/json"
    status = json.loads(body)
    assert status["revision"] == eng.policy.revision and status["time"] == "2026-01-01T00:00:01.000Z"
    models = {m["model"]: m for m in status["models"]}
    assert models["gpt-4.1-mini"]["breaker"] == "open"
    assert models["gpt-4.1-mini"]["open_until"] == "2026-01-01T00:00:30.900Z"
    assert models[held.model]["in_flight"] == 1
    l2 = next(t for t in status["tiers"] if t["tier"] == "L2")
    assert (l2["calls"], l2["availability"], l2["available_models"], l2["models"]) == (10, 0.0, 3, 4)
    assert (l2["requests"], l2["request_availability"], l2["refused"]) == (10, 0.0, 0)
    assert {b["name"] for b in status["budgets"]} == {b.name for b in eng.policy.budgets}
    assert [e["event"] for e in status["events"]] == ["FallbackTriggered", "CircuitOpened"]  # newest first
    assert status["health"] in ("degraded", "ok")


def test_healthz_is_503_when_a_tier_has_no_model_to_serve(eng: PolicyEngine, server: ObserveServer) -> None:
    assert _get(server.url + "healthz")[:2] == (200, "text/plain; charset=utf-8")
    for m in eng.policy.models:
        eng.force(m, "open")
    code, _, body = _get(server.url + "healthz")
    assert code == 503 and "no model available for tier L1, L2, L3, L4" in body
    with pytest.raises(NoModelAvailable):
        eng.decide("L3")
    l3 = next(t for t in json.loads(_get(server.url + "status")[2])["tiers"] if t["tier"] == "L3")
    assert (l3["requests"], l3["refused"], l3["request_availability"]) == (1, 1, 0.0)


def test_metrics_route_serves_the_prometheus_exposition(eng: PolicyEngine, server: ObserveServer) -> None:
    pytest.importorskip("prometheus_client")
    eng.record(eng.decide("L1"), Outcome(100.0, 5, 5))
    code, ctype, body = _get(server.url + "metrics")
    assert code == 200 and ctype.startswith("text/plain; version=")
    assert 'llm_policy_calls_total{tier="L1",model="gpt-4.1-nano",outcome="success"} 1.0' in body


def test_the_page_is_self_contained_and_polls_status(server: ObserveServer) -> None:
    code, ctype, body = _get(server.url)
    assert code == 200 and ctype == "text/html; charset=utf-8"
    assert "fetch(\"status\"" in body and "setInterval(tick" in body
    assert "http://" not in body and "https://" not in body and "<link" not in body and " src=" not in body
    assert _get(server.url + "nope")[0] == 404


def test_a_store_uri_with_a_password_is_never_shown() -> None:
    from engine.observe.sources import RedisSource

    source = RedisSource("redis://user:s3cret@127.0.0.1:1/0")
    with serve(source) as s:
        code, _, body = _get(s.url + "status")
    assert code == 503 and "s3cret" not in body and "redis store" in body


def test_the_engine_and_its_server_import_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, engine, engine.observe, engine.observe.sinks; from engine.observe import serve; "
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
