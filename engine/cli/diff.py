"""``policy-engine diff OLD NEW``: what changed in meaning, and with ``--replay`` what it does.

Exit codes: 0 shown (with or without changes), 1 a policy set is invalid or the
trace cannot be read, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.text import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT = "-"  # --replay without a TRACE: the shipped workload's simulated day


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policy-engine diff",
        description="What changed in meaning between two policy sets (models, candidate orders per tier, "
        "breaker thresholds, budgets, error classes, rules, settings), not in text; with --replay, the effect "
        "side by side: availability, fallbacks, tokens and cost per successful call, budget exhaustion times.",
        epilog="exit status: 0 shown, 1 invalid policy set or unreadable trace, 2 usage error")
    p.add_argument("old", type=Path, metavar="OLD", help="the policy directory before")
    p.add_argument("new", type=Path, metavar="NEW", help="the policy directory after")
    p.add_argument("--replay", nargs="?", const=DEFAULT, metavar="TRACE",
                   help="replay TRACE (a trace file or history database, as policy-engine replay reads) through "
                   "both sets; without TRACE, simulate the shipped workload's day through both")
    p.add_argument("--hours", type=float, default=24.0, help="with --replay and no TRACE: hours of the day to "
                   "simulate (default 24)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the replay or simulation (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for d in (args.old, args.new):
        if not d.is_dir():
            parser.error(printable(f"{d} is not a policy directory"))
    if not 0 < args.hours <= 24:
        parser.error(f"--hours: expected hours in (0, 24], got {args.hours:g}")
    from engine.errors import PolicyError
    from engine.inspect.diff import diff, format_changes
    from engine.policy.loader import load_policies

    try:
        old, new = load_policies(args.old), load_policies(args.new)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem.format(), file=sys.stderr)
        print(f"policy-engine diff: {len(exc.problems)} policy problem(s)", file=sys.stderr)
        return EXIT_FAILED
    changes = diff(old, new)
    labels = _labels(args.old, args.new)
    doc: dict[str, Any] = {"old": str(args.old), "new": str(args.new), "changes": [c.to_dict() for c in changes]}
    if not args.json:
        print("\n".join(printable(line) for line in format_changes(changes, *labels).split("\n")))
    if args.replay is not None:
        effect = _replay(args, labels)
        if isinstance(effect, int):
            return effect
        doc["replay"] = effect["doc"]
        if not args.json:
            print()
            print(effect["text"])
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    return EXIT_OK


def _labels(old: Path, new: Path) -> tuple[str, str]:
    a, b = old.name or str(old), new.name or str(new)
    return (a, b) if a != b else (str(old), str(new))


def _replay(args: argparse.Namespace, labels: tuple[str, str]) -> dict[str, Any] | int:
    from engine.sim.summary import compare_table

    if args.replay == DEFAULT:
        from concurrent.futures import ProcessPoolExecutor

        jobs = [(d, args.seed, args.hours) for d in (args.old, args.new)]
        with ProcessPoolExecutor(max_workers=2) as pool:  # the two days are independent: one core each
            runs = list(pool.map(_simulate, jobs))
        summaries = [r["engine"] for r in runs]
        title = (f"effect on the shipped workload's simulated day ({runs[0]['requests']:,} calls, scenario "
                 f"{runs[0]['scenario']}, seed {args.seed}):")
        tz = runs[0]["timezone"]
    else:
        from engine.policy.loader import load_policies
        from engine.sim.replay import replay
        from engine.sim.trace import TraceError, read_trace

        try:
            trace = read_trace(args.replay, "auto", seed=args.seed)
        except TraceError as exc:
            print(printable(f"policy-engine diff: {exc}"), file=sys.stderr)
            return EXIT_FAILED
        sets = [load_policies(args.old), load_policies(args.new)]
        result = replay(trace, [args.old, args.new], seed=args.seed, policies=sets)
        summaries, tz = result.summaries, result.timezone
        title = f"effect on {trace.path} ({len(result.prepared.requests):,} calls replayed):"
    lines = [title, *compare_table(list(labels), summaries, tz)]
    return {"text": "\n".join(lines), "doc": {"runs": [{"label": lab, **s} for lab, s in zip(labels, summaries,
                                                                                            strict=True)]}}


def _simulate(job: tuple[Path, int, float]) -> dict[str, Any]:
    """One policy set through the shipped workload's day, engine only (run in a worker process)."""
    from engine.sim.simulate import SimOptions, simulate

    policies, seed, hours = job
    r = simulate(SimOptions(policies=policies, seed=seed, hours=hours, history="none", report=False,
                            baselines=False))
    return {"engine": r.engine, "requests": r.requests, "scenario": r.scenario.name, "timezone": r.timezone}
