"""The connection behind a Redis store: scripts, pipelining, outages, recovery.

One :class:`Link` per store holds a single connection (redis-py's
``Connection``: no pool, no automatic retries) that every breaker and ledger
of the store shares, under one re-entrant lock.

**Round trips.** :meth:`Link.call` sends one script and waits for its reply
(one round trip). :meth:`Link.send` writes one script without waiting: the
server runs it at once, in order with everything else this client sends, and
its reply is read at the next round trip (or once :data:`MAX_PENDING` replies
wait), where the handler given with it runs. ``round_trips`` and ``commands``
count both, for tests and benchmarks.

**Outages.** Any error talking to the server (refused connection, a timeout
after ``timeout_ms``, a reset, a server still loading, a script error) marks
the link down: the handlers of replies not yet read are told they are lost,
a :class:`StorageDegraded` event goes to every registered event list, and
every call raises :class:`Unavailable` at once, without touching the network,
until ``retry_ms`` has passed (doubling after each failed retry up to
``max_retry_ms``). So an outage costs at most one ``timeout_ms`` per retry,
never one per decision. A server that answers but refuses the client (wrong or
missing password, no permission for a command the store needs, a database
index out of range) is a misconfiguration, not an outage: :meth:`Link.open`,
run when the store is created, raises :class:`Misconfigured` for it (the
store turns that into a ``StorageError``); seen later (a rotated password),
it is logged as an error and the :class:`StorageDegraded` event says
"misconfigured", and the link stays in its fail mode, retrying as above. The first call after that reconnects, loads the
scripts, checks the epoch, replays what the :class:`Recoverer` hands over in
one round trip, and emits :class:`StorageRecovered`.

**Epoch.** ``{prefix}:epoch`` holds a random id that the first client to
reach an empty server sets (``SET NX``). A client that finds another id than
the one it knew learns that the server lost its data (restarted without
persistence, or flushed): it then re-pushes everything it contributed to the
current periods, not only what it could not send. Every script checks the
epoch first, so a flush is noticed at the next call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.events import Event, StorageCorrupt, StorageDegraded, StorageRecovered

log = logging.getLogger("engine.redis")

__all__ = ["ACK", "MAX_PENDING", "Cmd", "Link", "Misconfigured", "Recoverer", "StorageDegraded", "StorageRecovered",
           "Unavailable", "misconfiguration"]

#: Replies allowed to wait unread before a send reads them all.
MAX_PENDING = 256
#: Stands for this client's ack key among a script's keys (the link fills it in).
ACK = "\x00ack"
#: Run once when a store opens: proves the user may run SCRIPT LOAD and EVALSHA on the store's keys.
PROBE = "return 1"


def corrupt(label: str, ev: list[bytes], action: Callable[[str, str], str]) -> StorageCorrupt:
    """The event (and a logged warning) for a script's ``corrupt`` report: key, field, value in hex."""
    key, field, value = (bytes.fromhex(x.decode()).decode("utf-8", "replace") for x in ev[1:4])
    what = action(key, field)
    log.warning("redis store %s: corrupt value %r in %s%s; %s", label, value, key,
                f" field {field!r}" if field else "", what)
    return StorageCorrupt(time.time(), label, key, field, value, what)


class Unavailable(Exception):
    """The server cannot be used now: decide on local state."""


class Misconfigured(Exception):
    """The server answers but refuses this client (password, permissions, database index)."""


def misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the client's configuration if ``exc`` says so, else None (an outage)."""
    try:
        from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError
    except ImportError:  # pragma: no cover - the store cannot exist without the client
        return None
    if not isinstance(exc, RedisError):
        return None
    code = str(getattr(exc, "status_code", "") or "").upper()
    text = str(exc)
    if isinstance(exc, AuthenticationError | AuthorizationError) or code in ("WRONGPASS", "NOAUTH"):
        return "authentication failed (wrong or missing username/password)"
    if isinstance(exc, NoPermissionError) or code == "NOPERM" or "NOPERM" in text or "NOAUTH" in text:
        return "permission denied (the user may not run a command the store needs)"
    if "DB index" in text or "Invalid Database" in text:
        return "the database index was refused"
    return None


#: Called with the reply (a list), or with None when the reply is lost.
Handler = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Cmd:
    """One script call to replay: script name, keys, arguments, reply handler; ``seq`` orders acked ones."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]
    handler: Handler
    seq: int = 0


class Recoverer(Protocol):
    """The store side of a recovery (called with the link's lock held)."""

    def replay(self, data_lost: bool) -> list[Cmd]: ...

    def recovered(self) -> None: ...

    def forked(self) -> None: ...


class Link:
    """A single shared connection with pipelining and a fail-fast outage mode."""

    def __init__(self, connect: Callable[[], Any], scripts: dict[str, str], prefix: str, label: str, *,
                 retry_s: float, max_retry_s: float) -> None:
        self.lock = threading.RLock()
        self.label = label
        self.prefix = prefix
        self.epoch_key = f"{prefix}:epoch"
        self.recoverer: Recoverer | None = None
        self.sinks: dict[int, list[Event]] = {}
        self.fallback_log: Callable[[Event], None] | None = None
        self.round_trips = 0
        self.commands = 0
        self.epoch: str | None = None  # the server's epoch as this client knows it
        self._connect = connect
        self._sources = scripts
        self._sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in scripts.items()}  # noqa: S324
        self._conn: Any = None
        self._pending: deque[Handler] = deque()
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._backoff = retry_s
        self._down_since: float | None = None  # time.monotonic() of the first failure
        self._retry_at = 0.0
        self._data_lost = False
        self._seq = 0
        self._misconfigured = False  # this outage has been reported as a misconfiguration
        self._deferred: tuple[BaseException, float] | None = None  # open()'s connection failure
        self._new_identity()

    def _new_identity(self) -> None:
        self._pid = os.getpid()
        self.client = secrets.token_hex(8)  # names this client's ack key
        self.ack_key = f"{self.prefix}:ack:{self.client}"

    # -- state ---------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the last exchange with the server succeeded."""
        return self._down_since is None and self._conn is not None

    @property
    def degraded(self) -> bool:
        """True from a failure until the next successful recovery."""
        return self._down_since is not None

    def next_seq(self) -> int:
        """A number for an operation the server must apply at most once (see LEDGER's ack)."""
        self._seq += 1
        return self._seq

    def open(self) -> None:
        """Connect now, once; raises Misconfigured if the server refuses this client.

        A connection-level failure (refused, timeout, reset) is not raised: the
        first call reports it as an outage, as if it had happened then.
        """
        with self.lock:
            conn: Any = None
            try:
                conn = self._connect()
                conn.connect()
                self._data_lost = self._handshake(conn, probe=True) or self._data_lost
            except Exception as exc:
                if conn is not None:
                    try:
                        conn.disconnect()
                    except Exception:  # noqa: S110 - the socket is dropped either way
                        pass
                reason = misconfiguration(exc)
                if reason is not None:
                    raise Misconfigured(f"redis store {self.label} is misconfigured: {reason}: "
                                        f"{type(exc).__name__}: {exc}") from exc
                self._deferred = (exc, time.monotonic())
                return
            self._conn = conn

    # -- calls ---------------------------------------------------------------

    def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """Run one script and return its reply; raises Unavailable."""
        with self.lock:
            conn = self._ready()
            try:
                self._drain(conn)
                conn.send_packed_command([self._command(script, keys, args)], check_health=False)
                self.commands += 1
                self.round_trips += 1
                reply = conn.read_response()
            except Exception as exc:
                self.fail(exc)
                raise Unavailable(str(exc)) from exc
            return self._checked(reply)

    def send(self, script: str, keys: Sequence[str], args: Sequence[Any], handler: Handler) -> None:
        """Write one script without waiting; ``handler`` gets its reply later. Raises Unavailable."""
        with self.lock:
            conn = self._ready()
            try:
                conn.send_packed_command([self._command(script, keys, args)], check_health=False)
            except Exception as exc:
                self.fail(exc)
                raise Unavailable(str(exc)) from exc
            self.commands += 1
            self._pending.append(handler)
            if len(self._pending) >= MAX_PENDING:
                self.flush()

    def flush(self) -> None:
        """Read every reply still waiting (one round trip at most); never raises."""
        with self.lock:
            if not self._pending or self._conn is None:
                return
            try:
                self.round_trips += 1
                self._drain(self._conn)
            except Exception as exc:
                self.fail(exc)

    def raw(self, *command: Any) -> Any:
        """One plain command (for status and tests); raises Unavailable."""
        with self.lock:
            conn = self._ready()
            try:
                self._drain(conn)
                conn.send_command(*command, check_health=False)
                self.commands += 1
                self.round_trips += 1
                return conn.read_response()
            except Exception as exc:
                self.fail(exc)
                raise Unavailable(str(exc)) from exc

    def _command(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """EVALSHA in RESP, with the epoch key and the epoch first and ACK as this client's ack key."""
        items = [b"EVALSHA", self._sha[script].encode(), b"%d" % (len(keys) + 1), self.epoch_key.encode(),
                 *(_b(self.ack_key if k is ACK else k) for k in keys), (self.epoch or "").encode(),
                 *(_b(a) for a in args)]
        return b"".join([b"*%d\r\n" % len(items), *[b"$%d\r\n%s\r\n" % (len(x), x) for x in items]])

    def _checked(self, reply: Any) -> bytes:
        if reply == b"EPOCH":
            self.fail(_EpochChanged("the server's epoch changed: it lost its data"))
            raise Unavailable("epoch changed")
        if not isinstance(reply, bytes) or not reply.startswith(b"OK"):
            raise Unavailable(f"unexpected reply {reply!r}")
        return reply

    def _drain(self, conn: Any) -> None:
        """Read the waiting replies in order; any error (even a script error) fails the link."""
        while self._pending:
            reply: Any = conn.read_response()
            handler = self._pending.popleft()
            if reply == b"EPOCH":
                handler(None)
                raise _EpochChanged("the server's epoch changed: it lost its data")
            handler(reply)

    # -- outages -------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Mark the link down after ``exc``; lost replies are reported to their handlers."""
        at_once = isinstance(exc, _EpochChanged)  # reconnect at once to re-push what was lost
        with self.lock:
            if self._conn is not None:
                try:
                    self._conn.disconnect()
                except Exception:  # noqa: S110 - already failing; the socket is dropped either way
                    pass
            self._conn = None
            lost = list(self._pending)
            self._pending.clear()
            for handler in lost:
                handler(None)
            now = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since = now
                self._backoff = self._retry_s
            wait = 0.0 if at_once else self._backoff
            self._retry_at = now + wait
            if not at_once:
                self._backoff = min(self._backoff * 2.0, self._max_retry_s)
            reason = misconfiguration(exc)
            if reason is not None and not self._misconfigured:  # reported even in an outage already going on
                self._misconfigured = True
                log.error("redis store %s misconfigured: %s (%s: %s); deciding on local state",
                          self.label, reason, type(exc).__name__, exc)
                self._emit(StorageDegraded(time.time(), self.label,
                                           f"misconfigured: {reason}: {type(exc).__name__}: {exc}", wait))
            elif first:
                log.warning("redis store %s unreachable (%s: %s); deciding on local state",
                            self.label, type(exc).__name__, exc)
                self._emit(StorageDegraded(time.time(), self.label, f"{type(exc).__name__}: {exc}", wait))

    def _ready(self) -> Any:
        if self._pid != os.getpid():  # forked: the socket and what was sent belong to the parent
            self._conn = None
            self._pending.clear()
            self._new_identity()
            self._down_since, self._data_lost, self._misconfigured, self._deferred = None, False, False, None
            if self.recoverer is not None:
                self.recoverer.forked()
        if self._conn is not None:
            return self._conn
        if self._deferred is not None:  # open() failed to connect just now: that is the outage
            exc, at = self._deferred
            self._deferred = None
            if time.monotonic() - at < self._retry_s:
                self.fail(exc)
                raise Unavailable(str(exc)) from exc
        if self._down_since is not None and time.monotonic() < self._retry_at:
            raise Unavailable("redis store is down; retrying later")
        try:
            conn = self._connect()
            conn.connect()
            self._data_lost = self._handshake(conn) or self._data_lost
            lost = self._data_lost
            self._conn = conn
            replayed = self._replay(conn, lost)
        except Exception as exc:
            self.fail(exc)
            raise Unavailable(str(exc)) from exc
        self._data_lost = False
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            self._misconfigured = False
            if self.recoverer is not None:
                self.recoverer.recovered()
            log.warning("redis store %s reachable again after %.3f s%s; %d operations replayed", self.label,
                        down, " (it had lost its data)" if lost else "", replayed)
            self._emit(StorageRecovered(time.time(), self.label, down, lost, replayed))
        return conn

    def _handshake(self, conn: Any, probe: bool = False) -> bool:
        """Load the scripts and settle the epoch (``probe``: and try EVALSHA); True if the server lost its data."""
        names = list(self._sources)
        fresh = secrets.token_hex(8)
        extra: list[tuple[Any, ...]] = []
        if probe:
            sha = hashlib.sha1(PROBE.encode()).hexdigest()  # noqa: S324
            extra = [("SCRIPT", "LOAD", PROBE), ("EVALSHA", sha, 1, self.epoch_key)]
        commands = [("SCRIPT", "LOAD", self._sources[n]) for n in names] + extra
        conn.send_packed_command(conn.pack_commands(
            [*commands, ("SET", self.epoch_key, fresh, "NX"), ("GET", self.epoch_key)]), check_health=False)
        self.commands += len(commands) + 2
        self.round_trips += 1
        replies = [conn.read_response() for _ in range(len(commands) + 2)]
        epoch = replies[-1].decode() if isinstance(replies[-1], bytes) else str(replies[-1])
        lost = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        return lost

    def _replay(self, conn: Any, lost: bool) -> int:
        if self.recoverer is None or (self._down_since is None and not lost):
            return 0
        cmds = self.recoverer.replay(lost)
        if not cmds:
            return 0
        conn.send_packed_command([b"".join(self._command(c.script, c.keys, c.args) for c in cmds)],
                                 check_health=False)
        self.commands += len(cmds)
        self.round_trips += 1
        replies = [conn.read_response() for _ in cmds]  # an error fails the whole replay: it is redone
        for c, reply in zip(cmds, replies, strict=True):
            c.handler(reply)
        return len(cmds)

    def _emit(self, event: Event) -> None:
        if self.sinks:
            for sink in self.sinks.values():
                sink.append(event)
        elif self.fallback_log is not None:
            self.fallback_log(event)

    def emit(self, sink: list[Event], event: Event) -> None:
        """Append ``event`` to ``sink`` (an engine's event list)."""
        sink.append(event)

    def retry_now(self) -> None:
        """Let the next call try the server at once, whatever the backoff says."""
        self._retry_at = 0.0

    def close(self) -> None:
        """Read what is pending and drop the connection."""
        with self.lock:
            self.flush()
            if self._conn is not None:
                try:
                    self._conn.disconnect()
                except Exception:  # noqa: S110
                    pass
                self._conn = None


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    return repr(value).encode()


class _EpochChanged(Exception):
    """The server's epoch is not the one this client knew: it lost its data."""
