"""The dependency ranges in pyproject.toml are promises: CI tests their lower bounds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _lower_bounds() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    bounds: dict[str, Version] = {}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)(,.*)?", spec)
        assert m, f"every dependency needs a tested lower bound (name>=version): {spec!r}"
        bounds[m[1].lower()] = Version(m[2])
    return bounds


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = Version(version)
    return pins


def test_the_lowest_constraints_pin_every_lower_bound() -> None:
    assert _pins() == _lower_bounds()


def test_optional_extras_promise_no_less_than_the_tests_check() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["redis"] == [s for s in extras["test"] if s.startswith("redis")]
