"""Markdown escaping of report values, and the sandbox's bounds on what a template file may make or be."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.reporting.render import environment
from engine.store.sqlite import SQLiteStore
from tests.conftest import POLICIES
from tests.test_report import at, render_day


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
