"""Where the live page and ``/status`` read from: an engine in this process, or a store a fleet writes.

Every source answers :meth:`Source.status` with the same JSON-able shape
(``time`` in UTC, ``health``, ``tiers``, ``models``, ``budgets``,
``anomalies``, ``events`` newest first, ``revision``) and, when it can,
:meth:`Source.metrics` with the Prometheus exposition. No source ever puts a
credential in what it answers: store URIs are shown redacted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.events import Event, RequestRefused, utc_iso
from engine.text import redact_uri

if TYPE_CHECKING:
    from engine.core import PolicyEngine
    from engine.policy.model import PolicySet

#: How many recent events a source keeps for the page.
RECENT_EVENTS = 100
_OPEN = ("open", "forced_open")


class Source(Protocol):
    name: str

    def status(self) -> dict[str, Any]: ...

    def metrics(self) -> tuple[bytes, str] | None: ...


def overall(tiers: list[dict[str, Any]]) -> str:
    """``ok`` when every tier is healthy, ``down`` when one has no model to serve, else ``degraded``."""
    if any(t["available_models"] == 0 for t in tiers):
        return "down"
    return "ok" if all(t["health"] == "healthy" for t in tiers) else "degraded"


class EngineSource:
    """Reads a :class:`~engine.core.PolicyEngine` in this process; keeps its recent events."""

    def __init__(self, engine: PolicyEngine, *, events: int = RECENT_EVENTS) -> None:
        self.engine = engine
        self.name = "engine (in process)"
        self._recent: deque[dict[str, Any]] = deque(maxlen=events)
        self._refused: deque[tuple[float, str]] = deque(maxlen=100_000)  # (engine time, tier) of refusals
        self._lock = threading.Lock()
        self._registry: Any = None
        self.unsubscribe = engine.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self._recent.append(event.to_dict())
            if isinstance(event, RequestRefused):
                self._refused.append((event.at, event.tier))

    def status(self) -> dict[str, Any]:
        eng = self.engine
        snap = eng.snapshot()
        perf = eng.performance_report()
        shift = snap["wall"] - snap["now"]
        models = []
        for name, m in snap["models"].items():
            p = perf["models"].get(name, {"health": "healthy", "metrics": {}})
            w = p["metrics"]
            until = m["open_until"]
            models.append({
                "model": name, "tier": m["tier"], "provider": m["provider"], "health": p["health"],
                "breaker": m["state"], "open_until": utc_iso(until + shift) if m["state"] == "open" and until
                else None, "in_flight": m["in_flight"], "max_in_flight": m["max_in_flight"],
                "calls": w.get("calls", 0), "success_rate": w.get("success_rate", 1.0), "p95_ms": w.get("p95_ms", 0.0),
                "fallbacks": w.get("fallbacks", 0), "budget_used": w.get("budget_used", 0.0)})
        tiers = []
        since = snap["now"] - perf["window_s"]
        with self._lock:
            refused = Counter(tier for at, tier in self._refused if at >= since)
        for tier in snap["tier_order"]:
            t = perf["tiers"][tier]
            w = t["metrics"]
            members = t["models"]
            avail = sum(1 for n in members if snap["models"][n]["state"] not in _OPEN + ("disabled",))
            requests = w["requests"] + refused[tier]
            tiers.append({"tier": tier, "health": t["health"], "models": len(members), "available_models": avail,
                          "calls": w["calls"], "availability": w["success_rate"],
                          "requests": requests, "refused": refused[tier],
                          "request_availability": min(1.0, w["successes"] / requests) if requests else None,
                          "fallbacks": w["fallbacks"], "p95_ms": w["p95_ms"]})
        with self._lock:
            events = list(reversed(self._recent))
        return {"source": self.name, "time": utc_iso(snap["wall"]), "revision": snap["revision"],
                "window_s": perf["window_s"], "health": overall(tiers), "tiers": tiers, "models": models,
                "budgets": [_budget(b) for b in snap["budgets"].values()], "anomalies": snap["anomalies"],
                "reload": {k: v for k, v in snap["reload"].items() if not k.endswith("_at")},
                "events": events}

    def metrics(self) -> tuple[bytes, str] | None:
        try:
            from engine.observe.prometheus import exposition, registry_for
        except ImportError:  # pragma: no cover - prometheus_client missing
            return None
        with self._lock:
            if self._registry is None:
                try:
                    self._registry = registry_for(self.engine)[0]
                except ImportError:
                    return None
            registry = self._registry
        return exposition(registry)


def _budget(b: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": b["name"], "period": b.get("period"), "used_fraction": b["used_fraction"],
            "tokens_used": b["tokens_used"], "tokens_limit": b["tokens_limit"], "cost_used": b["cost_used"],
            "cost_limit": b["cost_limit"], "exhausted": b["exhausted"],
            "resets": utc_iso(b.get("resets_at"))}


class SQLiteSource:
    """Reads the last state an engine saved in a SQLite history (``policy-engine serve --store sqlite:///…``)."""

    def __init__(self, path: str | Path, policy: PolicySet) -> None:
        self.path = Path(path)
        self.policy = policy
        self.name = f"sqlite history {self.path.name}"

    def status(self) -> dict[str, Any]:
        from engine.reporting.status import read_status
        from engine.store.historydb import open_readonly

        conn = open_readonly(self.path)
        try:
            st = read_status(conn, self.policy)
            rows = conn.execute("SELECT at, kind, data FROM events ORDER BY at DESC, id DESC LIMIT ?",
                                (RECENT_EVENTS,)).fetchall()
        except sqlite3.Error as exc:
            from engine.errors import StorageError

            raise StorageError(f"cannot read history: {exc}") from exc
        finally:
            conn.close()
        events = []
        for at, kind, data in rows:
            fields = json.loads(data) if data else {}
            events.append({"event": kind, "time": utc_iso(at), **{k: v for k, v in fields.items() if k != "metrics"}})
        models = [{"model": m["model"], "tier": m["tier"], "provider": "", "health": m["health"],
                   "breaker": m["breaker"]["state"], "open_until": utc_iso(m["breaker"].get("open_until"))
                   if m["breaker"]["state"] == "open" else None, "in_flight": None, "max_in_flight": None,
                   "calls": m["window"]["calls"], "success_rate": m["window"]["success_rate"],
                   "p95_ms": m["window"]["p95_ms"], "fallbacks": m["window"]["fallbacks"],
                   "budget_used": max((b["used_fraction"] for b in m["budgets"]), default=0.0)}
                  for m in st["models"]]
        by_tier: dict[str, list[dict[str, Any]]] = {}
        for m in models:
            by_tier.setdefault(m["tier"], []).append(m)
        tiers = []
        rank = {"healthy": 0, "degraded": 1, "unhealthy": 2}
        for tier in self.policy.tier_order:
            ms = by_tier.get(tier, [])
            calls = sum(m["calls"] for m in ms)
            ok = sum(m["calls"] * m["success_rate"] for m in ms)
            tiers.append({"tier": tier, "health": min((m["health"] for m in ms), key=rank.__getitem__,
                                                      default="unhealthy"),
                          "models": len(ms), "available_models": sum(1 for m in ms if m["breaker"] not in _OPEN),
                          "calls": calls, "availability": ok / calls if calls else 1.0,
                          "fallbacks": sum(m["fallbacks"] for m in ms),
                          "p95_ms": max((m["p95_ms"] for m in ms), default=0.0)})
        budgets: dict[str, dict[str, Any]] = {}
        for m in st["models"]:
            for b in m["budgets"]:
                budgets[b["name"]] = {**b, "period": None, "resets": None}
        return {"source": self.name, "time": utc_iso(st["saved_at"]), "revision": st["revision"],
                "window_s": st["window_s"], "health": overall(tiers), "tiers": tiers, "models": models,
                "budgets": [_budget(b) for b in budgets.values()], "anomalies": [],
                "reload": {}, "events": events, "written_s_ago": st["written_s_ago"]}

    def metrics(self) -> tuple[bytes, str] | None:
        return None  # counters live in the engine: scrape the executor's own /metrics


class RedisSource:
    """Reads the breakers and budgets a fleet shares in Redis (``policy-engine serve --store redis://…``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.name = f"redis store {redact_uri(uri)}"

    def status(self) -> dict[str, Any]:
        from engine.store.redis.status import read_status

        st = read_status(self.uri)
        models = [{"model": name, "tier": "", "provider": "", "health": "unhealthy" if b["state"] in _OPEN
                   else "healthy", "breaker": b["state"], "open_until": utc_iso(b.get("open_until")),
                   "in_flight": None, "max_in_flight": None, "calls": b.get("window_calls", 0),
                   "success_rate": 1.0 - (b.get("window_failures", 0) / b["window_calls"]) if b.get("window_calls")
                   else 1.0, "p95_ms": None, "fallbacks": None, "budget_used": None}
                  for name, b in st["breakers"].items()]
        budgets = [_budget({"name": n, **u, "resets_at": None}) for n, u in st["budgets"].items()]
        health = "degraded" if any(m["breaker"] in _OPEN for m in models) else "ok"
        return {"source": self.name, "time": utc_iso(time.time()), "revision": None, "window_s": None,
                "health": health, "tiers": [], "models": models, "budgets": budgets, "anomalies": [],
                "reload": {}, "events": []}

    def metrics(self) -> tuple[bytes, str] | None:
        return None
