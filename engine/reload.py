"""Hot reload: watch the policy files and swap in every valid edit.

A :class:`PolicyWatcher` watches each directory of an engine's policy paths
(not recursively) with watchdog and calls ``engine.reload()``, which re-reads
and re-checks the whole set and swaps it in atomically; an invalid set never
takes effect and a ReloadFailed event carries every problem. The rules:

- **Any event counts.** Created, modified, moved, deleted and closed-after-
  write events of every entry in the directory trigger a reload, not only
  ``*.yaml``: a Kubernetes ConfigMap swap shows up as a move of the ``..data``
  symlink. Editor temp files cost little: the content hash makes a reload of
  unchanged files a no-op. Opens, reads and attribute changes are ignored.
- **Debounce.** The reload runs once ``debounce_s`` passed without a further
  event (in polling mode at least one poll interval), and at the latest
  ``max_delay_s`` (default: 0.5 s or four quiet periods, whichever is
  longer) after the first event of a burst, so a steady stream of events
  cannot starve it.
- **Half-written files.** With inotify, a file modified in place and not yet
  closed is still being written: the reload waits for its close (up to
  ``max_delay_s``). A reload that reads a half-written file anyway fails (or
  is superseded) and the last good set stays in force; the rest of the write
  brings new events and a new reload.
- **Settle check.** The watcher fingerprints the files' names and bytes just
  before each reload reads them; a quiet period after the attempt it
  fingerprints them again and reloads once more if they changed, so the
  final content wins even when an event was lost (inotify queue overflow, or
  a poll that could not tell two writes apart). In polling mode it keeps
  checking each poll interval while a file was modified within the last
  ``RACY_S`` seconds, since coarse mtimes on network file systems can hide a
  second write of the same size.
- **Polling** (``poll=True``) uses watchdog's PollingObserver. ``poll=None``
  picks it by itself when the directory is on a network file system, or when
  the native observer cannot start (inotify limits reached).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from engine.policy.loader import file_stamp, policy_files

if TYPE_CHECKING:
    from engine.core import PolicyEngine

__all__ = ["PolicyWatcher", "needs_polling", "watch"]

log = logging.getLogger("engine.reload")

OnResult = Callable[[bool, dict[str, Any]], None]
#: In polling mode, files modified this recently are re-checked each poll interval.
RACY_S = 2.0
#: File systems where inotify misses changes made by another host: polled by default.
REMOTE_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs", "afs", "lustre",
    "gpfs", "fuse.sshfs", "fuse.glusterfs", "fuse.gcsfuse", "fuse.s3fs", "fuse.rclone", "fuse.grpcfuse"})
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, DirModifiedEvent, FileMovedEvent,
    DirMovedEvent, FileDeletedEvent, DirDeletedEvent, FileClosedEvent]


def needs_polling(path: str | os.PathLike[str], mounts: str | None = None) -> bool:
    """True when ``path`` lies on a network file system (per ``/proc/self/mounts``)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    target = os.path.realpath(path)
    best, fstype = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype in REMOTE_FS


def _fingerprint(paths: Sequence[str | os.PathLike[str]]) -> tuple[str, float]:
    """A digest of the policy files' names and contents, and the newest mtime among them.

    Each file contributes :func:`engine.policy.loader.file_stamp`: at most the
    size cap plus one byte is read, however large the file.
    """
    files, _ = policy_files(paths)
    digest, newest = hashlib.sha256(), 0.0
    for path in files:
        try:
            digest.update(str(path).encode() + b"\0" + file_stamp(path) + b"\0")
            newest = max(newest, path.stat().st_mtime)
        except OSError:
            digest.update(str(path).encode() + b"\0?")
    return digest.hexdigest(), newest


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: PolicyWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._watcher._event(event)


class PolicyWatcher:
    """Reloads ``engine`` whenever the files under ``paths`` change; see the module doc.

    ``on_result(changed, status)`` runs after every reload attempt (on the
    watcher's thread) with ``engine.reload_status()`` plus ``failed`` and
    ``duration_ms``. ``mode`` is ``"inotify"``, ``"polling"`` or the name of
    another native observer once started.
    """

    def __init__(self, engine: PolicyEngine, paths: Sequence[str | os.PathLike[str]] | None = None, *,
                 debounce_s: float = 0.1, poll: bool | None = None, poll_interval_s: float = 0.25,
                 max_delay_s: float | None = None, on_result: OnResult | None = None) -> None:
        if not (debounce_s >= 0 and poll_interval_s > 0 and (max_delay_s is None or max_delay_s >= 0)):
            raise ValueError(f"expected debounce_s >= 0, poll_interval_s > 0 and max_delay_s >= 0, got "
                             f"{debounce_s!r}, {poll_interval_s!r}, {max_delay_s!r}")
        self.engine = engine
        self.paths = tuple(paths if paths is not None else engine.paths)
        if not self.paths:
            raise ValueError("nothing to watch: the engine was not loaded from files")
        self.debounce_s, self.poll_interval_s, self.max_delay_s = debounce_s, poll_interval_s, max_delay_s
        self.on_result = on_result
        self.mode = ""
        self._poll = poll
        self._quiet = debounce_s  # the quiet period: at least one poll interval when polling
        self._max_delay = 0.0
        self._cond = threading.Condition()
        self._first: float | None = None  # monotonic time of the first event of the pending burst
        self._last = 0.0
        self._writing: set[str] = set()  # modified in place, not yet closed (inotify only)
        self._stopping = False
        self._state = "new"
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> PolicyWatcher:
        """Start watching; raises RuntimeError if already started, OSError if nothing can watch."""
        with self._cond:
            if self._state != "new":
                raise RuntimeError(f"this watcher is {self._state}; create a new one")
            self._state = "starting"
        try:
            self._observer = self._start_observer()
        except BaseException:
            self._state = "stopped"
            raise
        if self.max_delay_s is not None:
            self._max_delay = max(self.max_delay_s, self._quiet)
        else:
            self._max_delay = max(0.5, 4 * self._quiet)
        self._failures = self.engine.reload_status()["failures"]
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._thread.start()
        self._state = "running"
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join every thread this watcher started; idempotent."""
        with self._cond:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopped"
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.is_alive():
            log.warning("policy watcher threads did not stop within %.1f s", timeout)

    def is_alive(self) -> bool:
        """True while the observer or the reload thread still runs."""
        return any(t is not None and t.is_alive() for t in (self._observer, self._thread))

    def __enter__(self) -> PolicyWatcher:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notify(self) -> None:
        """Treat the files as changed: reload after the debounce (e.g. on SIGHUP)."""
        self._event(None)

    # -- observing -------------------------------------------------------------
    def _dirs(self) -> list[str]:
        dirs = [str(p) if Path(p).is_dir() else str(Path(p).parent) for p in self.paths]
        return list(dict.fromkeys(dirs))

    def _start_observer(self) -> BaseObserver:
        dirs = self._dirs()
        poll = self._poll
        if poll is None and any(needs_polling(d) for d in dirs):
            poll = True
        if not poll:
            observer: BaseObserver | None = None
            try:
                observer = Observer()
                return self._run_observer(observer, dirs)
            except OSError as exc:
                if observer is not None:
                    observer.stop()  # releases an inotify instance the constructor opened
                if poll is False:
                    raise
                log.warning("native file watching unavailable (%s): polling every %.2f s",
                            exc, self.poll_interval_s)
        self._quiet = max(self.debounce_s, self.poll_interval_s)
        return self._run_observer(PollingObserver(timeout=self.poll_interval_s), dirs)

    def _run_observer(self, observer: BaseObserver, dirs: list[str]) -> BaseObserver:
        handler = _Handler(self)
        for d in dirs:
            observer.schedule(handler, d, recursive=False, event_filter=_EVENTS)
        observer.start()
        name = type(observer).__name__
        self.mode = {"InotifyObserver": "inotify", "PollingObserver": "polling"}.get(name, name)
        return observer

    def _event(self, event: FileSystemEvent | None) -> None:
        now = time.monotonic()
        with self._cond:
            if self._first is None:
                self._first = now
            self._last = now
            if self.mode == "inotify" and event is not None and not event.is_directory:
                src = os.fsdecode(event.src_path)
                if isinstance(event, FileModifiedEvent):
                    self._writing.add(src)
                elif isinstance(event, (FileClosedEvent, FileDeletedEvent, FileMovedEvent)):
                    self._writing.discard(src)
            self._cond.notify()

    # -- reloading -------------------------------------------------------------
    def _wait(self, verify_at: float | None) -> bool | None:
        """Block until a burst is due (True), a settle check is due (False) or stop (None)."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._first is None:
                    due = verify_at
                else:
                    latest = self._first + self._max_delay
                    due = latest if self._writing else min(self._last + self._quiet, latest)
                if due is not None and now >= due:
                    burst = self._first is not None
                    self._first = None
                    self._writing.clear()
                    return burst
                self._cond.wait(None if due is None else due - now)
        return None

    def _run(self) -> None:
        verify_at: float | None = None
        seen, racy = "", False
        while (burst := self._wait(verify_at)) is not None:
            fingerprint, newest = _fingerprint(self.paths)
            if not burst and fingerprint == seen:
                racy = racy and time.time() - newest < RACY_S
                verify_at = time.monotonic() + self._quiet if racy else None
                continue
            seen = fingerprint
            racy = self.mode == "polling" and time.time() - newest < RACY_S
            self._attempt()
            verify_at = time.monotonic() + self._quiet

    def _attempt(self) -> None:
        started = time.perf_counter()
        try:
            changed = self.engine.reload()
        except Exception:  # an I/O error in a listener or the store must not end watching
            log.exception("policy reload raised")
            return
        status = self.engine.reload_status()
        status["failed"] = status["failures"] > self._failures
        status["duration_ms"] = (time.perf_counter() - started) * 1000.0
        self._failures = status["failures"]
        if self.on_result is not None:
            try:
                self.on_result(changed, status)
            except Exception:
                log.exception("on_result callback %r raised", self.on_result)


def watch(engine: PolicyEngine, *, poll: bool | None = None, debounce_s: float = 0.1,
          **options: Any) -> PolicyWatcher:
    """Start and return a watcher that hot-reloads ``engine``; use it as a context manager."""
    return PolicyWatcher(engine, None, poll=poll, debounce_s=debounce_s, **options).start()
