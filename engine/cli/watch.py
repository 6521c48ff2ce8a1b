"""``policy-engine watch``: load a policy set, hot-reload it on every change, print each result.

The watching itself is :class:`engine.reload.PolicyWatcher`; this module is its command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

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


def _print_result(changed: bool, status: dict[str, Any]) -> None:
    if status["failed"]:
        problems = status["last_error"] or []
        print(f"reload failed: {len(problems)} problem{'s' if len(problems) != 1 else ''}")
        for line in problems:
            print(line)
    elif changed:
        count = len(status["files"])
        print(f"reloaded revision {status['revision'][:12]} ({count} file{'s' if count != 1 else ''}) "
              f"in {status['duration_ms']:.0f} ms")
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

    def on_result(changed: bool, status: dict[str, Any]) -> None:
        _print_result(changed, status)
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
        print(f"watching {printable(', '.join(map(str, args.paths)))} ({watcher.mode}): revision "
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
