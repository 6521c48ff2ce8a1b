"""The results of a policy test run as text, JSON or JUnit XML."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from engine.policytest.run import Result
from engine.policytest.spec import relative
from engine.policytest.suite import CATEGORIES, Outcome
from engine.text import printable


def text(out: Outcome, *, verbose: bool = False) -> str:
    lines: list[str] = []
    for r in out.results:
        name = f"{relative(r.case.file)}::{r.case.name}"
        if r.passed:
            if verbose:
                lines.append(printable(f"PASS {name} ({r.calls} calls, {r.seconds * 1000:.0f} ms)"))
            continue
        lines.append(printable(f"FAIL {name}"))
        for f in r.failures:
            lines.append(printable(f"  {relative(r.case.file)}:{f.line}: {f.what}"))
            lines.append(printable(f"    expected: {f.expected}"))
            lines.append(printable(f"    actual:   {f.actual}"))
            if f.events:
                lines.append("    events before:")
                lines.extend(printable(f"      {e}") for e in f.events)
    lines.append(coverage_text(out))
    passed = sum(r.passed for r in out.results)
    failed = len(out.results) - passed
    lines.append(f"{passed} passed, {failed} failed" + (f" of {out.selected} selected" if out.selected else
                                                          ", no test selected"))
    return "\n".join(lines)


def coverage_text(out: Outcome) -> str:
    cov = out.coverage
    rows = [f"coverage {cov.percent():.0f}%:"]
    for cat in CATEGORIES:
        hit, total = len(cov.hit[cat]), len(cov.total[cat])
        missed = cov.missed(cat)
        tail = f" (not exercised: {', '.join(missed[:8])}{', ...' if len(missed) > 8 else ''})" if missed else ""
        rows.append(printable(f"  {cat}: {hit}/{total}{tail}"))
    return "\n".join(rows)


def as_json(out: Outcome) -> str:
    cov = out.coverage
    doc: dict[str, Any] = {
        "passed": sum(r.passed for r in out.results),
        "failed": sum(not r.passed for r in out.results),
        "problems": [p.to_dict() for p in out.problems],
        "tests": [_result(r) for r in out.results],
        "coverage": {
            "percent": round(cov.percent(), 2),
            **{cat: {"exercised": sorted(cov.hit[cat]), "missed": cov.missed(cat),
                     "percent": round(cov.percent(cat), 2)} for cat in CATEGORIES},
        },
    }
    return json.dumps(doc, indent=2)


def _result(r: Result) -> dict[str, Any]:
    return {
        "file": r.case.file, "name": r.case.name, "line": r.case.line, "passed": r.passed,
        "calls": r.calls, "seconds": round(r.seconds, 4),
        "failures": [{"line": f.line, "what": f.what, "expected": f.expected, "actual": f.actual,
                      "events": list(f.events)} for f in r.failures],
    }


def junit(out: Outcome) -> str:
    suites = ET.Element("testsuites", name="policy-engine test")
    by_file: dict[str, list[Result]] = {}
    for r in out.results:
        by_file.setdefault(r.case.file, []).append(r)
    for file, results in by_file.items():
        failures = sum(not r.passed for r in results)
        suite = ET.SubElement(suites, "testsuite", name=relative(file), tests=str(len(results)),
                              failures=str(failures), errors="0",
                              time=f"{sum(r.seconds for r in results):.3f}")
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=relative(file), name=r.case.name,
                                 file=relative(file), line=str(r.case.line), time=f"{r.seconds:.3f}")
            for f in r.failures:
                fail = ET.SubElement(case, "failure", message=f"{f.what}: expected {f.expected}, got {f.actual}")
                fail.text = "\n".join([f"{relative(file)}:{f.line}: {f.what}", f"expected: {f.expected}",
                                       f"actual:   {f.actual}", *f.events])
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
