"""``policy-engine convert``: write a shared trace or an engine history as a replay trace CSV.

The readers are :mod:`engine.sim.convert`; this module is their command line
(also ``python -m engine.cli.convert``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.sim.trace import read_trace, write_csv
from engine.text import printable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="policy-engine convert",
                                description="Write a shared trace or an engine history as a replay trace CSV.",
                                epilog="exit status: 0 converted, 1 unreadable input or malformed lines, 2 usage")
    p.add_argument("source", type=Path, help="Azure LLM CSV, llmperf_requests.csv or a history .db")
    p.add_argument("-o", "--output", type=Path, help="where to write the CSV (default: stdout)")
    p.add_argument("--seed", type=int, default=1, help="seed of the Azure tier assignment (default 1)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from engine.sim.trace import TraceError

    try:
        trace = read_trace(args.source, seed=args.seed)
    except TraceError as exc:
        print(f"policy-engine convert: {printable(exc)}", file=sys.stderr)
        return 1
    for problem in trace.problems:
        print(problem.format(trace.path), file=sys.stderr)
    if args.output is None:
        n = write_csv(trace.lines, sys.stdout)
    else:
        with args.output.open("w", encoding="utf-8", newline="") as f:
            n = write_csv(trace.lines, f)
    print(f"{printable(trace.path)}: {trace.format}, {n:,} lines written"
          + (f", {len(trace.problems)} malformed lines skipped" if trace.problems else ""), file=sys.stderr)
    return 1 if trace.problems else 0


if __name__ == "__main__":
    sys.exit(main())
