"""The Prometheus collector: what a scrape of an engine shows, and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.observe.prometheus import exposition, reason_label, registry_for
from engine.testing import FakeClock
from tests.conftest import POLICIES

ROOT = Path(__file__).resolve().parents[2]


def _samples(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(registry)[0].decode()  # type: ignore[arg-type]
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def eng(clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(POLICIES, clock=clock)


def test_calls_tokens_cost_and_durations_by_tier_model_and_outcome(eng: PolicyEngine, clock: FakeClock) -> None:
    registry, _ = registry_for(eng)
    for latency in (80.0, 400.0, 2000.0):
        eng.record(eng.decide("L2"), Outcome(latency, 1000, 200))
    eng.record(eng.decide("L2"), Outcome(30000.0, error="timeout"))
    clock.advance(3600)  # far past the rolling window: the counters still count every call
    s = _samples(registry)
    base = {"tier": "L2", "model": "gpt-4.1-mini"}
    assert _get(s, "llm_policy_calls_total", outcome="success", **base) == 3
    assert _get(s, "llm_policy_calls_total", outcome="timeout", **base) == 1
    assert _get(s, "llm_policy_tokens_total", direction="input", **base) == 3000
    assert _get(s, "llm_policy_cost_usd_total", **base) == pytest.approx(3 * (1000 * 0.40 + 200 * 1.60) / 1e6)
    assert _get(s, "llm_policy_call_duration_seconds_bucket", le="0.1", **base) == 1
    assert _get(s, "llm_policy_call_duration_seconds_bucket", le="0.5", **base) == 2
    assert _get(s, "llm_policy_call_duration_seconds_bucket", le="2.5", **base) == 3
    assert _get(s, "llm_policy_call_duration_seconds_bucket", le="+Inf", **base) == 4
    assert _get(s, "llm_policy_call_duration_seconds_sum", **base) == pytest.approx(32.48)


def test_time_to_first_token_of_streamed_calls_is_a_histogram_by_tier_and_model(eng: PolicyEngine,
                                                                                 clock: FakeClock) -> None:
    registry, _ = registry_for(eng)
    assert not any(name.startswith("llm_policy_time_to_first_token") for name, _ in _samples(registry))
    for ttft in (40.0, 180.0, 900.0):
        eng.record(eng.decide("L2"), Outcome(2000.0, 10, 20, ttft_ms=ttft))
    eng.record(eng.decide("L2"), Outcome(50.0, 10, 20))  # not streamed: counts in the durations only
    eng.record(eng.decide("L1"), Outcome(50.0, 10, 20))
    clock.advance(3600)  # past the rolling window: the histogram still counts every streamed call
    s = _samples(registry)
    base = {"tier": "L2", "model": "gpt-4.1-mini"}
    name = "llm_policy_time_to_first_token_seconds"
    assert _get(s, f"{name}_bucket", le="0.05", **base) == 1
    assert _get(s, f"{name}_bucket", le="0.2", **base) == 2
    assert _get(s, f"{name}_bucket", le="1.0", **base) == 3
    assert _get(s, f"{name}_bucket", le="+Inf", **base) == 3
    assert _get(s, f"{name}_count", **base) == 3
    assert _get(s, f"{name}_sum", **base) == pytest.approx(1.12)
    assert _get(s, "llm_policy_call_duration_seconds_count", **base) == 4
    assert not any(n.startswith(name) and dict(labels).get("tier") == "L1" for n, labels in s)


def test_breakers_fallbacks_in_flight_and_budgets(eng: PolicyEngine, clock: FakeClock) -> None:
    registry, _ = registry_for(eng)
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
        clock.advance(0.1)
    held = eng.decide("L2", estimated_tokens=1000)  # falls back, stays in flight
    s = _samples(registry)
    assert _get(s, "llm_policy_breaker_state", model="gpt-4.1-mini", tier="L2", state="open") == 1
    assert _get(s, "llm_policy_breaker_state", model="gpt-4.1-mini", tier="L2", state="closed") == 0
    assert _get(s, "llm_policy_breaker_transitions_total", model="gpt-4.1-mini", to="open") == 1
    assert _get(s, "llm_policy_fallbacks_total", tier="L2", from_model="gpt-4.1-mini", to_model=held.model,
                reason="breaker open") == 1
    assert _get(s, "llm_policy_in_flight", model=held.model, tier="L2") == 1
    budgets = {b.name: b for b in eng.policy.budgets}
    assert set(budgets) <= {k[1][0][1] for k in s if k[0] == "llm_policy_budget_exhausted"}
    ratio = _get(s, "llm_policy_budget_used_ratio", budget="everything-monthly", period="monthly")
    assert 0 < ratio < 1e-3  # the reservation counts
    eng.record(held, Outcome(100.0, 10, 10))
    assert _get(_samples(registry), "llm_policy_in_flight", model=held.model, tier="L2") == 0


def test_remaining_tokens_of_an_exhausted_budget_and_policy_info(tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "p"
    shutil.copytree(POLICIES, d)
    eng = PolicyEngine.from_path(d, clock=FakeClock())
    registry, _ = registry_for(eng)
    for _ in range(3):
        eng.record(eng.decide("L4", model="gpt-5"), Outcome(100.0, 3_000_000, 0))
    s = _samples(registry)
    assert _get(s, "llm_policy_budget_remaining_tokens", budget="gpt-5-daily") == 0
    assert _get(s, "llm_policy_budget_exhausted", budget="gpt-5-daily") == 1
    assert _get(s, "llm_policy_policy_info", revision=eng.policy.revision[:12], revision_full=eng.policy.revision) == 1
    assert _get(s, "llm_policy_policy_reload_last_success") == 1
    assert _get(s, "llm_policy_policy_loaded_timestamp_seconds") == pytest.approx(1_767_225_600.0)
    (d / "models.yaml").write_text("models: [\n")
    eng.reload()
    s = _samples(registry)
    assert _get(s, "llm_policy_policy_reload_last_success") == 0
    assert _get(s, "llm_policy_policy_reloads_total", result="failure") == 1


def test_refused_requests_are_counted_by_tier(eng: PolicyEngine) -> None:
    registry, _ = registry_for(eng)
    for m in eng.policy.models:
        eng.force(m, "open")
    with pytest.raises(NoModelAvailable):
        eng.decide("L1")
    assert _get(_samples(registry), "llm_policy_requests_refused_total", tier="L1") == 1


def test_fallback_reasons_drop_their_episode_numbers() -> None:
    assert reason_label("breaker open until 2026-01-01T00:00:30.000Z") == "breaker open"
    assert reason_label("at max_in_flight (64)") == "at max_in_flight"
    assert reason_label("context window 128000 is not larger than 200000") == "context window too small"
    assert reason_label("budget gpt-5-daily exhausted") == "budget gpt-5-daily exhausted"


def test_every_grafana_query_uses_a_metric_the_exporter_exports(eng: PolicyEngine) -> None:
    registry, _ = registry_for(eng)
    eng.record(eng.decide("L2"), Outcome(100.0, 1, 1))
    eng.record(eng.decide("L2"), Outcome(100.0, 1, 1, ttft_ms=20.0))  # a streamed call: TTFT series exist
    text = exposition(registry)[0].decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
    names |= exported | {n + "_total" for n in exported}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\b(llm_policy_[a-z_]+)", target["expr"]))
    assert used and used <= names, sorted(used - names)


def test_our_exposition_reads_back_as_prometheus_client_s_own(eng: PolicyEngine, clock: FakeClock) -> None:
    from prometheus_client import generate_latest

    registry, _ = registry_for(eng)
    eng.force("gpt-4.1-mini", "open")
    for latency in (80.0, 400.0):
        eng.record(eng.decide("L2"), Outcome(latency, 10, 2))
    ours, theirs = exposition(registry)[0].decode(), generate_latest(registry).decode()
    assert _samples(registry) == {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(theirs) for s in f.samples}
    assert [x for x in ours.splitlines() if x.startswith("# TYPE")] == [
        x for x in theirs.splitlines() if x.startswith("# TYPE")]


def test_requests_and_served_requests_by_tier(eng: PolicyEngine) -> None:
    registry, _ = registry_for(eng)
    d = eng.decide("L1")
    eng.record(d, Outcome(100.0, error="timeout"))
    eng.record(eng.decide("L1", exclude=(d.model,), reason="timeout"), Outcome(100.0, 1, 1))  # same request
    eng.record(eng.decide("L1"), Outcome(100.0, error="timeout"))  # a request not served
    s = _samples(registry)
    assert _get(s, "llm_policy_requests_total", tier="L1") == 2
    assert _get(s, "llm_policy_requests_served_total", tier="L1") == 1
    assert _get(s, "llm_policy_requests_total", tier="L4") == 0


def test_active_anomalies_are_exported_while_they_hold(eng: PolicyEngine, clock: FakeClock) -> None:
    registry, _ = registry_for(eng)
    assert _get(_samples(registry), "llm_policy_anomalies_active") == 0
    eng.force("gpt-4.1-nano", "metrics_only")  # its breaker records but never opens
    for _ in range(7):  # a rate-limit storm on gpt-4.1-nano, held past the rule's 30 s
        for _ in range(5):
            eng.record(eng.decide("L1", model="gpt-4.1-nano"), Outcome(50.0, error="rate_limit"))
        clock.advance(11)
        eng.tick()
    s = _samples(registry)
    assert _get(s, "llm_policy_anomalies_active") >= 1
    assert _get(s, "llm_policy_anomaly_active", rule="rate-limit-storm", scope="model", target="gpt-4.1-nano",
                severity="critical") == 1
