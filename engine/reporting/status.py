"""``policy-engine status``: breakers, budgets and health per model from the history store.

"Now" is the moment the engine last saved its state (at most one flush
interval ago while it runs): breakers and budget ledgers are the saved ones,
evaluated at that time, and the health grade applies the monitoring policy's
rules to the last ``window_s`` seconds of per-minute aggregates before it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.budget import BudgetLedger
from engine.errors import StorageError
from engine.monitor import health
from engine.policy.model import PolicySet
from engine.reporting import fmt
from engine.reporting.data import ROW, Cell
from engine.reporting.stats import metrics


def _state(conn: sqlite3.Connection, instance: str | None) -> tuple[str, float, dict[str, Any]] | None:
    import json

    sql = "SELECT instance, flushed_at, data FROM state"
    rows = conn.execute(sql + (" WHERE instance = ?" if instance else " ORDER BY flushed_at DESC LIMIT 1"),
                        (instance,) if instance else ()).fetchall()
    if not rows:
        return None
    name, flushed_at, data = rows[0]
    return name, flushed_at, json.loads(data) if data else {}


def _window(conn: sqlite3.Connection, start: float, end: float) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for model, *row in conn.execute(
            f"SELECT model, {ROW} FROM minutes WHERE minute >= ? AND minute <= ?",  # noqa: S608 - constants
            (math.floor(start / 60), math.floor(end / 60))):
        cells.setdefault(model, Cell()).add_row(tuple(row))
    return cells


def _recorded(conn: sqlite3.Connection) -> dict[str, Any]:
    """Requests and attempts over the whole history (a ``simulate`` run's file holds exactly its run)."""
    first, calls, ok, failures, requests = conn.execute(
        "SELECT MIN(minute), COALESCE(SUM(calls), 0), COALESCE(SUM(successes), 0), COALESCE(SUM(failures), 0), "
        "COALESCE(SUM(requests), 0) FROM minutes").fetchone()
    refused = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'RequestRefused'").fetchone()[0]
    total = requests + refused
    start = first * 60.0 if first is not None else None
    return {"since": start, "requests": total, "served": ok, "refused": refused,
            "request_availability": min(1.0, ok / total) if total else None,
            "attempts": calls, "attempt_availability": 1.0 - failures / calls if calls else None}


def _budgets(policy: PolicySet, model: str, saved: dict[str, Any], now: float) -> list[dict[str, Any]]:
    out = []
    for spec in policy.budgets_for(model) if model in policy.models else ():
        ledger = BudgetLedger(spec)
        if spec.name in saved:
            try:
                ledger = BudgetLedger.from_dict(spec, saved[spec.name])
            except ValueError:
                pass  # saved under another period kind: the engine starts it afresh too
        snap = ledger.snapshot(now)
        out.append({k: snap[k] for k in ("name", "used_fraction", "tokens_used", "tokens_limit", "cost_used",
                                         "cost_limit", "exhausted")} | {"warn_at": spec.warn_at})
    return out


def read_status(conn: sqlite3.Connection, policy: PolicySet, instance: str | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, JSON-able; raises StorageError."""
    try:
        found = _state(conn, instance)
        if found is None:
            raise StorageError("no engine has saved its state in this history yet"
                               + (f" (instance {instance!r})" if instance else ""))
        name, flushed_at, data = found
        now = float(data.get("saved_at") or flushed_at)
        window = policy.monitoring.window_s
        cells = _window(conn, now - window, now)
        recorded = _recorded(conn)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read history: {exc}") from exc
    breakers, ledgers = data.get("breakers") or {}, data.get("budgets") or {}
    models = []
    for model in list(policy.models) + sorted(set(cells) - set(policy.models)):
        spec = policy.models.get(model)
        cell = cells.get(model, Cell())
        names = metrics(cell, policy.error_classes)
        breaker = dict(breakers.get(model) or {"state": "closed", "open_until": None})
        budgets = _budgets(policy, model, ledgers, now)
        names.update(model=model, tier=spec.tier if spec else "?", provider=spec.provider if spec else "",
                     in_flight=0, budget_used=max((b["used_fraction"] for b in budgets), default=0.0),
                     breaker_open=int(breaker.get("state") in ("open", "forced_open")),
                     context_window=spec.context_window if spec else 0,
                     price_in=spec.price.input_per_1m if spec else 0.0,
                     price_out=spec.price.output_per_1m if spec else 0.0)
        models.append({
            "model": model, "tier": names["tier"], "health": health(policy.monitoring.health, names),
            "breaker": {"state": breaker.get("state", "closed"), "open_until": breaker.get("open_until"),
                        "consecutive_opens": breaker.get("consecutive_opens", 0)},
            "budgets": budgets,
            "window": {k: names[k] for k in ("calls", "success_rate", "error_rate", "p95_ms", "fallbacks",
                                             "cost_usd")}
            | {"streamed": cell.streamed,  # time to first token of the streamed calls, None without any
               "ttft_p95_ms": cell.ttft_histogram().quantile(0.95) if cell.streamed else None},
        })
    return {"instance": name, "saved_at": now, "written_s_ago": max(0.0, time.time() - flushed_at),
            "window_s": window, "revision": data.get("revision"), "models": models, "recorded": recorded}


def _breaker(b: dict[str, Any], now: float, tz: ZoneInfo) -> str:
    state, until = b["state"], b["open_until"]
    if state == "open" and isinstance(until, (int, float)):
        return f"open, probes at {fmt.clock(until, tz, True)}" if until > now else "open, probes due"
    return str(state).replace("_", " ")


def _budget(b: dict[str, Any]) -> str:
    mark = " EXHAUSTED" if b["exhausted"] else " warn" if b["used_fraction"] >= b["warn_at"] else ""
    return f"{b['name']} {fmt.pct(b['used_fraction'], 0)}{mark}"


def format_table(status: dict[str, Any], timezone: str = "UTC") -> str:
    """The status as an aligned text table."""
    tz = ZoneInfo(timezone)
    now = status["saved_at"]
    head = (f"as of {datetime.fromtimestamp(now, tz):%Y-%m-%d %H:%M:%S %Z} (instance {status['instance']}, "
            f"written {status['written_s_ago']:.0f} s ago); metrics over the last {status['window_s']:g} s")
    t = status.get("recorded")
    if t and t["requests"]:  # a history written before requests were counted has none
        served = fmt.pct(t["request_availability"], 2) if t["request_availability"] is not None else fmt.DASH
        since = datetime.fromtimestamp(t["since"], tz)
        head += (f"\nrecorded since {since:%Y-%m-%d %H:%M}: {fmt.count(t['requests'])} requests, {served} served "
                 f"({fmt.count(t['refused'])} refused); {fmt.count(t['attempts'])} attempts, "
                 f"{fmt.pct(t['attempt_availability'], 2)} available")
    streamed = any(m["window"].get("ttft_p95_ms") is not None for m in status["models"])
    rows = [("MODEL", "TIER", "HEALTH", "BREAKER", "CALLS", "SUCCESS", "P95", *(("TTFT P95",) if streamed else ()),
             "BUDGETS")]
    for m in status["models"]:
        w = m["window"]
        ttft = (fmt.ms(w.get("ttft_p95_ms")),) if streamed else ()  # a dash for a model that streamed nothing
        rows.append((m["model"], m["tier"], m["health"], _breaker(m["breaker"], now, tz), fmt.count(w["calls"]),
                     fmt.pct(w["success_rate"]) if w["calls"] else fmt.DASH,
                     fmt.ms(w["p95_ms"]) if w["calls"] else fmt.DASH, *ttft,
                     ", ".join(_budget(b) for b in m["budgets"]) or fmt.DASH))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join([head, "", *lines]) + "\n"
