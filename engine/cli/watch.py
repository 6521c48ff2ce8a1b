"""``policy-engine watch``: load a policy set, hot-reload it on every change, print each result.

The watching itself is :class:`engine.reload.PolicyWatcher`; this module is its command line.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from engine.events import ReloadRecovered
from engine.policy.model import PolicySet
from engine.reload import PolicyWatcher
from engine.text import printable


def _milliseconds(text: str) -> int:
    """argparse type: a whole number of milliseconds >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of milliseconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, got {value}")
    return value


class _Interrupted(Exception):
    pass


def watch_parser(prog: str = "policy-engine watch") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Load a policy set, then hot-reload it on every change and print "
        "each reload result (nothing for a save that changes nothing). Stops on SIGINT or SIGTERM.",
        epilog="exit status: 0 stopped (or --once: reloaded), 1 invalid policy set (or --once: "
        "reload failed), 2 usage error")
    p.add_argument("paths", nargs="+", metavar="PATH", help="policy directory or files")
    p.add_argument("--poll", action="store_true", help="poll instead of inotify (network file systems)")
    p.add_argument("--debounce-ms", type=_milliseconds, default=100, metavar="N",
                   help="reload once no change was seen for N ms (default 100)")
    p.add_argument("--once", action="store_true", help="exit after the first reload that changed or failed")
    return p


def _stamp() -> str:
    """The local wall-clock time, for a person watching."""
    return datetime.now().astimezone().strftime("[%H:%M:%S]")


def _digests(files: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in files:
        try:
            out[name] = hashlib.sha256(Path(name).read_bytes()).hexdigest()
        except OSError:
            out[name] = ""
    return out


def _names(kind: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """``models: added a; removed b; changed c`` or None when none of them changed."""
    parts = []
    for label, names in (("added", sorted(set(after) - set(before))), ("removed", sorted(set(before) - set(after))),
                         ("changed", sorted(n for n in set(before) & set(after) if before[n] != after[n]))):
        if names:
            parts.append(f"{label} {', '.join(names)}")
    return f"  {kind}: {'; '.join(parts)}" if parts else None


def changes(before: PolicySet, after: PolicySet, old_files: Mapping[str, str],
            new_files: Mapping[str, str]) -> list[str]:
    """What a reload changed: files, then models, tiers and budgets added, removed or changed."""
    lines = []
    files = _names("files", old_files, new_files)
    if files:
        lines.append(printable(files))
    for kind, b, a in (("models", before.models, after.models), ("tiers", before.tiers, after.tiers),
                       ("budgets", {x.name: x for x in before.budgets}, {x.name: x for x in after.budgets})):
        line = _names(kind, b, a)
        if line:
            lines.append(printable(line))
    if not lines[1:] and files:
        lines.append("  models, tiers and budgets unchanged (other settings changed)")
    return lines


def _print_result(changed: bool, status: dict[str, Any], lines: Sequence[str] = (),
                  recovered: ReloadRecovered | None = None) -> None:
    if status["failed"]:
        problems = status["last_error"] or []
        print(f"{_stamp()} reload failed: {len(problems)} problem{'s' if len(problems) != 1 else ''}; "
              f"revision {status['revision'][:12]} stays in force")
        for line in problems:
            print(line)
    elif changed:
        count = len(status["files"])
        print(f"{_stamp()} reloaded revision {status['revision'][:12]} ({count} file{'s' if count != 1 else ''}) "
              f"in {status['duration_ms']:.0f} ms")
        for line in lines:
            print(line)
    if recovered is not None:
        n = recovered.failures
        print(f"{_stamp()} recovered: revision {recovered.revision[:12]} is in force and valid again after "
              f"{n} failed reload{'s' if n != 1 else ''}")
    sys.stdout.flush()


def _print_warnings(warnings: Sequence[Any]) -> None:
    """The warnings of the set now in force (it is valid with them), one ``file:line:col`` line each."""
    for w in warnings:
        print(w.format())
    sys.stdout.flush()


def run_watch(args: argparse.Namespace, parser: object = None) -> int:
    """Run ``policy-engine watch`` with parsed ``args``; see :func:`watch_parser`."""
    from engine.core import PolicyEngine
    from engine.errors import PolicyError

    try:
        eng = PolicyEngine.from_path(args.paths)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.format())
        print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found", file=sys.stderr)
        return 1
    done = threading.Event()
    outcome = {"code": 0}
    seen = {"policy": eng.policy, "files": _digests(eng.policy.files)}
    recovered: list[ReloadRecovered] = []
    eng.subscribe(lambda e: recovered.append(e) if isinstance(e, ReloadRecovered) else None)

    def on_result(changed: bool, status: dict[str, Any]) -> None:
        lines: list[str] = []
        if changed and not status["failed"]:
            files = _digests(eng.policy.files)
            lines = changes(seen["policy"], eng.policy, seen["files"], files)  # type: ignore[arg-type]
            seen.update(policy=eng.policy, files=files)
        _print_result(changed, status, lines, recovered.pop() if recovered else None)
        recovered.clear()
        if changed and not status["failed"]:
            _print_warnings(eng.policy.warnings)
        if args.once and (changed or status["failed"]):
            outcome["code"] = 1 if status["failed"] else 0
            done.set()

    stopping = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            raise _Interrupted

    previous: dict[signal.Signals, Any] = {}
    watcher = PolicyWatcher(eng, args.paths, debounce_s=args.debounce_ms / 1000.0,
                            poll=True if args.poll else None, on_result=on_result)
    try:
        watcher.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, interrupt)
        count = len(eng.policy.files)
        print(f"{_stamp()} watching {printable(', '.join(map(str, args.paths)))} ({watcher.mode}): revision "
              f"{eng.policy.revision[:12]} ({count} file{'s' if count != 1 else ''})", flush=True)
        _print_warnings(eng.policy.warnings)
        done.wait()
    except (_Interrupted, KeyboardInterrupt):
        outcome["code"] = 0
    finally:
        stopping = True
        watcher.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        eng.close()
    return outcome["code"]


def main_watch(argv: Sequence[str] | None = None) -> int:
    """``policy-engine watch PATH... [--poll] [--debounce-ms N] [--once]``."""
    return run_watch(watch_parser().parse_args(argv))


__all__ = ["main_watch", "run_watch", "watch_parser"]
