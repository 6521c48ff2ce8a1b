"""The shipped workload (engine/data/workload.json), the day drawn from it, and the simulated providers."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.policy.loader import load_policies
from engine.policy.resources import resource_dir
from engine.sim.scenarios import SCENARIOS, resolve
from engine.sim.workload import (
    DEFAULT_WORKLOAD,
    Load,
    Request,
    WorkloadError,
    arrivals,
    interpolate,
    load_workload,
    local_epoch,
)
from engine.sim.world import World
from tests.conftest import PACKAGE

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "traces"
BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 1, 1, tzinfo=BERLIN).timestamp()


@pytest.fixture(scope="module")
def wl():  # type: ignore[no-untyped-def]
    return load_workload()


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policies([resource_dir("policies")])


# -- the file ------------------------------------------------------------------------------
def test_the_workload_ships_inside_the_package_with_its_notices() -> None:
    assert DEFAULT_WORKLOAD == PACKAGE / "data" / "workload.json"
    notice = (PACKAGE / "data" / "NOTICE.md").read_text(encoding="utf-8")
    assert "CC-BY-4.0" in notice and "Apache-2.0" in notice and "Changes made" in notice
    assert "Attribution 4.0 International" in (ROOT / "LICENSES" / "CC-BY-4.0.txt").read_text(encoding="utf-8-sig")
    assert "Apache License" in (ROOT / "LICENSES" / "Apache-2.0.txt").read_text(encoding="utf-8")


def test_the_workload_loads_from_a_copy_far_from_the_shared_traces(tmp_path: Path, wl) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "w.json"
    shutil.copy(DEFAULT_WORKLOAD, copy)
    got = load_workload(copy)
    assert got.traces == wl.traces and got.runs == wl.runs and got.path == str(copy)
    assert "shared" not in DEFAULT_WORKLOAD.read_text(encoding="utf-8").replace("../shared/traces", "")


def test_the_workload_keeps_the_trace_figures_the_readme_cites(wl) -> None:  # type: ignore[no-untyped-def]
    def pct(points: tuple[float, ...], q: float) -> float:
        return interpolate(points, q)

    code, conv = wl.traces["code"], wl.traces["conv"]
    assert [round(pct(code.context_tokens, q)) for q in (0.5, 0.9, 0.99)] == [1469, 5188, 7436]
    assert [round(pct(conv.context_tokens, q)) for q in (0.5, 0.9, 0.99)] == [1020, 2734, 4142]
    assert [round(pct(code.generated_tokens, q)) for q in (0.5, 0.9, 0.99)] == [13, 55, 251]
    assert [round(pct(conv.generated_tokens, q)) for q in (0.5, 0.9, 0.99)] == [129, 424, 601]
    assert 8_500 <= sum(code.per_minute) <= 8_819 and 19_000 <= sum(conv.per_minute) <= 19_366
    storm = wl.failure_shapes["rate_limit_storm"].pattern
    assert storm[:11] == "." * 10 + "r" and len(storm) == 450 and storm.count("r") == 390
    assert wl.failure_shapes["truncating_65"].pattern.count("x") == 97
    assert set(wl.model_runs.values()) <= set(wl.runs)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not here: nothing to derive from")
def test_the_shipped_file_is_what_the_script_derives_from_the_traces() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "derive_workload.py"), "--check",
                           "--out", str(DEFAULT_WORKLOAD)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(format="nope"), "expected a JSON object with format"),
    (lambda d: d.update(version=2), "unsupported workload version 2"),
    (lambda d: d["day"].update(diurnal=[1.0] * 23), "expected at least 24 finite numbers"),
    (lambda d: d["traces"]["conv"].update(context_tokens=[5, 3, 9]), "quantiles must not decrease"),
    (lambda d: d["tier_mix"].update(other={"L1": 1.0}), "tier_mix names trace 'other'"),
    (lambda d: d["latency"]["model_runs"].update(x="no_such_run"), "name unknown runs: no_such_run"),
    (lambda d: d["failure_shapes"]["rate_limit_storm"].update(pattern="..z"), "expected characters of"),
    (lambda d: d.pop("latency"), "not in the expected shape: KeyError"),
])
def test_a_broken_workload_file_is_refused_with_its_name(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(DEFAULT_WORKLOAD.read_text(encoding="utf-8"))
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(bad)
    assert str(bad) in str(info.value)


def test_an_unreadable_workload_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(WorkloadError, match="not a JSON workload file"):
        load_workload(tmp_path / "x.json")


# -- the day -------------------------------------------------------------------------------
def test_interpolate_reads_evenly_spaced_quantiles() -> None:
    pts = (0.0, 10.0, 30.0)
    assert [interpolate(pts, u) for u in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0.0, 5.0, 10.0, 20.0, 30.0]


def test_a_full_day_holds_over_400k_calls_in_the_configured_tier_mix(wl) -> None:  # type: ignore[no-untyped-def]
    day = arrivals(wl, seed=7, day_start=DAY)
    assert len(day) >= 400_000
    assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(day))
    assert DAY <= day[0].arrival and day[-1].arrival < DAY + 86_400
    tiers = Counter(r.tier for r in day)
    conv = len(day) - tiers["L1"]
    assert tiers["L1"] == sum(r.source == "code" for r in day)
    assert abs(tiers["L4"] / conv - 0.015) < 0.002 and abs(tiers["L3"] / conv - 0.05) < 0.004
    # the diurnal profile: the 10:00 hour is busier than the 03:00 hour by the profile's ratio (1.0 / 0.12)
    per_hour = Counter(int((r.arrival - DAY) // 3600) for r in day)
    assert 6 < per_hour[10] / per_hour[3] < 11
    conv_out = sorted(r.tokens_out for r in day if r.source == "conv")
    assert abs(conv_out[len(conv_out) // 2] - 129) <= 3


def test_the_same_seed_gives_the_same_day_and_a_window_is_a_slice_of_it(wl) -> None:  # type: ignore[no-untyped-def]
    def key(reqs: list[Request]) -> list[tuple[float, str, int, int, float]]:
        return [(r.arrival, r.tier, r.tokens_in, r.tokens_out, r.u) for r in reqs]

    a = arrivals(wl, seed=3, day_start=DAY, start_h=9, hours=2, scale=0.2)
    assert key(a) == key(arrivals(wl, seed=3, day_start=DAY, start_h=9, hours=2, scale=0.2))
    assert key(a) != key(arrivals(wl, seed=4, day_start=DAY, start_h=9, hours=2, scale=0.2))
    inner = arrivals(wl, seed=3, day_start=DAY, start_h=10, hours=0.5, scale=0.2)
    assert key(inner) == [k for k in key(a) if DAY + 36_000 <= k[0] < DAY + 37_800]
    assert [r.index for r in a] == list(range(len(a)))


def test_a_scripted_load_adds_calls_to_its_tier_inside_its_window_only(wl) -> None:  # type: ignore[no-untyped-def]
    base = arrivals(wl, seed=1, day_start=DAY, start_h=11, hours=2, scale=0.1)
    more = arrivals(wl, seed=1, day_start=DAY, start_h=11, hours=2, scale=0.1, loads=[Load("L4", 12, 13, 100)])
    extra = Counter(r.tier for r in more) - Counter(r.tier for r in base)
    assert set(extra) == {"L4"} and 450 < extra["L4"] < 750  # 100/min x 0.1 x 60 min = 600
    added = {(r.arrival, r.tokens_in) for r in more} - {(r.arrival, r.tokens_in) for r in base}
    assert all(DAY + 12 * 3600 <= t < DAY + 13 * 3600 for t, _ in added)


# -- the providers --------------------------------------------------------------------------
def _req(tin: int = 1000, tout: int = 200, u: float = 0.5) -> Request:
    return Request(DAY, "L2", tin, tout, u)


def test_a_healthy_model_takes_its_runs_latency_for_the_output_it_writes(wl, policy) -> None:  # type: ignore[no-untyped-def]
    world = World(wl, policy, [], DAY)
    kind, latency, tin, tout = world.attempt("gpt-4.1-mini", DAY + 5, _req(), 0)
    run = wl.runs["together_70b"]
    expected = interpolate(run.ttft_s, 0.5) + interpolate(run.decode_s_per_token, 0.5) * 200
    assert (kind, tin, tout) == (None, 1000, 200) and latency == pytest.approx(expected)
    assert world.attempt("gpt-4.1-mini", DAY, _req(tout=400), 0)[1] > latency  # longer answers take longer
    assert world.attempt("gpt-4.1-mini", DAY, _req(), 1)[1] != latency  # a retry draws another latency


def test_the_default_scenario_plays_outage_storm_and_quota(wl, policy) -> None:  # type: ignore[no-untyped-def]
    faults, notes = resolve(SCENARIOS["default"], policy)
    assert notes == [] and {(f.kind, f.models) for f in faults} == {
        ("outage", ("gpt-4.1-mini",)), ("storm", ("gpt-4.1-nano",)), ("quota", ("gpt-5",))}
    world = World(wl, policy, faults, DAY)
    ten, four = DAY + 10 * 3600, DAY + 16 * 3600
    assert world.attempt("gpt-4.1-mini", ten - 1, _req(), 0)[0] is None
    assert world.attempt("gpt-4.1-mini", ten, _req(), 0)[:1] == ("http_503",)
    assert world.attempt("gpt-4.1-mini", ten, _req(), 0)[3] == 0  # no output, the prompt spent
    storm = [world.attempt("gpt-4.1-nano", four + i, _req(), 0)[0] for i in range(12)]
    assert storm == [None] * 10 + ["http_429"] * 2
    # gpt-5's quota is its 8M-token daily budget: one call of 7.9M fits, the next is refused ...
    assert world.attempt("gpt-5", DAY + 3600, _req(7_900_000, 0), 0)[0] is None
    assert world.attempt("gpt-5", DAY + 3601, _req(90_000, 10_000), 0)[0] is None
    assert world.attempt("gpt-5", DAY + 3602, _req(), 0)[0] == "quota"
    # ... until local midnight
    assert world.attempt("gpt-5", DAY + 86_400, _req(), 0)[0] is None
    assert world.quota_refusals == 1


def test_a_truncating_model_spends_prompt_and_partial_output(wl, policy) -> None:  # type: ignore[no-untyped-def]
    faults, _ = resolve(SCENARIOS["truncating"], policy)
    world = World(wl, policy, faults, DAY)
    got = [world.attempt("gpt-4.1-mini", DAY + 9 * 3600 + i, _req(tout=300), 0) for i in range(150)]
    bad = [g for g in got if g[0] == "truncated"]
    assert len(bad) == wl.failure_shapes["truncating_33"].pattern.count("x")
    assert all(0 < g[3] < 300 and g[2] == 1000 for g in bad)


def test_roles_that_a_policy_set_cannot_fill_are_skipped_with_a_note(tmp_path: Path, wl) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(resource_dir("policies"), tmp_path / "p")
    budgets = tmp_path / "p" / "budgets.yaml"
    text = budgets.read_text(encoding="utf-8")
    start = text.index("  gpt-5-daily:")
    end = text.index("  o3-hourly:")
    budgets.write_text(text[:start] + text[end:], encoding="utf-8")
    policy = load_policies([tmp_path / "p"])
    faults, notes = resolve(SCENARIOS["default"], policy)
    assert {f.kind for f in faults} == {"outage", "storm"}
    assert notes == ["quota on gpt-5 (L4 primary) skipped: it has no fixed-period token budget"]


@pytest.mark.parametrize(("day", "hours"), [((2026, 3, 29), 23), ((2026, 10, 25), 25), ((2026, 1, 1), 24)])
def test_a_daylight_saving_day_has_its_real_length_on_the_wall_clock(wl, policy, day, hours) -> None:  # type: ignore[no-untyped-def]
    y, m, d = day
    start = datetime(y, m, d, tzinfo=BERLIN).timestamp()
    end = local_epoch(start, 24, BERLIN)
    assert end - start == hours * 3600 and datetime.fromtimestamp(end, BERLIN).hour == 0
    reqs = arrivals(wl, seed=1, day_start=start, scale=0.02, tz=BERLIN)
    assert start <= reqs[0].arrival and reqs[-1].arrival < end  # nothing past the real next midnight
    assert end - reqs[-1].arrival < 600  # ... and the last local hour has its traffic
    window = arrivals(wl, seed=1, day_start=start, start_h=10, hours=1, scale=0.02, tz=BERLIN)
    assert {datetime.fromtimestamp(r.arrival, BERLIN).hour for r in window} == {10}
    faults, _ = resolve(SCENARIOS["l2-outage"], policy)
    world = World(wl, policy, faults, start, BERLIN)
    ten = datetime(y, m, d, 10, tzinfo=BERLIN).timestamp()
    assert world.attempt("gpt-4.1-mini", ten - 1, _req(), 0)[0] is None
    assert world.attempt("gpt-4.1-mini", ten, _req(), 0)[0] == "http_503"


def test_without_a_zone_every_day_has_24_hours(wl) -> None:  # type: ignore[no-untyped-def]
    assert local_epoch(DAY, 10) == DAY + 36_000
    plain = arrivals(wl, seed=1, day_start=DAY, start_h=10, hours=0.5, scale=0.05)
    zoned = arrivals(wl, seed=1, day_start=DAY, start_h=10, hours=0.5, scale=0.05, tz=BERLIN)
    assert [(r.arrival, r.tier) for r in plain] == [(r.arrival, r.tier) for r in zoned]  # a 24 h day: the same
