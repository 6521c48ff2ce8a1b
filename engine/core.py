"""The engine inside the executor: decide which model to call, record how it went.

One :class:`PolicyEngine` holds, per model, a circuit breaker, the budget
ledgers it spends from, its in-flight count and rolling metrics, and per tier
rolling metrics. ``decide`` walks a tier's candidates (in priority order or
ranked by the tier's score), then the tiers it degrades to, and picks the
first that its breaker admits, whose budgets are not exhausted and that is
below ``max_in_flight``. ``record`` settles the call into every one of those.
All state changes happen under one lock, so counts are exact under threads.
Events are queued under that lock, in the order they happened, and handed to
the store and the listeners after it is released, by one thread at a time in
queue order (see :meth:`PolicyEngine._deliver`).

Clocks: ``clock`` gives seconds (default ``time.monotonic``). Budget periods
follow the calendar, so the engine also needs wall time: with the default
clock it is ``time.time()`` at start plus the monotonic time since; a custom
clock (``FakeClock``) is taken to return UNIX epoch seconds.

Engine time never runs backwards. When the clock reads earlier than it did
before (an epoch clock stepped back by NTP or by hand), the engine carries
on from where it was: its time becomes ``clock() + skew``, the skew growing
by each backward step, so open durations, windows, probe deadlines, anomaly
schedules and decision expiry keep elapsing at the clock's rate instead of
waiting for the clock to catch up. Budgets get the clock's own wall time
(``clock() + wall_offset``): their periods follow the calendar and a ledger
never goes back to an earlier period. A forward jump is taken as elapsed
time (it cannot be told apart from it).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any

from engine.breaker import REFUSED, CircuitBreaker
from engine.budget import BudgetLedger
from engine.errors import NoModelAvailable
from engine.events import (
    Event,
    FallbackTriggered,
    ModelTakenOut,
    PolicyReloaded,
    ReloadFailed,
    ReloadRecovered,
    RequestRefused,
    utc_iso,
)
from engine.locks import YieldingLock
from engine.metrics import RollingMetrics, summarize, summarize_live
from engine.monitor import Monitor, health
from engine.outcome import MAX_TOKENS, Decision, Outcome, token_problem
from engine.policy.loader import check, load_policies
from engine.policy.model import ModelSpec, PolicySet
from engine.store.base import Store, open_store

log = logging.getLogger("engine")

Clock = Callable[[], float]
Listener = Callable[[Event], None]

#: How often a score-ranked tier re-ranks its candidates (clock seconds).
SCORE_REFRESH_S = 1.0
#: The retry hint of a candidate skipped only for being at max_in_flight (clock seconds).
IN_FLIGHT_RETRY_S = 0.05
#: A decision never recorded is forgotten (and its in-flight slot freed) after this long.
DECISION_TTL_S = 3600.0
_METRIC_BUCKETS = 30
_new = tuple.__new__
_INF = math.inf


@functools.lru_cache(maxsize=1024)
def _until(wall: float) -> str:
    """`` until 2026-12-01T15:30:12.345Z``: cached, as every decision during an outage shows the same few."""
    return f" until {utc_iso(wall)}"


class _Model:
    """One incarnation of a model: from the reload that adds it to the one that removes it.

    A reload that keeps the model keeps this object (``update``); a model
    removed and later added back is a new incarnation. Every open decision
    holds the incarnation it was made under and settles against it, so a
    decision of an earlier incarnation never moves the new one's in-flight
    count, breaker or budgets.
    """

    __slots__ = ("spec", "breaker", "ledgers", "in_flight", "limit", "price_in", "price_out", "price_cached", "slow_ms",
                 "metrics", "removed", "refused", "out_until", "slow_on_ttft", "result", "name", "enabled")

    def __init__(self, spec: ModelSpec, ledgers: tuple[BudgetLedger, ...], breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        # the engine's lock guards every use of an in-process breaker: its result is recorded without its own
        self.result: Callable[[float, bool | None, float, int], None] | None = (
            breaker.on_result_held if type(breaker) is CircuitBreaker else None)
        self.in_flight = 0
        self.removed = False  # set when a reload takes the model out of the set
        self.refused: tuple[str | None, float | None, str] = (None, None, "")  # (state, until, why) last refused
        self.update(spec, ledgers)

    def update(self, spec: ModelSpec, ledgers: tuple[BudgetLedger, ...]) -> None:
        """Take a reloaded spec and budgets; in-flight count and breaker stay."""
        self.spec = spec
        self.name = spec.name
        self.enabled = spec.enabled
        self.ledgers = ledgers
        self.limit = spec.max_in_flight or 1 << 62
        self.price_in = spec.price.input_per_1m / 1e6  # USD per token, for record()
        self.price_out = spec.price.output_per_1m / 1e6
        cached = spec.price.cached_input_per_1m
        self.price_cached = self.price_in if cached is None else cached / 1e6
        self.slow_ms = spec.breaker.slow_call_ms
        self.slow_on_ttft = spec.slow_call_on == "ttft"
        self.out_until = -math.inf  # taken out of rotation (take_out_s) until then; a reload puts it back
        self.metrics: dict[str, RollingMetrics] = {}  # by requested tier; also in engine._metrics


#: An open decision: ``(decision, ticket, reservations, at, model, request)``, a plain tuple (made once per
#: decision): the breaker ticket, the budget reservations ``(ledger, id)``, when it was made, the model
#: incarnation it was made under, and whether it is the first attempt of a request (not a retry or a
#: fallback after a failure).
_Pending = tuple[Decision, int, tuple[tuple[BudgetLedger, int], ...], float, _Model, bool]


class PolicyEngine:
    """Decides which model to call now, from a checked :class:`PolicySet`."""

    def __init__(self, policy: PolicySet, *, clock: Clock | None = None, store: str | Store | None = None,
                 paths: Sequence[str | os.PathLike[str]] = ()) -> None:
        """``store``: a URI or a Store; by default the policy set's ``storage`` uri, else ``memory://``."""
        if store is None:
            store = policy.storage_uri or "memory://"
        self._clock: Clock = clock or time.monotonic
        self._wall_offset = time.time() - time.monotonic() if clock is None else 0.0
        # engine time = clock() + _skew (see the module doc); wall time = engine time + _wall_shift
        self._skew = 0.0
        self._wall_shift = self._wall_offset
        self._raw = self._clock()  # the clock's last reading
        self._lock = YieldingLock()
        self._listeners: list[Listener] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        # breakers and ledgers append their events here; taken under the lock into the outbox
        self._sink: list[Event] = []
        self._outbox: deque[Event] = deque()  # events in the order they happened, not yet delivered
        self._delivering = threading.Lock()  # held by the one thread delivering the outbox
        self._paths = tuple(paths)
        self._reload_lock = threading.Lock()
        self._failing: tuple[float, int] | None = None  # (first failure, failures) since the last good reload
        self.store: Store = open_store(store) if isinstance(store, str) else store
        now = self._now()
        self._reload_status: dict[str, Any] = {
            "loaded_at": now, "last_attempt_at": None, "last_success_at": None, "last_error": None,
            "last_error_at": None, "attempts": 0, "successes": 0, "failures": 0}
        self._install(policy, now)
        self._history = self.store if getattr(self.store, "keeps_history", False) else None
        saved = self.store.load_state()
        if saved:
            self.restore_state(saved)
        self.store.attach(self.export_state)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  clock: Clock | None = None, store: str | Store | None = None) -> PolicyEngine:
        """Load, check and run the policy set at ``path``; raises PolicyError."""
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        return cls(load_policies(paths), clock=clock, store=store, paths=paths)

    # -- time ------------------------------------------------------------------
    def _now(self) -> float:
        """Engine time now: the clock, carried on past any backward step (lock held)."""
        raw = self._clock()
        if raw < self._raw:
            self._stepped_back(raw)
        self._raw = raw
        return raw + self._skew

    def _stepped_back(self, raw: float) -> None:
        """The clock reads ``raw``, earlier than its last reading: carry engine time on from there."""
        step = self._raw - raw
        self._skew += step
        self._wall_shift = self._wall_offset - self._skew  # wall time stays the clock's own
        for model in getattr(self, "_models", {}).values():
            model.refused = (None, None, "")  # its reason shows a wall-clock time: made again
        stepped = getattr(self.store, "clock_stepped", None)
        if stepped is not None:  # a store that turns engine time into wall time must follow
            stepped(self._skew, self._wall_shift)
        log.log(logging.WARNING if step >= 1.0 else logging.DEBUG,
                "the clock stepped back %.3f s; engine time carries on (now %.3f s ahead of the clock)",
                step, self._skew)

    def _time(self) -> float:
        """Engine time without taking the lock (for waits and latencies measured around calls)."""
        return self._clock() + self._skew

    # -- policy installation -------------------------------------------------
    def _install(self, policy: PolicySet, now: float) -> None:
        """Make ``policy`` the set in force, carrying state over from the one before.

        Kept for models and budgets that still exist: breaker state (the new
        thresholds apply from the next call), budget usage and reservations
        (unless the budget's period, time zone or rolling length changed), in-
        flight counts, rolling metrics (unless the monitoring window changed)
        and active anomalies. Removed models and budgets are dropped; a limit
        lowered below current usage exhausts at once. Called with the lock
        held (or before the engine is shared).
        """
        old_models: Mapping[str, _Model] = getattr(self, "_models", {})
        old_ledgers: Mapping[str, BudgetLedger] = getattr(self, "_ledgers", {})
        wall = now + self._wall_shift
        ledgers: dict[str, BudgetLedger] = {}
        moved: dict[int, BudgetLedger] = {}  # old ledger -> the ledger that carries its state
        for b in policy.budgets:
            prev = old_ledgers.get(b.name)
            if prev is not None and prev.spec == b:
                ledgers[b.name] = moved[id(prev)] = prev  # unchanged: the very same ledger
                continue
            ledgers[b.name] = self.store.make_ledger(b, self._sink)
            if prev is not None:
                try:
                    ledgers[b.name] = moved[id(prev)] = self.store.make_ledger(b, self._sink, prev.to_dict())
                except ValueError:  # a new period kind: usage starts afresh
                    pass
        models: dict[str, _Model] = {}
        carried: list[tuple[_Model, ModelSpec, tuple[BudgetLedger, ...]]] = []  # updated once all is built
        for name, spec in policy.models.items():
            own = tuple(ledgers[b.name] for b in policy.budgets_for(name))
            prev_model = old_models.get(name)
            if prev_model is None:
                models[name] = _Model(spec, own, self.store.make_breaker(name, spec.breaker, self._sink))
            else:  # the same incarnation: in-flight count and breaker carry over
                models[name] = prev_model
                carried.append((prev_model, spec, own))
        for key, pending in list(self._pending.items()):
            if pending[2]:  # reservations only follow ledgers whose state carried over
                kept = tuple((moved[id(led)], rid) for led, rid in pending[2] if id(led) in moved)
                self._pending[key] = (pending[0], pending[1], kept, pending[3], pending[4], pending[5])
        old_metrics: Mapping[tuple[str, str], RollingMetrics] = getattr(self, "_metrics", {})
        previous: PolicySet | None = getattr(self, "policy", None)
        same_window = previous is not None and previous.monitoring.window_s == policy.monitoring.window_s
        monitor = Monitor(policy.monitoring, now)
        old_monitor: Monitor | None = getattr(self, "_monitor", None)
        if old_monitor is not None:
            self._sink.extend(monitor.carry_over(old_monitor, now, set(policy.models), set(policy.tiers)))
        for st, spec, own in carried:
            if st.spec.breaker != spec.breaker:
                st.breaker.reconfigure(spec.breaker, now)  # the same breaker, reconfigured
            st.update(spec, own)
        for gone in set(old_models) - set(models):
            old_models[gone].removed = True  # its open decisions settle against it, as it was
        self.policy = policy
        self._models = models
        self._ledgers = ledgers
        # rolling metrics per (requested tier, model): one record per call serves both views
        self._metrics: dict[tuple[str, str], RollingMetrics] = {
            k: m for k, m in old_metrics.items() if same_window and k[0] in policy.tiers and k[1] in models}
        for (tier, name), m in self._metrics.items():
            models[name].metrics[tier] = m
        # per model and per tier: the series summed, and its last summary with their versions
        self._series: dict[tuple[int, str], list[RollingMetrics]] = {}
        self._series_of = -1  # len(self._metrics) when _series was built; metrics are only added between reloads
        self._summaries: dict[tuple[int, str], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        rule_names = frozenset().union(*(r.when.names for r in policy.monitoring.anomalies if r.when))
        # whether any anomaly rule reads in_flight, budget_used, breaker_open, open_breakers
        self._rule_reads = tuple(n in rule_names for n in ("in_flight", "budget_used", "breaker_open", "open_breakers"))
        self._classes = policy.error_classes
        self._take_out = {n: c.take_out_s for n, c in policy.error_classes.items() if c.take_out_s}
        old_ttft: Mapping[tuple[str, str], RollingMetrics] = getattr(self, "_ttft", {})
        self._ttft: dict[tuple[str, str], RollingMetrics] = {
            k: m for k, m in old_ttft.items() if same_window and k[0] in policy.tiers and k[1] in models}
        verdicts = {"failure": True, "success": False, "ignore": None}
        self._failed_of: dict[str | None, bool | None] = {
            name: verdicts[c.breaker] for name, c in policy.error_classes.items()}
        self._failed_of[None] = False
        self._chains = {t: self._chain(policy, t) for t in policy.tiers}
        # the same chains with each model's incarnation: what decide() walks
        self._chain_plans = {t: tuple((tt, models[m]) for tt, m in chain) for t, chain in self._chains.items()}
        self._revision = policy.revision
        self._scored = frozenset(t for t, spec in policy.tiers.items() if spec.strategy == "score")
        self._plans = {t: plan for t, plan in self._chain_plans.items() if t not in self._scored}
        self._ranked: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._monitor = monitor
        bind = getattr(self.store, "bind_policy", None)
        if bind is not None:  # a shared store checks that one policy set uses its namespace
            bind(policy)
        for ledger in ledgers.values():
            ledger.evaluate(wall)  # a lowered limit takes effect (and emits) now

    # -- reloading -------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read, re-check and swap in the policy files; True when a new set took effect.

        An invalid set never takes effect: the set in force stays, and a
        ReloadFailed event carries every problem with file:line:col. A set
        whose content is unchanged is not swapped (no event).
        """
        if not self._paths:
            raise RuntimeError("this engine was not loaded from files: nothing to reload")
        with self._reload_lock:  # one reload at a time: an older read never replaces a newer one
            changed = self._reload()
        # delivered once the reload lock is let go: a listener may call reload() itself, and the events
        # other threads queued meanwhile are delivered here too
        self._deliver()
        return changed

    @property
    def paths(self) -> tuple[str | os.PathLike[str], ...]:
        """The policy files or directories this engine was loaded from."""
        return self._paths

    def _reload(self) -> bool:
        policy, problems = check(self._paths)
        events: list[Event] = []
        with self._lock:
            now = self._now()
            status = self._reload_status
            status["attempts"] += 1
            status["last_attempt_at"] = now
            if policy is None:  # warnings alone never stop a reload
                status["failures"] += 1
                status["last_error"] = [p.format() for p in problems]
                status["last_error_at"] = now
                events.append(ReloadFailed(now, self.policy.revision, tuple(problems)))
                since, count = self._failing or (now, 0)
                self._failing = (since, count + 1)
                changed = False
            elif policy.revision == self.policy.revision:
                status["last_error"] = None  # an invalid edit reverted: nothing is wrong any more
                changed = False
            else:
                previous = self.policy
                self._install(policy, now)
                status["successes"] += 1
                status["loaded_at"] = status["last_success_at"] = now
                status["last_error"] = None
                events.append(PolicyReloaded(
                    now, policy.revision, previous.revision, policy.files,
                    tuple(sorted(set(policy.models) - set(previous.models))),
                    tuple(sorted(set(previous.models) - set(policy.models)))))
                changed = True
            if policy is not None and not problems and self._failing is not None:
                events.append(ReloadRecovered(now, self.policy.revision, self._failing[1], self._failing[0]))
                self._failing = None
            self._post(events)
        return changed

    def watch(self, **options: Any) -> Any:
        """Start watching the policy files; reloads on every saved change.

        Returns a :class:`engine.reload.PolicyWatcher` (a context manager:
        ``with eng.watch(): ...``; or call its ``stop()``). Options are those
        of :func:`engine.reload.watch` (``poll``, ``debounce_s``).
        """
        from engine import reload

        return reload.watch(self, **options)

    def reload_status(self) -> dict[str, Any]:
        """Revision in force, when it was loaded, and the outcome of reload attempts.

        Times (``*_at``) are engine-clock seconds; each has a ``*_time`` twin in UTC (ISO 8601).
        """
        with self._lock:
            out = {"revision": self.policy.revision, "files": list(self.policy.files), **self._reload_status,
                   "last_error": list(self._reload_status["last_error"] or []) or None}
            for key in ("loaded_at", "last_attempt_at", "last_success_at", "last_error_at"):
                at = out[key]
                out[key[:-3] + "_time"] = None if at is None else utc_iso(at + self._wall_shift)
            return out

    def wall_time(self, at: float) -> float:
        """Engine-clock seconds ``at`` (event times, ``Decision.at``, ``retry_at``) as wall-clock epoch seconds."""
        return at + self._wall_shift

    @staticmethod
    def _chain(policy: PolicySet, tier: str) -> tuple[tuple[str, str], ...]:
        """``(tier, model)`` for the tier and then every tier it degrades to, breadth first."""
        order, queue, seen = [], [tier], {tier}
        while queue:
            t = queue.pop(0)
            order.append(t)
            for nxt in policy.tiers[t].degrade_to:
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        out: list[tuple[str, str]] = []
        used: set[str] = set()
        for t in order:
            for m in policy.tiers[t].candidates:
                if m not in used and policy.models[m].enabled:
                    used.add(m)
                    out.append((t, m))
        return tuple(out)

    # -- deciding ------------------------------------------------------------
    def _order(self, tier: str, now: float) -> Sequence[tuple[str, str]]:
        chain = self._chains[tier]
        spec = self.policy.tiers[tier]
        if spec.strategy != "score":
            return chain
        cached = self._ranked.get(tier)
        if cached is None or now - cached[0] >= SCORE_REFRESH_S:
            ranked = self._rank(tier, spec.candidates, now)
            cached = (now, ranked)
            self._ranked[tier] = cached
        ranked_set = set(cached[1])
        return [(tier, m) for m in cached[1]] + [c for c in chain if c[1] not in ranked_set]

    def _rank(self, tier: str, candidates: Sequence[str], now: float) -> tuple[str, ...]:
        score = self.policy.tiers[tier].score
        scored = []
        for priority, name in enumerate(candidates):
            if not self.policy.models[name].enabled:
                continue
            names = self._model_names(name, now)
            names["priority"] = priority
            try:
                value = float(score(names)) if score is not None else 0.0
            except (ArithmeticError, TypeError, ValueError):
                value = float("-inf")
            scored.append((-value, priority, name))
        return tuple(name for _, _, name in sorted(scored))

    def decide(self, tier: str, *, model: str | None = None, estimated_tokens: int | None = None,
               exclude: Collection[str] = (), min_context: int | None = None,
               reason: str | None = None, retry_of: Decision | None = None,
               new_request: bool | None = None) -> Decision:
        """Choose a model for ``tier`` now; raises NoModelAvailable when none can serve.

        ``model`` pins one model (its breaker, budgets and in-flight limit still
        apply). ``exclude`` skips models already tried; ``min_context`` skips
        models whose context window is not larger; ``reason`` names why a
        fallback is being made (for the FallbackTriggered event). ``retry_of``
        asks for the same model as an earlier decision, as a retry of it: same
        tier, same fallback status, no new FallbackTriggered.

        ``new_request``: this decision starts a request (its first attempt),
        which is what request availability counts (served requests / requests:
        every successful attempt serves one request). By default a decision
        with no ``exclude``, ``reason`` or ``retry_of`` starts one. A new
        request that finds no model emits :class:`RequestRefused`.
        """
        plan = self._plans.get(tier)  # None for a score-ranked tier (ranked when deciding) or an unknown one
        if plan is None and tier not in self._scored:
            raise KeyError(f"unknown tier {tier!r}; expected one of {', '.join(self.policy.tier_order)}")
        if estimated_tokens is not None and (problem := token_problem("estimated_tokens", estimated_tokens)):
            raise ValueError(problem)
        if retry_of is not None:
            model = retry_of.model
        if new_request is None:
            new_request = retry_of is None and not exclude and reason is None
        if model is not None and model not in self._models:
            raise KeyError(f"unknown model {model!r}")
        simple = not exclude and min_context is None  # a candidate may then be judged on its state alone
        events: list[Event] | None = None  # made when there is one: most decisions have none
        skipped: list[tuple[str, str]] | None = None  # made at the first skip: most decisions skip none
        decision: Decision | None = None
        lock = self._lock
        if not lock.try_acquire(False):
            lock.acquire()
        try:
            raw = self._clock()  # engine time, inlined from _now(): this is the hot path
            if raw < self._raw:
                self._stepped_back(raw)
            self._raw = raw
            now = raw + self._skew
            if retry_of is not None:
                order: Sequence[tuple[str, _Model]] = ((retry_of.tier, self._models[retry_of.model]),)
            elif model is not None:
                pinned = self._models[model]
                order = (next((c for c in self._chain_plans[tier] if c[1] is pinned), (pinned.spec.tier, pinned)),)
            elif plan is None:
                models = self._models
                order = [(t, models[name]) for t, name in self._order(tier, now)]
            else:
                order = plan
            retry_at: float | None = None
            for t, st in order:
                # _admit written out for a candidate that is enabled, in rotation and below its limit
                if simple and st.in_flight < st.limit and st.out_until <= now and st.enabled:
                    ticket = st.breaker.try_acquire(now)
                    if not ticket:  # REFUSED
                        why, ticket, reservations, recovers = self._refused(st, now)
                    elif not st.ledgers:
                        why, reservations = None, ()
                    else:
                        wall = now + self._wall_shift
                        for ledger in st.ledgers:
                            if ledger.refusal(wall) is not None:
                                why, ticket, reservations, recovers = self._budgets(st, now, ticket, estimated_tokens)
                                break
                        else:
                            why = None
                            if estimated_tokens:
                                cost = st.spec.price.cost(0, estimated_tokens)  # priced as output: an upper bound
                                reservations = tuple((ledger, ledger.reserve(wall, estimated_tokens, cost))
                                                     for ledger in st.ledgers)
                            else:
                                reservations = ()
                else:
                    why, ticket, reservations, recovers = self._admit(st, now, estimated_tokens, exclude, min_context)
                if why is not None:
                    if skipped is None:
                        skipped = []
                    skipped.append((st.name, why))
                    if recovers is not None and (retry_at is None or recovers < retry_at):
                        retry_at = recovers
                    continue
                st.in_flight += 1
                if retry_of is not None:
                    is_fallback = retry_of.is_fallback
                else:
                    is_fallback = skipped is not None or t != tier or reason is not None
                    if is_fallback:
                        events = []
                        if self._sink:  # what the candidates' checks emitted happened first
                            self._take_events(events)
                        events.append(FallbackTriggered(
                            now, tier, skipped[0][0] if skipped else None, st.name, t,
                            reason or (skipped[0][1] if skipped else "degraded")))
                # tuple.__new__ builds the named tuples without their Python-level __new__ (the hot path)
                did = next(self._ids)
                decision = _new(Decision, (st.name, t, is_fallback, tuple(skipped) if skipped else (),
                                           did, now, self._revision, tier, estimated_tokens, self))
                self._pending[did] = (decision, ticket, reservations, now, st, new_request)
                if now >= self._monitor.next_at:
                    if events is None:
                        events = []
                    self._tick(now, events)
                break
            if decision is None and new_request:
                if events is None:
                    events = []
                events.append(RequestRefused(now, tier, tuple(skipped or ()), retry_at))
            if self._sink:
                if events is None:
                    events = []
                self._take_events(events)
            if events:
                self._outbox.extend(events)
        finally:
            lock.release()
        if events:
            self._deliver()
        if decision is None:
            raise NoModelAvailable(tier, skipped or [], retry_at,
                                   None if retry_at is None else retry_at + self._wall_shift)
        return decision

    def _admit(self, st: _Model, now: float, estimated: int | None, exclude: Collection[str],
               min_context: int | None) -> tuple[str | None, int, tuple[tuple[BudgetLedger, int], ...], float | None]:
        """Take ``st``'s breaker ticket and budget reservations, or say why not and when it may recover.

        Returns ``(why_not, ticket, reservations, recovers_at)``; lock held.
        """
        why: str | None = None
        if (exclude or min_context is not None or st.in_flight >= st.limit or not st.spec.enabled
                or st.out_until > now):
            why = self._skip(st, st.spec.name, exclude, min_context, now)
        if why is not None:
            # only a full model recovers by itself: a slot frees when a call in flight is recorded
            busy = why.startswith("at max_in_flight")
            return why, 0, (), now + IN_FLIGHT_RETRY_S if busy else None
        ticket = st.breaker.try_acquire(now)
        if ticket == REFUSED:
            return self._refused(st, now)
        if not st.ledgers:
            return None, ticket, (), None
        return self._budgets(st, now, ticket, estimated)

    def _budgets(self, st: _Model, now: float, ticket: int, estimated: int | None
                 ) -> tuple[str | None, int, tuple[tuple[BudgetLedger, int], ...], float | None]:
        """:meth:`_admit`'s budgets, once the breaker gave ``ticket``: reserve, or give it back and say why not."""
        why: str | None = None
        wall = now + self._wall_shift
        resets: float | None = None
        for ledger in st.ledgers:  # every budget is judged before any reservation is made
            refused = ledger.refusal(wall)
            if refused is not None:
                if why is None:
                    why = refused[0]
                at = refused[1]
                if at is not None and (resets is None or at < resets):
                    resets = at
        if why is None:
            if not estimated:
                return None, ticket, (), None
            cost = st.spec.price.cost(0, estimated)  # priced as output: an upper bound
            return None, ticket, tuple((ledger, ledger.reserve(wall, estimated, cost)) for ledger in st.ledgers), None
        st.breaker.release(now, ticket)
        return why, 0, (), None if resets is None else resets - self._wall_shift

    def _refused(self, st: _Model, now: float) -> tuple[str, int, tuple[tuple[BudgetLedger, int], ...], float | None]:
        """Why ``st``'s breaker refused a call at ``now``, and when it may admit one (lock held)."""
        state, until = st.breaker.refusal(now)
        if until is not None and not math.isfinite(until):
            until = None  # forced open: recovers only when released
        cached = st.refused
        if cached[0] == state and cached[1] == until:
            return cached[2], 0, (), until
        why = f"breaker {state}" + (_until(until + self._wall_shift) if until else "")  # wall-clock time
        st.refused = (state, until, why)
        return why, 0, (), until

    @staticmethod
    def _skip(st: _Model, name: str, exclude: Collection[str], min_context: int | None,
              now: float) -> str | None:
        if name in exclude:
            return "already tried in this call"
        if not st.spec.enabled:
            return "disabled in the policy"
        if st.out_until > now:
            return f"taken out of rotation until t={st.out_until:.3f}"
        if min_context is not None and st.spec.context_window <= min_context:
            return f"context window {st.spec.context_window} is not larger than {min_context}"
        if st.in_flight >= st.limit:
            return f"at max_in_flight ({st.limit})"
        return None

    # -- recording -----------------------------------------------------------
    def record(self, decision: Decision, outcome: Outcome) -> None:
        """Settle one decision with the call's outcome; raises ValueError on bad input."""
        if type(decision) is not Decision or decision.owner is not self:
            raise ValueError("decision was not made by this engine")
        classes = self._classes
        if type(outcome) is Outcome:
            latency, tin, tout, error = outcome.latency_ms, outcome.input_tokens, outcome.output_tokens, outcome.error
            ttft, cached = outcome.ttft_ms, outcome.cached_input_tokens
            # Outcome.problem's common case written out (the hot path); anything else asks it
            if not (type(latency) is float and 0.0 <= latency < _INF and type(tin) is int and 0 <= tin < MAX_TOKENS
                    and type(tout) is int and 0 <= tout < MAX_TOKENS and outcome.retry_after_s is None
                    and ttft is None and cached == 0
                    and (error is None or (type(error) is str and error in classes))):
                problem = outcome.problem(classes)
                if problem is not None:
                    raise ValueError(problem)
        elif isinstance(outcome, Outcome):
            problem = outcome.problem(classes)
            if problem is not None:
                raise ValueError(problem)
            latency, tin, tout, error = outcome.latency_ms, outcome.input_tokens, outcome.output_tokens, outcome.error
            ttft, cached = outcome.ttft_ms, outcome.cached_input_tokens
        else:
            raise ValueError(f"expected an Outcome, got {type(outcome).__name__}")
        events: list[Event] | None = None  # made when there is one: most records have none
        lock = self._lock
        if not lock.try_acquire(False):
            lock.acquire()
        try:
            pending_of = self._pending
            did = decision.id
            try:
                pending = pending_of.pop(did, None)  # put back below if it is not settled after all
            except TypeError:  # an unhashable id: not one this engine handed out
                raise ValueError(self._mismatch(decision)) from None
            if pending is None:
                raise ValueError(f"decision {did} ({decision.model}) was already recorded or has expired")
            handed, ticket, reservations, _, st, request = pending
            if handed is not decision:  # settle only what was handed out, as it was handed out
                if handed != decision:
                    pending_of[did] = pending
                    raise ValueError(self._mismatch(decision))
                decision = handed
            if self._classes is not classes:  # a reload changed the error classes since the check above
                problem = outcome.problem(self._classes)
                if problem is not None:
                    pending_of[did] = pending
                    raise ValueError(problem)
            raw = self._clock()  # engine time, inlined from _now()
            if raw < self._raw:
                self._stepped_back(raw)
            self._raw = raw
            now = raw + self._skew
            st.in_flight -= 1
            if st.removed:  # the model left the policy set in a reload: settle what still exists
                self._settle_gone(decision, pending, outcome, now)
            else:
                # True, False, or None for an ignored class
                failed = False if error is None else self._failed_of[error]
                judged = latency if ttft is None or not st.slow_on_ttft else ttft
                result = st.result
                if result is not None:
                    result(now, failed, judged, ticket)
                else:
                    st.breaker.on_result(now, failed, judged, ticket=ticket)
                if error is not None and error in self._take_out:
                    until = now + self._take_out[error]
                    if until > st.out_until:
                        st.out_until = until
                        events = [ModelTakenOut(now, decision.model, error, until)]
                cost = tin * st.price_in + tout * st.price_out
                if cached:
                    cost -= cached * (st.price_in - st.price_cached)
                if st.ledgers:
                    wall = now + self._wall_shift
                    if reservations:
                        for ledger, rid in reservations:
                            ledger.settle(wall, rid, tin + tout, cost)
                    else:
                        for ledger in st.ledgers:
                            ledger.settle(wall, None, tin + tout, cost)
                slow = judged > st.slow_ms
                tier = decision.requested_tier
                if ttft is not None:
                    self._ttft_of(tier, decision.model).record(now, ttft, None, False, False, 0, 0, 0.0, False)
                metrics = st.metrics.get(tier)
                if metrics is None:
                    metrics = st.metrics[tier] = self._metrics[(tier, decision.model)] = RollingMetrics(
                        self.policy.monitoring.window_s, _METRIC_BUCKETS)
                metrics.record(now, latency, error, failed is True, slow, tin, tout, cost, decision.is_fallback,
                               request)
                if self._history is not None:
                    self._history.record_call(now + self._wall_shift, tier, decision.model, latency, error,
                                              failed is True, slow, tin, tout, cost, decision.is_fallback,
                                              request, ttft)
            if now >= self._monitor.next_at:
                if events is None:
                    events = []
                self._tick(now, events)
            if self._sink:
                if events is None:
                    events = []
                self._take_events(events)
            if events:
                self._outbox.extend(events)
        finally:
            lock.release()
        if events:
            self._deliver()

    def _ttft_of(self, tier: str, model: str) -> RollingMetrics:
        m = self._ttft.get((tier, model))
        if m is None:
            m = self._ttft[(tier, model)] = RollingMetrics(self.policy.monitoring.window_s, _METRIC_BUCKETS)
        return m

    def _ttft_summary(self, model: str, now: float) -> dict[str, Any]:
        """Time to first token of ``model``'s streamed calls: p50/p95/p99 overall and per requested tier."""
        def quantiles(ms: list[RollingMetrics]) -> dict[str, Any]:
            names = summarize([m.live(now) for m in ms])
            return {k: names[k] for k in ("calls", "p50_ms", "p95_ms", "p99_ms")}
        mine = {t: m for (t, name), m in self._ttft.items() if name == model}
        return {**quantiles(list(mine.values())), "by_tier": {t: quantiles([m]) for t, m in mine.items()}}

    @staticmethod
    def _mismatch(decision: Decision) -> str:
        return (f"decision {decision.id!r} ({decision.model!r}) does not match the decision this engine handed "
                "out: its fields were changed; record the Decision that decide() returned")

    def _settle_gone(self, decision: Decision, pending: _Pending, outcome: Outcome, now: float) -> None:
        """Spend a removed incarnation's recorded usage from the budgets that still exist (lock held).

        Its breaker, metrics and model budgets went with it; a model of the same
        name added back since is another incarnation and is not touched.
        """
        _, _, reservations, _, gone, _ = pending
        tokens = outcome.input_tokens + outcome.output_tokens
        cost = outcome.input_tokens * gone.price_in + outcome.output_tokens * gone.price_out
        cost -= outcome.cached_input_tokens * (gone.price_in - gone.price_cached)
        wall = now + self._wall_shift
        if reservations:
            for ledger, rid in reservations:
                ledger.settle(wall, rid, tokens, cost)
            return
        for ledger in self._ledgers.values():
            spec = ledger.spec
            if spec.scope == "global" or (spec.scope == "tier" and spec.target == decision.requested_tier):
                ledger.settle(wall, None, tokens, cost)

    # -- the decide / call / record loop ----------------------------------------
    def call(self, tier: str, fn: Callable[..., Any], *, estimated_tokens: int | None = None,
             classifier: Any = None, tokens: Any = None, sleep: Any = None, rng: Any = None,
             deadline_s: float | None = None, exclude: Collection[str] = ()) -> Any:
        """Call ``fn(model)`` through decide/record, retrying and falling back per policy.

        See :mod:`engine.calling` for the loop and :mod:`engine.classify` for
        how exceptions map to error classes.
        """
        from engine import calling

        return calling.call(self, tier, fn, estimated_tokens=estimated_tokens, classifier=classifier,
                            tokens=tokens, sleep=sleep, rng=rng, deadline_s=deadline_s, exclude=exclude)

    async def acall(self, tier: str, fn: Callable[..., Any], *, estimated_tokens: int | None = None,
                    classifier: Any = None, tokens: Any = None, sleep: Any = None, rng: Any = None,
                    deadline_s: float | None = None, exclude: Collection[str] = ()) -> Any:
        """``call`` for coroutine functions: ``await fn(model)``."""
        from engine import calling

        return await calling.acall(self, tier, fn, estimated_tokens=estimated_tokens, classifier=classifier,
                                   tokens=tokens, sleep=sleep, rng=rng, deadline_s=deadline_s, exclude=exclude)

    # -- events --------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _take_events(self, events: list[Event]) -> None:
        """Move what breakers and ledgers emitted into ``events`` (lock held)."""
        sink = self._sink
        if sink:
            events.extend(sink)
            sink.clear()

    def _post(self, events: list[Event]) -> None:
        """Queue ``events`` and then what breakers and ledgers emitted since, for delivery (lock held)."""
        self._take_events(events)
        self._outbox.extend(events)

    def _deliver(self) -> None:
        """Hand the queued events to the store and every listener, oldest first.

        Events are queued under the engine lock in the order they happened;
        one thread at a time delivers them, so every listener sees one order.
        A thread that finds another delivering leaves its events to it: the
        deliverer looks at the queue again after letting go, so nothing is
        left behind. A listener that calls into the engine sees the events of
        that call once it has returned.
        """
        outbox, gate = self._outbox, self._delivering
        while outbox:
            if not gate.acquire(False):
                return  # the thread delivering now delivers these too
            try:
                while outbox:
                    event = outbox.popleft()
                    if not event.WALL_CLOCK_AT and event.wall != event.wall:  # NaN: not stamped yet
                        object.__setattr__(event, "wall", event.at + self._wall_shift)
                    self.store.append_event(event)
                    for listener in tuple(self._listeners):
                        try:
                            listener(event)
                        except Exception:  # a listener never breaks a decision
                            log.exception("event listener %r raised on %r", listener, event)
            finally:
                gate.release()

    # -- monitoring ----------------------------------------------------------
    def tick(self) -> list[Event]:
        """Run what is due now: anomaly rules and expiry of decisions never recorded."""
        events: list[Event] = []
        with self._lock:
            now = self._now()
            self._tick(now, events)
            self._post(events)
        self._deliver()
        return events

    def _tick(self, now: float, events: list[Event]) -> None:
        """Expire decisions never recorded; run the anomaly rules if due, adding their events (lock held)."""
        tick = getattr(self.store, "tick", None)
        if tick is not None:  # a shared store's due work (leased budgets report their usage)
            tick(now + self._wall_shift)
        stale = [p for p in self._pending.values() if now - p[3] > DECISION_TTL_S]
        for p in stale:
            del self._pending[p[0].id]
            p[4].in_flight -= 1
        if not self._monitor.due(now):
            return
        found = self._monitor.evaluate(now, {"model": self._models, "tier": self.policy.tiers},
                                       lambda scope, target: self._monitor_version(scope, target, now),
                                       lambda scope, target, reads: self._monitor_names(scope, target, reads, now))
        self._take_events(events)  # transitions the rules' reads applied happened before their verdicts
        events.extend(found)

    def _model_names(self, name: str, now: float) -> dict[str, Any]:
        st = self._models[name]
        names = self._summary(now, (1, name))
        wall = now + self._wall_shift
        state = st.breaker.state(now)
        names.update(model=name, tier=st.spec.tier, provider=st.spec.provider, in_flight=st.in_flight,
                     budget_used=max((led.used_fraction(wall) for led in st.ledgers), default=0.0),
                     breaker_open=1 if state in ("open", "forced_open") else 0,
                     context_window=st.spec.context_window, price_in=st.spec.price.input_per_1m,
                     price_out=st.spec.price.output_per_1m)
        return names

    def _monitor_version(self, scope: str, target: str, now: float) -> tuple[Hashable, tuple[Any, ...]]:
        """What a model's or tier's rules read, and the values its names take besides the window.

        Returns ``(key, reads)``: ``key`` is equal only while every name the
        policy's rules of that scope use is (the window's version, and the
        in-flight count, budget use, breaker state the rules mention);
        ``reads`` are those values, which :meth:`_monitor_names` takes. Reads
        breakers and budgets as :meth:`_model_names` and :meth:`_all_tier_names`
        do, in the same order (a read may apply a due transition).
        """
        used = self._rule_reads
        if scope == "model":
            st = self._models[target]
            series = tuple([m.advance(now) for m in self._series_for((1, target))])
            wall = now + self._wall_shift
            state = st.breaker.state(now)
            reads = (st.in_flight, max((led.used_fraction(wall) for led in st.ledgers), default=0.0),
                     1 if state in ("open", "forced_open") else 0)
            flight, budget, breaker = used[0], used[1], used[2]
            return (series, reads[0] if flight else None, reads[1] if budget else None,
                    reads[2] if breaker else None), reads
        spec = self.policy.tiers[target]
        series = tuple([m.advance(now) for m in self._series_for((0, target))])
        tier_reads = (sum(1 for m in spec.candidates if self._models[m].breaker.state(now) in ("open", "forced_open")),)
        return (series, tier_reads[0] if used[3] else None), tier_reads

    def _monitor_names(self, scope: str, target: str, reads: tuple[Any, ...], now: float) -> dict[str, Any]:
        """:meth:`_model_names` or a tier's names from :meth:`_all_tier_names`, with ``reads``."""
        if scope == "model":
            st = self._models[target]
            names = self._summary(now, (1, target))
            names.update(model=target, tier=st.spec.tier, provider=st.spec.provider, in_flight=reads[0],
                         budget_used=reads[1], breaker_open=reads[2],
                         context_window=st.spec.context_window, price_in=st.spec.price.input_per_1m,
                         price_out=st.spec.price.output_per_1m)
            return names
        names = self._summary(now, (0, target))
        names.update(tier=target, models=len(self.policy.tiers[target].candidates), open_breakers=reads[0])
        return names

    def _series_for(self, target: tuple[int, str]) -> list[RollingMetrics]:
        """The rolling metrics of a tier (``(0, tier)``) or a model (``(1, model)``), in insertion order."""
        if self._series_of != len(self._metrics):
            series: dict[tuple[int, str], list[RollingMetrics]] = {}
            for (tier, model), m in self._metrics.items():  # in insertion order, as the sums always were
                series.setdefault((0, tier), []).append(m)
                series.setdefault((1, model), []).append(m)
            self._series, self._series_of = series, len(self._metrics)
        return self._series.get(target, [])

    def _summary(self, now: float, target: tuple[int, str]) -> dict[str, Any]:
        """The rolling metrics of a tier (``(0, tier)``) or a model (``(1, model)``), summed: a new dict.

        Summarised again only when a call joined or left one of its series since
        the last time (their versions); otherwise a copy of that summary, which
        is what summing the same calls again would give.
        """
        ms = self._series_for(target)
        version = tuple([m.advance(now) for m in ms])
        cached = self._summaries.get(target)
        if cached is not None and cached[0] == version:
            return dict(cached[1])
        names = summarize_live(ms, now, self.policy.error_classes)
        self._summaries[target] = (version, names)
        return dict(names)

    def _all_model_names(self, now: float) -> dict[str, dict[str, Any]]:
        return {name: self._model_names(name, now) for name in self._models}

    def _all_tier_names(self, now: float) -> dict[str, dict[str, Any]]:
        out = {}
        for tier, spec in self.policy.tiers.items():
            names = self._summary(now, (0, tier))
            names.update(tier=tier, models=len(spec.candidates), open_breakers=sum(
                1 for m in spec.candidates if self._models[m].breaker.state(now) in ("open", "forced_open")))
            out[tier] = names
        return out

    # -- inspection and manual control -----------------------------------------
    def state(self, model: str) -> dict[str, Any]:
        """Breaker state, budgets (used/limit) and rolling metrics of ``model``."""
        with self._lock:
            if model not in self._models:
                raise KeyError(f"unknown model {model!r}")
            now = self._now()
            st = self._models[model]
            wall = now + self._wall_shift
            metrics = self._model_names(model, now)
            out = {
                "model": model,
                "tier": st.spec.tier,
                "breaker": st.breaker.snapshot(now),
                "budgets": [led.snapshot(wall) for led in st.ledgers],
                "in_flight": st.in_flight,
                "max_in_flight": st.spec.max_in_flight,
                "taken_out_until": st.out_until if st.out_until > now else None,
                "metrics": metrics,
                "ttft": self._ttft_summary(model, now),
                "health": health(self.policy.monitoring.health, metrics),
            }
            self._post([])
        self._deliver()
        return out

    def force(self, model: str, state: str | None) -> None:
        """Manual breaker state: "open", "closed", "disabled", "metrics_only", or None to release."""
        with self._lock:
            st = self._models.get(model)
            if st is None:
                raise KeyError(f"unknown model {model!r}")
            st.breaker.force(state, self._now())  # type: ignore[arg-type]
            self._post([])
        self._deliver()

    def snapshot(self) -> dict[str, Any]:
        """Everything a metrics exporter or status page shows, read in one pass under the lock.

        ``now`` (engine clock) and ``wall`` (epoch seconds); ``models``: per model
        its tier, provider, breaker state, ``open_until`` (engine clock),
        consecutive openings, in-flight count and limit; ``calls``: per
        (requested tier, model) cumulative counters since the model's metrics
        began (``calls``, ``successes``, ``errors`` by class, ``fallbacks``,
        tokens, cost, and ``latency`` as a LatencyHistogram); ``ttft``: per
        (requested tier, model) that streamed, the time to first token of its
        streamed calls since its metric began (a LatencyHistogram); ``budgets``: each
        ledger's snapshot (wall-clock times); ``anomalies``: the active ones;
        ``reload``: :meth:`reload_status`. Costs nothing on the decision path:
        the counters are the rolling metrics' own.
        """
        with self._lock:
            now = self._now()
            wall = now + self._wall_shift
            policy = self.policy
            models = {}
            for name, st in self._models.items():
                br = st.breaker
                models[name] = {"tier": st.spec.tier, "provider": st.spec.provider, "enabled": st.spec.enabled,
                                "state": br.state(now), "open_until": br.open_until,
                                "in_flight": st.in_flight, "max_in_flight": st.spec.max_in_flight}
            calls = {}
            for key, m in self._metrics.items():
                m.live(now)
                c = m.cumulative()
                calls[key] = {"calls": c.calls, "successes": c.successes, "errors": dict(c.errors),
                              "requests": c.requests,
                              "fallbacks": c.fallbacks, "tokens_in": c.tokens_in, "tokens_out": c.tokens_out,
                              "cost_usd": c.cost, "latency": c.latency}
            ttft = {}
            for key, m in self._ttft.items():
                m.live(now)
                ttft[key] = m.cumulative().latency
            budgets = {n: led.snapshot(wall) for n, led in self._ledgers.items()}
            rules = {r.name: r for r in policy.monitoring.anomalies}
            anomalies = [{"rule": r, "target": t, "scope": rules[r].scope, "severity": rules[r].severity}
                         for r, t in sorted(self._monitor.active) if r in rules]
            self._post([])
        self._deliver()
        return {"now": now, "wall": wall, "revision": policy.revision, "tier_order": list(policy.tier_order),
                "models": models, "calls": calls, "ttft": ttft, "budgets": budgets, "anomalies": anomalies,
                "reload": self.reload_status()}

    def performance_report(self) -> dict[str, Any]:
        """Per-tier and per-model health (healthy / degraded / unhealthy) with the metrics behind it."""
        with self._lock:
            now = self._now()
            policy = self.policy  # one set throughout, even if a reload lands meanwhile
            models = self._all_model_names(now)
            tiers = self._all_tier_names(now)
            self._post([])
        self._deliver()
        spec = policy.monitoring.health
        grades = {m: health(spec, names) for m, names in models.items()}
        rank = {"healthy": 0, "degraded": 1, "unhealthy": 2}
        out: dict[str, Any] = {"revision": policy.revision, "window_s": policy.monitoring.window_s,
                               "tiers": {}, "models": {}}
        for t in policy.tier_order:
            members = [m for m in policy.tiers[t].candidates if policy.models[m].enabled]
            # a tier is as healthy as its healthiest candidate: fallback covers the rest
            best = min((grades[m] for m in members), key=rank.__getitem__, default="unhealthy")
            out["tiers"][t] = {"health": best, "models": members, "metrics": tiers[t]}
        for m, names in models.items():
            out["models"][m] = {"health": grades[m], "tier": names["tier"], "metrics": names}
        return out

    # -- state across restarts ---------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Budget usage and breaker states, with wall-clock times, for a store to persist."""
        with self._lock:
            now = self._now()
            wall = now + self._wall_shift
            breakers = {}
            for name, st in self._models.items():
                data = st.breaker.export(now)
                if data["open_until"] is not None:
                    data["open_until"] += self._wall_shift
                breakers[name] = data
            return {"version": 1, "revision": self.policy.revision, "saved_at": wall,
                    "wall_offset": self._wall_shift,  # wall time = engine time + wall_offset
                    "budgets": {n: led.to_dict() for n, led in self._ledgers.items()},
                    "breakers": breakers}

    def restore_state(self, data: Mapping[str, Any]) -> None:
        """Take back :meth:`export_state` (budgets whose period kind changed start afresh)."""
        with self._lock:
            now = self._now()
            for name, saved in (data.get("budgets") or {}).items():
                old = self._ledgers.get(name)
                if old is None:
                    continue
                try:
                    new = self.store.make_ledger(old.spec, self._sink, saved)
                except (ValueError, KeyError, TypeError):
                    log.warning("saved usage of budget %r does not fit its policy; starting afresh", name)
                    continue
                self._ledgers[name] = new
                for st in self._models.values():
                    st.ledgers = tuple(new if led is old else led for led in st.ledgers)
            for name, saved in (data.get("breakers") or {}).items():
                model = self._models.get(name)
                if model is not None:
                    saved = dict(saved)
                    if saved.get("open_until") is not None:
                        saved["open_until"] -= self._wall_shift
                    model.breaker.restore(saved, now)
            self._sink.clear()

    def close(self) -> None:
        """Flush and release the store; the engine must not be used afterwards.

        What the store's last replies carried (a leased budget's final report
        crossing a threshold) is delivered to the listeners.
        """
        self.store.close()  # without the lock: a store may take a snapshot of the engine as it closes
        with self._lock:
            self._post([])
        self._deliver()

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
