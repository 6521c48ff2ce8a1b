"""What changed in meaning between two policy sets, not in text.

Both sets are compared as compiled :class:`~engine.policy.model.PolicySet`
values, so moving an entry to another file, reformatting, reordering keys or
restating a default changes nothing, while a profile edit shows up on every
model whose breaker it changes. Each difference is a :class:`Change`: a
section (models, tiers, breakers, budgets, error classes, anomaly rules,
recommendation rules, retry, monitoring, report), the entry, the setting,
and the old and new values in the policy's own units (rates as fractions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.policy.model import Expression, PolicySet

#: Breaker settings held as percents that policies write as fractions.
_PERCENT = ("failure_rate", "slow_call_rate")


@dataclass(frozen=True, slots=True)
class Change:
    section: str
    entry: str  # the model, tier, budget, rule... ("" for a plain setting)
    setting: str  # "" when the whole entry was added or removed
    old: Any
    new: Any
    note: str = ""

    @property
    def kind(self) -> str:
        if self.setting:
            return "changed"
        return "added" if self.old is None else "removed"

    def text(self) -> str:
        where = ".".join(x for x in (self.section, self.entry, self.setting) if x)
        note = f" ({self.note})" if self.note else ""
        if self.kind == "added":
            return f"+ {where}: {_show(self.new)}{note}"
        if self.kind == "removed":
            return f"- {where}: {_show(self.old)}{note}"
        return f"~ {where}: {_show(self.old)} -> {_show(self.new)}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "section": self.section, "entry": self.entry, "setting": self.setting,
                "old": _plain(self.old), "new": _plain(self.new), "note": self.note}


def _plain(value: Any) -> Any:
    if isinstance(value, Expression):
        return value.source
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fields(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}
    return {k: _plain(v) for k, v in out.items()}


def _breaker(spec: Any) -> dict[str, Any]:
    out = _fields(spec)
    for key in _PERCENT:
        out[key] = round(out[key] / 100, 9)
    return out


def _compare(section: str, old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]],
             notes: Mapping[tuple[str, str], str] | None = None) -> list[Change]:
    changes: list[Change] = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            changes.append(Change(section, name, "", old[name], None))
        elif name not in old:
            changes.append(Change(section, name, "", None, new[name]))
        else:
            for key in old[name]:
                if old[name][key] != new[name].get(key):
                    changes.append(Change(section, name, key, old[name][key], new[name].get(key),
                                          (notes or {}).get((name, key), "")))
    return changes


def _order_note(old: list[str], new: list[str]) -> str:
    moved = [f"{m} {old.index(m) + 1} -> {new.index(m) + 1}" for m in new if m in old and old.index(m) != new.index(m)]
    parts = []
    if added := [m for m in new if m not in old]:
        parts.append("added " + ", ".join(added))
    if removed := [m for m in old if m not in new]:
        parts.append("removed " + ", ".join(removed))
    if moved:
        parts.append("moved " + ", ".join(moved))
    if old and new and old[0] != new[0]:
        parts.append(f"first choice {old[0]} -> {new[0]}")
    return "; ".join(parts)


def diff(old: PolicySet, new: PolicySet) -> list[Change]:
    """Every difference in meaning between ``old`` and ``new``, section by section."""
    changes: list[Change] = []
    changes += _compare("models", {n: _fields(m, ("name", "breaker")) for n, m in old.models.items()},
                        {n: _fields(m, ("name", "breaker")) for n, m in new.models.items()})
    both = set(old.models) & set(new.models)
    changes += _compare("breakers", {n: _breaker(old.models[n].breaker) for n in both},
                        {n: _breaker(new.models[n].breaker) for n in both})
    tiers_old = {n: _fields(t, ("name",)) for n, t in old.tiers.items()}
    tiers_new = {n: _fields(t, ("name",)) for n, t in new.tiers.items()}
    notes = {(n, "candidates"): _order_note(tiers_old[n]["candidates"], tiers_new[n]["candidates"])
             for n in set(tiers_old) & set(tiers_new)}
    changes += _compare("tiers", tiers_old, tiers_new, notes)
    if old.tier_order != new.tier_order:
        changes.append(Change("routing", "", "tier_order", old.tier_order, new.tier_order))
    changes += _compare("budgets", {b.name: _fields(b, ("name",)) for b in old.budgets},
                        {b.name: _fields(b, ("name",)) for b in new.budgets})
    changes += _compare("errors", {n: _fields(e, ("name",)) for n, e in old.error_classes.items()},
                        {n: _fields(e, ("name",)) for n, e in new.error_classes.items()})
    changes += _compare("anomalies", {r.name: _fields(r, ("name",)) for r in old.monitoring.anomalies},
                        {r.name: _fields(r, ("name",)) for r in new.monitoring.anomalies})
    changes += _compare("recommendations", {r.name: _fields(r, ("name",)) for r in old.recommendations},
                        {r.name: _fields(r, ("name",)) for r in new.recommendations})
    settings_old = {"retry": _fields(old.retry), "report": _fields(old.report),
                    "monitoring": {**_fields(old.monitoring, ("anomalies", "health")),
                                   **_fields(old.monitoring.health)},
                    "storage": {"uri": old.storage_uri}}
    settings_new = {"retry": _fields(new.retry), "report": _fields(new.report),
                    "monitoring": {**_fields(new.monitoring, ("anomalies", "health")),
                                   **_fields(new.monitoring.health)},
                    "storage": {"uri": new.storage_uri}}
    for section in settings_old:
        changes += [Change(section, "", c.setting, c.old, c.new) for c in
                    _compare(section, {"": settings_old[section]}, {"": settings_new[section]})]
    return changes


def format_changes(changes: list[Change], old_label: str, new_label: str) -> str:
    if not changes:
        return f"{old_label} and {new_label} mean the same: no change in models, tiers, breakers, budgets, " \
               f"error classes, rules or settings"
    lines = [f"{len(changes)} change{'s' if len(changes) != 1 else ''} from {old_label} to {new_label}:"]
    section = None
    for c in changes:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append("  " + c.text())
    return "\n".join(lines)
