"""``policy-engine explain TIER``: why the tier would pick the model it picks.

Exit codes: 0 explained (even when no model is available), 1 the policy set
is invalid or the store cannot be read, 2 usage error (unknown tier, bad time).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.text import printable, redact_uri

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policy-engine explain",
        description="Explain which model TIER would use now: the candidate chain in order, each candidate's "
        "verdict with the rule behind it (breaker state and when it reopens, budget left, calls in flight, "
        "context window, score), the model chosen, and what would change the answer.",
        epilog="exit status: 0 explained, 1 invalid policies or unreadable store, 2 usage error")
    p.add_argument("tier", metavar="TIER")
    p.add_argument("--policies", default="policies", metavar="DIR", help="policy directory (default: ./policies)")
    p.add_argument("--tokens", type=int, metavar="N", help="estimated tokens of the call (reserved from budgets)")
    p.add_argument("--at", metavar="TIME", help="when: YYYY-MM-DDTHH:MM[:SS] in the report's time zone, "
                   "or a UNIX time (default: now)")
    p.add_argument("--store", metavar="URI", help="sqlite:///… history store: explain with the breaker states "
                   "and budget usage it saved (live state)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _when(text: str | None, tz: str) -> float | None:
    if text is None:
        return datetime.now().timestamp()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=ZoneInfo(tz))).timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tokens is not None and args.tokens < 0:
        parser.error(f"--tokens: expected a number >= 0, got {args.tokens}")
    from engine.errors import PolicyError
    from engine.policy.loader import load_policies
    from engine.policy.problems import did_you_mean

    try:
        policy = load_policies(args.policies)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.format(), file=sys.stderr)
        print(f"policy-engine explain: {len(exc.problems)} policy problem(s)", file=sys.stderr)
        return EXIT_FAILED
    if args.tier not in policy.tiers:
        parser.error(printable(f"unknown tier {args.tier!r}{did_you_mean(args.tier, policy.tiers)}; expected one "
                               f"of {', '.join(policy.tier_order)}"))
    at = _when(args.at, policy.report.timezone)
    if at is None:
        parser.error(printable(f"--at: expected a time such as 2026-03-02T09:30 or a UNIX time, got {args.at!r}"))
    saved: dict[str, Any] | None = None
    if args.store is not None:
        found = _saved(args.store, parser)
        if isinstance(found, int):
            return found
        saved = found
    from engine.inspect.explain import explain

    out = explain(policy, args.tier, at=at, tokens=args.tokens, saved=saved)
    if args.json:
        print(json.dumps(out.to_dict(), indent=2))
    else:
        print("\n".join(printable(line) for line in text(out).split("\n")))  # names from the policy files
    return EXIT_OK


def _saved(uri: str, parser: argparse.ArgumentParser) -> dict[str, Any] | int:
    from engine.errors import StorageError
    from engine.store.historydb import load_state, open_readonly, parse_uri

    shown = redact_uri(uri)
    if not uri.startswith("sqlite://"):
        parser.error(f"--store: expected a sqlite:// URI (a history store), got {shown!r}")
    path, options = parse_uri(uri)
    if not Path(path).is_file():
        print(f"policy-engine explain: no history database at {path}", file=sys.stderr)
        return EXIT_FAILED
    try:
        conn = open_readonly(path)
        try:
            instance = options.get("instance") or _last_instance(conn)
            state = load_state(conn, instance) if instance else None
        finally:
            conn.close()
    except (StorageError, OSError) as exc:
        print(f"policy-engine explain: {printable(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return state or {}


def _last_instance(conn: Any) -> str | None:
    try:
        row = conn.execute("SELECT instance FROM state ORDER BY saved_at DESC LIMIT 1").fetchone()
    except sqlite3.Error:  # open_readonly checked the schema: not expected, but never fatal
        return None
    return row[0] if row else None


def text(out: Any) -> str:
    lines = [f"tier {out.tier} at {out.at} ({out.timezone})"
             + (f", a call of {out.tokens:,} tokens" if out.tokens is not None else "")
             + f": {out.strategy} order"]
    for i, c in enumerate(out.chain, 1):
        mark = "->" if c.model == out.chosen else "  "
        where = "" if c.tier == out.tier else f" (via {c.tier})"
        lines.append(f"{mark} {i}. {c.model}{where}: {c.verdict}")
        details = [f"breaker {c.breaker}" + (f", reopens {c.reopens_at}" if c.reopens_at and c.breaker == "open"
                                             else "")]
        limit = f"/{c.max_in_flight}" if c.max_in_flight is not None else ""
        details.append(f"in flight {c.in_flight}{limit}")
        details.append(f"context {c.context_window:,}")
        if c.score is not None:
            details.append(f"score {c.score:.2f}")
        lines.append("       " + "; ".join(details))
        for b in c.budgets:
            left = []
            if b.tokens_left is not None:
                left.append(f"{b.tokens_left:,} tokens left")
            if b.cost_left is not None:
                left.append(f"${b.cost_left:,.2f} left")
            state = "exhausted" if b.exhausted else f"{b.used_fraction:.1%} used"
            resets = f", resets {b.resets_at}" if b.resets_at else ""
            lines.append(f"       budget {b.name}: {state}, {', '.join(left)}{resets}")
        if c.note:
            lines.append(f"       note: {c.note}")
    if out.chosen:
        lines.append(f"chosen: {out.chosen}" + (" (a fallback)" if out.is_fallback else ""))
    else:
        lines.append("chosen: none (NoModelAvailable)")
    if out.changes:
        lines.append("what would change the answer:")
        lines.extend(f"  - {c}" for c in out.changes)
    return "\n".join(lines)
