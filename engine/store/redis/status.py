"""``policy-engine status --store redis://…`` (or ``redis+cluster://…``): the shared state as the server holds it.

Prints the fingerprint of the policy set whose shared definitions are in
force (see :mod:`engine.store.redis.fingerprint`), every breaker (state,
open until, consecutive opens, probes in flight, window counts) and every
budget (usage of the current period, reservations and leased slices, warned/exhausted) under
the store's namespace and policy set, read without changing anything. A
value the scripts would treat as corrupt (one that does not parse or is out
of range) is shown as such (``corrupt``: field -> stored text; the parsed
value is None) instead of failing. Exit status: 0 shown, 1 the store could
not be read, 2 usage error.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from engine.errors import StorageError

__all__ = ["read_status", "when"]


def read_status(uri: str) -> dict[str, Any]:
    """The shared breakers and budgets under ``uri``'s namespace; raises StorageError.

    On a Redis Cluster (``redis+cluster://``) they are read from the master
    serving the policy set's slot (asked of the seed nodes); a redirect while
    reading (the slot just moved or is migrating) makes a few new attempts.
    """
    from engine.store.redis.store import key_prefix, parse_uri, redact

    opts = parse_uri(uri)
    prefix = key_prefix(opts)
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.connection import Connection
        from redis.retry import Retry
    except ImportError as exc:
        raise StorageError("status of a redis:// store needs: pip install 'llm-policy-engine[redis]'") from exc
    timeout = max(opts["timeout_ms"], 1000.0) / 1000.0

    def client(host: str, port: int) -> Any:
        return redis.Redis(host=host, port=port, db=opts["db"], username=opts["username"],
                           password=opts["password"], socket_timeout=timeout, socket_connect_timeout=timeout,
                           decode_responses=True, retry=Retry(NoBackoff(), 0))

    if not opts["cluster"]:
        node = client(opts["host"], opts["port"])
        try:
            return _read(node, prefix, {"store": f"redis://{opts['host']}:{opts['port']}/{opts['db']}"})
        except redis.RedisError as exc:
            raise _unreadable(uri, exc, redact) from exc
        finally:
            node.close()
    from engine.store.redis.cluster import MIGRATING, Router, slot_of

    router = Router(opts["nodes"], slot_of(prefix), lambda host, port: Connection(  # type: ignore[no-untyped-call]
        host=host, port=port, username=opts["username"], password=opts["password"], socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)))
    seeds = ",".join(f"{h}:{p}" for h, p in opts["nodes"])
    for attempt in range(_ATTEMPTS):
        try:
            host, port = router.locate()
            node = client(host, port)
            try:
                return _read(node, prefix, {"store": f"redis+cluster://{seeds}", "node": f"{host}:{port}",
                                            "slot": router.slot})
            finally:
                node.close()
        except (redis.RedisError, OSError) as exc:
            kind = router.failed(exc)
            if kind is None or attempt == _ATTEMPTS - 1:
                raise _unreadable(uri, exc, redact) from exc
            if kind == MIGRATING:
                time.sleep(0.05 * (attempt + 1))  # let the migration finish
    raise AssertionError("unreachable")  # pragma: no cover


#: Reads of a cluster store's status before a redirect is reported as an error.
_ATTEMPTS = 5


def _unreadable(uri: str, exc: BaseException, redact: Any) -> StorageError:
    from engine.store.redis.link import misconfiguration

    reason = misconfiguration(exc)
    why = f"misconfigured: {reason}: {exc}" if reason else str(exc)
    return StorageError(f"cannot read {redact(uri)!r}: {why}")


_STATES = ("closed", "open", "half_open", "forced_open", "disabled", "metrics_only")
_BIG = 2.0 ** 50
_T_MAX = 1e11  # wall-clock seconds; the scripts treat a later time as corrupt


class _Fields:
    """One hash's values, parsed as the scripts parse them; what does not parse is kept in ``corrupt``."""

    def __init__(self, h: dict[str, str]) -> None:
        self.h = h
        self.corrupt: dict[str, str] = {}

    def number(self, key: str, default: float | None, lo: float, hi: float, integer: bool = False) -> float | None:
        raw = self.h.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not lo <= value <= hi or (integer and not value.is_integer()):
            self.corrupt[key] = raw
            return None
        return value

    def count(self, key: str) -> int | None:
        value = self.number(key, 0.0, 0.0, _BIG, integer=True)
        return None if value is None else int(value)


def _read(client: Any, prefix: str, where: dict[str, Any]) -> dict[str, Any]:
    breakers: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}:k:*", count=500)):
        if key.endswith(":w"):
            continue
        if client.type(key) != "hash":
            breakers[key[len(prefix) + 3:]] = {"state": None, "open_until": None, "corrupt": {"": "not a hash"}}
            continue
        f = _Fields(client.hgetall(key))
        name = f.h.get("name") or key[len(prefix) + 3:]
        state = f.h.get("st", "closed")
        if state not in _STATES:
            f.corrupt["st"] = state
        until = f.number("ou", None, 0.0, _T_MAX) if state == "open" else None
        count = {field: f.count(short) for field, short in (
            ("consecutive_opens", "co"), ("probes_in_flight", "fl"), ("window_calls", "wc"),
            ("window_failures", "wx"), ("window_slow", "ws"))}
        breakers[name] = {"state": state if state in _STATES else None, "open_until": until, **count,
                          "corrupt": f.corrupt}
    budgets: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}:b:*", count=500)):
        meta = _Fields(client.hgetall(key) if client.type(key) == "hash" else {})
        if "period" not in meta.h or "tok" in meta.h:
            continue
        rolling = meta.h["period"].startswith("rolling")
        start = None if rolling else meta.number("cur", None, -_T_MAX, _T_MAX)
        data_key = f"{key}:roll" if rolling else f"{key}:{meta.h.get('cur', '')}"
        d = _Fields(client.hgetall(data_key) if client.type(data_key) == "hash" else {})
        tl = meta.number("tl", 0.0, 0.0, _BIG)
        cl = meta.number("cl", 0.0, 0.0, _BIG)
        tok, rt = d.count("tok"), d.count("rt")
        cost, rc = d.number("cost", 0.0, -1e-6, _BIG), d.number("rc", 0.0, -1e-6, _BIG)
        fractions = []
        if tl and tok is not None and rt is not None:
            fractions.append((tok + rt) / tl)
        if cl and cost is not None and rc is not None:
            fractions.append((cost + rc) / cl)
        budgets[meta.h.get("name", key)] = {
            "period": meta.h["period"], "period_start": start,
            "tokens_used": tok, "tokens_reserved": rt, "tokens_limit": int(tl) if tl else None,
            "cost_used": cost, "cost_reserved": rc, "cost_limit": cl or None,
            "reservations": client.hlen(f"{data_key}:r") if client.type(f"{data_key}:r") == "hash" else 0,
            "slices": _slices(client, f"{data_key}:r"),
            "used_fraction": max(fractions, default=0.0),
            "warned": d.h.get("w") == "1", "exhausted": d.h.get("e") == "1",
            "corrupt": {**meta.corrupt, **d.corrupt}}
    policy = client.hgetall(f"{prefix}:policy") if client.type(f"{prefix}:policy") == "hash" else {}
    return {**where, "prefix": prefix,
            "epoch": client.get(f"{prefix}:epoch"), "server_time": time.time(),
            "policy": {"fingerprint": policy.get("fp"), "revision": policy.get("revision"), "by": policy.get("by"),
                       "at": _Fields(policy).number("at", None, 0.0, _T_MAX)},
            "breakers": breakers, "budgets": budgets}


def _slices(client: Any, key: str) -> int:
    """How many of a budget's reservations are processes' leased slices (fields ``L:<client>``)."""
    if client.type(key) != "hash":
        return 0
    return sum(1 for _ in client.hscan_iter(key, match="L:*", count=1000))


def when(t: float | None) -> str:
    if t is None:
        return "-"
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"t={t!r}"
