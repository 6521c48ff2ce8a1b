"""The daily report and ``status``: golden files, edge days, templates, the CLI as a process."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine import (
    AnomalyDetected,
    AnomalyResolved,
    BudgetExhausted,
    BudgetWarning,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    FallbackTriggered,
    Outcome,
    PolicyEngine,
    load_policies,
)
from engine.events import Event, PolicyReloaded
from engine.reporting.build import build_report
from engine.reporting.charts import line_chart, nice_max
from engine.reporting.data import read_day
from engine.reporting.render import ReportError, write
from engine.store.historydb import connect, open_readonly
from engine.store.sqlite import SQLiteStore
from engine.testing import FakeClock
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
POLICIES = GOLDEN / "policies"  # a frozen copy of the default set: the goldens do not move with policies/
BERLIN = ZoneInfo("Europe/Berlin")
DAY = date(2026, 1, 2)
#: Calls per ten minutes through the day (a working-hours curve).
LOAD = (1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 4, 5, 5, 5, 4, 4, 3, 2, 2, 1, 1, 1)


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> float:
    return datetime(2026, 1, day, hh, mm, ss, tzinfo=BERLIN).timestamp()


def _events() -> list[Event]:
    return [
        PolicyReloaded(at(2, 12, 58, 4), "a" * 64, "b" * 64, ("policies/models.yaml",), ("o3",), ()),
        CircuitOpened(at(2, 14, 2, 5), "gpt-4.1-mini", "failure_rate", at(2, 14, 2, 35), 80.0, 80.0),
        CircuitHalfOpened(at(2, 14, 2, 35), "gpt-4.1-mini", 3),
        CircuitOpened(at(2, 14, 2, 41), "gpt-4.1-mini", "half_open_failed", at(2, 14, 3, 41), 100.0, 100.0),
        AnomalyDetected(at(2, 14, 5), "error-spike", "model", "gpt-4.1-mini", "warning",
                        "calls >= 20 and error_rate > 0.2"),
        CircuitHalfOpened(at(2, 14, 31, 0), "gpt-4.1-mini", 3),
        CircuitClosed(at(2, 14, 31, 20), "gpt-4.1-mini", "probes_succeeded"),
        AnomalyResolved(at(2, 14, 40), "error-spike", "model", "gpt-4.1-mini", "warning"),
    ]


class _Day:
    """Writes calls (and the fallback events that go with them) the way an engine would record them."""

    def __init__(self, store: SQLiteStore, policies: Path) -> None:
        self.store, self.policy = store, load_policies(policies)
        self.rng = random.Random(20260102)  # noqa: S311
        self.opus_cost = 0.0

    def call(self, t: float, tier: str, model: str, lo: float, hi: float, error: str | None = None,
             fallback: tuple[str, str] | None = None, tokens: tuple[int, int] = (800, 200),
             stream: float | None = None) -> None:
        """One recorded call; ``fallback`` is (the model skipped or failed, why); ``stream``: a streamed call
        whose first token came after that share of its latency."""
        spec = self.policy.models.get(model)
        tin, tout = tokens if error is None else (tokens[0], 0)
        cost = spec.price.cost(tin, tout) if spec else (tin * 0.5 + tout * 1.5) / 1e6
        latency = round(self.rng.uniform(lo, hi), 1)
        failed = error is not None and self.policy.error_classes[error].breaker == "failure"
        self.store.record_call(t, tier, model, latency, error, failed, latency > 30_000, tin, tout, cost,
                               fallback is not None, ttft_ms=None if stream is None else round(latency * stream, 1))
        if fallback is not None:
            self.store.append_event(FallbackTriggered(t, tier, fallback[0], model, spec.tier if spec else tier,
                                                      fallback[1]))

    def opus(self, t: float) -> None:
        """L4's first model until its daily budget (60 USD) runs out, then gpt-5 as the fallback."""
        limit = 60.0
        if self.opus_cost >= limit:
            self.call(t, "L4", "gpt-5", 9000, 30000, fallback=("claude-opus-4-1", "budget opus-daily exhausted"),
                      tokens=(20_000, 9000))
            return
        before = self.opus_cost
        self.call(t, "L4", "claude-opus-4-1", 8000, 40000, tokens=(14_000, 6_000))
        self.opus_cost += self.policy.models["claude-opus-4-1"].price.cost(14_000, 6_000)
        for share, kind in ((0.9, BudgetWarning), (1.0, BudgetExhausted)):
            if before < share * limit <= self.opus_cost:
                args = ("opus-daily", self.opus_cost / limit, int(self.opus_cost / 0.66 * 20_000), 2_000_000,
                        round(self.opus_cost, 2), limit, at(2, 0))
                self.store.append_event(kind(t, *args, at(3, 0)) if kind is BudgetExhausted else kind(t, *args))


def fixed_history(path: Path, policies: Path = POLICIES) -> None:
    """A deterministic day (2026-01-02, Berlin) and a lighter day before it, written through the store.

    L1 hits a rate-limit storm at 10:00 and falls back; L2's first model times out from 14:00, its breaker
    opens at 14:02 and closes at 14:31, L2 serving from its second model meanwhile; a model the policies
    no longer know serves some L2 calls until 08:00; Opus runs out of budget at 15:00 and L4 falls back to
    gpt-5; o3 is added by a reload at 12:58 and takes traffic from 13:15. L3's calls stream on the day
    (claude-sonnet-4-5's all, gpt-4.1's every other one); nothing streamed the day before.
    """
    store = SQLiteStore(f"sqlite:///{path}?flush_s=3600")
    day = _Day(store, policies)
    call = day.call
    for slot in range(0, 24 * 6, 2):  # the day before: every 20 minutes
        t = at(1, 0) + slot * 600
        call(t, "L1", "gpt-4.1-nano", 150, 600)
        call(t + 1, "L2", "gpt-4.1-mini", 500, 2200)
        if slot % 6 == 0:
            call(t + 2, "L4", "claude-opus-4-1", 8000, 30000, tokens=(14_000, 6_000))
    open_from, open_until = at(2, 14, 2, 5), at(2, 14, 31, 20)
    for slot in range(24 * 6):
        hour, t = slot // 6, at(2, 0) + slot * 600
        for k in range(LOAD[hour] * 2):
            u = t + k * 7
            if hour == 10 and slot % 6 < 2 and k % 3 == 0:
                call(u, "L1", "gpt-4.1-nano", 40, 90, error="rate_limit")
                call(u + 1, "L1", "gemini-2.5-flash-lite", 250, 800, fallback=("gpt-4.1-nano", "rate_limit"))
            else:
                call(u, "L1", "gpt-4.1-nano", 150, 700, error="bad_request" if k == 5 and slot % 6 == 0 else None)
        for k in range(LOAD[hour]):
            u = t + 100 + k * 11
            if at(2, 14) <= u < open_from:
                call(u, "L2", "gpt-4.1-mini", 30_000, 30_050, error="timeout")
                call(u + 31, "L2", "gemini-2.5-flash", 700, 2400, fallback=("gpt-4.1-mini", "timeout"))
            elif open_from <= u < open_until:
                call(u, "L2", "gemini-2.5-flash", 700, 2400,
                     fallback=("gpt-4.1-mini", f"breaker open until t={u + 30:.3f}"))
            else:
                call(u, "L2", "gpt-4.1-mini", 500, 2600, error="server_error" if (slot + k) % 41 == 0 else None)
            if hour < 8:
                call(u + 2, "L2", "legacy-model", 900, 3200)
        if slot % 3 == 0:
            call(t + 200, "L3", "claude-sonnet-4-5", 2000, 9000, tokens=(3000, 900), stream=0.1)
            call(t + 201, "L3", "gpt-4.1", 1800, 7000, tokens=(3000, 900), stream=0.15 if slot % 2 else None)
        day.opus(t + 300)
        if hour >= 13 and slot % 2 == 1:
            call(t + 301, "L4", "o3", 5000, 20000, tokens=(5000, 3000))
    for event in _events():
        store.append_event(event)
    store.close()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.db"
    fixed_history(path)
    return path


def report_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    code = "import sys; from engine.cli.report import main_report; sys.exit(main_report(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from engine.cli.report import main_status; sys.exit(main_status(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def render_day(history: Path, out: Path, day: date = DAY, policies: Path = POLICIES) -> tuple[str, str]:
    result = report_cli("--policies", str(policies), "--store", f"sqlite:///{history}", "--date",
                        day.isoformat(), "--out", str(out))
    assert result.returncode == 0, result.stderr
    stem = f"{day:%y%m%d}-DAILY-REPORT"
    assert result.stdout.split() == [str(out / f"{stem}.md"), str(out / f"{stem}.html")]
    return (out / f"{stem}.md").read_text(), (out / f"{stem}.html").read_text()


# -- golden files --------------------------------------------------------------------------------
def test_golden_markdown_and_html(history: Path, tmp_path: Path) -> None:
    md, html = render_day(history, tmp_path)
    for name, text in (("260102-DAILY-REPORT.md", md), ("260102-DAILY-REPORT.html", html)):
        golden = GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN"):
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


def test_rendering_is_idempotent(history: Path, tmp_path: Path) -> None:
    first = render_day(history, tmp_path / "a")
    again = render_day(history, tmp_path / "a")
    elsewhere = render_day(history, tmp_path / "b")
    assert first == again == elsewhere


def test_the_report_covers_every_section(history: Path, tmp_path: Path) -> None:
    md, _ = render_day(history, tmp_path)
    for heading in ("## Summary", "## Recommended actions", "## Tier efficiency", "## Model ranking",
                    "## Cost and tokens", "## Budget burn", "## Breaker and anomaly timeline", "## Fallbacks"):
        assert heading in md
    assert "| 14:02:05 | breaker opened | gpt-4.1-mini | failure_rate: failure rate 80%" in md
    assert "| 15:05:00 | budget exhausted | opus-daily | 100% used" in md
    assert "| L2 | gpt-4.1-mini → gemini-2.5-flash | breaker open | 12 |" in md
    assert "| L4 | claude-opus-4-1 → gpt-5 | budget opus-daily exhausted | 53 |" in md


def test_recommendations_name_the_rule_the_evidence_and_the_edit(history: Path, tmp_path: Path) -> None:
    md, _ = render_day(history, tmp_path)
    section = md.split("## Recommended actions")[1].split("## Tier efficiency")[0]
    assert "Rule: `raise-exhausted-budget` (model: claude-opus-4-1)" in section
    assert "Evidence: budget_exhaustions = 1; success_rate = 100.00%" in section
    assert ("Suggested edit: budgets.yaml: raise the tokens or cost_usd of the budget that applies to "
            "claude-opus-4-1") in section


def test_a_model_added_mid_day_and_one_the_policies_lost(history: Path, tmp_path: Path) -> None:
    md, html = render_day(history, tmp_path)
    assert "| o3 (added at 12:58, first call 13:15) |" in md
    assert "| gpt-5 (first call 15:15, none the day before) |" in md
    assert "| legacy-model (not in the current policies) |" in md
    assert "o3<br><span class=\"note\">added at 12:58, first call 13:15</span>" in html
    # its hourly points start when it does: L4 has 6 calls an hour before 13:00 and 9 after
    hourly = md.split("## Hourly traffic")[1]
    assert "| 12:00 | 48 (1 error) | 24 | 4 | 6 | 82 |" in hourly
    assert "| 13:00 | 60 (1 error) | 30 (5 errors) | 4 | 9 |" in hourly


def test_a_day_without_traffic_renders_sensibly(history: Path, tmp_path: Path) -> None:
    md, html = render_day(history, tmp_path, date(2026, 2, 10))  # another month: no monthly usage either
    assert "**No calls were recorded on this day.**" in md
    assert "| Availability¹ | — |" in md
    assert "No recommendation rule fired for this day." in md
    assert "| L2 | 0 | — | — | — | — | — | — | $0.00 |" in md
    assert "No breaker, budget, anomaly or reload events." in md
    assert html.count('<p class="empty">No calls on this day.</p>') == 3
    assert '<p class="empty">No budgeted model was called on this day.</p>' in html
    assert "<polyline" not in html


def test_a_quiet_day_still_shows_the_month_so_far(history: Path, tmp_path: Path) -> None:
    md, html = render_day(history, tmp_path, date(2026, 1, 5))
    assert "**No calls were recorded on this day.**" in md
    # the day before (15.90 USD) and the day (69.42 USD), the model the policies lost included
    assert "| everything-monthly | all models | monthly (Europe/Berlin) | $20,000.00 | 0.4% | $85.32 |" in md
    assert html.count('<p class="empty">No calls on this day.</p>') == 3
    assert "everything-monthly (all)</li>" in html


def test_a_day_without_streamed_calls_has_no_time_to_first_token_section(history: Path, tmp_path: Path) -> None:
    md, html = render_day(history, tmp_path / "before", date(2026, 1, 1))  # the day before streamed nothing
    assert "Time to first token" not in md and "TTFT" not in md
    assert "Time to first token" not in html and 'id="ttft"' not in html
    md, html = render_day(history, tmp_path / "day")
    assert "| L3 | all models | 72 | 75.0% |" in md and '<section id="ttft">' in html


def test_time_to_first_token_rows_per_tier_and_model(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}?flush_s=3600")
    for i in range(100):
        store.record_call(at(2, 9, i // 10), "L2", "gpt-4.1-mini", 900.0, None, False, False, 1, 1, 0.0, False,
                          ttft_ms=float(i + 1))
        store.record_call(at(2, 9, i // 10), "L2", "gemini-2.5-flash", 900.0, None, False, False, 1, 1, 0.0, False)
        store.record_call(at(2, 11), "L1", "gpt-4.1-nano", 90.0, None, False, False, 1, 1, 0.0, False)
    store.record_call(at(2, 12), "L4", "a|b", 90.0, None, False, False, 1, 1, 0.0, False, ttft_ms=0.0)
    store.close()
    with closing(open_readonly(tmp_path / "h.db")) as conn:
        hist = read_day(conn, DAY, "Europe/Berlin")
    rows = build_report(hist, load_policies(POLICIES)).ttft
    assert [(r.scope, r.tier, r.name, r.streamed, r.share) for r in rows] == [
        ("tier", "L2", "L2", "100", "50.0%"), ("model", "L2", "gpt-4.1-mini", "100", "100.0%"),
        ("tier", "L4", "L4", "1", "100.0%"), ("model", "L4", "a|b", "1", "100.0%")]
    assert [(r.p50, r.p95) for r in rows] == [("50 ms", "95 ms")] * 2 + [("0 ms", "0 ms")] * 2
    md, html = render_day(tmp_path / "h.db", tmp_path / "out")
    assert "| L4 | a\\|b | 1 | 100.0% | 0 ms | 0 ms |" in md
    assert '<td>L4</td><td class="name">a|b</td><td class="num">1</td>' in html


def test_the_html_is_self_contained(history: Path, tmp_path: Path) -> None:
    _, html = render_day(history, tmp_path)
    assert "<script" not in html and "src=" not in html and "http" not in html
    assert html.count("<svg class=\"plot\"") == 4


def test_values_are_escaped(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}?flush_s=3600")
    for name in ("<img src=x onerror=alert(1)>", "a|b"):
        store.record_call(at(2, 9), "L1", name, 100.0, None, False, False, 1, 1, 0.0, False)
    store.close()
    md, html = render_day(tmp_path / "h.db", tmp_path / "out")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "| a\\|b (not in the current policies) |" in md


SCRIPT, LINK, IMG = "<script>alert(1)</script>", "[click](javascript:alert(1))", "<img src=x onerror=alert(1)>"


def test_markdown_values_bring_no_html_and_no_links(tmp_path: Path, policy_dir: Path) -> None:
    """Model names and event details come from the database, rule text from the policies: all is text."""
    shutil.copytree(POLICIES, policy_dir, dirs_exist_ok=True)
    with (policy_dir / "recommendations.yaml").open("a", encoding="utf-8") as fh:
        fh.write(f"  hostile-rule:\n    scope: global\n    when: \"calls > 0\"\n    severity: info\n"
                 f"    message: \"{SCRIPT} & see {LINK}\"\n    suggest: \"{IMG} <https://evil.example>\"\n")
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}?flush_s=3600")
    for name in (SCRIPT, LINK, "![x](javascript:alert(1))"):
        store.record_call(at(2, 9), "L1", name, 100.0, None, False, False, 1, 1, 0.0, False)
    store.append_event(AnomalyDetected(at(2, 9, 30), "error-spike", "model", LINK, "warning", f"{SCRIPT} {LINK}"))
    store.close()
    md, html = render_day(tmp_path / "h.db", tmp_path / "out", policies=policy_dir)
    for raw in ("<script", "<img", "<https:"):
        assert raw not in md, raw
    assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", md)  # no [text](url) left unescaped
    assert "**INFO: &lt;script&gt;alert(1)&lt;/script&gt; &amp; see \\[click\\](javascript:alert(1))**" in md
    assert "   - Suggested edit: &lt;img src=x onerror=alert(1)&gt; &lt;https\\://evil.example&gt;" in md
    assert "   - Rule: `hostile-rule` (global: all tiers)" in md
    assert "| \\[click\\](javascript:alert(1)) (not in the current policies) |" in md
    assert "| !\\[x\\](javascript:alert(1)) (not in the current policies) |" in md
    assert ("| anomaly (warning) | \\[click\\](javascript:alert(1)) | error-spike: "
            "&lt;script&gt;alert(1)&lt;/script&gt; \\[click\\](javascript:alert(1)) |") in md
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_code_filter_fences_any_backticks(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "{{ 'a`b' | code }} {{ '`x`' | code }} {{ '<b>' | code }} {{ '<b>' }}\n")
    got = _timed_render(history, folder)
    assert got["error"] is None, got
    assert (folder / "out" / "260102-DAILY-REPORT.md").read_text() == "``a`b`` `` `x` `` `<b>` &lt;b&gt;\n"


# -- templates -----------------------------------------------------------------------------------
def _templates(tmp_path: Path, md: str) -> Path:
    folder = tmp_path / "my-templates"
    folder.mkdir()
    (folder / "daily-report.md.j2").write_text(md)
    return folder


def test_a_template_syntax_error_names_the_file_and_line(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "# {{ report.title }}\n\n{% for x in report.tiers %}\n{{ x.tier }\n")
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"), "--templates", str(folder))
    assert result.returncode == 1
    assert f"{folder / 'daily-report.md.j2'}:4: " in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_template_runtime_error_names_the_file_and_line(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "# {{ report.title }}\n\n{{ report.summary.calls }}\n{{ report.sumary.calls }}\n")
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"), "--templates", str(folder))
    assert result.returncode == 1
    assert f"{folder / 'daily-report.md.j2'}:4: UndefinedError: " in result.stderr
    assert "sumary" in result.stderr


def test_templates_run_in_the_sandbox(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "{{ report.__class__.__init__.__globals__ }}\n")
    with closing(connect(history, create=False)) as conn:
        hist = read_day(conn, DAY, "Europe/Berlin")
    report = build_report(hist, load_policies(POLICIES))
    with pytest.raises(ReportError) as caught:
        write(report, tmp_path / "out", ("markdown",), folder)
    assert caught.value.template == str(folder / "daily-report.md.j2") and caught.value.line == 1


#: Renders the day of ``argv[1]`` with the templates in ``argv[2]`` (markdown), render time limit ``argv[3]`` s;
#: prints how long the render took and what it raised, as JSON.
_TIMED_RENDER = """
import json, sys, time
from contextlib import closing
from datetime import date
from pathlib import Path
from engine import load_policies
from engine.reporting.build import build_report
from engine.reporting.data import read_day
from engine.reporting.render import ReportError, write
from engine.store.historydb import open_readonly
with closing(open_readonly(Path(sys.argv[1]))) as conn:
    report = build_report(read_day(conn, date(2026, 1, 2), "Europe/Berlin"), load_policies(sys.argv[4]))
t = time.perf_counter()
try:
    write(report, Path(sys.argv[2]) / "out", ("markdown",), sys.argv[2], time_limit_s=float(sys.argv[3]))
    error = None
except ReportError as exc:
    error = [str(exc), exc.template, exc.line]
print(json.dumps({"seconds": time.perf_counter() - t, "error": error}))
"""


def _timed_render(history: Path, folder: Path, time_limit_s: float = 10.0) -> dict[str, object]:
    import resource

    def cap() -> None:  # 2 GiB of address space: a template may not get near it
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run([sys.executable, "-c", _TIMED_RENDER, str(history), str(folder), str(time_limit_s),
                           str(POLICIES)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          preexec_fn=cap)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(("template", "message"), [
    ("{{ (9**(9**9)) > 0 }}", "9 ** 387420489: a result of over 4,096 bits, the largest integer a report template "
                              "may compute"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "more than 250,000 loop iterations, the limit of a report template"),
    ("{{ ('a' * 10**9)|length }}", "*: a result of 1,000,000,000 characters or items, over the 1,000,000 a report "
                                   "template may build"),
    ("{% for x in range(10) recursive %}{% if loop.depth < 9 %}{{ loop(range(10)) }}{% endif %}{% endfor %}",
     "more than 250,000 loop iterations"),
    ("{% for x in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] recursive %}{% if loop.depth < 9 %}"
     "{{ loop([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) }}{% endif %}{% endfor %}", "more than 250,000 loop iterations"),
    ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "~: a result of 1,048,576 characters or items"),
    ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "+: a result of 1,048,576 characters or items"),
    ("{% set ns = namespace(n=10) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "*: a result of over 4,096 bits"),
    ("{{ 'x'|center(10**9) }}", "center: a result of 1,000,000,000 characters or items"),
    ("{{ 'x'|indent(10**9, true) }}", "indent: a result of 1,000,000,001 characters or items"),
    ("{{ 'a'.ljust(10**9) }}", "str.ljust: a result of 1,000,000,000 characters or items"),
    ("{{ '%01000000000d' % 1 }}", "%: a width or precision of 1,000,000 or more"),
    ("{{ '%*d'|format(10**9, 1) }}", "format: a width or precision of 1,000,000 or more"),
    ("{{ '{:>1000000000}'.format(1) }}", "str.format: a width or precision of 1,000,000 or more"),
    ("{{ (['a' * 1000000] * 1000)|join }}", "join: a result of 1,000,000,000 characters or items"),
    ("{{ (['a' * 1000000] * 1000)|map('upper')|join(',') }}", "join: a result of 1,000,000,999 characters"),
    ("{{ ('a' * 1000000)|replace('a', 'bb') }}", "replace: a result of 2,000,000 characters or items"),
    ("{{ ([range(100000)|list] * 100)|sum(start=[]) }}", "sum: a result of 10,000,000 characters or items"),
    ("{{ range(1)|slice(10**9)|list }}", "slice: 1,000,000,000 slices, over the 100,000"),
    ("{{ range(10**6)|list }}", "range of 1,000,000 items, over the 100,000"),
    ("{{ lipsum(10**6) }}", "lipsum: at most 100 paragraphs"),
], ids=["power", "nested-loops", "repeat", "recursive-loop", "recursive-loop-list", "doubling-concat",
        "doubling-plus", "squaring", "center", "indent", "ljust", "percent", "format-filter", "str-format", "join",
        "join-generator", "replace", "sum", "slice", "range", "lipsum"])
def test_a_hostile_template_is_refused_fast_with_its_file_and_line(history: Path, tmp_path: Path, template: str,
                                                                   message: str) -> None:
    folder = _templates(tmp_path, f"# {{{{ report.title }}}}\n\n{template}\n")
    got = _timed_render(history, folder)
    assert got["error"] is not None, "rendered"
    text, where, line = got["error"]  # type: ignore[misc]
    assert (where, line) == (str(folder / "daily-report.md.j2"), 3)
    assert text.startswith(f"{where}:3: TemplateLimitError: ") and message in text, text
    assert got["seconds"] < 2.0, got  # type: ignore[operator]
    assert not (tmp_path / "my-templates" / "out").exists()


def test_a_template_over_the_render_time_limit_stops_at_it(history: Path, tmp_path: Path) -> None:
    # 1,000 iterations of a few milliseconds each: under every size bound, over a one-second limit
    folder = _templates(tmp_path, "# {{ report.title }}\n{% for i in range(1000) %}\n"
                                  "{{ range(100000)|map('string')|join|length }}\n{% endfor %}\n")
    got = _timed_render(history, folder, time_limit_s=1.0)
    assert got["error"] is not None, "rendered"
    text, _, line = got["error"]  # type: ignore[misc]
    assert "TemplateLimitError: rendering took longer than 1 s, the limit of a report template" in text
    assert line in (2, 3)
    assert 1.0 <= got["seconds"] < 2.0, got  # type: ignore[operator]


def test_a_hostile_template_fails_the_report_command(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "# {{ report.title }}\n{{ 'a' * 10**9 }}\n")
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"), "--templates", str(folder))
    assert result.returncode == 1
    assert result.stderr == (f"policy-engine: {folder / 'daily-report.md.j2'}:2: TemplateLimitError: *: a result of "
                             "1,000,000,000 characters or items, over the 1,000,000 a report template may build\n")
    assert not (tmp_path / "out").exists()


def test_templates_within_the_bounds_still_render(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "{{ 2 ** 4000 > 0 }} {{ ('-' * 80)|length }} {{ range(100000)|sum }} "
                                  "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}"
                                  "{{ '%5.1f'|format(3.14159) }} {{ 'x'|center(9) }}|{{ [1, 2] + [3] }} "
                                  "{{ '{:>6}'.format('ab') }} {% for x in [[1, [2]], [3]] recursive %}"
                                  "{{ x if x is number else loop(x) }}{% endfor %}\n")
    got = _timed_render(history, folder)
    assert got["error"] is None, got
    assert (folder / "out" / "260102-DAILY-REPORT.md").read_text() == \
        "True 80 4999950000   3.1     x    |\\[1, 2, 3\\]     ab 123"  # Markdown-escaped, as every value


def test_a_user_template_overrides_only_its_own_format(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "calls: {{ report.summary.calls }}\n")
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"), "--templates", str(folder))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "260102-DAILY-REPORT.md").read_text() == "calls: 1,556\n"
    assert (tmp_path / "out" / "260102-DAILY-REPORT.html").read_text().startswith("<!DOCTYPE html>")


def test_the_report_policy_chooses_templates_formats_and_output(history: Path, tmp_path: Path,
                                                                 policy_dir: Path) -> None:
    folder = _templates(tmp_path, "{{ report.day }}\n")
    (policy_dir / "report.yaml").write_text(
        "kind: report\nversion: 1\n"
        f"output_dir: {tmp_path / 'reports'}\ntemplates_dir: {folder}\nformats: [markdown]\n"
        "timezone: Europe/Berlin\n")
    result = report_cli("--policies", str(policy_dir), "--store", f"sqlite:///{history}", "--date", "2026-01-02")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["260102-DAILY-REPORT.md"]
    assert (tmp_path / "reports" / "260102-DAILY-REPORT.md").read_text() == "2026-01-02\n"


# -- the command line --------------------------------------------------------------------------------
def test_the_default_day_is_today_when_it_has_calls_else_yesterday(tmp_path: Path) -> None:
    today = datetime.now(BERLIN).date()
    empty = tmp_path / "empty.db"
    SQLiteStore(f"sqlite:///{empty}").close()
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{empty}", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.split()[0]).name == f"{today - timedelta(days=1):%y%m%d}-DAILY-REPORT.md"
    busy = tmp_path / "busy.db"
    store = SQLiteStore(f"sqlite:///{busy}")
    store.record_call(datetime.now(BERLIN).timestamp(), "L1", "gpt-4.1-nano", 100.0, None, False, False, 1, 1,
                      0.0, False)
    store.close()
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{busy}", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.split()[0]).name in {f"{d:%y%m%d}-DAILY-REPORT.md" for d in (
        today, datetime.now(BERLIN).date())}  # midnight may pass while the test runs


def test_a_missing_store_is_a_clear_failure(tmp_path: Path) -> None:
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{tmp_path / 'nope.db'}")
    assert result.returncode == 1
    assert f"no history database at {tmp_path / 'nope.db'}" in result.stderr
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--date", "2026-13-01"), "expected a date as YYYY-MM-DD, got '2026-13-01'"),
    (("--date", "9999-12-31"), "expected a date from 1970-01-01 to 9998-12-31, got '9999-12-31'"),
    (("--date", "0001-01-01"), "expected a date from 1970-01-01 to 9998-12-31, got '0001-01-01'"),
    (("--store", "memory://"), "expected a sqlite:// URI"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = report_cli("--policies", str(POLICIES), *args)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("day", [date(1970, 1, 1), date(9998, 12, 31)])
def test_the_first_and_last_reportable_days_render(history: Path, tmp_path: Path, day: date) -> None:
    md, _ = render_day(history, tmp_path, day)
    assert "Traceback" not in md


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_and_status_leave_a_foreign_database_unchanged(tmp_path: Path) -> None:
    foreign = tmp_path / "customers.db"
    conn = sqlite3.connect(foreign)
    conn.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); "
                       "INSERT INTO customers VALUES (1, 'alice');")
    conn.close()
    before = _digest(foreign)
    for result in (report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{foreign}", "--date", "2026-01-02",
                              "--out", str(tmp_path / "out")),
                   status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{foreign}")):
        assert result.returncode == 1, result.stderr
        assert f"{foreign} is not a history database" in result.stderr
        assert "Traceback" not in result.stderr
        assert _digest(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.db"]  # no -wal/-shm, no report


def test_report_and_status_do_not_touch_a_store_of_another_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SQLiteStore(f"sqlite:///{path}").close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = _digest(path)
    for result in (report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{path}", "--date", "2026-01-02",
                              "--out", str(tmp_path / "out")),
                   status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{path}")):
        assert result.returncode == 1 and "history schema version 99" in result.stderr, result.stderr
        assert _digest(path) == before


def test_report_and_status_leave_a_history_store_unchanged(live: Path, tmp_path: Path) -> None:
    before = _digest(live)
    assert render_day(live, tmp_path / "out", date(2026, 1, 2))
    assert status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{live}").returncode == 0
    assert _digest(live) == before


def test_a_missing_templates_directory_is_an_error(history: Path, tmp_path: Path, policy_dir: Path) -> None:
    missing = tmp_path / "tempaltes"
    result = report_cli("--policies", str(POLICIES), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"), "--templates", str(missing))
    assert result.returncode == 1
    assert f"templates directory {missing} (--templates) does not exist" in result.stderr
    (policy_dir / "report.yaml").write_text(f"kind: report\nversion: 1\ntemplates_dir: {missing}\n")
    result = report_cli("--policies", str(policy_dir), "--store", f"sqlite:///{history}", "--date", "2026-01-02",
                        "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert f"templates directory {missing} (the report policy's templates_dir) does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


def test_write_refuses_a_missing_templates_directory(history: Path, tmp_path: Path) -> None:
    with closing(open_readonly(history)) as conn:
        report = build_report(read_day(conn, DAY, "Europe/Berlin"), load_policies(POLICIES))
    with pytest.raises(ReportError, match=r"templates directory .*nope does not exist"):
        write(report, tmp_path / "out", ("markdown",), tmp_path / "nope")


def _report_with_umask(history: Path, out: Path, umask: int) -> subprocess.CompletedProcess[str]:
    code = (f"import os, sys; os.umask({umask:#o}); from engine.cli.report import main_report; "
            "sys.exit(main_report(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "--policies", str(POLICIES), "--store", f"sqlite:///{history}",
                           "--date", "2026-01-02", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
                         ids=["022", "027", "002"])
def test_report_files_get_the_mode_of_an_ordinary_file(history: Path, tmp_path: Path, umask: int,
                                                       mode: int) -> None:
    result = _report_with_umask(history, tmp_path, umask)
    assert result.returncode == 0, result.stderr
    for name in ("260102-DAILY-REPORT.md", "260102-DAILY-REPORT.html"):
        assert (tmp_path / name).stat().st_mode & 0o7777 == mode


def test_a_replaced_report_keeps_its_mode(history: Path, tmp_path: Path) -> None:
    assert _report_with_umask(history, tmp_path, 0o022).returncode == 0
    md = tmp_path / "260102-DAILY-REPORT.md"
    md.chmod(0o604)
    result = _report_with_umask(history, tmp_path, 0o077)
    assert result.returncode == 0, result.stderr
    assert md.stat().st_mode & 0o7777 == 0o604
    assert (tmp_path / "260102-DAILY-REPORT.html").stat().st_mode & 0o7777 == 0o644


def test_invalid_policies_are_reported(tmp_path: Path, policy_dir: Path, history: Path) -> None:
    (policy_dir / "report.yaml").write_text("kind: report\nversion: 1\ntop_models: 0\n")
    result = report_cli("--policies", str(policy_dir), "--store", f"sqlite:///{history}")
    assert result.returncode == 1
    assert "report.yaml:3:" in result.stderr


# -- status --------------------------------------------------------------------------------------
@pytest.fixture
def live(tmp_path: Path) -> Path:
    """A history whose engine opened gpt-4.1-mini's breaker and spent 95% of Opus's daily tokens."""
    path = tmp_path / "live.db"
    clock = FakeClock(at(2, 9))
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=SQLiteStore(f"sqlite:///{path}?flush_s=3600"))
    for _ in range(10):
        eng.record(eng.decide("L2"), Outcome(30.0, error="timeout"))
    for _ in range(20):
        eng.record(eng.decide("L2"), Outcome(800.0, 100, 50))
    eng.record(eng.decide("L4", model="claude-opus-4-1"), Outcome(9000.0, 1_500_000, 400_000))
    clock.advance(10)
    eng.close()
    return path


def test_status_as_json(live: Path) -> None:
    result = status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{live}", "--format", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    models = {m["model"]: m for m in status["models"]}
    assert status["saved_at"] == at(2, 9, 0, 10)
    mini = models["gpt-4.1-mini"]
    assert mini["breaker"] == {"state": "open", "open_until": at(2, 9, 0, 30), "consecutive_opens": 1}
    assert (mini["health"], mini["window"]["calls"], mini["window"]["success_rate"]) == ("unhealthy", 10, 0.0)
    assert models["gemini-2.5-flash"]["window"]["calls"] == 20
    assert models["gemini-2.5-flash"]["health"] == "healthy"
    opus = {b["name"]: b for b in models["claude-opus-4-1"]["budgets"]}["opus-daily"]
    assert (opus["tokens_used"], opus["used_fraction"], opus["exhausted"]) == (1_900_000, 0.95, False)
    assert {k: status["recorded"][k] for k in ("requests", "served", "refused", "attempts")} == {
        "requests": 31, "served": 21, "refused": 0, "attempts": 31}


def test_status_as_a_table(live: Path) -> None:
    result = status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{live}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("as of 2026-01-02 09:00:10 CET (instance default, written ")
    # request availability (served / requests) beside attempt availability, as the report's headline has them
    assert lines[1] == ("recorded since 2026-01-02 09:00: 31 requests, 67.74% served (0 refused); 31 attempts, "
                        "67.74% available")
    assert lines[3].split() == ["MODEL", "TIER", "HEALTH", "BREAKER", "CALLS", "SUCCESS", "P95", "BUDGETS"]
    row = next(line for line in lines if line.startswith("gpt-4.1-mini "))
    assert row.split()[:5] == ["gpt-4.1-mini", "L2", "unhealthy", "open,", "probes"]
    opus = next(line for line in lines if line.startswith("claude-opus-4-1 "))
    assert "opus-daily 95% warn" in opus


def test_status_shows_time_to_first_token_p95_of_models_that_streamed(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    clock = FakeClock(at(2, 9))
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=SQLiteStore(f"sqlite:///{path}?flush_s=3600"))
    for i in range(20):
        eng.record(eng.decide("L2"), Outcome(800.0, 100, 50, ttft_ms=100.0 + 10 * i))
    eng.record(eng.decide("L1"), Outcome(80.0, 100, 50))
    clock.advance(10)
    eng.close()
    args = ("--policies", str(POLICIES), "--store", f"sqlite:///{path}")
    result = status_cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    models = {m["model"]: m["window"] for m in json.loads(result.stdout)["models"]}
    assert models["gpt-4.1-mini"]["streamed"] == 20
    assert models["gpt-4.1-mini"]["ttft_p95_ms"] == pytest.approx(280.0, rel=0.01)
    assert (models["gpt-4.1-nano"]["streamed"], models["gpt-4.1-nano"]["ttft_p95_ms"]) == (0, None)
    lines = status_cli(*args).stdout.splitlines()
    assert lines[3].split() == ["MODEL", "TIER", "HEALTH", "BREAKER", "CALLS", "SUCCESS", "P95", "TTFT", "P95",
                                "BUDGETS"]
    assert next(line for line in lines if line.startswith("gpt-4.1-mini ")).split()[4:9] == [
        "20", "100.0%", "800", "ms", "279"]  # the stored histogram's estimate, within 1%
    assert next(line for line in lines if line.startswith("gpt-4.1-nano ")).split()[4:8] == ["1", "100.0%", "80",
                                                                                              "ms"]
    assert "—" in next(line for line in lines if line.startswith("gpt-4.1-nano ")).split()[8]


def test_status_without_a_store_is_a_clear_failure(tmp_path: Path) -> None:
    result = status_cli("--policies", str(POLICIES), "--store", f"sqlite:///{tmp_path / 'nope.db'}")
    assert result.returncode == 1 and "no history database at" in result.stderr


# -- pure parts ----------------------------------------------------------------------------------
def test_axis_bounds_are_round() -> None:
    assert [nice_max(v, integer=True) for v in (0, 0.4, 6, 18)] == [(1, 1), (1, 1), (6, 2), (20, 5)]
    assert [nice_max(v) for v in (1.16, 37_000)] == [(1.25, 0.25), (40_000, 10_000)]


def test_a_gap_in_the_data_splits_a_line() -> None:
    chart = line_chart("k", "t", "u", ["a", "b", "c", "d"], [("s", [1.0, None, 2.0, 3.0])], str)
    assert len(chart.series[0].segments) == 2 and len(chart.series[0].dots) == 3
    assert chart.series[0].segments[1].count(",") == 2


def test_budget_burn_follows_each_period(history: Path) -> None:
    with closing(connect(history, create=False)) as conn:
        policy = load_policies(POLICIES)
        report = build_report(read_day(conn, DAY, "Europe/Berlin", policy.budgets), policy)
    rows = {b.budget: b for b in report.budgets}
    assert (rows["opus-daily"].peak, rows["opus-daily"].status, rows["opus-daily"].exhausted) == (
        "100.1%", "exhausted", "15:05")  # 91 calls at 0.66 USD against 60 USD
    assert (rows["o3-hourly"].peak, rows["o3-hourly"].used) == ("1.6%", "24.00k tokens")  # 3 calls an hour
    assert rows["gpt-5-daily"].status == "ok"
