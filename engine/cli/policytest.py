"""``policy-engine test``: run policy test files.

Exit codes (stable, documented in the README):

====  ==================================================================
0     every selected test passed (and coverage reached ``--min-coverage``)
1     invalid: a test file or the policy set it tests has an error
2     usage error: unknown option, bad pattern, nothing to run
3     at least one test failed
4     every test passed, but coverage is below ``--min-coverage``
====  ==================================================================
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.text import printable

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED, EXIT_COVERAGE = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policy-engine test",
        description="Run policy test files (*_test.yaml, kind: policy_test): scripted traffic, outcomes and "
        "reloads on a fake clock, then expectations about decisions, breakers, budgets, events, anomalies and "
        "recommendations. A directory is searched for *_test.yaml files at any depth.",
        epilog="exit status: 0 passed, 1 invalid test file or policy set, 2 usage error, 3 a test failed, "
        "4 coverage below --min-coverage",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="test files or directories (default: ./policies)")
    p.add_argument("--run", metavar="PATTERN", help="only tests whose FILE::NAME matches this regular expression")
    p.add_argument("--format", choices=("text", "json", "junit"), default="text", help="output format")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("--min-coverage", type=float, metavar="PCT",
                   help="fail (exit 4) when the tests exercise less than PCT%% of the breakers, budgets, "
                   "candidates, anomaly and recommendation rules")
    p.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    paths = args.paths or (["policies"] if Path("policies").is_dir() else [])
    if not paths:
        parser.error("no PATH given and no ./policies directory here")
    if args.run is not None:
        try:
            re.compile(args.run)
        except re.error as exc:
            parser.error(f"--run: not a regular expression: {exc}")
    if args.min_coverage is not None and not 0 <= args.min_coverage <= 100:
        parser.error(f"--min-coverage: expected a percentage from 0 to 100, got {args.min_coverage:g}")
    from engine.policytest import output
    from engine.policytest.suite import run

    out = run(paths, args.run)
    if out.problems:
        for problem in out.problems:
            print(problem.format(), file=sys.stderr)
        count = len(out.problems)
        print(f"policy-engine test: {count} problem{'s' if count != 1 else ''} found; no test ran", file=sys.stderr)
        if args.format == "json":
            _emit(args, output.as_json(out))
        return EXIT_INVALID
    if args.run is not None and out.selected == 0:
        print(printable(f"policy-engine test: no test matches --run {args.run!r}"), file=sys.stderr)
        return EXIT_USAGE
    rendered = {"text": lambda: output.text(out, verbose=args.verbose), "json": lambda: output.as_json(out),
                "junit": lambda: output.junit(out)}[args.format]()
    _emit(args, rendered)
    if args.format != "text" and args.output:  # JSON or JUnit went to a file: the summary still shows here
        print(output.text(out, verbose=args.verbose))
    if any(not r.passed for r in out.results):
        return EXIT_FAILED
    if args.min_coverage is not None and out.coverage.percent() < args.min_coverage:
        print(f"policy-engine test: coverage {out.coverage.percent():.1f}% is below --min-coverage "
              f"{args.min_coverage:g}%", file=sys.stderr)
        return EXIT_COVERAGE
    return EXIT_OK


def _emit(args: argparse.Namespace, text: str) -> None:
    if args.output:
        Path(args.output).write_text(text if text.endswith("\n") else text + "\n")
    else:
        print(text)
