"""A policy set of the default set plus extra models and budgets (for the 50-model page and benchmarks)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.conftest import POLICIES


def big_policy_set(into: Path, models: int = 50, budgets: int = 20) -> Path:
    """Copy the default set into ``into`` and grow it to ``models`` models and ``budgets`` budgets."""
    shutil.copytree(POLICIES, into)
    text = (into / "models.yaml").read_text()
    have = len(re.findall(r"^  [a-z0-9][a-z0-9.-]*:\s*$", text, re.M))
    extra = [f"extra-{i:02d}" for i in range(models - have)]
    tiers = ("L1", "L2", "L3", "L4")
    lines = [f"  {name}:\n    tier: {tiers[i % 4]}\n    provider: acme\n    context_window: 128000\n"
             f"    price: {{input_per_1m: 1.0, output_per_1m: 2.0}}\n    max_in_flight: 32\n"
             for i, name in enumerate(extra)]
    (into / "models.yaml").write_text(text.rstrip("\n") + "\n" + "".join(lines))
    routing = (into / "routing.yaml").read_text()
    for t in tiers:
        mine = [n for i, n in enumerate(extra) if tiers[i % 4] == t]
        routing = re.sub(rf"(  {t}:\n(?:    .*\n)*?    candidates: \[)([^\]]*)\]",
                         lambda m, mine=mine: m[1] + m[2] + "".join(", " + n for n in mine) + "]", routing)
    (into / "routing.yaml").write_text(routing)
    btext = (into / "budgets.yaml").read_text()
    have_b = len(re.findall(r"^  [a-z0-9][a-z0-9.-]*:\s*$", btext.split("budgets:", 1)[1], re.M))
    blines = [f"  extra-{i:02d}-daily:\n    applies_to: {{model: extra-{i:02d}}}\n    period: daily\n"
              f"    tokens: 1000000\n" for i in range(min(len(extra), budgets - have_b))]
    (into / "budgets.yaml").write_text(btext.rstrip("\n") + "\n" + "".join(blines))
    return into
