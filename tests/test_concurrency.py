"""The engine under real threads and under asyncio: counts stay exact, budgets hold."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from engine import Decision, NoModelAvailable, Outcome, PolicyEngine
from engine.events import BudgetExhausted, CircuitClosed, CircuitHalfOpened, CircuitOpened, Event

L2 = ["gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5", "mistral-small-latest"]
THREADS, PER_THREAD = 8, 100_000


def run_threads(target: object, n: int = THREADS) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=guarded) for _ in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []


def test_8_threads_x_100k_pairs_every_count_exact(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir)
    ok, bad = Outcome(40.0, 7, 3), Outcome(40.0, 7, 0, error="rate_limit")

    def work() -> None:
        for n in range(PER_THREAD):
            eng.record(eng.decide("L2"), bad if n % 1000 == 0 else ok)

    run_threads(work)
    report = eng.performance_report()
    tier = report["tiers"]["L2"]["metrics"]
    total = THREADS * PER_THREAD
    assert tier["calls"] == total
    assert tier["errors_rate_limit"] == THREADS * (PER_THREAD // 1000)
    assert tier["tokens_in"] == 7 * total
    assert tier["tokens_out"] == 3 * (total - tier["errors_rate_limit"])
    assert sum(report["models"][m]["metrics"]["calls"] for m in L2) == total
    assert all(eng.state(m)["in_flight"] == 0 for m in L2)


def test_budget_never_overshoots_by_more_than_in_flight_reservations(policy_dir: Path) -> None:
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 200000"))
    eng = PolicyEngine.from_path(policy_dir)
    exhausted: list[Event] = []
    eng.subscribe(lambda e: exhausted.append(e) if isinstance(e, BudgetExhausted) else None)
    estimate, lock = 1000, threading.Lock()
    peak = [0]
    in_flight = [0]

    def work() -> None:
        for _ in range(2_000):
            try:
                d = eng.decide("L4", estimated_tokens=estimate)
            except NoModelAvailable:
                continue
            if d.model == "gpt-5":
                with lock:
                    in_flight[0] += 1
                    peak[0] = max(peak[0], in_flight[0])
            eng.record(d, Outcome(100.0, 700, 300))  # exactly the estimate
            if d.model == "gpt-5":
                with lock:
                    in_flight[0] -= 1

    run_threads(work)
    used = eng.state("gpt-5")["budgets"][0]["tokens_used"]
    assert 200_000 <= used <= 200_000 + peak[0] * estimate
    assert sum(1 for e in exhausted if e.budget == "gpt-5-daily") == 1


def test_half_open_admits_exactly_its_permits_across_threads(policy_dir: Path) -> None:
    from engine.testing import FakeClock

    clock = FakeClock()
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    clock.advance(30)
    probes: list[Decision] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)

    def work() -> None:
        barrier.wait()
        for _ in range(25):
            try:
                d = eng.decide("L2", model="gpt-4.1-mini")
            except NoModelAvailable:
                continue
            with lock:
                probes.append(d)

    run_threads(work)
    assert len(probes) == 3  # half_open_permits in policies/breakers.yaml


BREAKER_EVENTS = {CircuitOpened: "open", CircuitHalfOpened: "half_open", CircuitClosed: "closed"}
#: the transitions a breaker's events may report without force(): (from, event) -> to
PATHS = {("closed", CircuitOpened): "open", ("open", CircuitHalfOpened): "half_open",
         ("half_open", CircuitOpened): "open", ("half_open", CircuitClosed): "closed"}


def flapping(policy_dir: Path, models: list[str]) -> None:
    """Breakers of ``models`` that open after 4 calls, for 1 s, and decide on one probe."""
    breakers = policy_dir / "breakers.yaml"
    tuned = "".join(f"  {m}:\n    window: count\n    window_size: 4\n    minimum_calls: 4\n    open_for_s: 1\n"
                    f"    backoff: 1\n    max_open_for_s: 1\n    half_open_permits: 1\n" for m in models)
    text = breakers.read_text()
    breakers.write_text(text[: text.index("overrides:")] + "overrides:\n" + tuned)


def test_listeners_get_each_breakers_events_in_the_order_they_happened(policy_dir: Path) -> None:
    from engine.testing import FakeClock

    models = L2[:2]
    flapping(policy_dir, models)
    clock = FakeClock()
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    seen: list[Event] = []

    def listener(event: Event) -> None:
        sum(range(200))  # a listener doing a little work widens the window between emitting threads
        seen.append(event)

    eng.subscribe(listener)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def work(i: int) -> None:
        for n in range(1500):
            try:
                d = eng.decide("L2", model=models[(i + n) % 2])
            except NoModelAvailable:
                clock.advance(0.25)
                continue
            eng.record(d, Outcome(10.0) if n % 5 == 0 else Outcome(10.0, error="timeout"))

    try:
        run_threads_with_index(work, 4)
    finally:
        sys.setswitchinterval(switch)
    for model in models:
        state, path = "closed", []
        for event in seen:
            if type(event) in BREAKER_EVENTS and getattr(event, "model", None) == model:
                path.append(type(event).__name__)
                state = PATHS.get((state, type(event)), f"invalid after {path}")
                assert not state.startswith("invalid"), (model, path[-8:])
        assert len(path) > 50  # the breakers did flap
    at = [e.at for e in seen if type(e) in BREAKER_EVENTS]
    assert at == sorted(at)  # one order for every subject: the order in which they happened


def run_threads_with_index(target: Callable[[int], None], n: int) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []


def test_acall_under_asyncio_keeps_counts_exact(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir)
    calls: dict[str, int] = {}

    class Busy(Exception):
        status_code = 503

    async def client(model: str) -> dict[str, object]:
        calls[model] = calls.get(model, 0) + 1
        await asyncio.sleep(0)
        if model == "gpt-4.1-mini" and calls[model] % 7 == 0:
            raise Busy("overloaded")
        return {"usage": {"prompt_tokens": 11, "completion_tokens": 4}}

    async def main() -> list[object]:
        gate = asyncio.Semaphore(300)  # more than L2's first candidate alone takes (max_in_flight 128)

        async def one() -> object:
            async with gate:
                return await eng.acall("L2", client, sleep=_no_sleep)

        return await asyncio.gather(*(one() for _ in range(5_000)))

    async def _no_sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    results = asyncio.run(main())
    assert len(results) == 5_000
    report = eng.performance_report()
    attempts = sum(calls.values())
    assert report["tiers"]["L2"]["metrics"]["calls"] == attempts
    assert report["tiers"]["L2"]["metrics"]["successes"] == 5_000
    assert report["tiers"]["L2"]["metrics"]["tokens_in"] == 11 * 5_000
    assert all(eng.state(m)["in_flight"] == 0 for m in L2)
    assert calls["gemini-2.5-flash"] > 0  # 300 at once overflow gpt-4.1-mini's 128 slots
