"""Command-line entry points: ``validate-policies`` and ``policy-engine``.

Exit codes (stable):

====  =====================================================
0     success: every policy set is valid (warnings may be printed)
1     invalid: at least one error was found (or a warning, with ``--strict``)
2     usage error: unknown option, missing argument
====  =====================================================
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.policy.loader import check
from engine.text import printable

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def _validate_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Validate a policy set: every problem as file:line:col: code: message. "
        "All PATHs together form one policy set; a directory contributes its *.yaml and *.yml files.",
        epilog="exit status: 0 valid (warnings are printed), 1 invalid (or warnings with --strict), "
               "2 usage error",
    )
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="policy directory or files (default: ./policies)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json for tools")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only, no summary")
    p.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    return p


def run_validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    paths = args.paths
    if not paths:
        if not Path("policies").is_dir():
            parser.error("no PATH given and no ./policies directory here")
        paths = ["policies"]
    policy, problems = check(paths)
    errors = sum(p.is_error for p in problems)
    warnings = len(problems) - errors
    valid = policy is not None and not (args.strict and warnings)
    if args.format == "json":
        files = sorted({p.file for p in problems} | set(policy.files if policy else ()))
        out = {
            "valid": valid,
            "paths": list(map(str, paths)),
            "files": files,
            "revision": policy.revision if policy else None,
            "strict": args.strict,
            "errors": errors,
            "warnings": warnings,
            "problems": [p.to_dict() for p in problems],
        }
        print(json.dumps(out, indent=2))
    else:
        for problem in problems:
            print(problem.format())
        if not args.quiet:
            noted = f", {_count(warnings, 'warning')}" if warnings else ""
            if valid:
                assert policy is not None
                print(f"{printable(', '.join(map(str, paths)))}: {len(policy.files)} files, "
                      f"{len(policy.models)} models, {len(policy.tiers)} tiers: valid{noted} "
                      f"(revision {policy.revision[:12]})")
            elif errors:
                print(f"{_count(len(problems), 'problem')} found" + (f" ({_count(errors, 'error')}{noted})"
                                                                      if warnings else ""), file=sys.stderr)
            else:
                print(f"{_count(warnings, 'warning')} found, and --strict makes warnings fail", file=sys.stderr)
    return EXIT_OK if valid else EXIT_INVALID


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def validate_main(argv: Sequence[str] | None = None) -> int:
    parser = _validate_parser("validate-policies")
    return run_validate(parser.parse_args(argv), parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="policy-engine", description="LLM reliability policy engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    v = sub.add_parser("validate", help="validate a policy set (same as validate-policies)",
                       parents=[_validate_parser("policy-engine validate")], add_help=False)
    v.set_defaults(run=run_validate, sub=v)
    sub.add_parser("watch", help="hot-reload a policy set and print each reload", add_help=False)
    sub.add_parser("simulate", help="run the policies through a simulated day of real traffic", add_help=False)
    sub.add_parser("replay", help="replay a recorded trace through one or two policy sets", add_help=False)
    sub.add_parser("report", help="render the daily report (Markdown and HTML) from the history",
                   add_help=False)
    sub.add_parser("status", help="breakers, budgets and health per model from the history store",
                   add_help=False)
    sub.add_parser("test", help="run policy test files (*_test.yaml): scripted scenarios with expectations",
                   add_help=False)
    sub.add_parser("explain", help="why a tier would pick the model it picks now, and what would change it",
                   add_help=False)
    sub.add_parser("diff", help="what changed in meaning between two policy sets, and its effect with --replay",
                   add_help=False)
    sub.add_parser("convert", help="write a shared trace or a history database as a replay trace CSV",
                   add_help=False)
    sub.add_parser("serve", help="serve a live status page, /status, /healthz and /metrics over HTTP", add_help=False)
    args, rest = parser.parse_known_args(argv)
    # each command's module is imported only when used, so validation starts fast
    if args.command == "test":
        from engine.cli.policytest import main as main_test

        return main_test(rest)
    if args.command == "explain":
        from engine.cli.explain import main as main_explain

        return main_explain(rest)
    if args.command == "diff":
        from engine.cli.diff import main as main_diff

        return main_diff(rest)
    if args.command == "convert":
        from engine.cli.convert import main as main_convert

        return main_convert(rest)
    if args.command == "serve":
        from engine.cli.serve import main_serve

        return main_serve(rest)
    if args.command == "watch":
        from engine.cli.watch import main_watch

        return main_watch(rest)
    if args.command == "status" and _store_arg(rest).lower().startswith("redis"):  # schemes ignore case
        from engine.cli.report import main_shared_status

        return main_shared_status(_without(rest, "--policies"))
    if args.command in ("report", "status"):
        from engine.cli.report import main_report, main_status

        return main_report(rest) if args.command == "report" else main_status(rest)
    if args.command in ("simulate", "replay"):
        from engine.cli.sim import main_replay, main_simulate

        return main_simulate(rest) if args.command == "simulate" else main_replay(rest)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = args.run(args, args.sub)
    return code


def _store_arg(argv: Sequence[str]) -> str:
    """The value of ``--store`` in ``argv`` ("" when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--store" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--store="):
            return arg.split("=", 1)[1]
    return ""


def _without(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` less ``option`` and its value (the shared store needs no policy directory)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _entry(fn: object) -> None:  # pragma: no cover - console-script glue
    try:
        sys.exit(fn())  # type: ignore[operator]
    except KeyboardInterrupt:
        sys.exit(130)


def validate_entry() -> None:  # pragma: no cover
    _entry(validate_main)


def main_entry() -> None:  # pragma: no cover
    _entry(main)
