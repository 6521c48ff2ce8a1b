"""A Prometheus collector that reads the engine's state at scrape time.

Nothing is added to the decision path: every scrape takes one
:meth:`engine.core.PolicyEngine.snapshot` (the rolling metrics' own
counters since each model's metrics began) and turns it into metric
families. Counts that only events carry (fallbacks by reason, breaker
transitions, refused requests) are tallied by a listener, which runs only
when such an event happens.

Needs ``prometheus_client`` (extra ``[prometheus]``)::

    from engine.observe.prometheus import EngineCollector
    registry.register(EngineCollector(eng))        # or engine.observe.serve(eng) for /metrics
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.events import CircuitClosed, CircuitHalfOpened, CircuitOpened, Event, FallbackTriggered, ReloadFailed

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

    from engine.core import PolicyEngine

PREFIX = "llm_policy"
#: Upper bounds (seconds) of the call duration histogram.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Upper bounds (seconds) of the time to first token histogram (streamed calls).
TTFT_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
#: Every breaker state; ``llm_policy_breaker_state`` has one series per model and state (1 for the current one).
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "disabled", "metrics_only")

_UNTIL = re.compile(r"\s+until\s+\S+$")
_IN_FLIGHT = re.compile(r"\s*\(\d+\)$")


def reason_label(reason: str) -> str:
    """A fallback reason without its episode's numbers (``breaker open``, ``budget daily exhausted``)."""
    if reason.startswith("context window"):
        return "context window too small"
    return _IN_FLIGHT.sub("", _UNTIL.sub("", reason)).strip() or reason


class EventTally:
    """Counts what only events tell: fallbacks, breaker transitions, refused requests, reload failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fallbacks: Counter[tuple[str, str, str, str]] = Counter()
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.refused: Counter[str] = Counter()
        self.reload_failures = 0

    def __call__(self, event: Event) -> None:
        with self.lock:
            if isinstance(event, FallbackTriggered):
                self.fallbacks[(event.tier, event.from_model or "", event.to_model, reason_label(event.reason))] += 1
            elif isinstance(event, CircuitOpened):
                self.transitions[(event.model, "forced_open" if event.reason == "forced" else "open")] += 1
            elif isinstance(event, CircuitHalfOpened):
                self.transitions[(event.model, "half_open")] += 1
            elif isinstance(event, CircuitClosed):
                self.transitions[(event.model, "closed")] += 1
            elif isinstance(event, ReloadFailed):
                self.reload_failures += 1
            elif type(event).__name__ == "RequestRefused":
                self.refused[getattr(event, "tier", "")] += 1


class EngineCollector:
    """Exports one engine's state; register it on a ``CollectorRegistry`` (see :func:`registry_for`)."""

    def __init__(self, engine: PolicyEngine, *, prefix: str = PREFIX) -> None:
        self.engine = engine
        self.prefix = prefix
        self.tally = EventTally()
        self.unsubscribe = engine.subscribe(self.tally)

    def describe(self) -> list[Metric]:
        return []  # the families depend on the policy set in force: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        snap = self.engine.snapshot()
        p = self.prefix
        calls = CounterMetricFamily(f"{p}_calls", "Calls recorded, by requested tier, model and outcome "
                                    "(success or the error class)", labels=("tier", "model", "outcome"))
        tokens = CounterMetricFamily(f"{p}_tokens", "Tokens recorded, by requested tier, model and direction",
                                     labels=("tier", "model", "direction"))
        cost = CounterMetricFamily(f"{p}_cost_usd", "Cost of the calls recorded, in US dollars",
                                   labels=("tier", "model"))
        duration = HistogramMetricFamily(f"{p}_call_duration_seconds", "Call latency as recorded",
                                         labels=("tier", "model"))
        for (tier, model), c in sorted(snap["calls"].items()):
            calls.add_metric((tier, model, "success"), c["successes"])
            for cls, n in sorted(c["errors"].items()):
                calls.add_metric((tier, model, cls), n)
            tokens.add_metric((tier, model, "input"), c["tokens_in"])
            tokens.add_metric((tier, model, "output"), c["tokens_out"])
            cost.add_metric((tier, model), c["cost_usd"])
            hist = c["latency"]
            counts = hist.count_at_most([b * 1000.0 for b in DURATION_BUCKETS_S])
            buckets = [(_le(b), n) for b, n in zip(DURATION_BUCKETS_S, counts, strict=True)]
            buckets.append(("+Inf", hist.count))
            duration.add_metric((tier, model), buckets, hist.total / 1000.0)
        ttft = HistogramMetricFamily(f"{p}_time_to_first_token_seconds", "Time to the first chunk carrying "
                                     "content, of streamed calls", labels=("tier", "model"))
        for (tier, model), hist in sorted(snap.get("ttft", {}).items()):
            counts = hist.count_at_most([b * 1000.0 for b in TTFT_BUCKETS_S])
            buckets = [(_le(b), n) for b, n in zip(TTFT_BUCKETS_S, counts, strict=True)]
            buckets.append(("+Inf", hist.count))
            ttft.add_metric((tier, model), buckets, hist.total / 1000.0)
        requests = CounterMetricFamily(f"{p}_requests", "Requests by tier: decisions that started one, plus "
                                       "requests refused before any attempt (since the exporter started)",
                                       labels=("tier",))
        served = CounterMetricFamily(f"{p}_requests_served", "Requests served, by tier (each successful attempt "
                                     "serves one request)", labels=("tier",))
        first: Counter[str] = Counter()
        ok: Counter[str] = Counter()
        for (tier, _), c in snap["calls"].items():
            first[tier] += c["requests"]
            ok[tier] += c["successes"]
        with self.tally.lock:
            refused = dict(self.tally.refused)
        for tier in snap["tier_order"]:
            requests.add_metric((tier,), first[tier] + refused.get(tier, 0))
            served.add_metric((tier,), ok[tier])
        yield from (calls, tokens, cost, duration, ttft, requests, served)
        yield from self._models(snap, GaugeMetricFamily, CounterMetricFamily)
        yield from self._budgets(snap, GaugeMetricFamily)
        yield from self._policy(snap, GaugeMetricFamily, CounterMetricFamily, InfoMetricFamily)

    def _models(self, snap: dict[str, Any], gauge: Any, counter: Any) -> Iterator[Metric]:
        p = self.prefix
        state = gauge(f"{p}_breaker_state", "1 for the breaker state a model is in, 0 for the others",
                      labels=("model", "tier", "state"))
        in_flight = gauge(f"{p}_in_flight", "Calls decided and not yet recorded, per model", labels=("model", "tier"))
        limit = gauge(f"{p}_max_in_flight", "The policy's max_in_flight per model (absent: unlimited)",
                      labels=("model", "tier"))
        for name, m in sorted(snap["models"].items()):
            for s in BREAKER_STATES:
                state.add_metric((name, m["tier"], s), 1.0 if m["state"] == s else 0.0)
            in_flight.add_metric((name, m["tier"]), m["in_flight"])
            if m["max_in_flight"]:
                limit.add_metric((name, m["tier"]), m["max_in_flight"])
        transitions = counter(f"{p}_breaker_transitions", "Breaker transitions since the exporter started, "
                              "by model and the state entered", labels=("model", "to"))
        fallbacks = counter(f"{p}_fallbacks", "Fallbacks since the exporter started, by requested tier, the model "
                            "skipped first, the model chosen and why",
                            labels=("tier", "from_model", "to_model", "reason"))
        refused = counter(f"{p}_requests_refused", "Requests no model could serve (NoModelAvailable), by tier",
                          labels=("tier",))
        with self.tally.lock:
            for (model, to), n in sorted(self.tally.transitions.items()):
                transitions.add_metric((model, to), n)
            for key, n in sorted(self.tally.fallbacks.items()):
                fallbacks.add_metric(key, n)
            for tier, n in sorted(self.tally.refused.items()):
                refused.add_metric((tier,), n)
        yield from (state, in_flight, limit, transitions, fallbacks, refused)

    def _budgets(self, snap: dict[str, Any], gauge: Any) -> Iterator[Metric]:
        p = self.prefix
        ratio = gauge(f"{p}_budget_used_ratio", "Budget used (settled and reserved) as a fraction of its limit",
                      labels=("budget", "period"))
        tokens = gauge(f"{p}_budget_remaining_tokens", "Tokens left in the budget's period", labels=("budget",))
        cost = gauge(f"{p}_budget_remaining_usd", "Cost left in the budget's period, US dollars", labels=("budget",))
        exhausted = gauge(f"{p}_budget_exhausted", "1 when the budget is exhausted", labels=("budget",))
        resets = gauge(f"{p}_budget_resets_timestamp_seconds", "When the budget's period ends (epoch seconds)",
                       labels=("budget",))
        lease_tokens = gauge(f"{p}_budget_lease_tokens", "Tokens of a shared budget this process holds as its "
                             "leased slice (budgets with lease: on a Redis store)", labels=("budget",))
        lease_cost = gauge(f"{p}_budget_lease_usd", "US dollars of a shared budget this process holds as its "
                           "leased slice", labels=("budget",))
        for name, b in sorted(snap["budgets"].items()):
            if "lease_tokens" in b:
                if b["tokens_limit"] is not None:
                    lease_tokens.add_metric((name,), b["lease_tokens"])
                if b["cost_limit"] is not None:
                    lease_cost.add_metric((name,), b["lease_cost"])
            ratio.add_metric((name, b["period"]), b["used_fraction"])
            if b["tokens_limit"] is not None:
                tokens.add_metric((name,), max(0, b["tokens_limit"] - b["tokens_used"] - b["tokens_reserved"]))
            if b["cost_limit"] is not None:
                cost.add_metric((name,), max(0.0, b["cost_limit"] - b["cost_used"] - b["cost_reserved"]))
            exhausted.add_metric((name,), 1.0 if b["exhausted"] else 0.0)
            if b["resets_at"] is not None:
                resets.add_metric((name,), b["resets_at"])
        yield from (ratio, tokens, cost, exhausted, resets, lease_tokens, lease_cost)

    def _policy(self, snap: dict[str, Any], gauge: Any, counter: Any, info: Any) -> Iterator[Metric]:
        p = self.prefix
        reload = snap["reload"]
        wall_shift = snap["wall"] - snap["now"]
        anomalies = gauge(f"{p}_anomaly_active", "1 for each anomaly rule firing on a target",
                          labels=("rule", "scope", "target", "severity"))
        for a in snap["anomalies"]:
            anomalies.add_metric((a["rule"], a["scope"], a["target"], a["severity"]), 1.0)
        count = gauge(f"{p}_anomalies_active", "How many anomalies are active")
        count.add_metric((), len(snap["anomalies"]))
        policy = info(f"{p}_policy", "The policy revision in force", labels=("revision",))
        policy.add_metric((snap["revision"][:12],), {"revision_full": snap["revision"]})
        ok = gauge(f"{p}_policy_reload_last_success", "1 when the last reload attempt took effect or none failed")
        ok.add_metric((), 0.0 if reload["last_error"] else 1.0)
        loaded = gauge(f"{p}_policy_loaded_timestamp_seconds", "When the policy set in force took effect (epoch s)")
        loaded.add_metric((), reload["loaded_at"] + wall_shift)
        attempts = counter(f"{p}_policy_reloads", "Reload attempts by result", labels=("result",))
        attempts.add_metric(("success",), reload["successes"])
        attempts.add_metric(("failure",), reload["failures"])
        yield from (anomalies, count, policy, ok, loaded, attempts)


def _le(bound: float) -> str:
    return repr(float(bound))


def registry_for(engine: PolicyEngine) -> tuple[CollectorRegistry, EngineCollector]:
    """A fresh registry holding one :class:`EngineCollector` of ``engine``."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Prometheus metrics need prometheus_client: pip install 'llm-policy-engine[prometheus]'") \
            from exc
    registry = CollectorRegistry(auto_describe=False)
    collector = EngineCollector(engine)
    registry.register(collector)
    return registry, collector


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition (format 0.0.4) of ``registry`` and its content type.

    Written here rather than by ``prometheus_client.generate_latest``, which
    re-validates every label name of every sample: with 50 models that took
    most of a scrape. The output is the same text format, which
    ``prometheus_client.parser`` reads back in the tests.
    """
    from prometheus_client import CONTENT_TYPE_LATEST

    out: list[str] = []
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name, kind = name + "_info", "gauge"
        out.append(f"# HELP {name} {_help(family.documentation)}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_label(v)}"' for k, v in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {_num(sample.value)}\n")
            else:
                out.append(f"{sample.name} {_num(sample.value)}\n")
    return "".join(out).encode(), CONTENT_TYPE_LATEST


def _num(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
