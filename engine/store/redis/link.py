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

**Failures and outages.** Any error talking to the server drops the
connection: the handlers of replies not yet read are told they are lost, and
every call raises :class:`Unavailable` at once, without touching the network,
so the breakers and ledgers decide on local state. A background thread (the
*recovery thread*, one per link, alive only while the connection is down)
reconnects; no decision ever waits for it. One slow reply is not an outage:
a timeout only *degrades* the link (a :class:`StorageDegraded` event, and
retries spaced ``retry_ms`` apart, doubling up to ``max_retry_ms``) once
``degrade_after`` timeouts fall within ``degrade_window_s``; before that the
thread reconnects at once and the few decisions made meanwhile are pushed as
after an outage, with no event. Any other error (a refused or reset
connection, a server still loading, a script error, a lost epoch) degrades at
once. A server that answers but refuses the client (wrong or missing
password, no permission for a command the store needs, a database index out
of range, another policy set on the namespace) is a misconfiguration, not an
outage: :meth:`Link.open`, run when the store is created, raises
:class:`Misconfigured` for it (the store turns that into a ``StorageError``);
seen later (a rotated password), it is logged as an error, the
:class:`StorageDegraded` event says "misconfigured", and the link stays down,
retrying as above.

**Recovery.** The thread connects, loads the scripts, checks the epoch, then
replays what the :class:`Recoverer` hands over: while that is more than
:data:`FINAL_MAX` commands, in batches of at most :data:`BATCH` on its own
connection, each batch's replies read before the next (so every batch makes
progress, and a failure resends only what was not confirmed); the rest (what
was settled meanwhile: the recoverer keeps one aggregate per budget and period,
so it is small) is written under the lock, without waiting for the replies,
just before the connection becomes the link's. Decisions wait for the lock at
most for that write. :class:`StorageRecovered` follows (with the next call's
events: events the thread produces are handed to the event lists by the next
call, under the engine's lock).

**Epoch.** ``{prefix}:epoch`` holds a random id that the first client to
reach an empty server sets (``SET NX``). A client that finds another id than
the one it knew learns that the server lost its data (restarted without
persistence, or flushed): it then re-pushes everything it contributed to the
current periods, not only what it could not send. Every script checks the
epoch first, so a flush is noticed at the next call.

**Redis Cluster.** With a :class:`Route` (``redis+cluster://``: see
:mod:`engine.store.redis.cluster`) the connection goes to the master serving
the store's slot. A redirect (``MOVED``) or a migrating slot (``ASK``,
``TRYAGAIN``, a script refused by its slot guard) drops the connection as a
failure does, and the recovery replays what was not confirmed on the owner,
but it is no outage: no :class:`StorageDegraded` (nor, after it,
:class:`StorageRecovered`) unless the slot stays unusable for longer than
``degrade_window_s``. After ``MOVED`` the recovery reconnects at once (to the
node it names, once the slot map confirms it); while the slot migrates or the
cluster is down it retries :data:`HOP_RETRY_S` apart, doubling up to
``retry_s``. ``redirects`` counts them by kind. The handshake reads
``{prefix}:epoch:absent`` (never written) so it fails while the slot
migrates, instead of recovering onto a node that would refuse every script.
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
from engine.store.redis.cluster import MOVED, redirect_kind

log = logging.getLogger("engine.redis")

__all__ = ["ACK", "BATCH", "FINAL_MAX", "HOP_RETRY_S", "MAX_PENDING", "Cmd", "Link", "Misconfigured", "Recoverer",
           "Route", "StorageDegraded", "StorageRecovered", "Unavailable", "corrupt", "misconfiguration"]

#: Replies allowed to wait unread before a send reads them all.
MAX_PENDING = 256
#: Commands a recovery sends per batch off the lock (each batch's replies are read before the next).
BATCH = 256
#: A backlog this small is written under the lock, as the connection becomes the link's.
FINAL_MAX = 64
#: Stands for this client's ack key among a script's keys (the link fills it in).
ACK = "\x00ack"
#: Run once when a store opens: proves the user may run SCRIPT LOAD and EVALSHA on the store's keys.
PROBE = "return 1"
#: First wait before retrying a cluster slot that migrates (or a cluster that is down); doubles up to retry_s.
HOP_RETRY_S = 0.02


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
    if isinstance(exc, Misconfigured):
        return str(exc)
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
    if "cluster support disabled" in text:
        return "the server is not a Redis Cluster node (cluster support disabled): use a redis:// store URI"
    if redirect_kind(exc) == MOVED:  # a cluster store's link takes MOVED as a redirect before asking here
        return "the server is a Redis Cluster node: use a redis+cluster:// store URI"
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
    """The store side of a recovery (called with the link's lock held).

    ``replay`` hands over what the server may lack, in the order to send it;
    called again, it hands over what is still unconfirmed and what was
    settled since. ``final``: the last batch, which may include breakers.
    ``policy_seen`` gets the namespace's policy hash as the server holds it
    (raises Misconfigured to refuse the server).
    """

    def replay(self, data_lost: bool, final: bool) -> list[Cmd]: ...

    def policy_seen(self, stored: dict[bytes, bytes]) -> None: ...

    def recovered(self) -> None: ...

    def forked(self) -> None: ...


class Route(Protocol):
    """Where a cluster store's slot lives (:class:`engine.store.redis.cluster.Router`).

    ``failed`` hears of every failure of the connection (with the link's lock
    held) and returns its redirect kind, or None for any other failure.
    """

    def failed(self, exc: BaseException) -> str | None: ...


class Link:
    """A single shared connection with pipelining, a fail-fast mode and a recovery thread."""

    def __init__(self, connect: Callable[[], Any], scripts: dict[str, str], prefix: str, label: str, *,
                 retry_s: float, max_retry_s: float, degrade_after: int = 3, degrade_window_s: float = 10.0,
                 route: Route | None = None) -> None:
        self.lock = threading.RLock()
        self.label = label
        self.prefix = prefix
        self.epoch_key = f"{prefix}:epoch"
        self.policy_key = f"{prefix}:policy"
        self.recoverer: Recoverer | None = None
        self.sinks: dict[int, list[Event]] = {}
        self.fallback_log: Callable[[Event], None] | None = None
        self.round_trips = 0
        self.commands = 0
        self.epoch: str | None = None  # the server's epoch as this client knows it
        self.redirects: dict[str, int] = {}  # cluster redirects by kind (engine.store.redis.cluster)
        self.guard_key = f"{self.epoch_key}:absent" if route is not None else None
        self._route = route
        self._hop_wait = HOP_RETRY_S  # the next spaced wait after a redirect
        self._last_kind: str | None = None
        self._connect = connect
        self._sources = scripts
        self._sha = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in scripts.items()}  # noqa: S324
        self._conn: Any = None
        self._pending: deque[Handler] = deque()
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._degrade_after, self._degrade_window_s = max(1, degrade_after), degrade_window_s
        self._backoff = retry_s
        self._down_since: float | None = None  # time.monotonic() of the first failure of this disruption
        self._degraded = False  # the failures made a pattern: StorageDegraded was emitted
        self._timeouts: deque[float] = deque()  # when recent timeouts happened (time.monotonic())
        self._retry_at = 0.0
        self._data_lost = False
        self._seq = 0
        self._replayed = 0  # commands replayed in the current recovery
        self._misconfigured = False  # this outage has been reported as a misconfiguration
        self._deferred: BaseException | None = None  # open()'s connection failure
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closing = False
        self._queued: list[tuple[list[Event] | None, Event]] = []  # events from the recovery thread
        self._new_identity()

    def _new_identity(self) -> None:
        self._pid = os.getpid()
        self.client = secrets.token_hex(8)  # names this client's ack key
        self.ack_key = f"{self.prefix}:ack:{self.client}"

    # -- state ---------------------------------------------------------------

    @property
    def up(self) -> bool:
        """True while the connection is usable."""
        return self._down_since is None and self._conn is not None

    @property
    def degraded(self) -> bool:
        """True from a failure that made a pattern (see the module docstring) until the next recovery."""
        return self._degraded

    @property
    def disrupted(self) -> bool:
        """True from any failure until the connection is back and what was decided locally is sent."""
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
                epoch, _ = self._handshake(conn)
                self._data_lost = self._learn(epoch) or self._data_lost
            except Exception as exc:
                _drop(conn)
                reason = misconfiguration(exc)
                if reason is not None:
                    raise Misconfigured(f"redis store {self.label} is misconfigured: {reason}: "
                                        f"{type(exc).__name__}: {exc}") from exc
                self._deferred = exc
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
            if self._queued and threading.current_thread() is not self._thread:
                self._deliver()
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

    # -- failures ------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Drop the connection after ``exc``; degrade if the failures make a pattern. Wakes the recovery."""
        at_once = isinstance(exc, _EpochChanged)  # reconnect at once to re-push what was lost
        with self.lock:
            _drop(self._conn)
            self._conn = None
            lost = list(self._pending)
            self._pending.clear()
            for handler in lost:
                handler(None)
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                self._replayed = 0
                self._hop_wait, self._last_kind = HOP_RETRY_S, None
            kind = self._route.failed(exc) if self._route is not None else None
            reason = misconfiguration(exc) if kind is None else None
            timeouts = self._timeouts
            if kind is not None:  # a redirect is no outage, unless the slot stays unusable this long
                self.redirects[kind] = self.redirects.get(kind, 0) + 1
                pattern = now - self._down_since > self._degrade_window_s
            elif reason is None and _is_timeout(exc):
                timeouts.append(now)
                while timeouts and now - timeouts[0] > self._degrade_window_s:
                    timeouts.popleft()
                pattern = len(timeouts) >= self._degrade_after
            else:
                pattern = True
            first = pattern and not self._degraded
            if first:
                self._degraded = True
                self._backoff = self._retry_s
            if kind is not None and not self._degraded:
                if kind == MOVED and self._last_kind != MOVED:  # to the new owner at once
                    wait = 0.0
                else:  # a migrating slot, a cluster down or redirects in a loop: spaced
                    wait = self._hop_wait
                    self._hop_wait = min(self._hop_wait * 2.0, max(self._retry_s, HOP_RETRY_S))
                self._last_kind = kind
                log.log(logging.INFO if kind == MOVED else logging.DEBUG,
                        "redis store %s: %s (%s: %s); retrying on the slot's owner in %.3f s", self.label, kind,
                        type(exc).__name__, exc, wait)
            elif at_once or not self._degraded:
                wait = 0.0
            else:
                wait = self._backoff * (0.9 + 0.2 * secrets.randbelow(1000) / 1000.0)  # spread the clients
                self._backoff = min(self._backoff * 2.0, self._max_retry_s)
            self._retry_at = now + wait
            if reason is not None and not self._misconfigured:  # reported even in an outage already going on
                self._misconfigured = True
                if isinstance(exc, Misconfigured):
                    log.error("redis store %s misconfigured: %s; deciding on local state", self.label, reason)
                else:
                    log.error("redis store %s misconfigured: %s (%s: %s); deciding on local state",
                              self.label, reason, type(exc).__name__, exc)
                what = reason if isinstance(exc, Misconfigured) else f"{reason}: {type(exc).__name__}: {exc}"
                self._emit(StorageDegraded(time.time(), self.label, f"misconfigured: {what}", wait))
            elif first:
                log.warning("redis store %s unreachable (%s: %s); deciding on local state",
                            self.label, type(exc).__name__, exc)
                self._emit(StorageDegraded(time.time(), self.label, f"{type(exc).__name__}: {exc}", wait))
            self._start_recovery()

    def _ready(self) -> Any:
        """The connection for a call from a decision (lock held); raises Unavailable while it is down."""
        if self._pid != os.getpid():  # forked: the socket and what was sent belong to the parent
            self._after_fork()
        if self._queued and threading.current_thread() is not self._thread:
            self._deliver()
        if self._conn is not None:
            return self._conn
        if self._deferred is not None:  # open() failed to connect: that is the outage
            exc, self._deferred = self._deferred, None
            self.fail(exc)
            raise Unavailable(str(exc)) from exc
        if self._down_since is None:  # never connected, never failed (a fork)
            self._down_since, self._retry_at = time.monotonic(), 0.0
        self._start_recovery()
        raise Unavailable("redis store is down; deciding on local state")

    def _after_fork(self) -> None:
        self._conn = None
        self._pending.clear()
        self._queued.clear()
        self._thread, self._wake = None, threading.Event()
        self._new_identity()
        self._down_since, self._data_lost, self._misconfigured, self._deferred = None, False, False, None
        self._degraded = False
        self._timeouts.clear()
        if self.recoverer is not None:
            self.recoverer.forked()
        conn: Any = None
        try:  # as the store did when it was created
            conn = self._connect()
            conn.connect()
            epoch, _ = self._handshake(conn)
            self._learn(epoch)
        except Exception as exc:
            _drop(conn)
            self.fail(exc)
            return
        self._conn = conn

    # -- recovery ------------------------------------------------------------

    def _start_recovery(self) -> None:
        """Start the recovery thread unless it runs (lock held); wake it."""
        self._wake.set()
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._recover_loop, name=f"redis-recovery {self.label}",
                                            daemon=True)
            self._thread.start()

    def _recover_loop(self) -> None:
        while True:
            with self.lock:
                if self._closing or self._down_since is None or self._pid != os.getpid():
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                wait = self._retry_at - time.monotonic()
                self._wake.clear()
            if wait > 0:
                self._wake.wait(min(wait, 1.0))
                continue
            self.recover()

    def recover(self, wait_replies: bool = False) -> bool:
        """One attempt to reconnect and replay (the recovery thread's, or ``close``'s); True on success.

        Network waits happen without the lock, except with ``wait_replies``
        (used by ``close``, which then also reads the last replies).
        """
        conn: Any = None
        try:
            conn = self._connect()
            conn.connect()
            epoch, policy = self._handshake(conn)
            with self.lock:
                if self._closing and not wait_replies:
                    raise _Closing("closing")
                self._data_lost = self._learn(epoch) or self._data_lost
                lost = self._data_lost
                if self.recoverer is not None:
                    self.recoverer.policy_seen(policy)
            while True:
                with self.lock:
                    cmds = self.recoverer.replay(lost, False) if self.recoverer is not None else []
                if len(cmds) <= FINAL_MAX:
                    break
                for start in range(0, len(cmds), BATCH):  # off the lock: decisions go on meanwhile
                    self._exchange(conn, cmds[start:start + BATCH])
            with self.lock:
                if self._closing and not wait_replies:
                    raise _Closing("closing")
                cmds = self.recoverer.replay(lost, True) if self.recoverer is not None else []
                if wait_replies:
                    self._exchange(conn, cmds)
                elif cmds:
                    conn.send_packed_command([b"".join(self._command(c.script, c.keys, c.args) for c in cmds)],
                                             check_health=False)
                    self.commands += len(cmds)
                    self._replayed += len(cmds)
                    self._pending.extend(c.handler for c in cmds)
                self._conn, conn = conn, None
                self._recovered(lost)
            return True
        except Exception as exc:
            _drop(conn)
            if not isinstance(exc, _Closing):
                self.fail(exc)
            return False

    def _exchange(self, conn: Any, cmds: Sequence[Cmd]) -> None:
        """Send ``cmds``, read their replies, then run their handlers under the lock; raises on any failure."""
        if not cmds:
            return
        conn.send_packed_command([b"".join(self._command(c.script, c.keys, c.args) for c in cmds)],
                                 check_health=False)
        replies = [conn.read_response() for _ in cmds]
        with self.lock:
            self.commands += len(cmds)
            self.round_trips += 1
            self._replayed += len(cmds)
            for c, reply in zip(cmds, replies, strict=True):
                if reply == b"EPOCH":
                    raise _EpochChanged("the server's epoch changed: it lost its data")
                if isinstance(reply, Exception):
                    raise reply
                c.handler(reply)

    def _recovered(self, lost: bool) -> None:
        """The connection is the link's again (lock held)."""
        self._data_lost = False
        self._timeouts.clear()
        self._hop_wait, self._last_kind = HOP_RETRY_S, None
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        degraded = self._degraded
        self._down_since = None
        self._degraded = self._misconfigured = False
        self._backoff = self._retry_s
        if self.recoverer is not None:
            self.recoverer.recovered()
        if degraded:
            log.warning("redis store %s reachable again after %.3f s%s; %d operations replayed", self.label,
                        down, " (it had lost its data)" if lost else "", self._replayed)
            self._emit(StorageRecovered(time.time(), self.label, down, lost, self._replayed))

    def _learn(self, epoch: str) -> bool:
        """Take the server's epoch (lock held); True if it changed: the server lost its data."""
        lost = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        return lost

    def _handshake(self, conn: Any) -> tuple[str, dict[bytes, bytes]]:
        """Load the scripts, prove EVALSHA may run, settle the epoch; the epoch and the policy hash."""
        names = list(self._sources)
        fresh = secrets.token_hex(8)
        sha = hashlib.sha1(PROBE.encode()).hexdigest()  # noqa: S324
        commands: list[tuple[Any, ...]] = [("EXISTS", self.guard_key)] if self.guard_key else []  # fails mid-migration
        commands += [("SCRIPT", "LOAD", self._sources[n]) for n in names]
        commands += [("SCRIPT", "LOAD", PROBE), ("EVALSHA", sha, 1, self.epoch_key),
                     ("SET", self.epoch_key, fresh, "NX"), ("GET", self.epoch_key), ("HGETALL", self.policy_key)]
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        replies = [conn.read_response() for _ in commands]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        with self.lock:
            self.commands += len(commands)
            self.round_trips += 1
        raw = replies[-2]
        epoch = raw.decode() if isinstance(raw, bytes) else str(raw)
        policy = replies[-1]
        if isinstance(policy, list):  # RESP2 gives a flat list
            policy = dict(zip(policy[::2], policy[1::2], strict=True))
        return epoch, policy if isinstance(policy, dict) else {}

    # -- events --------------------------------------------------------------

    def emit(self, sink: list[Event], event: Event) -> None:
        """Append ``event`` to ``sink`` (an engine's event list), or queue it when on the recovery thread."""
        if threading.current_thread() is self._thread:
            self._queued.append((sink, event))
        else:
            sink.append(event)

    def emit_all(self, event: Event) -> None:
        """An event for every registered event list (queued when on the recovery thread)."""
        self._emit(event)

    def _emit(self, event: Event) -> None:
        """An event of the link's own, for every registered event list."""
        if threading.current_thread() is self._thread:
            self._queued.append((None, event))
            return
        self._broadcast(event)

    def _broadcast(self, event: Event) -> None:
        if self.sinks:
            for sink in self.sinks.values():
                sink.append(event)
        elif self.fallback_log is not None:
            self.fallback_log(event)

    def _deliver(self) -> None:
        """Hand what the recovery thread produced to the event lists (lock held, on a decision's thread)."""
        queued, self._queued = self._queued, []
        for sink, event in queued:
            if sink is None:
                self._broadcast(event)
            else:
                sink.append(event)

    def retry_now(self) -> None:
        """Let the next attempt try the server at once, whatever the backoff says."""
        self._retry_at = 0.0
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the recovery thread (it ends within one ``timeout_ms`` of a network wait)."""
        with self.lock:
            self._closing = True
            thread = self._thread
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop the recovery, read what is pending and drop the connection."""
        self.stop()
        with self.lock:
            self.flush()
            if self._queued:
                self._deliver()
            _drop(self._conn)
            self._conn = None


def _drop(conn: Any) -> None:
    if conn is not None:
        try:
            conn.disconnect()
        except Exception:  # noqa: S110 - the socket is dropped either way
            pass


def _is_timeout(exc: BaseException) -> bool:
    """True for a reply that took longer than ``timeout_ms`` (slow, not necessarily down)."""
    try:
        from redis.exceptions import TimeoutError as RedisTimeout
    except ImportError:  # pragma: no cover
        return isinstance(exc, TimeoutError)
    return isinstance(exc, RedisTimeout | TimeoutError)


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


class _Closing(Exception):
    """The store is closing: the recovery thread gives up."""
