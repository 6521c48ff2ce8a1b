"""Finding the history database a user most likely means when they name none."""

from __future__ import annotations

from pathlib import Path

#: Where the engine and ``simulate`` write their SQLite histories by default.
SEARCHED = (Path("memory/history.db"), Path("memory/simulate"))


def latest_history(root: Path = Path(".")) -> Path | None:
    """The most recently written history: ``memory/history.db`` or a ``simulate`` run's ``memory/simulate/*.db``."""
    found = [root / SEARCHED[0]] if (root / SEARCHED[0]).is_file() else []
    folder = root / SEARCHED[1]
    if folder.is_dir():
        found += [p for p in folder.glob("*.db") if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, p.name))


def not_found_hint() -> str:
    """What to do when no history exists under ./memory."""
    return ("no history database under ./memory (looked for memory/history.db and memory/simulate/*.db); "
            "pass --store sqlite:///PATH/TO/history.db, or run `policy-engine simulate` to write one")
