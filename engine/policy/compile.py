"""Compile schema-valid policy documents into one checked :class:`PolicySet`.

Named entries (models, tiers, profiles, budgets, rules, error classes) merge
across files; defining one twice is an error, as is setting a file kind's
plain setting (``retry``, ``timezone``, ...) in two files. Every cross
reference is resolved here, every expression compiled, and every problem is
collected with the location of the key or value at fault.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.policy import contexts
from engine.policy.expressions import ExprError, check_template, compile_expression, unit_warnings
from engine.policy.model import (
    BUILTIN_ERROR_CLASSES,
    AnomalyRule,
    BreakerSpec,
    BudgetSpec,
    ErrorClassSpec,
    ErrorMatch,
    Expression,
    HealthSpec,
    LeaseSpec,
    ModelSpec,
    MonitoringSpec,
    PolicySet,
    Price,
    ProviderSpec,
    RecommendationRule,
    ReportSpec,
    RetrySpec,
    TierSpec,
    TimeoutSpec,
    frozen_map,
)
from engine.policy.problems import Problem, Suggester, sort_problems
from engine.policy.yamlread import Document, Path

#: Per kind, the top-level keys that hold named entries (all others are settings).
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "models": ("models", "providers"),
    "breakers": ("profiles", "overrides"),
    "budgets": ("budgets",),
    "routing": ("tiers",),
    "errors": ("classes",),
    "monitoring": ("anomalies",),
    "recommendations": ("rules",),
    "report": (),
    "storage": (),
}

#: What one named entry of each collection is called in a message.
_ENTRY_NOUNS: dict[tuple[str, str], str] = {
    ("models", "models"): "model",
    ("breakers", "profiles"): "breaker profile",
    ("breakers", "overrides"): "breaker override of model",
    ("budgets", "budgets"): "budget",
    ("routing", "tiers"): "tier",
    ("errors", "classes"): "error class",
    ("monitoring", "anomalies"): "anomaly rule",
    ("recommendations", "rules"): "recommendation rule",
}

_BUILTIN_ERRORS = {
    "timeout": ErrorClassSpec("timeout", "failure", "any", True),
    "rate_limit": ErrorClassSpec("rate_limit", "failure", "any", True),
    "server_error": ErrorClassSpec("server_error", "failure", "any", True),
    "connection": ErrorClassSpec("connection", "failure", "any", True),
    "context_window": ErrorClassSpec("context_window", "ignore", "larger_context", False),
    "content_policy": ErrorClassSpec("content_policy", "ignore", "none", False),
    "auth": ErrorClassSpec("auth", "failure", "any", False),
    "bad_request": ErrorClassSpec("bad_request", "ignore", "none", False),
}
assert tuple(_BUILTIN_ERRORS) == BUILTIN_ERROR_CLASSES

#: Breaker settings the policy writes as fractions from 0 to 1 and BreakerSpec holds as percents.
_FRACTIONS = frozenset({"failure_rate", "slow_call_rate"})

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(value: float | str) -> float:
    """A schema-valid duration (number of seconds or ``30s``/``5m``...) in seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        assert m is not None, value
        return float(m.group(1)) * _UNIT[m.group(2)]
    return float(value)


class _Entry:
    """One named entry and the document and path it came from."""

    __slots__ = ("doc", "path", "value")

    def __init__(self, doc: Document, path: Path, value: Any) -> None:
        self.doc, self.path, self.value = doc, path, value


class Compiler:
    def __init__(self, docs: list[Document]) -> None:
        self.problems: list[Problem] = []
        self.named: dict[tuple[str, str], dict[str, _Entry]] = {}
        self.settings: dict[tuple[str, str], _Entry] = {}
        self.kinds: set[str] = set()
        # per table of known names (by identity): the table, its size then, and its suggester
        self._suggesters: dict[int, tuple[Mapping[str, Any], int, Suggester]] = {}
        for doc in docs:
            self._collect(doc)

    # -- gathering -------------------------------------------------------
    def _collect(self, doc: Document) -> None:
        kind = doc.data["kind"]
        self.kinds.add(kind)
        for key, value in doc.data.items():
            if key in ("kind", "version"):
                continue
            if key in COLLECTIONS[kind]:
                table = self.named.setdefault((kind, key), {})
                for name, item in value.items():
                    if name in table:
                        first = table[name]
                        line, col = first.doc.where(first.path, key=True)
                        self.add(doc, (key, name), "duplicate-definition",
                                 f"{_ENTRY_NOUNS.get((kind, key), key)} {name!r} is already defined at "
                                 f"{first.doc.file}:{line}:{col}; names are unique across the set's files: "
                                 f"rename or remove one of the two", key=True)
                        continue
                    table[name] = _Entry(doc, (key, name), item)
            elif (kind, key) in self.settings:
                first = self.settings[(kind, key)]
                line, col = first.doc.where(first.path, key=True)
                self.add(doc, (key,), "duplicate-singleton",
                         f"{kind} setting {key!r} is already set at {first.doc.file}:{line}:{col}", key=True)
            else:
                self.settings[(kind, key)] = _Entry(doc, (key,), value)

    def add(self, doc: Document, path: Path, code: str, message: str, *, key: bool = False) -> None:
        self.problems.append(doc.problem(path, code, message, key=key))

    def entries(self, kind: str, key: str) -> dict[str, _Entry]:
        return self.named.get((kind, key), {})

    def setting(self, kind: str, key: str, default: Any = None) -> Any:
        entry = self.settings.get((kind, key))
        return default if entry is None else entry.value

    def expr(self, entry: _Entry, path: Path, source: str, names: Mapping[str, str]) -> Expression | None:
        try:
            compiled = compile_expression(source, names)
        except ExprError as exc:
            self._expr_problem(entry, path, source, exc)
            return None
        for warning in unit_warnings(source):
            self._expr_problem(entry, path, source, warning)
        return compiled

    def _expr_problem(self, entry: _Entry, path: Path, source: str, exc: ExprError) -> None:
        where = f" (at character {exc.offset + 1})" if exc.offset else ""
        self.add(entry.doc, entry.path + path, exc.code, f"{exc.message}{where} in {source!r}")

    def zone(self, entry: _Entry, path: Path, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.add(entry.doc, entry.path + path, "unknown-timezone",
                     f"expected an IANA time zone such as UTC or Europe/Berlin, got {name!r}")
        return name

    def ref(self, entry: _Entry, path: Path, name: str, known: Mapping[str, Any], what: str,
            *, key: bool = False) -> bool:
        if name in known:
            return True
        self.add(entry.doc, entry.path + path, f"unknown-{what}",
                 f"unknown {what} {name!r}{self.suggester(known).hint(name)}", key=key)
        return False

    def suggester(self, known: Mapping[str, Any]) -> Suggester:
        """One :class:`Suggester` per table of known names, built on its first unknown reference."""
        cached = self._suggesters.get(id(known))
        if cached is None or cached[0] is not known or cached[1] != len(known):
            cached = (known, len(known), Suggester(known))
            self._suggesters[id(known)] = cached
        return cached[2]

    # -- compiling -------------------------------------------------------
    def error_classes(self) -> dict[str, ErrorClassSpec]:
        classes = dict(_BUILTIN_ERRORS)
        for name, e in self.entries("errors", "classes").items():
            base = classes.get(name, ErrorClassSpec(name))
            fields = {k: v for k, v in e.value.items() if k != "description"}
            classes[name] = dataclasses.replace(base, **fields)
        return classes

    def error_matches(self, classes: Mapping[str, ErrorClassSpec]) -> tuple[ErrorMatch, ...]:
        e = self.settings.get(("errors", "match"))
        rules = []
        for i, rule in enumerate(e.value if e is not None else ()):
            assert e is not None
            self.ref(e, (i, "class"), rule["class"], classes, "error-class")

            def many(key: str, rule: Mapping[str, Any] = rule) -> tuple[Any, ...]:
                value = rule.get(key, [])
                return tuple(value) if isinstance(value, list) else (value,)
            rules.append(ErrorMatch(rule["class"], many("status"), many("code"),
                                    tuple(m.lower() for m in many("message"))))
        return tuple(rules)

    def providers(self) -> dict[str, ProviderSpec]:
        return {name: ProviderSpec(name, e.value.get("sdk", "openai"), e.value.get("base_url"),
                                   e.value.get("api_key_env"))
                for name, e in self.entries("models", "providers").items()}

    def breaker_spec(self, entry: _Entry | None, base: BreakerSpec, over: Mapping[str, Any]) -> BreakerSpec:
        # policies write rates as fractions (0.5); the breaker compares percents of its window (50.0)
        over = {k: round(v * 100, 9) if k in _FRACTIONS else v for k, v in over.items()}
        spec = dataclasses.replace(base, **over)
        if entry is not None:  # judged only where this entry sets one of the two values
            if spec.open_for_s > spec.max_open_for_s and ("open_for_s" in over or "max_open_for_s" in over):
                key = "open_for_s" if "open_for_s" in over else "max_open_for_s"
                self.add(entry.doc, entry.path + (key,) if key in over else entry.path, "threshold-order",
                         f"expected open_for_s <= max_open_for_s, got {spec.open_for_s} > {spec.max_open_for_s}")
            if (spec.window == "count" and spec.minimum_calls > spec.window_size
                    and ("minimum_calls" in over or "window_size" in over)):
                key = "minimum_calls" if "minimum_calls" in over else "window_size"
                self.add(entry.doc, entry.path + (key,) if key in over else entry.path, "threshold-order",
                         f"expected minimum_calls <= window_size, got {spec.minimum_calls} > "
                         f"{spec.window_size}: the breaker could never judge a rate")
        return spec

    def breakers(self) -> tuple[BreakerSpec, dict[str, BreakerSpec]]:
        d_entry = self.settings.get(("breakers", "defaults"))
        defaults = self.breaker_spec(d_entry, BreakerSpec(), d_entry.value if d_entry else {})
        profiles = {"default": defaults}
        for name, e in self.entries("breakers", "profiles").items():
            profiles[name] = self.breaker_spec(e, defaults, e.value)
        return defaults, profiles

    def models(self, tiers: Mapping[str, Any]) -> dict[str, ModelSpec]:
        _, profiles = self.breakers()
        overrides = self.entries("breakers", "overrides")
        models: dict[str, ModelSpec] = {}
        for name, e in self.entries("models", "models").items():
            v = e.value
            if tiers:
                self.ref(e, ("tier",), v["tier"], tiers, "tier")
            profile = v.get("breaker", "default")
            base = profiles[profile] if self.ref(e, ("breaker",), profile, profiles, "profile") else profiles["default"]
            over = overrides.get(name)
            spec = self.breaker_spec(over, base, over.value) if over else base
            cached = v["price"].get("cached_input_per_1m")
            price = Price(float(v["price"]["input_per_1m"]), float(v["price"]["output_per_1m"]),
                          None if cached is None else float(cached))
            models[name] = ModelSpec(name, v["tier"], v["provider"], v["context_window"], price, spec,
                                     profile, v.get("max_in_flight"), v.get("enabled", True),
                                     v.get("api_model", ""), v.get("timeout_s"), v.get("ttft_timeout_s"),
                                     v.get("slow_call_on", "total"))
        for name, e in overrides.items():
            self.ref(e, (), name, models, "model", key=True)
        return models

    def tiers(self, models: Mapping[str, ModelSpec], classes: Mapping[str, Any]) -> dict[str, TierSpec]:
        entries = self.entries("routing", "tiers")
        tiers: dict[str, TierSpec] = {}
        for name, e in entries.items():
            v = e.value
            seen: set[str] = set()
            for i, cand in enumerate(v["candidates"]):
                if cand in seen:
                    self.add(e.doc, e.path + ("candidates", i), "duplicate-candidate",
                             f"model {cand!r} is listed twice in tier {name}")
                seen.add(cand)
                if models or self.entries("models", "models") or "models" in self.kinds:
                    self.ref(e, ("candidates", i), cand, models, "model")
            for i, t in enumerate(v.get("degrade_to", ())):
                self.ref(e, ("degrade_to", i), t, entries, "tier")
            strategy = v.get("strategy", "score" if "score" in v else "priority")
            score = None
            if strategy == "score" and "score" not in v:
                self.add(e.doc, e.path + ("strategy",), "missing-field",
                         "strategy 'score' needs a 'score' expression")
            elif "score" in v:
                if strategy != "score":
                    self.add(e.doc, e.path + ("score",), "invalid-value",
                             "a 'score' expression is used only with strategy: score")
                score = self.expr(e, ("score",), v["score"], contexts.score_context(classes))
            tiers[name] = TierSpec(name, tuple(dict.fromkeys(v["candidates"])), strategy, score,
                                   tuple(v.get("degrade_to", ())))
            enabled = [c for c in tiers[name].candidates if c in models and models[c].enabled]
            if models and not enabled:
                self.add(e.doc, e.path + ("candidates",), "no-candidates",
                         f"tier {name} has no enabled candidate model")
        self.cycles(tiers, entries)
        return tiers

    def cycles(self, tiers: Mapping[str, TierSpec], entries: Mapping[str, _Entry]) -> None:
        reported: set[frozenset[str]] = set()
        for start in tiers:
            stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
            while stack:
                tier, trail = stack.pop()
                for i, nxt in enumerate(tiers[tier].degrade_to):
                    if nxt not in tiers:
                        continue
                    if nxt == start:
                        loop = frozenset(trail)
                        if loop not in reported:
                            reported.add(loop)
                            e = entries[tier]
                            self.add(e.doc, e.path + ("degrade_to", i), "fallback-cycle",
                                     f"tiers degrade in a cycle: {' -> '.join(trail + (start,))}")
                    elif nxt not in trail:
                        stack.append((nxt, trail + (nxt,)))

    def budgets(self, models: Mapping[str, Any], tiers: Mapping[str, Any]) -> tuple[BudgetSpec, ...]:
        tz_entry = self.settings.get(("budgets", "timezone"))
        tz = self.zone(tz_entry, (), tz_entry.value) if tz_entry else "UTC"
        defaults = self.setting("budgets", "defaults", {})
        out = []
        for name, e in self.entries("budgets", "budgets").items():
            v = {**defaults, **e.value}
            (scope, target), = v["applies_to"].items()
            if scope == "model":
                self.ref(e, ("applies_to", "model"), target, models, "model")
            elif scope == "tier":
                if "routing" in self.kinds:  # without routing, missing-routing says it all
                    self.ref(e, ("applies_to", "tier"), target, tiers, "tier")
            else:
                target = None
            if "tokens" not in v and "cost_usd" not in v:
                self.add(e.doc, e.path, "missing-field", "a budget needs 'tokens', 'cost_usd' or both", key=True)
            if v["period"] == "rolling" and "rolling_s" not in v:
                self.add(e.doc, e.path + ("period",), "missing-field", "period 'rolling' needs 'rolling_s'")
            if v["period"] != "rolling" and "rolling_s" in v:
                self.add(e.doc, e.path + ("rolling_s",), "invalid-value",
                         f"'rolling_s' applies only to period: rolling, got period {v['period']!r}")
            warn, exhaust = v.get("warn_at", 0.9), v.get("exhaust_at", 1.0)
            if warn >= exhaust:
                at = ("warn_at",) if "warn_at" in e.value else ("exhaust_at",) if "exhaust_at" in e.value else ()
                self.add(e.doc, e.path + at, "threshold-order",
                         f"expected warn_at < exhaust_at, got {warn} >= {exhaust}", key=not at)
            zone = self.zone(e, ("timezone",), v["timezone"]) if "timezone" in e.value else tz
            out.append(BudgetSpec(name, scope, target, v["period"], v.get("tokens"), v.get("cost_usd"),
                                  warn, exhaust, v.get("rolling_s"), zone, v.get("reservation_ttl_s", 300.0),
                                  self.lease(e, defaults.get("lease"), e.value.get("lease"))))
        return tuple(out)

    def lease(self, e: _Entry, default: Any, own: Any) -> LeaseSpec | None:
        """A budget's lease: its own fields over the defaults' (``false`` on either side: exact mode)."""
        if own is False or (own is None and not default):
            return None
        fields = {**(default or {}), **(own or {})}
        spec = LeaseSpec(**fields)
        if spec.sync_ms / 1000.0 >= spec.ttl_s:
            where: tuple[Document, Path]
            if own and ("sync_ms" in own or "ttl_s" in own):  # the budget's own lease: there
                where = (e.doc, e.path + ("lease", "sync_ms" if "sync_ms" in own else "ttl_s"))
            else:  # the defaults' (once, however many budgets take it)
                d = self.settings[("budgets", "defaults")]
                where = (d.doc, d.path + ("lease", "sync_ms" if "sync_ms" in default else "ttl_s"))
            problem = where[0].problem(where[1], "invalid-value",
                                       f"expected lease sync_ms below ttl_s (a slice must be renewed before it "
                                       f"expires), got sync_ms {spec.sync_ms:g} and ttl_s {spec.ttl_s:g}")
            if problem not in self.problems:
                self.problems.append(problem)
        return spec

    def monitoring(self, classes: Mapping[str, Any]) -> MonitoringSpec:
        health = HealthSpec()
        h = self.settings.get(("monitoring", "health"))
        if h is not None:
            ctx = contexts.model_context(classes)
            health = HealthSpec(*(self.expr(h, (k,), h.value[k], ctx) if k in h.value else None
                                  for k in ("degraded_when", "unhealthy_when")))
        rules = []
        for name, e in self.entries("monitoring", "anomalies").items():
            v = e.value
            ctx = contexts.model_context(classes) if v["scope"] == "model" else contexts.tier_context(classes)
            when = self.expr(e, ("when",), v["when"], ctx)
            if when is not None:
                rules.append(AnomalyRule(name, v["scope"], when, seconds(v.get("for", 0)),
                                         v.get("severity", "warning"), v.get("description", "")))
        return MonitoringSpec(float(self.setting("monitoring", "evaluate_every_s", 10.0)),
                              float(self.setting("monitoring", "window_s", 300.0)), health, tuple(rules))

    def recommendations(self, classes: Mapping[str, Any]) -> tuple[RecommendationRule, ...]:
        ctx = contexts.daily_context(classes)
        rules = []
        for name, e in self.entries("recommendations", "rules").items():
            v = e.value
            when = self.expr(e, ("when",), v["when"], ctx)
            for key in ("message", "suggest"):
                err = check_template(v.get(key, ""), ctx)
                if err is not None:
                    self.add(e.doc, e.path + (key,), err.code, err.message)
            if when is not None:
                rules.append(RecommendationRule(name, v["scope"], when, v.get("severity", "info"),
                                                v["message"], v.get("suggest", "")))
        return tuple(rules)

    def report(self) -> ReportSpec:
        tz = self.settings.get(("report", "timezone"))
        return ReportSpec(
            output_dir=self.setting("report", "output_dir", "memory/reports"),
            templates_dir=self.setting("report", "templates_dir"),
            formats=tuple(self.setting("report", "formats", ("markdown", "html"))),
            timezone=self.zone(tz, (), tz.value) if tz else "UTC",
            top_models=self.setting("report", "top_models", 10),
        )

    def reachability(self, models: Mapping[str, ModelSpec], tiers: Mapping[str, TierSpec]) -> None:
        listed = {c for t in tiers.values() for c in t.candidates}
        for name, e in self.entries("models", "models").items():
            if tiers and name not in listed:
                self.add(e.doc, e.path, "unreachable-model",
                         f"model {name!r} is not a candidate of any tier; add it to a tier's candidates "
                         f"or remove it", key=True)

    def unused_profiles(self, models: Mapping[str, ModelSpec]) -> None:
        used = {m.breaker_profile for m in models.values()}
        for name, e in self.entries("breakers", "profiles").items():
            if name not in used:
                self.add(e.doc, e.path, "unused-profile",
                         f"breaker profile {name!r} is used by no model; name it in a model's 'breaker' "
                         f"or remove it", key=True)

    def tier_order(self, tiers: Mapping[str, TierSpec]) -> tuple[str, ...]:
        e = self.settings.get(("routing", "tier_order"))
        if e is None:
            return tuple(sorted(tiers))
        for i, t in enumerate(e.value):
            self.ref(e, (i,), t, tiers, "tier")
        return tuple(e.value) + tuple(sorted(set(tiers) - set(e.value)))

    def build(self, revision: str, source: str, files: tuple[str, ...]) -> PolicySet | None:
        classes = self.error_classes()
        tier_entries = self.entries("routing", "tiers")
        models = self.models(tier_entries)
        tiers = self.tiers(models, classes)
        if "routing" not in self.kinds:
            self.problems.append(Problem(files[0] if files else source, 1, 1, "missing-routing",
                                         "no file of kind 'routing': no tier has candidates"))
        self.reachability(models, tiers)
        policy = PolicySet(
            revision=revision,
            source=source,
            files=files,
            models=frozen_map(models),
            tiers=frozen_map(tiers),
            tier_order=self.tier_order(tiers),
            budgets=self.budgets(models, tier_entries),
            error_classes=frozen_map(classes),
            retry=RetrySpec(**self.setting("routing", "retry", {})),
            monitoring=self.monitoring(classes),
            recommendations=self.recommendations(classes),
            report=self.report(),
            storage_uri=self.setting("storage", "uri"),
            error_matches=self.error_matches(classes),
            providers=frozen_map(self.providers()),
            timeouts=TimeoutSpec(**self.setting("routing", "timeouts", {})),
        )
        self.unused_profiles(models)
        if any(p.is_error for p in self.problems):
            return None
        return dataclasses.replace(policy, warnings=tuple(sort_problems(self.problems)))
