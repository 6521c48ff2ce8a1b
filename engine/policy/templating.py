"""Message templates of recommendation rules: ``{name}`` and ``{name:spec}``.

Deliberately not ``str.format``: a placeholder is a plain name from the rule's
context and an optional numeric format spec, so a template cannot reach
attributes or items (``{x.__class__}`` is refused at load). ``{{`` and ``}}``
are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SPEC = re.compile(r"^[<>=^]?[+\- ]?#?0?[0-9]{0,3}[,_]?(\.[0-9]{1,2})?[deEfFgGn%]?$")


class TemplateError(ValueError):
    """A malformed template."""


def placeholders(template: str) -> Iterator[tuple[str, str]]:
    """Yield ``(name, spec)`` for each placeholder; raises TemplateError."""
    for m in _TOKEN.finditer(template):
        text = m.group(0)
        if text in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise TemplateError(
                f"unmatched {text!r} at character {m.start() + 1}; write {text * 2} for a literal brace")
        name, _, spec = m.group(1).partition(":")
        if not _NAME.match(name):
            raise TemplateError(f"expected a plain name in {{...}}, got {m.group(1)!r}")
        if spec and not _SPEC.match(spec):
            raise TemplateError(f"expected a number format such as .2f or ,d after ':', got {spec!r}")
        yield name, spec


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a checked template from ``values``."""

    def one(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        name, _, spec = (m.group(1) or "").partition(":")
        value = values[name]
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            return str(value)

    return _TOKEN.sub(one, template)
