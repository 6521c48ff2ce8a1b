"""Outside values shown on a terminal: control characters escaped."""

from __future__ import annotations

import os

from engine.text import printable, printable_data, redact_uri


def test_controls_are_shown_as_escapes() -> None:
    assert printable("a\x1b]0;t\x07b\x1b[2J\nc\rd\te\x00\x7f\x9b") == (
        "a\\x1b]0;t\\x07b\\x1b[2J\\nc\\rd\\te\\x00\\x7f\\x9b")
    assert printable("gpt-4.1 ünïcödé ✓ ok") == "gpt-4.1 ünïcödé ✓ ok"
    assert printable("x\u202eevil\u2028y") == "x\\u202eevil\\u2028y"  # reordering and line-breaking marks
    assert printable(os.fsdecode(b"bad\xff.yaml")) == "bad\\xff.yaml"  # a file name that is not UTF-8
    assert printable(3) == "3"


def test_bidirectional_marks_are_shown_as_escapes() -> None:
    assert printable("a\u200eb\u200fc\u061cd") == "a\\u200eb\\u200fc\\u061cd"
    assert printable("\u0645\u0631\u062d\u0628\u0627") == "\u0645\u0631\u062d\u0628\u0627"  # Arabic text itself stays


def test_data_is_escaped_throughout() -> None:
    assert printable_data({"m\n": ["a\x1b", ("b\x07", 1)], "n": None}) == {"m\\n": ["a\\x1b", ("b\\x07", 1)],
                                                                           "n": None}


def test_credentials_are_redacted_whatever_the_scheme() -> None:
    assert redact_uri("rediss://admin:hunter2@cache:6380/0") == "rediss://***@cache:6380/0"
    assert redact_uri("postgres://u:hunter2@db/app?sslmode=require") == "postgres://***@db/app?sslmode=require"
    assert redact_uri("Redis://:hunter2@h") == "Redis://***@h"
    assert redact_uri("redis://u:pa/ss@word@h/0") == "redis://***@h/0"  # an unescaped '/' or '@' in the password
    assert redact_uri("u:hunter2@h:6379") == "***@h:6379"
    assert redact_uri("sqlite:///memory/history.db?flush_s=1") == "sqlite:///memory/history.db?flush_s=1"
