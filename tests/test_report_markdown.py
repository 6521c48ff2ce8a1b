"""Markdown escaping of report values, and the sandbox's bounds on what a template file may make or be."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.reporting.render import environment
from engine.store.sqlite import SQLiteStore
from tests.conftest import POLICIES
from tests.test_report import _templates, _timed_render, at, fixed_history, render_day


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.db"
    fixed_history(path)
    return path


def md(template: str, **values: object) -> str:
    env = environment()
    env.start()
    text: str = env.from_string(template).render(**values)
    return text


@pytest.mark.parametrize(("value", "shown"), [
    ("\\[x\\](javascript:alert(1))", "\\\\\\[x\\\\\\](javascript:alert(1))"),  # the backslashes stay text
    ("\\<b>", "\\\\&lt;b&gt;"),
    ("`code` span", "\\`code\\` span"),
    ("see https://evil.example/x and ftp://f.example", "see https\\://evil.example/x and ftp\\://f.example"),
    ("www.evil.example or WWW.evil.example", "www\\.evil.example or WWW\\.evil.example"),
    ("gpt-4.1-mini 12:30 a_b*c", "gpt-4.1-mini 12:30 a_b*c"),  # nothing else changes
])
def test_a_markdown_value_cannot_become_a_link_html_or_code(value: str, shown: str) -> None:
    assert md("{{ v }}", v=value) == shown
    assert md("{{ v | cell }}", v=value + "|x\ny") == shown + "\\|x y"


def test_a_table_cell_escapes_a_backslash_once(tmp_path: Path, policy_dir: Path) -> None:
    shutil.copytree(POLICIES, policy_dir, dirs_exist_ok=True)
    store = SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}?flush_s=3600")
    for name in ("\\[x\\](javascript:alert(1))", "a\\|b", "https://evil.example"):
        store.record_call(at(2, 9), "L1", name, 100.0, None, False, False, 1, 1, 0.0, False)
    store.close()
    text, _ = render_day(tmp_path / "h.db", tmp_path / "out", policies=policy_dir)
    assert "| \\\\\\[x\\\\\\](javascript:alert(1)) (not in the current policies) |" in text
    assert "| a\\\\\\|b (not in the current policies) |" in text  # "\\" then "\|": the pipe stays in the cell
    assert "| https\\://evil.example (not in the current policies) |" in text


# -- the sandbox's bounds on what a template may make, write or be --------------------------------
@pytest.mark.parametrize(("template", "message"), [
    ("{{ [1]|batch(200000000, 0)|first|length }}",
     "batch: batches of 200,000,000 items with a fill value, over the 1,000,000 a report template may build"),
    ("{{ [1]|batch(linecount=200000000, fill_with=0)|first|length }}", "batch: batches of 200,000,000 items"),
    ('{{ "{0:>{1}}".format("x", "500000000")|length }}', "str.format: a replacement field inside a format spec"),
    ('{{ "{:{}}".format("x", "500000000")|length }}', "str.format: a replacement field inside a format spec"),
    ("{% set s = ('a' * 999990)|code %}{% for i in range(100000) %}{{ s }}{% endfor %}",
     "the output is over 50,000,000 characters, the most a report template may write"),
    ("{% set s = ('a' * 999990)|code %}{% set big %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}",
     "a block's output is over 50,000,000 characters, the most a report template may write"),
    ("{% set s = ('a' * 999990)|code %}{% macro m() %}{% for i in range(100) %}{{ s }}{% endfor %}{% endmacro %}"
     "{{ m()|length }}", "a block's output is over 50,000,000 characters"),
], ids=["batch", "batch-keywords", "nested-format-width", "nested-format-auto", "output", "set-block", "macro"])
def test_a_template_over_the_new_bounds_is_refused_fast_with_its_file_and_line(history: Path, tmp_path: Path,
                                                                               template: str, message: str) -> None:
    folder = _templates(tmp_path, f"# {{{{ report.title }}}}\n\n{template}\n")
    got = _timed_render(history, folder)
    assert got["error"] is not None, "rendered"
    text, where, line = got["error"]  # type: ignore[misc]
    assert (where, line) == (str(folder / "daily-report.md.j2"), 3)
    assert text.startswith(f"{where}:3: TemplateLimitError: ") and message in text, text
    assert got["seconds"] < 2.0, got  # type: ignore[operator]


def test_blocks_format_strings_and_batches_within_bounds_still_work() -> None:
    assert md("{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}x{{ 1 }}{% endcall %} "
              "{% filter upper %}ab{% endfilter %} {% set y %}{% for i in range(3) %}{{ i }}{% endfor %}{% endset %}"
              "{{ y }}") == "[x1] AB 012"
    assert md('{{ "{0:>5}|{1}: {x:.2f}".format("a", "b", x=1.5) }} {{ [1, 2, 3]|batch(2, 0)|list }}') == (
        "    a|b: 1.50 \\[\\[1, 2\\], \\[3, 0\\]\\]")


def test_a_template_file_over_1_mib_is_refused_unread(history: Path, tmp_path: Path) -> None:
    folder = _templates(tmp_path, "")
    big = folder / "daily-report.md.j2"
    os.truncate(big, 2 << 30)  # sparse: 2 GiB that take no disk
    got = _timed_render(history, folder)
    assert got["error"] is not None, "rendered"
    assert got["error"] == [f"{big}: TemplateLimitError: a template file of more than 1,048,576 bytes (1 MiB), the "
                            "most a report template may be", str(big), None]
    assert got["seconds"] < 2.0, got  # type: ignore[operator]
