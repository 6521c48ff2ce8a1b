"""The Redis store: breakers and budgets shared by every executor process.

``RedisStore("redis://[user:password@]host:port/db?options")`` plugs in
behind :mod:`engine.store.base`; so does a Redis Cluster,
``RedisStore("redis+cluster://[user:password@]host:port[,host:port...]/?options")``
(see *Redis Cluster* below). The ``redis`` client is an optional extra
(``pip install 'llm-policy-engine[redis]'``). Options (the same for both):

================  ===================  =============================================
``namespace``     ``llm-policy-engine``  the application: first part of every key
``policy_set``    ``default``          which policy set of that application
``timeout_ms``    ``100``              connect and reply timeout; slower counts as down
``cache_ms``      ``100``              how stale a cached breaker state or budget
                                       view may be where the semantics allow one
``retry_ms``      ``500``              first wait before retrying an unreachable
                                       server (doubling per failure)
``max_retry_ms``  ``2000``             the longest such wait
``degrade_after`` ``3``                timeouts within ``degrade_window_ms`` that
                                       make an outage (any other error does at once)
``degrade_window_ms`` ``10000``        see ``degrade_after``; on a cluster also how long
                                       the store's slot may stay unusable (migrating,
                                       cluster down) before that is an outage
``on_conflict``   ``refuse``           another policy set's definitions on the
                                       namespace: ``refuse`` (StorageError) or
                                       ``replace`` them (see bind_policy)
================  ===================  =============================================

Keys (``P`` = ``namespace:policy_set`` on one server; on a cluster the same in
braces, ``{namespace:policy_set}``, one hash tag)::

    P:epoch                     random id of the server's data (see engine.store.redis.link)
    P:epoch:absent              never written: a cluster store's scripts read it first (slot guard)
    P:policy                    fingerprint of the shared definitions in force, with the revision,
                                host:pid and time of the process that set it
                                (see engine.store.redis.fingerprint)
    P:ack:<client>              last settlement applied from one client (expires after a day)
    P:k:<model>                 breaker hash: state, open_until, open_for, consecutive opens,
                                probe slots, window totals
    P:k:<model>:w               breaker window: a list (count) or bucket hash (time)
    P:b:<budget>:<kind>         budget meta hash: current period start, limits
    P:b:<budget>:<kind>:<start> usage in the period starting at <start> (+ ':r' reservations,
                                ':x' their expiry); expires an hour after the period ends
    P:b:<budget>:<kind>:roll    a rolling budget (+ ':k' buckets, ':r', ':x')

``<kind>`` is ``daily@Europe/Berlin``, ``hourly@UTC``, ``monthly@…`` or
``rolling@3600.0``: a budget whose period kind changes starts afresh.

A budget whose policy has ``lease:`` is a
:class:`~engine.store.redis.lease.LeasedLedger`: decided against a slice leased
by this process, one pipelined command per ``sync_ms`` instead of a round trip
per call (see :mod:`engine.store.redis.lease`); the others are exact
(:mod:`engine.store.redis.budget`).

**Redis Cluster** (``redis+cluster://``; database 0 only). The seed nodes
are any masters (or replicas) of the cluster; the store asks them for the
slot map (``CLUSTER SLOTS``) and talks to the one master serving its slot.
Because ``P`` is a hash tag, every key of a policy set (epoch, policy, acks,
breakers, budgets) hashes to one slot, so each script (which touches several
of them atomically) runs on one node. The trade-off: *one policy set lives on
one master*; its load does not spread across the cluster, but different
applications and policy sets (other namespaces or ``policy_set`` values)
land on different slots and so spread across the masters — the design of
BullMQ's ``{queue}`` prefix. A ``redis://`` store keeps its keys without
braces, as before, so existing deployments keep their data.

When the slot is resharded to another master, the old master answers
``MOVED``: the store reconnects to the new one at once (asking it for the
slot map) and replays what was not confirmed; the ack key moved with the
slot, so each settlement is applied exactly once. While the slot migrates
(``ASK``, ``TRYAGAIN``; scripts refused by their slot guard) the store
decides on local state and retries the master it knows, 20 ms apart doubling
up to ``retry_ms``; while the cluster is down (``CLUSTERDOWN``) likewise,
asking for the slot map again each time. None of this is an
outage (no ``StorageDegraded``) unless the slot stays unusable for longer
than ``degrade_window_ms``. ``ASK`` is not followed to the importing node
(no ``ASKING``): a migration is waited out. A failed master is an outage
until its replica takes over (the store then finds it in the slot map);
replication is asynchronous, so the last writes the failed master confirmed
may be missing on its replica, as on a single server restarted from its last
snapshot. ``stats()`` gives the node in use and the redirects by kind.

History is not kept here (``keeps_history`` is False: that is the SQLite
store's job); like :class:`~engine.store.base.MemoryStore` the store keeps the
newest events of this process in memory. Call :meth:`RedisStore.close` (or
``PolicyEngine.close``) at the end: it reads the last replies and pushes
what an outage left unsent.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from engine.errors import StorageError
from engine.events import Event
from engine.policy.model import BreakerSpec, BudgetSpec, PolicySet
from engine.store.base import MemoryStore
from engine.store.redis.breaker import RedisBreaker
from engine.store.redis.budget import RedisLedger, budget_key
from engine.store.redis.cluster import Router, slot_of
from engine.store.redis.fingerprint import PolicyGuard
from engine.store.redis.lease import LeasedLedger
from engine.store.redis.link import Cmd, Link, Misconfigured, StorageDegraded, StorageRecovered
from engine.store.redis.lua import LEDGER, POLICY, SLOT_GUARD
from engine.store.redis.lua_breaker import BREAKER
from engine.text import redact_uri

__all__ = ["DEFAULTS", "RedisStore", "StorageDegraded", "StorageRecovered", "key_prefix", "parse_uri", "redact"]

DEFAULTS: dict[str, Any] = {"namespace": "llm-policy-engine", "policy_set": "default", "timeout_ms": 100.0,
                            "cache_ms": 100.0, "retry_ms": 500.0, "max_retry_ms": 2000.0, "degrade_after": 3,
                            "degrade_window_ms": 10000.0, "on_conflict": "refuse"}
_CONFLICT = ("refuse", "replace")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_INSTALL = "pip install 'llm-policy-engine[redis]'"


def redact(uri: str) -> str:
    """``uri`` fit for messages and logs: any ``user:password@`` becomes ``***@`` (:func:`engine.text.redact_uri`)."""
    return redact_uri(uri)


def parse_uri(uri: str) -> dict[str, Any]:
    """Host(s), port, db, credentials and the options of a ``redis://`` or ``redis+cluster://`` URI.

    Besides the options: ``host``, ``port`` (the first node's), ``db``,
    ``username``, ``password``, ``cluster`` (True for ``redis+cluster://``) and
    ``nodes`` (every ``(host, port)`` given). Raises StorageError, whose message
    shows the URI only redacted (:func:`redact`).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:  # an unbalanced '[': not chained, the parser's message may quote the URI
        raise StorageError(f"expected a redis:// or redis+cluster:// URI, got {redact(uri)!r}") from None
    if parts.scheme not in ("redis", "redis+cluster"):
        raise StorageError(f"expected a redis:// or redis+cluster:// URI, got {redact(uri)!r}")
    cluster = parts.scheme == "redis+cluster"
    if cluster:
        username, password, nodes = _cluster_nodes(uri, parts.netloc)
        if parts.path.strip("/") not in ("", "0"):
            raise StorageError(f"a Redis Cluster has database 0 only: expected redis+cluster://host:port[,host:port"
                               f"...]/?options with no database or /0, got {redact(uri)!r}")
        db = 0
    else:
        try:
            port = parts.port or 6379
            path = parts.path.strip("/")
            db = int(path) if path else 0
        except ValueError:
            raise StorageError(  # not chained: the parser's message may quote the URI
                f"expected redis://host:port/db with a numeric port and db, got {redact(uri)!r}") from None
        nodes = [(parts.hostname or "127.0.0.1", port)]
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
    out: dict[str, Any] = dict(DEFAULTS, host=nodes[0][0], port=nodes[0][1], db=db, username=username,
                               password=password, cluster=cluster, nodes=nodes)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in DEFAULTS:
            raise StorageError(f"unknown option {key!r} in {redact(uri)!r}; expected one of {', '.join(DEFAULTS)}")
        if key in ("namespace", "policy_set"):
            if not _NAME.match(value):
                raise StorageError(f"expected {key} of letters, digits, '.', '_' or '-', got {value!r}")
            out[key] = value
        elif key == "on_conflict":
            if value not in _CONFLICT:
                raise StorageError(f"expected on_conflict of {' or '.join(_CONFLICT)}, got {value!r}")
            out[key] = value
        elif key == "degrade_after":
            if not value.isdigit() or not 1 <= int(value) <= 1000:
                raise StorageError(f"expected degrade_after as a whole number of timeouts from 1 to 1000, "
                                   f"got {value!r}")
            out[key] = int(value)
        else:
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not 0.0 <= number < 3.6e6 or (key == "timeout_ms" and number == 0.0):
                raise StorageError(f"expected {key} as milliseconds (a number >= 0), got {value!r}")
            out[key] = number
    return out


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def _cluster_nodes(uri: str, netloc: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """User, password and seed nodes of a ``redis+cluster://`` URI's authority; raises StorageError."""
    userinfo, at, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = item, "6379"
        if item.startswith("["):  # [IPv6]:port
            end = item.find("]") + 1
            host, rest = item[:end], item[end:]
            if rest:
                port = rest[1:] if rest.startswith(":") else ""
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
            # the items are not shown: an unescaped '/' in a password would put part of it here
            raise StorageError(f"expected redis+cluster://[user:password@]host:port[,host:port...]/?options with "
                               f"a host and a port from 1 to 65535 for every node, got {redact(uri)!r}")
        nodes.append((host.strip("[]"), int(port)))
    return unquote(user) or None, unquote(password) or None, nodes


def key_prefix(opts: dict[str, Any]) -> str:
    """What every key of a store starts with: ``namespace:policy_set``, in a cluster as one hash tag."""
    prefix = f"{opts['namespace']}:{opts['policy_set']}"
    return f"{{{prefix}}}" if opts["cluster"] else prefix


def _nodes(nodes: list[tuple[str, int]]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes)


class RedisStore(MemoryStore):
    """Shared breakers and budgets on a Redis server; see the module docstring."""

    keeps_history = False

    def __init__(self, uri: str) -> None:
        super().__init__(redact(uri))  # ``self.uri`` may be shown: no password in it
        opts = parse_uri(uri)
        try:
            from redis.backoff import NoBackoff
            from redis.connection import Connection
            from redis.retry import Retry
        except ImportError as exc:
            raise StorageError(f"store {redact(uri)!r} needs the redis client: {_INSTALL}") from exc
        self.options = opts
        self.prefix = key_prefix(opts)
        timeout = opts["timeout_ms"] / 1000.0

        def make(host: str, port: int) -> Any:
            return Connection(  # type: ignore[no-untyped-call]
                host=host, port=port, db=opts["db"], username=opts["username"],
                password=opts["password"], socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), client_name=f"llm-policy-engine:{self.prefix}")

        scripts = {"ledger": LEDGER, "breaker": BREAKER, "policy": POLICY}
        self.router: Router | None = None
        if opts["cluster"]:
            self.router = Router(opts["nodes"], slot_of(self.prefix), make)
            self.label = f"redis+cluster://{_nodes(opts['nodes'])} ({self.prefix})"
            connect = self.router.connect
            scripts = {name: SLOT_GUARD + source for name, source in scripts.items()}
        else:
            self.label = f"redis://{opts['host']}:{opts['port']}/{opts['db']} ({self.prefix})"

            def connect() -> Any:
                return make(opts["host"], opts["port"])

        self.link = Link(connect, scripts, self.prefix, self.label,
                         retry_s=opts["retry_ms"] / 1000.0, max_retry_s=opts["max_retry_ms"] / 1000.0,
                         degrade_after=opts["degrade_after"], degrade_window_s=opts["degrade_window_ms"] / 1000.0,
                         route=self.router)
        self.link.recoverer = self
        self.link.fallback_log = self.append_event
        self.guard = PolicyGuard(self.link, opts["on_conflict"])
        self._cache_s = opts["cache_ms"] / 1000.0
        # the engine clock (time.monotonic by default) to wall time, in whole seconds (exact float sums)
        self._offset = float(round(time.time() - time.monotonic()))
        # how far the engine's time runs ahead of its clock after backward steps (engine.core), shared
        # by every breaker: the server is given the clock's own wall time
        self._skew = [0.0]
        self._ledgers: dict[str, RedisLedger] = {}
        self._breakers: dict[str, RedisBreaker] = {}
        self._closed = False
        try:
            self.link.open()  # a refused password or database fails here; an unreachable server does not
        except Misconfigured as exc:
            raise StorageError(f"{exc}; check the user, password, database and scheme (redis:// for one server, "
                               f"redis+cluster:// for a Redis Cluster) in the store URI") from exc

    # -- the Store interface -----------------------------------------------------

    def make_breaker(self, name: str, spec: BreakerSpec, events: list[Event]) -> RedisBreaker:  # type: ignore[override]
        """A breaker on the server shared by every process of this namespace and policy set."""
        with self.link.lock:
            self.link.sinks[id(events)] = events
            breaker = RedisBreaker(self.link, self.prefix, name, spec, events, self._cache_s, self._offset,
                                   self._skew)
            self._breakers[name] = breaker
            return breaker

    def clock_stepped(self, skew: float, wall_shift: float) -> None:
        """The engine's clock stepped back: its time now runs ``skew`` seconds ahead of the clock."""
        self._skew[0] = skew

    def make_ledger(self, spec: BudgetSpec, events: list[Event],  # type: ignore[override]
                    saved: dict[str, Any] | None = None) -> RedisLedger:
        """A budget on the server; ``saved`` is only checked against ``spec`` (the server is the truth)."""
        if saved is not None:
            from engine.budget import BudgetLedger

            BudgetLedger.from_dict(spec, saved)  # raises ValueError when it does not fit
        with self.link.lock:
            self.link.sinks[id(events)] = events
            key = budget_key(self.prefix, spec)
            prev = self._ledgers.get(key)
            if isinstance(prev, LeasedLedger) and spec.lease is None:
                prev.release()  # back to the exact mode: the slice goes back, the usage is reported
            kind = LeasedLedger if spec.lease is not None else RedisLedger
            ledger = kind(self.link, self.prefix, spec, events, self._cache_s, prev)
            self._ledgers[key] = ledger
            return ledger

    def flush(self) -> None:
        """Send what waits in batches (breaker successes; leased budgets' usage is reported by ``tick``
        and ``close``) and read every reply."""
        with self.link.lock:
            for breaker in self._breakers.values():
                breaker.flush_results()
            self.link.flush()

    def tick(self, now: float) -> None:
        """Due work at engine wall time ``now`` (``PolicyEngine.tick``): leased budgets report their usage,
        breakers send their batched successes (pipelined), so a process that stops deciding still shares them."""
        with self.link.lock:
            for breaker in self._breakers.values():
                breaker.flush_results()
            for ledger in self._ledgers.values():
                if isinstance(ledger, LeasedLedger):
                    ledger.tick(now)

    def bind_policy(self, policy: PolicySet) -> None:
        """The engine's policy set, at start and after each reload: one policy set per namespace.

        Raises StorageError (having closed the store) when the namespace is in
        use by a policy set with other shared definitions; see
        :mod:`engine.store.redis.fingerprint`.
        """
        try:
            with self.link.lock:
                self.guard.bind(policy, self.label)
        except StorageError:
            self.close()
            raise
        with self.link.lock:
            keep = {budget_key(self.prefix, spec) for spec in policy.budgets}
            for key, ledger in list(self._ledgers.items()):
                if key not in keep and isinstance(ledger, LeasedLedger):
                    # a budget the policy no longer has (or of another period kind now): its usage is
                    # reported and its slice given back; an exact ledger keeps what is unconfirmed for
                    # replay and never leases again
                    ledger.release()
                    self._ledgers[key] = RedisLedger(self.link, self.prefix, ledger.spec, ledger._events,
                                                     self._cache_s, ledger)

    def close(self) -> None:
        """Stop the recovery, read the last replies, try once to push what an outage left unsent, disconnect."""
        self.link.stop()
        with self.link.lock:
            if self._closed:
                return
            self._closed = True
            for ledger in self._ledgers.values():
                if isinstance(ledger, LeasedLedger):
                    ledger.release()
            self.flush()
            if self.link.disrupted:
                self.link.recover(wait_replies=True)
            left = sum(led.unconfirmed() for led in self._ledgers.values())
            if left:
                import logging

                logging.getLogger("engine.redis").warning(
                    "redis store %s closed with %d settlements not confirmed by the server", self.label, left)
            self.link.close()

    # -- recovery (called by the link with its lock held) ------------------------

    def replay(self, data_lost: bool, final: bool) -> list[Cmd]:
        """Everything to send after an outage: breakers first (in the final batch), then settlements by sequence."""
        cmds: list[Cmd] = []
        if final:
            cmds.extend(self.guard.replay())
            for breaker in self._breakers.values():
                cmds.extend(breaker.replay(data_lost))
        settles = [c for led in self._ledgers.values() for c in led.replay(data_lost, self.link.epoch)]
        return cmds + sorted(settles, key=lambda c: c.seq)

    def policy_seen(self, stored: dict[bytes, bytes]) -> None:
        """The namespace's policy fingerprint as a reconnection found it (see bind_policy)."""
        self.guard.seen(stored)

    def recovered(self) -> None:
        for breaker in self._breakers.values():
            breaker.recovered()
        for ledger in self._ledgers.values():
            ledger.recovered()

    def forked(self) -> None:
        for breaker in self._breakers.values():
            breaker.forked()
        for ledger in self._ledgers.values():
            ledger.forked()

    # -- inspection ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Round trips and commands sent so far, and whether the server is reachable."""
        node = self.router.owner if self.router is not None else (self.options["host"], self.options["port"])
        return {"round_trips": self.link.round_trips, "commands": self.link.commands,
                "degraded": self.link.degraded, "disrupted": self.link.disrupted, "prefix": self.prefix,
                "node": f"{node[0]}:{node[1]}" if node else None, "redirects": dict(self.link.redirects),
                "backlog": sum(led.backlog() for led in self._ledgers.values()),
                "unconfirmed": sum(led.unconfirmed() for led in self._ledgers.values())}

    def __repr__(self) -> str:
        return f"RedisStore({self.label})"
