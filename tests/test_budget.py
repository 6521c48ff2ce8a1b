from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.budget import ROLLING_BUCKETS, BudgetLedger, period_bounds
from engine.events import BudgetExhausted, BudgetReset, BudgetWarning
from engine.policy.model import BudgetSpec

HOUR = 3600.0
DAY = 86400.0


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0.0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp() + s


def spec(**kw: Any) -> BudgetSpec:
    base: dict[str, Any] = dict(
        name="b", scope="global", target=None, period="daily", tokens=1000, cost_usd=None
    )
    base.update(kw)
    return BudgetSpec(**base)


T0 = utc(2025, 6, 15, 12)  # mid-day, mid-month, UTC
END0 = utc(2025, 6, 16)
T_ROLL = 1_750_000_020.0  # a multiple of 60: bucket boundaries fall on whole seconds


# -- period_bounds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "now", "start", "end"),
    [
        # ordinary summer day in Berlin (CEST, +2)
        ("Europe/Berlin", utc(2024, 6, 15, 10), utc(2024, 6, 14, 22), utc(2024, 6, 15, 22)),
        # spring forward 2024-03-31: 23 hours
        ("Europe/Berlin", utc(2024, 3, 31, 12), utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)),
        # fall back 2024-10-27: 25 hours
        ("Europe/Berlin", utc(2024, 10, 27, 12), utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
        # spring forward 2024-03-10: 23 hours
        ("America/New_York", utc(2024, 3, 10, 12), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
        # fall back 2024-11-03: 25 hours
        ("America/New_York", utc(2024, 11, 3, 12), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
        # 02:00Z on Nov 4 is still Nov 3 (21:00 EST) in New York
        ("America/New_York", utc(2024, 11, 4, 2), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
    ],
)
def test_daily_bounds_follow_local_midnight(tz: str, now: float, start: float, end: float) -> None:
    assert period_bounds(spec(timezone=tz), now) == (start, end)


def test_daily_dst_days_are_23_and_25_hours_long() -> None:
    berlin = spec(timezone="Europe/Berlin")
    spring = period_bounds(berlin, utc(2024, 3, 31, 12))
    autumn = period_bounds(berlin, utc(2024, 10, 27, 12))
    assert spring[1] is not None and spring[1] - spring[0] == 23 * HOUR
    assert autumn[1] is not None and autumn[1] - autumn[0] == 25 * HOUR


def test_daily_boundary_is_exactly_local_midnight() -> None:
    ny = spec(timezone="America/New_York")
    midnight = utc(2024, 11, 4, 5)  # 00:00 EST
    assert period_bounds(ny, midnight) == (midnight, utc(2024, 11, 5, 5))
    assert period_bounds(ny, midnight - 0.001) == (utc(2024, 11, 3, 4), midnight)


def test_hourly_in_half_hour_offset_zone() -> None:
    kolkata = spec(period="hourly", timezone="Asia/Kolkata")
    # 10:45 IST is 05:15Z; the hour started at 10:00 IST = 04:30Z
    assert period_bounds(kolkata, utc(2024, 5, 1, 5, 15)) == (utc(2024, 5, 1, 4, 30), utc(2024, 5, 1, 5, 30))
    assert period_bounds(kolkata, utc(2024, 5, 1, 5, 30)) == (utc(2024, 5, 1, 5, 30), utc(2024, 5, 1, 6, 30))


def test_hourly_repeated_dst_hour_is_two_periods() -> None:
    ny = spec(period="hourly", timezone="America/New_York")
    # 01:30 EDT (05:30Z) and 01:30 EST (06:30Z) on 2024-11-03
    assert period_bounds(ny, utc(2024, 11, 3, 5, 30)) == (utc(2024, 11, 3, 5), utc(2024, 11, 3, 6))
    assert period_bounds(ny, utc(2024, 11, 3, 6, 30)) == (utc(2024, 11, 3, 6), utc(2024, 11, 3, 7))


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham",
         "America/Santiago", "America/Havana", "America/St_Johns", "Africa/Casablanca"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(["hourly", "daily", "monthly"]),
    now=st.floats(utc(2000, 1, 1), utc(2037, 12, 1)),
)
def test_property_periods_contain_now_and_tile(zone: str, period: str, now: float) -> None:
    s = spec(period=period, timezone=zone)
    start, end = period_bounds(s, now)
    assert end is not None and start <= now < end
    assert period_bounds(s, end)[0] == end  # the next period starts where this one ends
    assert period_bounds(s, start) == (start, end)
    hours = (end - start) / HOUR
    if period == "hourly":
        assert hours == 1
    elif period == "daily":
        assert hours in (23, 24, 25)
    else:
        assert 28 * 24 - 1 <= hours <= 31 * 24 + 1


def test_monthly_december_to_january() -> None:
    monthly = spec(period="monthly")
    assert period_bounds(monthly, utc(2024, 12, 31, 23, 59)) == (utc(2024, 12, 1), utc(2025, 1, 1))
    assert period_bounds(monthly, utc(2025, 1, 1)) == (utc(2025, 1, 1), utc(2025, 2, 1))


def test_monthly_february_of_leap_year_2028() -> None:
    start, end = period_bounds(spec(period="monthly"), utc(2028, 2, 29, 12))
    assert (start, end) == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert end is not None and end - start == 29 * DAY
    start, end = period_bounds(spec(period="monthly"), utc(2027, 2, 10))
    assert end is not None and end - start == 28 * DAY


def test_monthly_uses_local_time_and_dst() -> None:
    ny = spec(period="monthly", timezone="America/New_York")
    # 03:00Z on Jan 1 is still Dec 31 in New York
    assert period_bounds(ny, utc(2025, 1, 1, 3)) == (utc(2024, 12, 1, 5), utc(2025, 1, 1, 5))
    start, end = period_bounds(spec(period="monthly", timezone="Europe/Berlin"), utc(2024, 3, 15))
    assert (start, end) == (utc(2024, 2, 29, 23), utc(2024, 3, 31, 22))


def test_rolling_bounds_and_missing_window() -> None:
    assert period_bounds(spec(period="rolling", rolling_s=600.0), 5000.0) == (4400.0, None)
    with pytest.raises(ValueError, match="rolling_s"):
        period_bounds(spec(period="rolling"), 5000.0)
    with pytest.raises(ValueError, match="rolling_s"):
        BudgetLedger(spec(period="rolling", rolling_s=0.0))


# -- thresholds and events ------------------------------------------------------


def test_exactly_one_warning_per_period_at_90_percent() -> None:
    led = BudgetLedger(spec())
    led.settle(T0, None, 899, 0.0)
    assert led.drain_events() == ()
    led.settle(T0 + 1, None, 1, 0.0)
    assert led.drain_events() == (BudgetWarning(T0 + 1, "b", 0.9, 900, 1000, 0.0, None, utc(2025, 6, 15)),)
    for i in range(99):
        led.settle(T0 + 2 + i, None, 1, 0.0)
    assert led.drain_events() == ()
    assert led.used_fraction(T0 + 200) == 0.999


def test_exhaustion_at_exactly_one() -> None:
    led = BudgetLedger(spec(warn_at=0.5))
    led.settle(T0, None, 999, 0.0)
    led.drain_events()
    assert not led.exhausted(T0) and led.available(T0)
    led.settle(T0 + 5, None, 1, 0.0)
    assert led.exhausted(T0 + 5) and not led.available(T0 + 5)
    assert led.drain_events() == (
        BudgetExhausted(T0 + 5, "b", 1.0, 1000, 1000, 0.0, None, utc(2025, 6, 15), END0),
    )


def test_warning_and_exhaustion_in_one_call_come_in_order() -> None:
    led = BudgetLedger(spec())
    led.settle(T0, None, 1500, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetWarning, BudgetExhausted]
    led.settle(T0 + 1, None, 10, 0.0)
    assert led.drain_events() == ()


def test_reserve_is_refused_once_exhausted() -> None:
    led = BudgetLedger(spec())
    assert led.reserve(T0, 999, 0.0) > 0
    assert led.reserve(T0, 500, 0.0) > 0  # admitted: not yet exhausted, overshoots
    assert led.reserve(T0, 1, 0.0) == 0
    snap = led.snapshot(T0)
    assert (snap["tokens_reserved"], snap["reservations"]) == (1499, 2)


def test_refusal_says_why_and_when_it_resets() -> None:
    led = BudgetLedger(spec())
    assert led.refusal(T0) is None
    rid = led.reserve(T0, 1000, 0.0)
    assert led.refusal(T0) == ("budget b fully reserved by calls in flight", END0)
    led.settle(T0, rid, 400, 0.0)  # settled lower than reserved: free again
    assert led.refusal(T0) is None
    led.settle(T0, None, 600, 0.0)
    assert led.refusal(T0) == ("budget b exhausted", END0)
    assert led.refusal(END0 - 0.001) == ("budget b exhausted", END0)  # held until the period ends
    assert led.refusal(END0) is None  # the new period starts afresh
    assert led.drain_events()[-1] == BudgetReset(END0, "b", END0)


def test_refusal_of_a_rolling_budget_frees_as_usage_ages_out() -> None:
    led = BudgetLedger(spec(period="rolling", rolling_s=600.0))
    led.settle(T_ROLL, None, 1000, 0.0)
    why, resets = led.refusal(T_ROLL + 1) or ("", None)
    assert why == "budget b exhausted" and resets is not None
    assert led.refusal(resets - 0.001) is not None
    assert led.refusal(resets) is None


def test_reset_after_period_gives_fresh_usage() -> None:
    led = BudgetLedger(spec())
    led.settle(T0, None, 1000, 0.0)
    led.drain_events()
    assert led.exhausted(END0 - 0.001)
    assert not led.exhausted(END0)
    assert led.drain_events() == (BudgetReset(END0, "b", END0),)
    assert led.used_fraction(END0) == 0.0
    led.settle(END0 + 10, None, 950, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetWarning]


def test_no_reset_event_for_untouched_period_and_one_for_skipped_days() -> None:
    led = BudgetLedger(spec())
    assert led.available(T0) and led.available(END0 + 1)
    assert led.drain_events() == ()
    led.settle(END0 + 2, None, 5, 0.0)
    later = END0 + 3 * DAY + 7
    assert led.used_fraction(later) == 0.0
    assert led.drain_events() == (BudgetReset(later, "b", END0 + 3 * DAY),)


def test_daily_ledger_resets_at_berlin_midnight_after_25_hour_day() -> None:
    led = BudgetLedger(spec(timezone="Europe/Berlin"))
    led.settle(utc(2024, 10, 26, 22, 30), None, 100, 0.0)  # 00:30 CEST on Oct 27
    assert led.resets_at(utc(2024, 10, 27, 22, 30)) == utc(2024, 10, 27, 23)
    assert led.used_fraction(utc(2024, 10, 27, 22, 59)) == 0.1  # 23:59 CET, same day
    assert led.used_fraction(utc(2024, 10, 27, 23)) == 0.0
    assert led.drain_events() == (BudgetReset(utc(2024, 10, 27, 23), "b", utc(2024, 10, 27, 23)),)


def test_daily_ledger_on_new_york_23_hour_day() -> None:
    led = BudgetLedger(spec(timezone="America/New_York"))
    led.settle(utc(2024, 3, 10, 5), None, 100, 0.0)  # 00:00 EST, first instant of the day
    assert led.resets_at(utc(2024, 3, 10, 12)) == utc(2024, 3, 11, 4)
    assert led.used_fraction(utc(2024, 3, 11, 3, 59)) == 0.1  # 23:59 EDT
    assert led.used_fraction(utc(2024, 3, 11, 4)) == 0.0
    assert led.drain_events() == (BudgetReset(utc(2024, 3, 11, 4), "b", utc(2024, 3, 11, 4)),)


def test_hourly_ledger_in_kolkata_resets_at_half_past_utc() -> None:
    led = BudgetLedger(spec(period="hourly", timezone="Asia/Kolkata"))
    led.settle(utc(2024, 5, 1, 5, 0), None, 100, 0.0)
    assert led.used_fraction(utc(2024, 5, 1, 5, 29)) == 0.1
    assert led.used_fraction(utc(2024, 5, 1, 5, 30)) == 0.0


def test_clock_stepping_back_does_not_reset() -> None:
    led = BudgetLedger(spec())
    led.settle(T0, None, 300, 0.0)
    assert led.used_fraction(T0 - DAY) == 0.3
    assert led.drain_events() == ()


def test_custom_warn_and_exhaust_thresholds() -> None:
    led = BudgetLedger(spec(warn_at=0.5, exhaust_at=0.8))
    led.settle(T0, None, 499, 0.0)
    assert led.drain_events() == ()
    led.settle(T0, None, 1, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetWarning]
    first = led.reserve(T0, 299, 0.0)
    assert first > 0 and led.available(T0)
    second = led.reserve(T0, 1, 0.0)
    assert second > 0 and not led.available(T0)
    assert led.drain_events() == ()  # full of reservations: refuses, but nothing is spent yet
    led.settle(T0, first, 299, 0.0)
    led.settle(T0, second, 1, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetExhausted]


# -- reservations -------------------------------------------------------------


def test_reservations_count_toward_exhaustion_but_only_spending_emits() -> None:
    led = BudgetLedger(spec())
    rid = led.reserve(T0, 1000, 0.0)
    assert rid > 0 and led.exhausted(T0)
    assert led.reserve(T0, 1, 0.0) == 0
    assert led.drain_events() == ()
    snap = led.snapshot(T0)
    assert (snap["tokens_used"], snap["tokens_reserved"], snap["used_fraction"]) == (0, 1000, 1.0)
    led.settle(T0, rid, 400, 0.0)  # the call used less than estimated: the budget frees up
    assert led.available(T0) and led.drain_events() == ()
    led.settle(T0, None, 600, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetWarning, BudgetExhausted]
    assert led.exhausted(T0)


@pytest.mark.parametrize("real", [300, 1200])
def test_settle_replaces_reservation(real: int) -> None:
    led = BudgetLedger(spec(tokens=10_000, cost_usd=10.0))
    rid = led.reserve(T0, 800, 0.5)
    assert led.settle(T0 + 2, rid, real, 0.25) is True
    snap = led.snapshot(T0 + 2)
    assert (snap["tokens_used"], snap["tokens_reserved"], snap["reservations"]) == (real, 0, 0)
    assert (snap["cost_used"], snap["cost_reserved"]) == (0.25, 0.0)
    assert led.settle(T0 + 3, rid, 10, 0.0) is False  # a second settle only adds usage
    assert led.snapshot(T0 + 3)["tokens_used"] == real + 10


def test_settle_unknown_or_none_reservation_adds_usage() -> None:
    led = BudgetLedger(spec())
    keep = led.reserve(T0, 100, 0.0)
    assert led.settle(T0, 12345, 40, 0.0) is False
    assert led.settle(T0, None, 60, 0.0) is False
    snap = led.snapshot(T0)
    assert (snap["tokens_used"], snap["tokens_reserved"]) == (100, 100)
    assert keep > 0


def test_expired_reservation_frees_budget_and_settle_adds_only_real_usage() -> None:
    led = BudgetLedger(spec(reservation_ttl_s=60.0))
    rid = led.reserve(T0, 1000, 0.0)
    assert led.exhausted(T0 + 59.999)
    assert not led.exhausted(T0 + 60.0)
    assert led.snapshot(T0 + 60)["tokens_reserved"] == 0
    assert led.settle(T0 + 61, rid, 200, 0.0) is False
    assert led.used_fraction(T0 + 61) == 0.2


def test_expiry_drops_only_expired_reservations_in_order() -> None:
    led = BudgetLedger(spec(reservation_ttl_s=10.0))
    a = led.reserve(T0, 100, 0.0)
    b = led.reserve(T0 + 5, 200, 0.0)
    assert led.used_fraction(T0 + 10) == 0.2
    assert led.settle(T0 + 11, a, 1, 0.0) is False
    assert led.settle(T0 + 11, b, 2, 0.0) is True
    assert led.snapshot(T0 + 11)["tokens_reserved"] == 0


def test_reservations_are_cleared_at_reset_and_settle_counts_in_new_period() -> None:
    led = BudgetLedger(spec(reservation_ttl_s=DAY))
    rid = led.reserve(END0 - 10, 900, 0.0)
    led.drain_events()
    assert led.settle(END0 + 10, rid, 250, 0.0) is False
    snap = led.snapshot(END0 + 10)
    assert (snap["tokens_used"], snap["tokens_reserved"], snap["period_start"]) == (250, 0, END0)
    assert led.drain_events() == (BudgetReset(END0 + 10, "b", END0),)


def test_reservation_ids_are_positive_and_never_reused_across_periods() -> None:
    led = BudgetLedger(spec())
    first = [led.reserve(T0, 1, 0.0) for _ in range(3)]
    later = [led.reserve(END0 + 1, 1, 0.0) for _ in range(3)]
    ids = first + later
    assert min(ids) > 0 and len(set(ids)) == 6


def test_bad_amounts_raise_and_leave_state_untouched() -> None:
    led = BudgetLedger(spec(cost_usd=1.0))
    led.settle(T0, None, 10, 0.1)
    for tokens, cost in ((-1, 0.0), (1, -0.5), (1, math.nan)):
        with pytest.raises(ValueError, match="expected tokens >= 0"):
            led.settle(T0, None, tokens, cost)
        with pytest.raises(ValueError, match="expected tokens >= 0"):
            led.reserve(T0, tokens, cost)
    snap = led.snapshot(T0)
    assert (snap["tokens_used"], snap["cost_used"], snap["reservations"]) == (10, 0.1, 0)


# -- limits -------------------------------------------------------------------


def test_cost_only_budget() -> None:
    led = BudgetLedger(spec(tokens=None, cost_usd=2.0))
    led.settle(T0, None, 10**9, 1.5)
    assert led.used_fraction(T0) == 0.75
    led.reserve(T0, 0, 0.5)
    assert led.exhausted(T0)


def test_tokens_only_budget_ignores_cost() -> None:
    led = BudgetLedger(spec(tokens=100, cost_usd=None))
    led.settle(T0, None, 50, 1e6)
    assert led.used_fraction(T0) == 0.5


def test_both_limits_fraction_is_the_max() -> None:
    led = BudgetLedger(spec(tokens=100, cost_usd=4.0))
    led.settle(T0, None, 20, 2.0)
    assert led.used_fraction(T0) == 0.5
    led.settle(T0, None, 70, 0.0)
    assert led.used_fraction(T0) == 0.9


def test_would_exceed_is_advisory() -> None:
    led = BudgetLedger(spec(tokens=100, cost_usd=1.0))
    led.settle(T0, None, 60, 0.0)
    assert not led.would_exceed(T0, 39, 0.0)
    assert led.would_exceed(T0, 40, 0.0)
    assert led.would_exceed(T0, 0, 1.0)
    assert led.reserve(T0, 40, 0.0) > 0  # admitted: not exhausted before


def test_spec_without_positive_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="got neither"):
        BudgetLedger(spec(tokens=None, cost_usd=None))
    with pytest.raises(ValueError, match="limit > 0"):
        BudgetLedger(spec(tokens=0))


def test_snapshot_reports_everything() -> None:
    led = BudgetLedger(spec(tokens=1000, cost_usd=10.0))
    led.settle(T0, None, 850, 1.0)
    led.reserve(T0, 100, 0.5)
    assert led.snapshot(T0 + 1) == {
        "name": "b",
        "period": "daily",
        "period_start": utc(2025, 6, 15),
        "period_end": END0,
        "resets_at": END0,
        "tokens_used": 850,
        "tokens_reserved": 100,
        "tokens_limit": 1000,
        "cost_used": 1.0,
        "cost_reserved": 0.5,
        "cost_limit": 10.0,
        "reservations": 1,
        "used_fraction": 0.95,
        "warned": False,  # 85% spent; the 10% reserved does not warn
        "exhausted": False,
    }


# -- rolling ------------------------------------------------------------------


def rolling(**kw: Any) -> BudgetLedger:
    return BudgetLedger(spec(period="rolling", rolling_s=60.0, tokens=100, **kw))


def test_rolling_usage_ages_out_bucket_by_bucket() -> None:
    led = rolling()
    led.settle(T_ROLL + 0.5, None, 10, 0.0)
    led.settle(T_ROLL + 1.5, None, 20, 0.0)
    led.settle(T_ROLL + 2.5, None, 30, 0.0)
    assert led.used_fraction(T_ROLL + 60.999) == 0.6
    assert led.used_fraction(T_ROLL + 61.0) == 0.5
    assert led.used_fraction(T_ROLL + 62.0) == 0.3
    assert led.used_fraction(T_ROLL + 63.0) == 0.0


def test_rolling_usage_counts_for_at_least_rolling_s() -> None:
    led = rolling()
    led.settle(T_ROLL + 0.99, None, 10, 0.0)
    assert led.used_fraction(T_ROLL + 60.98) == 0.1
    assert led.used_fraction(T_ROLL + 1000.0) == 0.0


def test_rolling_exhaustion_estimates_reset_and_rearms() -> None:
    led = rolling()
    led.settle(T_ROLL + 0.5, None, 60, 0.0)
    led.settle(T_ROLL + 10.5, None, 40, 0.0)
    events = led.drain_events()
    assert [type(e) for e in events] == [BudgetWarning, BudgetExhausted]
    assert isinstance(events[1], BudgetExhausted) and events[1].resets_at == T_ROLL + 61
    assert led.resets_at(T_ROLL + 30) == T_ROLL + 61
    assert led.snapshot(T_ROLL + 30)["period_end"] is None
    assert led.exhausted(T_ROLL + 60.5)
    assert not led.exhausted(T_ROLL + 61)
    assert led.drain_events() == (BudgetReset(T_ROLL + 61, "b", T_ROLL + 1),)
    assert led.resets_at(T_ROLL + 61) is None
    led.settle(T_ROLL + 62, None, 60, 0.0)
    assert [type(e) for e in led.drain_events()] == [BudgetWarning, BudgetExhausted]


def test_rolling_reservations_alone_exhausting_give_no_reset_estimate() -> None:
    led = rolling()
    led.reserve(T_ROLL, 100, 0.0)
    assert led.exhausted(T_ROLL + 1) and led.resets_at(T_ROLL + 1) is None


def test_rolling_granularity_is_rolling_s_over_bucket_count() -> None:
    led = BudgetLedger(spec(period="rolling", rolling_s=6000.0, tokens=100))
    width = 6000.0 / ROLLING_BUCKETS
    base = 1_750_002_000.0  # a multiple of 100 s
    led.settle(base, None, 10, 0.0)
    assert led.used_fraction(base + 6000 + width - 0.01) == 0.1
    assert led.used_fraction(base + 6000 + width) == 0.0


# -- persistence --------------------------------------------------------------


def test_round_trip_mid_period_restores_usage_and_flags() -> None:
    s = spec(tokens=1000, cost_usd=10.0)
    led = BudgetLedger(s)
    led.settle(T0, None, 920, 1.25)
    rid = led.reserve(T0 + 1, 50, 0.5)
    led.drain_events()
    back = BudgetLedger.from_dict(s, json.loads(json.dumps(led.to_dict())))
    assert back.snapshot(T0 + 2) == led.snapshot(T0 + 2)
    assert back.settle(T0 + 3, rid, 70, 0.75) is True
    assert back.snapshot(T0 + 3)["tokens_used"] == 990
    assert back.drain_events() == ()  # warning already sent this period
    assert back.reserve(T0 + 4, 1, 0.0) == rid + 1
    back.used_fraction(END0)
    assert back.drain_events() == (BudgetReset(END0, "b", END0),)


def test_round_trip_of_rolling_ledger_and_of_fresh_ledger() -> None:
    s = spec(period="rolling", rolling_s=60.0, tokens=100)
    led = BudgetLedger(s)
    assert BudgetLedger.from_dict(s, json.loads(json.dumps(led.to_dict()))).used_fraction(T_ROLL) == 0.0
    led.settle(T_ROLL + 0.5, None, 10, 0.0)
    led.settle(T_ROLL + 30.5, None, 20, 0.0)
    back = BudgetLedger.from_dict(s, json.loads(json.dumps(led.to_dict())))
    assert back.used_fraction(T_ROLL + 40) == 0.3
    assert back.used_fraction(T_ROLL + 61) == 0.2
    assert back.used_fraction(T_ROLL + 91) == 0.0


def test_from_dict_rejects_other_period_or_garbage() -> None:
    data = BudgetLedger(spec()).to_dict()
    with pytest.raises(ValueError, match="expected period 'hourly'"):
        BudgetLedger.from_dict(spec(period="hourly"), data)
    with pytest.raises(ValueError, match="expected timezone"):
        BudgetLedger.from_dict(spec(timezone="Europe/Berlin"), data)
    with pytest.raises(ValueError, match="saved by to_dict"):
        BudgetLedger.from_dict(spec(), {**data, "reservations": [[1, "x", 2, 3.0]]})
    raised = BudgetLedger.from_dict(replace(spec(), tokens=5000), data)  # limits may change
    assert raised.spec.tokens == 5000


# -- properties ---------------------------------------------------------------

Op = tuple[str, int, int, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.just(0), st.integers(0, 400), st.sampled_from([0.0, 0.25, 1.5])),
        st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 400), st.sampled_from([0.0, 0.25])),
        st.tuples(st.just("wait"), st.integers(0, 1500), st.just(0), st.just(0.0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, ttl=st.sampled_from([30.0, 600.0, 1e6]))
def test_property_no_admission_once_exhausted_and_totals_match(ops: list[Op], ttl: float) -> None:
    s = spec(period="hourly", tokens=1000, cost_usd=10.0, reservation_ttl_s=ttl)
    led = BudgetLedger(s)
    now = T0
    made: list[tuple[int, float, int, float]] = []  # id, created, tokens, cost
    unsettled: dict[int, int] = {}  # every admitted reservation not yet settled -> its tokens
    settled: list[tuple[float, int, float]] = []
    bound_extra, period = 0, period_bounds(s, now)[0]
    for op, arg, tokens, cost in ops:
        if op == "wait":
            now += arg
        start = period_bounds(s, now)[0]
        if start != period:
            period, bound_extra = start, sum(unsettled.values())
        live = [m for m in made if m[0] in unsettled and m[1] >= start and m[1] + ttl > now]
        used_t = sum(t for at, t, _ in settled if at >= start)
        used_c = sum(c for at, _, c in settled if at >= start)
        res_t, res_c = sum(m[2] for m in live), sum(m[3] for m in live)
        fraction = max((used_t + res_t) / 1000, (used_c + res_c) / 10.0)
        if op == "reserve":
            rid = led.reserve(now, tokens, cost)
            assert (rid > 0) == (fraction < 1.0)
            if rid:
                made.append((rid, now, tokens, cost))
                unsettled[rid] = tokens
                bound_extra = sum(unsettled.values())
        elif op == "settle" and made:
            rid, _, _, size_c = made[arg % len(made)]
            if rid in unsettled:  # real usage never above the estimate here
                real = min(tokens, unsettled.pop(rid))
                led.settle(now, rid, real, min(cost, size_c))
                settled.append((now, real, min(cost, size_c)))
        led.drain_events()
        live = [m for m in made if m[0] in unsettled and m[1] >= start and m[1] + ttl > now]
        snap = led.snapshot(now)
        assert snap["tokens_used"] == sum(t for at, t, _ in settled if at >= start)
        assert snap["cost_used"] == sum(c for at, _, c in settled if at >= start)
        assert (snap["tokens_reserved"], snap["reservations"]) == (sum(m[2] for m in live), len(live))
        assert snap["cost_reserved"] == sum(m[3] for m in live)
        assert snap["tokens_used"] <= 1000 + bound_extra


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(0, 50)), max_size=60))
def test_property_rolling_totals_match_naive_window(steps: list[tuple[float, int]]) -> None:
    led = rolling()
    now, log = T_ROLL, []
    for dt, tokens in steps:
        now += dt
        led.settle(now, None, tokens, 0.0)
        log.append((now, tokens))
        bucket = math.floor(now / 1.0)
        expected = sum(t for at, t in log if bucket - math.floor(at / 1.0) <= ROLLING_BUCKETS)
        assert led.snapshot(now)["tokens_used"] == expected
        assert sum(t for at, t in log if now - at < 60.0) <= expected
        assert expected <= sum(t for at, t in log if now - at <= 61.0)
