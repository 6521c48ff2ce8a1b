"""Where the shipped schemas, default policies and templates are.

In a source checkout (and an editable install) they are the top-level
``schemas/``, ``policies/`` and ``templates/`` folders; a wheel carries copies
under ``engine/_data/``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # the engine package


@cache
def resource_dir(name: str) -> Path:
    """The directory of shipped ``schemas``, ``policies`` or ``templates``."""
    for candidate in (_HERE / "_data" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped {name}/ directory not found beside {_HERE}")
