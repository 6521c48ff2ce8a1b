"""Redis Cluster: which master serves a store's slot, and which replies say the slot is elsewhere.

A ``redis+cluster://`` store keeps every key of its policy set under the hash
tag ``{namespace:policy_set}``, so all of them hash to one slot and every
script touches one slot (see :mod:`engine.store.redis.store`). The
:class:`Router` finds the master serving that slot (``CLUSTER SLOTS``, asked
of the node a redirect named, then the last owner, the seed nodes and the
other masters it learnt) and hands the :class:`~engine.store.redis.link.Link`
a connection to it; the link talks to that one node as to a single server.

What a node answers when the slot is not (or no longer only) its own, and
what the link does (see :meth:`Router.failed`):

* ``MOVED`` (the slot was resharded, or a replica took over): a *redirect*:
  the next connection asks the named node for the slot map and goes to the
  owner; what was not confirmed is replayed there, exactly once thanks to the
  ack key that moved with the slot;
* ``ASK``, ``TRYAGAIN`` and a script's "non local key" refusal (the slot is
  migrating: some of its keys may already be on the target): the link stays
  with the owner it knows and retries shortly, spaced, until the migration
  ends with ``MOVED`` (or the slot stays);
* ``CLUSTERDOWN``: the slot map is asked again, retried as a migration.

None of these is an outage (no ``StorageDegraded``) unless the store stays
unable to use its slot for longer than ``degrade_window_ms``. Decisions go on
on local state meanwhile, as during an outage. ``ASK`` is not followed with
``ASKING`` on the target: a migration is waited out, never served halfway.

A script that reads a key the node lacks while its slot migrates fails at
that command, keeping the writes made before it. Every script therefore reads
:data:`engine.store.redis.lua.SLOT_GUARD`'s key (which never exists) first:
while the slot migrates that read fails the script before any write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CLUSTERDOWN", "MIGRATING", "MOVED", "Router", "moved_to", "redirect_kind", "slot_of"]

#: Kinds of redirect (keys of ``Link.redirects``).
MOVED, MIGRATING, CLUSTERDOWN = "moved", "migrating", "clusterdown"
Node = tuple[str, int]


def slot_of(prefix: str) -> int:
    """The cluster slot of every key under ``prefix`` (``{namespace:policy_set}``: its hash tag)."""
    from redis.crc import key_slot

    slot: int = key_slot(prefix.encode())
    return slot


def redirect_kind(exc: BaseException) -> str | None:
    """:data:`MOVED`, :data:`MIGRATING` or :data:`CLUSTERDOWN` for a cluster's redirect or refusal, else None.

    Read from the exception's class where redis-py's parser made one (5.x
    does so only for its own cluster client) and from the reply's first word.
    """
    try:
        from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
    except ImportError:  # pragma: no cover - the store cannot exist without the client
        return None
    if isinstance(exc, MovedError):
        return MOVED
    if isinstance(exc, AskError | TryAgainError):
        return MIGRATING
    if isinstance(exc, ClusterDownError):
        return CLUSTERDOWN
    if isinstance(exc, ResponseError):
        text = str(exc)
        code = text.split(" ", 1)[0]
        if code == "MOVED":
            return MOVED
        if code in ("ASK", "TRYAGAIN") or "non local key" in text:  # the latter: a script's slot guard
            return MIGRATING
        if code == "CLUSTERDOWN" or "cluster is down" in text:
            return CLUSTERDOWN
    return None


def moved_to(exc: BaseException) -> Node | None:
    """The node a ``MOVED`` reply names, if it names one."""
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    words = str(exc).split()
    if words and words[0] == "MOVED":
        words = words[1:]
    if len(words) == 2 and ":" in words[1]:  # slot host:port
        host, _, port = words[1].rpartition(":")
        if port.isdigit():
            return host, int(port)
    return None


class Router:
    """The master serving one slot, found from seed nodes and followed through redirects."""

    def __init__(self, seeds: Sequence[Node], slot: int, make: Callable[[str, int], Any]) -> None:
        self.seeds = list(seeds)
        self.slot = slot
        self.owner: Node | None = None  # the master the last connection went to
        self.discoveries = 0  # slot maps read (for tests)
        self._make = make  # host, port -> an unconnected redis-py Connection
        self._hint: Node | None = None  # the node a MOVED named
        self._stale = True  # ask for the slot map before the next connection
        self._known: list[Node] = []  # the masters of the last slot map

    def connect(self) -> Any:
        """An unconnected connection to the slot's master (asking for the slot map first when stale)."""
        return self._make(*self.locate())

    def locate(self) -> Node:
        """The slot's master: the one known, or (when stale) the one the slot map names; raises."""
        if self._stale or self.owner is None:
            self.owner = self.discover()
            self._stale = False
        return self.owner

    def failed(self, exc: BaseException) -> str | None:
        """Note a failure of the connection to the owner; its redirect kind (see :func:`redirect_kind`)."""
        kind = redirect_kind(exc)
        if kind == MOVED:
            self._hint = moved_to(exc)
            self._stale = True
        elif kind != MIGRATING:  # the cluster is down, or the owner unreachable: a replica may take over
            self._stale = True
        return kind

    def discover(self) -> Node:
        """The master serving the slot, as the first node that answers ``CLUSTER SLOTS`` says; raises.

        A misconfiguration (a refused password, a server without cluster
        support) is raised at once: every node would say the same. Otherwise
        the last error is raised once no node answered.
        """
        from engine.store.redis.link import misconfiguration

        hint, self._hint = self._hint, None
        candidates: list[Node] = []
        for node in (hint, self.owner, *self.seeds, *self._known):
            if node is not None and node[0] and node not in candidates:
                candidates.append(node)
        last: BaseException = ConnectionError("no cluster node given")
        for host, port in candidates:
            conn = self._make(host, port)
            try:
                conn.connect()
                conn.send_command("CLUSTER", "SLOTS", check_health=False)
                reply = conn.read_response()
            except Exception as exc:
                if misconfiguration(exc) is not None:
                    raise
                last = exc
                continue
            finally:
                _drop(conn)
            self.discoveries += 1
            owner, masters = _parse_slots(reply, host, self.slot)
            if masters:
                self._known = masters
            if owner is not None:
                return owner
            last = _cluster_down(f"CLUSTERDOWN no master of {host}:{port}'s slot map serves slot {self.slot}")
        raise last


def _parse_slots(reply: Any, asked: str, slot: int) -> tuple[Node | None, list[Node]]:
    """The master of ``slot`` in a ``CLUSTER SLOTS`` reply and every master in it."""
    owner: Node | None = None
    masters: list[Node] = []
    for entry in reply if isinstance(reply, list) else []:
        try:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            raw = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            node = (raw if raw not in ("", "?") else asked, int(master[1]))
        except (IndexError, TypeError, ValueError):
            continue
        if node not in masters:
            masters.append(node)
        if start <= slot <= end:
            owner = node
    return owner, masters


def _cluster_down(text: str) -> BaseException:
    from redis.exceptions import ClusterDownError

    return ClusterDownError(text)


def _drop(conn: Any) -> None:
    try:
        conn.disconnect()
    except Exception:  # noqa: S110 - the socket is dropped either way
        pass
