"""What watching an engine costs: the hot path with the exporter and tracing installed, a scrape, /status and /.

The decide+record pair is the one of ``test_bench_engine.py``, measured bare
and with a Prometheus collector, an OpenTelemetry instrumentation and a
status server's event subscription installed but nothing scraped or traced.
The scrape and the HTTP routes run on a 50-model, 20-budget policy set with
traffic recorded on every model.
"""

from __future__ import annotations

import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.conftest import ROOT
from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.observe.otel import instrument
from engine.observe.prometheus import exposition, registry_for
from engine.observe.server import ObserveServer, serve
from tests.observe.fleet import big_policy_set

OK = Outcome(latency_ms=812.0, input_tokens=1200, output_tokens=310)


def test_decide_record_bare(benchmark: pytest.FixtureRequest) -> None:
    eng = PolicyEngine.from_path(ROOT / "policies")

    def pair() -> None:
        eng.record(eng.decide("L2"), OK)

    benchmark(pair)


def test_decide_record_with_collector_and_tracing_installed(benchmark: pytest.FixtureRequest) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    eng = PolicyEngine.from_path(ROOT / "policies")
    registry_for(eng)
    instrument(eng, tracer_provider=TracerProvider())
    with serve(eng):

        def pair() -> None:
            eng.record(eng.decide("L2"), OK)

        benchmark(pair)


@pytest.fixture(scope="module")
def fleet() -> Iterator[PolicyEngine]:
    with tempfile.TemporaryDirectory() as tmp:
        eng = PolicyEngine.from_path(big_policy_set(Path(tmp) / "p"))
        assert (len(eng.policy.models), len(eng.policy.budgets)) == (50, 20)
        for name, spec in eng.policy.models.items():
            for i in range(20):
                try:
                    d = eng.decide(spec.tier, model=name)
                except NoModelAvailable:
                    break
                eng.record(d, Outcome(100.0 + 50 * i, 100, 20, error="timeout" if i % 7 == 0 else None))
        yield eng


def test_one_scrape_of_50_models_and_20_budgets(benchmark: pytest.FixtureRequest, fleet: PolicyEngine) -> None:
    registry, _ = registry_for(fleet)
    text = benchmark(lambda: exposition(registry)[0])
    assert text.count(b"llm_policy_breaker_state{") == 50 * 6


@pytest.fixture(scope="module")
def server(fleet: PolicyEngine) -> Iterator[ObserveServer]:
    with serve(fleet) as s:
        yield s


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
        return bytes(r.read())


@pytest.mark.parametrize("route", ["status", "", "metrics"])
def test_http_route_with_50_models(benchmark: pytest.FixtureRequest, server: ObserveServer, route: str) -> None:
    body = benchmark(_get, server.url + route)
    assert body
