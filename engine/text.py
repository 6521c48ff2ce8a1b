"""Outside values made safe to show: control characters escaped, credentials redacted.

Names of files, values read from policy files and from history databases
reach terminals through problem lines and the command line's output. A
control character in one of them (``ESC]0;...BEL`` retitling the window,
``ESC[2J`` clearing the screen, a newline starting what looks like another
problem line) would act instead of being seen. :func:`printable` shows each
as an escape (``\\x1b``, ``\\n``); JSON output needs none of this (JSON
escapes control characters by itself).

A URI may carry a password (``redis://user:secret@host/0``); wherever one is
echoed — an argument error, a problem about a storage policy's ``uri``, a
store's name — it goes through :func:`redact_uri` first.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable", "printable_data", "redact_uri"]

# C0 controls, DEL and C1 controls; the Unicode line and paragraph separators and the
# bidirectional marks, embeddings, overrides and isolates (they reorder what a terminal shows:
# U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069); and lone surrogates, which are how
# Python holds the bytes of a file name that are not UTF-8
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every control character shown as an escape such as ``\\x1b`` or ``\\n``."""
    return _UNSAFE.sub(_escape, str(value))


def printable_data(value: Any) -> Any:
    """``value`` (JSON-like data) with :func:`printable` applied to every string in it, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(printable_data(v) for v in value)
    return value


def redact_uri(uri: str) -> str:
    """``uri`` fit for messages and logs: any ``user:password@`` becomes ``***@``, whatever the scheme.

    ``redis://admin:secret@cache:6380/0`` becomes ``redis://***@cache:6380/0``; a
    value without ``://`` loses everything up to its ``@`` likewise. Everything up
    to the last ``@`` after the scheme goes (too much rather than too little when
    a password holds an unescaped ``/``, ``?`` or ``#``).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    if "@" not in rest:
        return uri
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"
