"""The business-hours decision: explicit cases (edges, midnight, holidays, zones, DST) and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openlines.hours import is_open, next_closing, next_opening
from openlines.lines import WEEKDAYS, HoursConfig, parse_span

RIGA = ZoneInfo("Europe/Riga")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
CHATHAM = ZoneInfo("Pacific/Chatham")
ZONES = ["UTC", "Europe/Riga", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]


def hours(**kw: Any) -> HoursConfig:
    kw.setdefault("enabled", True)
    return HoursConfig(**kw)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def local(tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    # In UTC: PEP 495 makes an ambiguous local time compare unequal to every instant of another zone.
    return datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).astimezone(UTC)


# 2026-01-05 is a Monday.
OFFICE = hours(weekly={d: ["09:00-13:00", "14:00-18:00"] for d in WEEKDAYS[:5]})


# --- edges -------------------------------------------------------------------------------------


def test_span_start_is_open_and_end_is_closed() -> None:
    assert not is_open(OFFICE, utc(2026, 1, 5, 8, 59, 59))
    assert is_open(OFFICE, utc(2026, 1, 5, 9, 0))
    assert is_open(OFFICE, utc(2026, 1, 5, 12, 59, 59, 999999))
    assert not is_open(OFFICE, utc(2026, 1, 5, 13, 0))
    assert is_open(OFFICE, utc(2026, 1, 5, 14, 0))
    assert not is_open(OFFICE, utc(2026, 1, 5, 18, 0))


def test_next_opening_and_closing_on_a_working_day() -> None:
    assert next_opening(OFFICE, utc(2026, 1, 5, 7, 0)) == utc(2026, 1, 5, 9, 0)
    assert next_opening(OFFICE, utc(2026, 1, 5, 13, 0)) == utc(2026, 1, 5, 14, 0)
    assert next_closing(OFFICE, utc(2026, 1, 5, 10, 0)) == utc(2026, 1, 5, 13, 0)
    assert next_closing(OFFICE, utc(2026, 1, 5, 14, 0)) == utc(2026, 1, 5, 18, 0)


def test_friday_evening_opens_on_monday_morning() -> None:
    assert next_opening(OFFICE, utc(2026, 1, 9, 18, 0)) == utc(2026, 1, 12, 9, 0)


def test_open_now_means_next_opening_is_now_and_closed_now_means_next_closing_is_now() -> None:
    t = utc(2026, 1, 5, 10, 17, 3, 5)
    assert next_opening(OFFICE, t) == t
    closed = utc(2026, 1, 5, 13, 30)
    assert next_closing(OFFICE, closed) == closed


def test_results_are_utc_even_when_now_is_given_in_another_zone() -> None:
    t = local(RIGA, 2026, 1, 5, 9, 0)  # 07:00 UTC, before opening
    got = next_opening(OFFICE, t)
    assert got == utc(2026, 1, 5, 9, 0) and got is not None and got.tzinfo is UTC
    open_t = local(RIGA, 2026, 1, 5, 12, 0)
    got = next_opening(OFFICE, open_t)
    assert got == open_t and got is not None and got.tzinfo is UTC


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_open(OFFICE, datetime(2026, 1, 5, 10, 0))


def test_overlapping_spans_of_a_day_are_one_open_period() -> None:
    h = hours(weekly={"mon": ["12:00-18:00", "09:00-13:00", "18:00-19:00"]})
    assert next_closing(h, utc(2026, 1, 5, 9, 30)) == utc(2026, 1, 5, 19, 0)


# --- midnight ----------------------------------------------------------------------------------


def test_spans_touching_at_midnight_are_continuous() -> None:
    h = hours(weekly={"mon": ["22:00-24:00"], "tue": ["00:00-06:00"]})
    assert is_open(h, utc(2026, 1, 5, 23, 59, 59))
    assert is_open(h, utc(2026, 1, 6, 0, 0))
    assert next_closing(h, utc(2026, 1, 5, 22, 30)) == utc(2026, 1, 6, 6, 0)
    assert next_opening(h, utc(2026, 1, 5, 12, 0)) == utc(2026, 1, 5, 22, 0)


def test_span_to_2400_closes_at_midnight_when_next_day_is_closed() -> None:
    h = hours(weekly={"mon": ["22:00-24:00"]})
    assert next_closing(h, utc(2026, 1, 5, 23, 0)) == utc(2026, 1, 6, 0, 0)
    assert not is_open(h, utc(2026, 1, 6, 0, 0))


def test_holiday_after_a_night_span_keeps_the_evening_but_closes_its_own_day() -> None:
    h = hours(weekly={"mon": ["22:00-24:00"], "tue": ["00:00-06:00"]}, holidays=["2026-01-06"])
    assert is_open(h, utc(2026, 1, 5, 23, 0))
    assert next_closing(h, utc(2026, 1, 5, 23, 0)) == utc(2026, 1, 6, 0, 0)
    assert not is_open(h, utc(2026, 1, 6, 3, 0))


def test_round_the_clock_line_never_closes() -> None:
    h = hours(weekly={d: ["00:00-24:00"] for d in WEEKDAYS}, timezone="America/New_York")
    assert is_open(h, utc(2026, 3, 8, 7, 0))  # through a DST change too
    assert next_closing(h, utc(2026, 1, 5, 3, 0)) is None


def test_round_the_clock_line_closes_on_a_dated_holiday_years_ahead() -> None:
    h = hours(weekly={d: ["00:00-12:00", "12:00-24:00"] for d in WEEKDAYS}, timezone="Europe/Riga", holidays=["2030-06-01"])
    assert next_closing(h, utc(2026, 1, 5, 3, 0)) == local(RIGA, 2030, 6, 1, 0, 0)
    assert next_opening(h, local(RIGA, 2030, 6, 1, 12, 0)) == local(RIGA, 2030, 6, 2, 0, 0)


def test_round_the_clock_line_closes_on_a_yearly_leap_day() -> None:
    h = hours(weekly={d: ["00:00-24:00"] for d in WEEKDAYS}, holidays=["02-29"])
    assert next_closing(h, utc(2026, 3, 1)) == utc(2028, 2, 29)
    assert next_opening(h, utc(2028, 2, 29, 5)) == utc(2028, 3, 1)


# --- holidays and days off ---------------------------------------------------------------------


def test_dated_holiday_closes_that_date_only() -> None:
    h = hours(weekly=OFFICE.weekly, holidays=["2026-01-05"])
    assert not is_open(h, utc(2026, 1, 5, 10, 0))
    assert next_opening(h, utc(2026, 1, 5, 10, 0)) == utc(2026, 1, 6, 9, 0)
    assert is_open(h, utc(2027, 1, 5, 10, 0))  # a Tuesday a year later


def test_yearly_holiday_closes_that_day_every_year() -> None:
    h = hours(weekly={d: ["09:00-18:00"] for d in WEEKDAYS}, holidays=["01-01", "12-25"])
    for year in (2026, 2027, 2031):
        assert not is_open(h, utc(year, 1, 1, 10, 0))
        assert not is_open(h, utc(year, 12, 25, 10, 0))
        assert is_open(h, utc(year, 1, 2, 10, 0))
    assert next_opening(h, utc(2026, 12, 31, 18, 0)) == utc(2027, 1, 2, 9, 0)


def test_holiday_is_the_local_date_of_the_line() -> None:
    # 2026-01-05 08:00 in Kolkata is 2026-01-05 02:30 UTC; 2026-01-06 02:00 in Kolkata is still Jan 5 in UTC.
    h = hours(timezone="Asia/Kolkata", weekly={d: ["00:00-24:00"] for d in WEEKDAYS}, holidays=["2026-01-06"])
    assert is_open(h, utc(2026, 1, 5, 18, 29))
    assert not is_open(h, utc(2026, 1, 5, 18, 30))
    assert next_opening(h, utc(2026, 1, 5, 18, 30)) == utc(2026, 1, 6, 18, 30)


def test_not_a_real_dated_holiday_is_ignored() -> None:
    h = hours(weekly={"mon": ["09:00-18:00"]}, holidays=["2026-02-30"])
    assert is_open(h, utc(2026, 3, 2, 10, 0))


def test_day_off_overrides_weekly() -> None:
    h = hours(weekly={d: ["09:00-18:00"] for d in WEEKDAYS}, days_off=["sat", "sun"])
    assert not is_open(h, utc(2026, 1, 10, 10, 0))
    assert not is_open(h, utc(2026, 1, 11, 10, 0))
    assert next_opening(h, utc(2026, 1, 9, 18, 0)) == utc(2026, 1, 12, 9, 0)


def test_schedule_that_never_opens() -> None:
    nothing = hours(weekly={})
    all_off = hours(weekly={"mon": ["09:00-18:00"]}, days_off=["mon"])
    empty_days = hours(weekly={"mon": [], "tue": []})
    t = utc(2026, 1, 5, 10, 0)
    for h in (nothing, all_off, empty_days):
        assert not is_open(h, t)
        assert next_opening(h, t) is None
        assert next_closing(h, t) == t


def test_disabled_hours_are_always_open() -> None:
    h = HoursConfig(enabled=False, weekly={"mon": ["09:00-10:00"]}, days_off=list(WEEKDAYS))
    t = utc(2026, 1, 6, 3, 0)
    assert is_open(h, t)
    assert next_opening(h, t) == t
    assert next_closing(h, t) is None


# --- time zones --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "opens_utc"),
    [
        ("Europe/Riga", utc(2026, 1, 5, 7, 0)),  # EET +02:00
        ("America/New_York", utc(2026, 1, 5, 14, 0)),  # EST -05:00
        ("Asia/Kolkata", utc(2026, 1, 5, 3, 30)),  # IST +05:30
        ("Pacific/Chatham", utc(2026, 1, 4, 19, 15)),  # CHADT +13:45 (southern summer)
    ],
)
def test_spans_are_in_the_lines_local_time(zone: str, opens_utc: datetime) -> None:
    h = hours(timezone=zone, weekly={"mon": ["09:00-18:00"]})
    assert next_opening(h, opens_utc - timedelta(hours=30)) == opens_utc
    assert is_open(h, opens_utc)
    assert not is_open(h, opens_utc - timedelta(seconds=1))
    assert next_closing(h, opens_utc) == opens_utc + timedelta(hours=9)


def test_chatham_standard_time_is_plus_1245() -> None:
    h = hours(timezone="Pacific/Chatham", weekly={"mon": ["09:00-18:00"]})
    # 2026-06-01 is a Monday, CHAST +12:45.
    assert next_opening(h, utc(2026, 5, 30)) == utc(2026, 5, 31, 20, 15)


def test_summer_and_winter_offsets_in_riga() -> None:
    h = hours(timezone="Europe/Riga", weekly={"mon": ["09:00-18:00"]})
    assert next_opening(h, utc(2026, 1, 4)) == utc(2026, 1, 5, 7, 0)
    assert next_opening(h, utc(2026, 7, 5)) == utc(2026, 7, 6, 6, 0)


# --- DST ---------------------------------------------------------------------------------------
# Riga:    2026-03-29 (Sun) 03:00 EET -> 04:00 EEST (01:00 UTC); 2026-10-25 (Sun) 04:00 EEST -> 03:00 EET (01:00 UTC).
# New York: 2026-03-08 (Sun) 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 (Sun) 02:00 EDT -> 01:00 EST (06:00 UTC).


def test_span_wholly_inside_the_spring_forward_gap_never_opens_new_york() -> None:
    h = hours(timezone="America/New_York", weekly={"sun": ["02:00-03:00"]})
    day_start = local(NEW_YORK, 2026, 3, 8, 0, 0)
    for minutes in range(0, 24 * 60, 7):
        assert not is_open(h, day_start + timedelta(minutes=minutes))
    # The next Sunday has a normal 02:00-03:00 EDT.
    assert next_opening(h, day_start) == local(NEW_YORK, 2026, 3, 15, 2, 0)


def test_span_wholly_inside_the_spring_forward_gap_never_opens_riga() -> None:
    h = hours(timezone="Europe/Riga", weekly={"sun": ["03:00-04:00"]})
    assert next_opening(h, utc(2026, 3, 28)) == local(RIGA, 2026, 4, 5, 3, 0)


def test_span_starting_in_the_gap_opens_when_the_clock_jumps() -> None:
    ny = hours(timezone="America/New_York", weekly={"sun": ["02:30-04:00"]})
    assert next_opening(ny, utc(2026, 3, 8)) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert not is_open(ny, utc(2026, 3, 8, 6, 59, 59))  # 01:59:59 EST
    assert next_closing(ny, utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 8, 8, 0)  # 04:00 EDT
    riga = hours(timezone="Europe/Riga", weekly={"sun": ["03:30-05:00"]})
    assert next_opening(riga, utc(2026, 3, 28)) == utc(2026, 3, 29, 1, 0)  # 04:00 EEST


def test_span_ending_in_the_gap_closes_when_the_clock_jumps() -> None:
    h = hours(timezone="America/New_York", weekly={"sun": ["00:00-02:30"]})
    assert is_open(h, utc(2026, 3, 8, 6, 59))  # 01:59 EST
    assert next_closing(h, utc(2026, 3, 8, 5, 0)) == utc(2026, 3, 8, 7, 0)


def test_fall_back_span_start_uses_the_first_occurrence_and_keeps_the_repeated_hour() -> None:
    ny = hours(timezone="America/New_York", weekly={"sun": ["01:30-03:00"]})
    assert next_opening(ny, utc(2026, 11, 1)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert is_open(ny, local(NEW_YORK, 2026, 11, 1, 1, 10, fold=1))  # 01:10 EST, the repeat
    assert next_closing(ny, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 8, 0)  # 03:00 EST
    riga = hours(timezone="Europe/Riga", weekly={"sun": ["03:30-05:00"]})
    assert next_opening(riga, utc(2026, 10, 24)) == utc(2026, 10, 25, 0, 30)  # 03:30 EEST
    assert next_closing(riga, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 3, 0)  # 05:00 EET


def test_fall_back_span_end_uses_the_first_occurrence() -> None:
    ny = hours(timezone="America/New_York", weekly={"sun": ["00:00-01:30"]})
    assert next_closing(ny, utc(2026, 11, 1, 4, 0)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert not is_open(ny, local(NEW_YORK, 2026, 11, 1, 1, 10, fold=1))  # the clock shows 01:10 again: closed
    riga = hours(timezone="Europe/Riga", weekly={"sun": ["02:00-03:30"]})
    assert next_closing(riga, utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 0, 30)
    assert not is_open(riga, local(RIGA, 2026, 10, 25, 3, 15, fold=1))


def test_dst_day_spans_are_real_time_not_wall_time_length() -> None:
    h = hours(timezone="Europe/Riga", weekly={"sun": ["00:00-12:00"]})
    spring = next_opening(h, utc(2026, 3, 28))
    autumn = next_opening(h, utc(2026, 10, 24))
    assert spring is not None and autumn is not None
    assert next_closing(h, spring) == spring + timedelta(hours=11)
    assert next_closing(h, autumn) == autumn + timedelta(hours=13)


def test_chatham_dst_days() -> None:
    # 2026-04-05 (Sun) 03:45 CHADT -> 02:45 CHAST; 2026-09-27 (Sun) 02:45 CHAST -> 03:45 CHADT.
    h = hours(timezone="Pacific/Chatham", weekly={"sun": ["03:00-04:00"]})
    assert next_opening(h, utc(2026, 4, 4)) == local(CHATHAM, 2026, 4, 5, 3, 0)  # first 03:00 (CHADT)
    assert next_closing(h, local(CHATHAM, 2026, 4, 5, 3, 0)) == local(CHATHAM, 2026, 4, 5, 4, 0)
    assert next_opening(h, utc(2026, 9, 26)) == local(CHATHAM, 2026, 9, 27, 3, 45)  # the jump


# --- properties --------------------------------------------------------------------------------

SPAN_GRID = 15  # minutes; fine enough to hit Chatham's :45 and Kolkata's :30


@st.composite
def spans(draw: st.DrawFn) -> str:
    a = draw(st.integers(0, 96 - 1)) * SPAN_GRID
    b = draw(st.integers(a // SPAN_GRID + 1, 96)) * SPAN_GRID
    return f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"


# Instants near DST changes in the zones under test, so the properties meet gaps and overlaps often.
DST_ANCHORS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 14),
    utc(2026, 9, 26, 14),
    utc(2027, 3, 28, 1),
]
instants = st.one_of(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)),
    st.builds(
        lambda anchor, minutes: anchor + timedelta(minutes=minutes),
        st.sampled_from(DST_ANCHORS),
        st.integers(-3 * 24 * 60, 3 * 24 * 60),
    ),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[HoursConfig, datetime]:
    now = draw(instants)
    zone = draw(st.sampled_from(ZONES))
    weekly = draw(st.dictionaries(st.sampled_from(WEEKDAYS), st.lists(spans(), max_size=3), max_size=7))
    days_off = draw(st.lists(st.sampled_from(WEEKDAYS), max_size=3, unique=True))
    near = st.integers(-2, 12).map(lambda k: now.date() + timedelta(days=k))
    holidays = draw(st.lists(st.one_of(near.map(date.isoformat), near.map(lambda d: f"{d.month:02d}-{d.day:02d}")), max_size=4))
    h = HoursConfig(enabled=True, timezone=zone, weekly=weekly, days_off=days_off, holidays=holidays)
    return h, now


def grid_sample(start: datetime, end: datetime, limit: int = 40) -> list[datetime]:
    """Minute-grid instants in [start, end): all of them if few, else an even sample plus the edges."""
    first = start.replace(second=0, microsecond=0)
    if first < start:
        first += timedelta(minutes=1)
    total = int((end - first).total_seconds() // 60) + 1
    if total <= 0:
        return []
    step = max(1, total // limit)
    picks = [first + timedelta(minutes=i) for i in range(0, total, step)]
    picks += [end - timedelta(minutes=1), end - timedelta(seconds=1)]
    return [p for p in picks if start <= p < end]


def wall_clock_open(h: HoursConfig, t: datetime) -> bool:
    """Independent oracle, right wherever the UTC offset is steady: the local day's spans hold the wall time."""
    tz = ZoneInfo(h.timezone)
    wall = t.astimezone(tz)
    day = wall.date()
    name = WEEKDAYS[day.weekday()]
    if name in h.days_off or day.isoformat() in h.holidays or f"{day.month:02d}-{day.day:02d}" in h.holidays:
        return False
    minute = wall.hour * 60 + wall.minute + wall.second / 60 + wall.microsecond / 60e6
    return any(a <= minute < b for a, b in map(parse_span, h.weekly.get(name, [])))


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(cases())
def test_is_open_matches_the_wall_clock_away_from_offset_changes(case: tuple[HoursConfig, datetime]) -> None:
    h, t = case
    tz = ZoneInfo(h.timezone)
    steady = {(t + timedelta(hours=k)).astimezone(tz).utcoffset() for k in (-26, 0, 26)}
    if len(steady) == 1:
        assert is_open(h, t) == wall_clock_open(h, t)


@FAST
@given(cases())
def test_next_opening_is_open_and_nothing_before_it_is(case: tuple[HoursConfig, datetime]) -> None:
    h, t = case
    got = next_opening(h, t)
    if is_open(h, t):
        assert got == t
        return
    if got is None:
        for p in grid_sample(t, t + timedelta(days=15)):
            assert not is_open(h, p)
        return
    assert got > t and got.tzinfo is UTC
    assert is_open(h, got)
    for p in grid_sample(t, got):
        assert not is_open(h, p), p


@FAST
@given(cases())
def test_next_closing_is_closed_and_everything_before_it_is_open(case: tuple[HoursConfig, datetime]) -> None:
    h, t = case
    got = next_closing(h, t)
    if not is_open(h, t):
        assert got == t
        return
    if got is None:  # open round the clock
        for p in grid_sample(t, t + timedelta(days=15)):
            assert is_open(h, p)
        return
    assert got > t and got.tzinfo is UTC
    assert not is_open(h, got)
    for p in grid_sample(t, got):
        assert is_open(h, p), p


@settings(max_examples=50, deadline=None)
@given(cases())
def test_disabled_hours_are_always_open_whatever_the_schedule(case: tuple[HoursConfig, datetime]) -> None:
    h, t = case
    off = HoursConfig(enabled=False, timezone=h.timezone, weekly=h.weekly, days_off=h.days_off, holidays=h.holidays)
    assert is_open(off, t)
    assert next_opening(off, t) == t
    assert next_closing(off, t) is None
