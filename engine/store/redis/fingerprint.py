"""One policy set per namespace: the fingerprint of the shared definitions and its check.

Processes share a breaker or a budget through keys named after the model or
the budget, so two policy sets on one namespace would share usage and undo
each other's limits and windows. The *fingerprint* is a SHA-256 (16 hex
digits) over what the shared state depends on: every budget's definition
(name, scope and target, period, time zone, rolling length, limits,
thresholds, reservation TTL, lease) and every model's breaker settings. The server
keeps the fingerprint in force in ``{prefix}:policy`` (with the revision,
``host:pid`` and time of the process that set it).

The rule (see :class:`PolicyGuard`):

* a store bound to a policy set claims the namespace if it holds no
  fingerprint, and goes on if it holds the same one;
* if it holds another, the store refuses: ``StorageError`` naming both
  fingerprints, when the engine starts (the cure: its own ``policy_set=``, or
  ``on_conflict=replace`` to make this set's definitions the namespace's, as
  a deploy of new definitions does); if the server was unreachable at start,
  the refusal comes when it is reached: the link stays down as for any
  misconfiguration (logged as an error, ``StorageDegraded`` "misconfigured"),
  nothing is pushed, and it retries;
* a hot reload that changes the shared definitions replaces the fingerprint
  (``StoragePolicyChanged``, reason ``"reload"``); the other processes learn
  at their next reconnection (``StoragePolicyChanged``, reason ``"other"``,
  and a warning: they run the old definitions until they reload too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from engine.errors import StorageError
from engine.events import Event, StoragePolicyChanged
from engine.policy.model import PolicySet
from engine.store.redis.link import Cmd, Link, Misconfigured, Unavailable, corrupt
from engine.store.redis.lua import split

log = logging.getLogger("engine.redis")

__all__ = ["PolicyGuard", "fingerprint"]


def fingerprint(policy: PolicySet) -> str:
    """16 hex digits over the definitions processes share on a namespace."""
    budgets = [{k: v for k, v in dataclasses.asdict(b).items() if k != "lease" or v is not None}
               for b in policy.budgets]  # exact-mode budgets hash as before leases existed
    shared = {"budgets": sorted(budgets, key=lambda b: str(b["name"])),
              "breakers": {name: dataclasses.asdict(m.breaker) for name, m in sorted(policy.models.items())}}
    text = json.dumps(shared, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PolicyGuard:
    """This store's side of the one-policy-set-per-namespace rule (see the module docstring)."""

    def __init__(self, link: Link, on_conflict: str) -> None:
        self._link = link
        self._replace = on_conflict == "replace"
        self.ours: str | None = None  # this process's fingerprint
        self._revision = ""
        self.admitted = False  # the server accepted ours once: later differences only warn
        self._mode: str | None = None  # what the next recovery must write: "claim" or "replace"
        self._warned: str | None = None  # the other fingerprint last warned about

    # -- the engine's side -------------------------------------------------------

    def bind(self, policy: PolicySet, label: str) -> None:
        """Called by the engine at start and after each reload; raises StorageError to refuse at start."""
        new, first = fingerprint(policy), self.ours is None
        previous, self.ours, self._revision = self.ours, new, policy.revision
        if first:
            mode = "replace" if self._replace else "claim"
        elif new != previous:
            mode = "replace"
        else:
            return
        try:
            reply = self._link.call("policy", (self._link.policy_key,), self._args(mode))
        except Unavailable:  # checked when the server is reached
            self._mode = mode
            if not first and self.admitted:
                self._changed(previous or "", new, "reload")
            return
        before, info = self._parse(reply)
        if first and before and before != new and not self._replace:
            raise StorageError(
                f"redis store {label}: namespace {self._link.prefix!r} is in use by another policy set "
                f"(fingerprint {before}{info}); this one's shared definitions have fingerprint {new}. Give "
                f"each policy set its own policy_set= (or namespace=) in the store URI, or add "
                f"on_conflict=replace to make this set's definitions the namespace's")
        self.admitted, self._mode = True, None
        if before and before != new:
            self._changed(before, new, "replace" if first else "reload")

    # -- the link's side (lock held) -----------------------------------------------

    def seen(self, stored: dict[bytes, bytes]) -> None:
        """A reconnection found ``stored``; raises Misconfigured if this set may not use the namespace."""
        if self.ours is None:
            return
        theirs = stored.get(b"fp", b"").decode("utf-8", "replace")
        if not theirs or theirs == self.ours:
            if not theirs and self._mode is None:
                self._mode = "claim"  # the server lost its data (or the key): claim it again
            return
        if self._mode == "replace":
            return
        if not self.admitted:
            info = _info(stored.get(b"revision", b""), stored.get(b"by", b""), stored.get(b"at", b""))
            raise Misconfigured(f"namespace {self._link.prefix!r} is in use by another policy set (fingerprint "
                                f"{theirs}{info}); this one's shared definitions have fingerprint {self.ours}")
        if theirs != self._warned:
            self._warned = theirs
            log.warning("redis store %s: another process put policy fingerprint %s in force on %s; this one "
                        "still runs %s until it reloads", self._link.label, theirs, self._link.prefix, self.ours)
            self._changed(self.ours, theirs, "other")

    def replay(self) -> list[Cmd]:
        """The write a recovery must make first, if any."""
        mode = self._mode
        if mode is None or self.ours is None:
            return []
        ours = self.ours

        def handle(reply: Any) -> None:
            if reply is None:
                return
            before, info = self._parse(reply)
            self._mode = None
            if mode == "claim" and before and before != ours and not self.admitted:  # lost a race: refuse
                self._link.fail(Misconfigured(f"namespace {self._link.prefix!r} is in use by another policy "
                                              f"set (fingerprint {before}{info})"))
                return
            self.admitted = True
        return [Cmd("policy", (self._link.policy_key,), self._args(mode), handle)]

    # -- helpers -------------------------------------------------------------------------

    def _args(self, mode: str) -> tuple[Any, ...]:
        return (mode, self.ours, self._revision[:64], f"{socket.gethostname()}:{os.getpid()}", repr(time.time()))

    def _parse(self, reply: bytes) -> tuple[str, str]:
        """The fingerprint there before (or empty) and who set the one there now, from a reply."""
        head, evs = split(reply, 6)
        for ev in evs:
            if ev[0] == b"corrupt":
                self._link.emit_all(corrupt(self._link.label, ev, _deleted))
        fields = [bytes.fromhex(x.decode()) for x in head[3:6]]
        return head[1].decode(), _info(*fields)

    def _changed(self, previous: str, now: str, reason: str) -> None:
        if reason != "other":
            log.warning("redis store %s: policy fingerprint on %s is now %s (was %s; %s)", self._link.label,
                        self._link.prefix, now, previous, reason)
        event: Event = StoragePolicyChanged(time.time(), self._link.label, previous, now, reason)
        self._link.emit_all(event)


def _info(revision: bytes, by: bytes, at: bytes) -> str:
    parts = []
    if revision:
        parts.append(f"revision {revision.decode('utf-8', 'replace')[:12]}")
    if by:
        parts.append(f"set by {by.decode('utf-8', 'replace')}")
    try:
        parts.append(time.strftime("at %Y-%m-%d %H:%M:%S UTC", time.gmtime(float(at))))
    except (ValueError, OverflowError, OSError):
        pass
    return f", {', '.join(parts)}" if parts else ""


_deleted: Callable[[str, str], str] = lambda key, field: "the key was deleted"  # noqa: E731
