"""``policy-engine status --store redis://…``: the shared state as the server holds it.

Prints every breaker (state, open until, consecutive opens, probes in flight,
window counts) and every budget (usage of the current period, reservations,
warned/exhausted) under the store's namespace and policy set, read without
changing anything. Exit status: 0 shown, 1 the store could not be read,
2 usage error.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from engine.errors import StorageError

__all__ = ["read_status", "when"]


def read_status(uri: str) -> dict[str, Any]:
    """The shared breakers and budgets under ``uri``'s namespace; raises StorageError."""
    from engine.store.redis.link import misconfiguration
    from engine.store.redis.store import parse_uri, redact

    opts = parse_uri(uri)
    prefix = f"{opts['namespace']}:{opts['policy_set']}"
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise StorageError("status of a redis:// store needs: pip install 'llm-policy-engine[redis]'") from exc
    client = redis.Redis(host=opts["host"], port=opts["port"], db=opts["db"], username=opts["username"],
                         password=opts["password"], socket_timeout=max(opts["timeout_ms"], 1000.0) / 1000.0,
                         socket_connect_timeout=max(opts["timeout_ms"], 1000.0) / 1000.0, decode_responses=True,
                         retry=Retry(NoBackoff(), 0))
    try:
        return _read(client, prefix, opts)
    except redis.RedisError as exc:
        reason = misconfiguration(exc)
        why = f"misconfigured: {reason}: {exc}" if reason else str(exc)
        raise StorageError(f"cannot read {redact(uri)!r}: {why}") from exc
    finally:
        client.close()


def _read(client: Any, prefix: str, opts: dict[str, Any]) -> dict[str, Any]:
    breakers: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}:k:*", count=500)):
        if key.endswith(":w"):
            continue
        h = client.hgetall(key)
        name = h.get("name") or key[len(prefix) + 3:]
        until = float(h["ou"]) if h.get("st") == "open" and h.get("ou") else None
        count = {field: int(float(h.get(short, 0))) for field, short in (
            ("consecutive_opens", "co"), ("probes_in_flight", "fl"), ("window_calls", "wc"),
            ("window_failures", "wx"), ("window_slow", "ws"))}
        breakers[name] = {"state": h.get("st", "closed"), "open_until": until, **count}
    budgets: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}:b:*", count=500)):
        meta = client.hgetall(key) if client.type(key) == "hash" else {}
        if "period" not in meta or "tok" in meta:
            continue
        rolling = meta["period"].startswith("rolling")
        data_key = f"{key}:roll" if rolling else f"{key}:{meta.get('cur', '')}"
        d = client.hgetall(data_key)
        tl, cl = float(meta.get("tl", 0)), float(meta.get("cl", 0))
        tok, cost = int(float(d.get("tok", 0))), float(d.get("cost", 0))
        rt, rc = int(float(d.get("rt", 0))), float(d.get("rc", 0))
        fractions = [x for x in ((tok + rt) / tl if tl else None, (cost + rc) / cl if cl else None) if x is not None]
        budgets[meta.get("name", key)] = {
            "period": meta["period"], "period_start": None if rolling else float(meta.get("cur") or 0),
            "tokens_used": tok, "tokens_reserved": rt, "tokens_limit": int(tl) if tl else None,
            "cost_used": cost, "cost_reserved": rc, "cost_limit": cl or None,
            "reservations": client.hlen(f"{data_key}:r"), "used_fraction": max(fractions, default=0.0),
            "warned": d.get("w") == "1", "exhausted": d.get("e") == "1"}
    return {"store": f"redis://{opts['host']}:{opts['port']}/{opts['db']}", "prefix": prefix,
            "epoch": client.get(f"{prefix}:epoch"), "server_time": time.time(),
            "breakers": breakers, "budgets": budgets}


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
