"""``policy-engine report`` and ``policy-engine status``.

Exit codes (stable), for both:

====  ==============================================================
0     success
1     failure: no history at the store's path, a file that is not a
      history store (or of another schema version), invalid policies,
      unreadable history, a missing templates directory, or a template
      error (file:line reported)
2     usage error: unknown option, malformed or out-of-range date,
      non-sqlite store
====  ==============================================================

``report`` renders ``<out>/YYMMDD-DAILY-REPORT.md`` and ``.html`` for one day
in the report's time zone from history alone. Without ``--date`` it is today
if today has any recorded call, else yesterday.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.errors import PolicyError, StorageError
from engine.policy.model import PolicySet
from engine.text import printable, printable_data, redact_uri

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_STORE = "sqlite:///memory/history.db"


#: The days a report can be asked for: history is kept in Unix time, and the report also computes the day
#: before and after and the budget periods (months) around the day, which must stay within year 1..9999.
MIN_DAY, MAX_DAY = date(1970, 1, 1), date(9998, 12, 31)


def _day(text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None
    if not MIN_DAY <= day <= MAX_DAY:
        raise argparse.ArgumentTypeError(f"expected a date from {MIN_DAY} to {MAX_DAY}, got {text!r}")
    return day


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default="policies", metavar="DIR", help="policy directory (default: ./policies)")
    p.add_argument("--store", metavar="URI",
                   help=f"history store (default: {DEFAULT_STORE}, or else the newest memory/simulate/*.db that "
                        "`policy-engine simulate` wrote)")


def report_parser(prog: str = "policy-engine report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Render the daily report from the recorded history.",
                                epilog="exit status: 0 written, 1 failed, 2 usage error")
    _common(p)
    p.add_argument("--date", type=_day, metavar="YYYY-MM-DD",
                   help="the day, in the report's time zone (default: the store's latest day with calls; a "
                        "day only minutes old when the history ends counts as the day before's stragglers)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the report policy's output_dir)")
    p.add_argument("--templates", metavar="DIR",
                   help="your own Jinja templates, searched before the shipped ones (default: the report "
                        "policy's templates_dir)")
    p.add_argument("--format", action="append", choices=("markdown", "html"), dest="formats",
                   help="write only this format (repeatable; default: the report policy's formats)")
    return p


def status_parser(prog: str = "policy-engine status") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Breakers, budgets and health per model from the "
                                "history store.", epilog="exit status: 0 shown, 1 failed, 2 usage error")
    _common(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="text table (default) or json")
    p.add_argument("--instance", help="the writer instance to show (default: the one that wrote last)")
    return p


def _open(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[PolicySet, sqlite3.Connection]:
    """The policy set and the history; raises PolicyError or StorageError."""
    from engine.policy.loader import load_policies
    from engine.store.historydb import open_readonly, parse_uri

    if args.store is None:
        from engine.cli.locate import latest_history, not_found_hint

        found = latest_history()
        if found is None:
            raise StorageError(not_found_hint())
        args.store = f"sqlite:///{found.as_posix()}"
        print(f"reading {printable(found)} (the newest history under ./memory; --store picks another)",
              file=sys.stderr)
    shown = redact_uri(str(args.store))  # never echo a password
    if not str(args.store).startswith("sqlite://"):
        parser.error(f"--store: expected a sqlite:// URI (the history store), got {shown!r}")
    policy = load_policies(args.policies)
    path, _ = parse_uri(args.store)
    if not path.is_file():
        where = f"at {path} " if shown == args.store else ""  # the path would hold what was redacted
        raise StorageError(f"no history database {where}(store {shown}); run the engine with "
                           f"store={shown!r} first")
    return policy, open_readonly(path)  # read-only: report and status never write, migrate or convert


def _fail(exc: Exception) -> int:
    if isinstance(exc, PolicyError):
        for problem in exc.problems:
            print(problem.format(), file=sys.stderr)
        print(f"policy-engine: {len(exc.problems)} policy problem(s)", file=sys.stderr)
    else:
        print(f"policy-engine: {printable(exc)}", file=sys.stderr)
    return EXIT_FAILED


def run_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``report`` with parsed arguments (for ``policy-engine``'s subcommand table)."""
    from engine.reporting.build import build_report
    from engine.reporting.data import has_calls, latest_day, read_day
    from engine.reporting.render import ReportError, write

    try:
        policy, conn = _open(args, parser)
        spec = policy.report
        templates = args.templates or spec.templates_dir
        if templates and not Path(templates).is_dir():
            conn.close()
            source = "--templates" if args.templates else "the report policy's templates_dir"
            raise ReportError(f"templates directory {templates} ({source}) does not exist or is not a directory")
        try:
            day = args.date
            if day is None:
                day = latest_day(conn, spec.timezone)
                if day is None:  # no calls at all: today if it has calls (it has not), else yesterday
                    today = datetime.now(ZoneInfo(spec.timezone)).date()
                    day = today if has_calls(conn, today, spec.timezone) else today - timedelta(days=1)
            hist = read_day(conn, day, spec.timezone, policy.budgets)
        finally:
            conn.close()
        paths = write(build_report(hist, policy), args.out or spec.output_dir, args.formats or spec.formats,
                      templates)
    except (PolicyError, StorageError, ReportError, OSError) as exc:
        return _fail(exc)
    for path in paths:
        print(printable(path))
    return EXIT_OK


def run_status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``status`` with parsed arguments (for ``policy-engine``'s subcommand table)."""
    from engine.reporting.status import format_table, read_status

    try:
        policy, conn = _open(args, parser)
        try:
            status = read_status(conn, policy, args.instance)
        finally:
            conn.close()
    except (PolicyError, StorageError, OSError) as exc:
        return _fail(exc)
    if args.format == "json":
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_table(printable_data(status), policy.report.timezone))  # names from the store
    return EXIT_OK


def main_report(argv: Sequence[str] | None = None) -> int:
    """``policy-engine report [--policies DIR] [--store URI] [--date D] [--out DIR] [--templates DIR]``."""
    parser = report_parser()
    return run_report(parser.parse_args(argv), parser)


def main_status(argv: Sequence[str] | None = None) -> int:
    """``policy-engine status [--policies DIR] [--store URI] [--format text|json] [--instance NAME]``."""
    parser = status_parser()
    return run_status(parser.parse_args(argv), parser)


# -- ``policy-engine status --store redis://…`` (or redis+cluster://…): the shared state as the server holds it

def _shared_text(status: dict[str, Any], when: Any) -> str:
    def n(value: Any, spec: str = ",") -> str:
        return "?" if value is None else format(value, spec)

    def slices(entry: dict[str, Any]) -> str:
        count = entry.get("slices") or 0
        return f" ({count} of them leased slices)" if count else ""

    def bad(entry: dict[str, Any]) -> str:
        found = entry.get("corrupt") or {}
        return "".join(f"; corrupt {field or 'key'}={raw!r}" for field, raw in found.items())

    node = f", node {status['node']} (slot {status['slot']})" if status.get("node") else ""
    lines = [f"store {status['store']} ({status['prefix']}){node}, epoch {status['epoch'] or '-'}"]
    policy = status.get("policy") or {}
    if policy.get("fingerprint"):
        lines.append(f"policy set {policy['fingerprint']} (revision {(policy.get('revision') or '-')[:12]}, "
                     f"set by {policy.get('by') or '-'} at {when(policy.get('at'))})")
    lines.append(f"breakers: {len(status['breakers'])}")
    for name, b in status["breakers"].items():
        until = f" until {when(b['open_until'])}" if b["open_until"] else ""
        if "window_calls" not in b:
            lines.append(f"  {name:<28} ?{bad(b)}")
            continue
        lines.append(f"  {name:<28} {b['state'] or '?'}{until}; opened {n(b['consecutive_opens'])}x in a row; "
                     f"{n(b['probes_in_flight'])} probes in flight; window {n(b['window_calls'])} calls, "
                     f"{n(b['window_failures'])} failed, {n(b['window_slow'])} slow{bad(b)}")
    lines.append(f"budgets: {len(status['budgets'])}")
    for name, u in status["budgets"].items():
        parts = []
        if u["tokens_limit"]:
            parts.append(f"{n(u['tokens_used'])} (+{n(u['tokens_reserved'])} reserved) / {u['tokens_limit']:,} tokens")
        if u["cost_limit"]:
            parts.append(f"${n(u['cost_used'], ',.2f')} (+${n(u['cost_reserved'], ',.2f')}) / "
                         f"${u['cost_limit']:,.2f}")
        flags = ", exhausted" if u["exhausted"] else ", warned" if u["warned"] else ""
        lines.append(f"  {name:<28} {u['period']}: {'; '.join(parts)} = {u['used_fraction']:.1%}; "
                     f"{u['reservations']} reservations{slices(u)}{flags}{bad(u)}")
    return "\n".join(lines)


def main_shared_status(argv: Sequence[str] | None = None) -> int:
    """``policy-engine status --store URI [--format text|json]``; returns the exit status."""
    p = argparse.ArgumentParser(prog="policy-engine status",
                                description="Show the shared breakers and budgets held by a store.",
                                epilog="exit status: 0 shown, 1 the store could not be read, 2 usage error")
    p.add_argument("--store", required=True, metavar="URI",
                   help="redis://host:port/db?namespace=...&policy_set=... or redis+cluster://host:port,.../?...")
    p.add_argument("--format", choices=("text", "json"), default="text")
    args = p.parse_args(argv)
    if not args.store.lower().startswith(("redis://", "redis+cluster://")):
        p.error(f"expected a redis:// or redis+cluster:// store, got {redact_uri(args.store)!r}")
    from engine.store.redis.status import read_status, when

    try:
        status = read_status(args.store)
    except StorageError as exc:
        print(f"policy-engine status: {printable(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.format == "json" else _shared_text(printable_data(status), when))
    return 0


__all__ = ["main_report", "main_shared_status", "main_status", "report_parser", "run_report", "run_status",
           "status_parser"]
