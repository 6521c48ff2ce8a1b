"""Outside values shown on a terminal: control characters escaped."""

from __future__ import annotations

import os

from engine.text import printable, printable_data


def test_controls_are_shown_as_escapes() -> None:
    assert printable("a\x1b]0;t\x07b\x1b[2J\nc\rd\te\x00\x7f\x9b") == (
        "a\\x1b]0;t\\x07b\\x1b[2J\\nc\\rd\\te\\x00\\x7f\\x9b")
    assert printable("gpt-4.1 ünïcödé ✓ ok") == "gpt-4.1 ünïcödé ✓ ok"
    assert printable("x\u202eevil\u2028y") == "x\\u202eevil\\u2028y"  # reordering and line-breaking marks
    assert printable(os.fsdecode(b"bad\xff.yaml")) == "bad\\xff.yaml"  # a file name that is not UTF-8
    assert printable(3) == "3"


def test_data_is_escaped_throughout() -> None:
    assert printable_data({"m\n": ["a\x1b", ("b\x07", 1)], "n": None}) == {"m\\n": ["a\\x1b", ("b\\x07", 1)],
                                                                           "n": None}
