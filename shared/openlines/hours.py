"""Business hours: is a line open at an instant, and when does it next open or close.

Pure: the caller passes ``now`` (timezone-aware); nothing here reads the clock.

Model. Each listed span of a local day ("09:00-18:00", end exclusive, "24:00"
allowed) is turned into one stretch of real time: from the instant the line's
wall clock first shows the start to the instant it shows the end. A holiday
("YYYY-MM-DD" that date, "MM-DD" every year) or a weekday in ``days_off``
drops every span of that local day; a span of the previous day that ends at
"24:00" still runs up to the holiday's midnight. Stretches that touch or
overlap are one open period, so "22:00-24:00" on Monday and "00:00-06:00" on
Tuesday are open without a break at midnight. ``enabled = False`` means
always open.

Daylight saving time, the rules chosen:

* A local time that does not exist (spring-forward gap) stands for the first
  instant that exists after it, i.e. the moment of the transition. A span
  starting inside the gap opens when the clock jumps; one ending inside the
  gap closes then; a span wholly inside the gap ("02:00-03:00" in New York on
  its spring-forward day) is empty and never opens.
* A local time that occurs twice (fall-back overlap) means its first
  occurrence (``fold=0``), for a span's start and its end alike. So
  "01:30-03:00" in New York on its fall-back day is open 01:30 EDT to
  03:00 EST (two and a half real hours, the repeated hour included), and
  "00:00-01:30" closes at the first 01:30 and stays closed when the clock
  shows 01:00-01:30 again.

Search bounds. ``next_opening`` and ``next_closing`` walk day by day, at most
370 days plus a year (for yearly holidays) past ``now``, extended past the last
dated holiday; a schedule that stays closed that long is treated as never
opening. A line open round the clock through that window closes only on a
later holiday (a dated one, or a yearly "02-29"), which is found directly.

A dated holiday that is not a real date ("2026-02-30") never happens and is
ignored, like "02-30" as a yearly one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from openlines.lines import WEEKDAYS, HoursConfig, parse_span

_SEARCH_DAYS = 370 + 366
_ONE_DAY = timedelta(days=1)
# Keep date arithmetic clear of date.min / date.max.
_FIRST_DAY = date.min + timedelta(days=2)
_LAST_DAY = date.max - timedelta(days=2)

Interval = tuple[datetime, datetime]  # [start, end) in UTC, start < end


@dataclass(frozen=True, slots=True)
class _Schedule:
    tz: ZoneInfo
    spans: tuple[tuple[tuple[int, int], ...], ...]  # by date.weekday(); sorted, merged minutes of the day
    days_off: frozenset[int]  # date.weekday() numbers
    dated: frozenset[date]
    yearly: frozenset[tuple[int, int]]  # (month, day)
    last_dated: date | None

    @property
    def ever_open(self) -> bool:
        return any(self.spans[wd] for wd in range(7) if wd not in self.days_off)

    def closed_all_day(self, day: date) -> bool:
        return day.weekday() in self.days_off or day in self.dated or (day.month, day.day) in self.yearly


def is_open(hours: HoursConfig, now: datetime) -> bool:
    """True when the line takes chats at ``now`` (aware; any zone)."""
    _require_aware(now)
    if not hours.enabled:
        return True
    sched = _schedule_for(hours)
    day = _local_day(sched, now)
    return any(s <= now < e for s, e in _raw_intervals(sched, day - _ONE_DAY, day + _ONE_DAY))


def next_opening(hours: HoursConfig, now: datetime) -> datetime | None:
    """The first instant >= ``now`` at which the line is open, in UTC; ``now`` if open; None if it never opens."""
    _require_aware(now)
    now_utc = now.astimezone(UTC)
    if not hours.enabled:
        return now_utc
    sched = _schedule_for(hours)
    if not sched.ever_open:
        return None
    first = _local_day(sched, now) - _ONE_DAY
    last = max(first, sched.last_dated or first) + timedelta(days=_SEARCH_DAYS)
    for s, e in _raw_intervals(sched, first, last):
        if e > now_utc:
            return max(s, now_utc)
    return None


def next_closing(hours: HoursConfig, now: datetime) -> datetime | None:
    """The first instant >= ``now`` at which the line is closed, in UTC; ``now`` if closed; None if always open."""
    _require_aware(now)
    now_utc = now.astimezone(UTC)
    if not hours.enabled:
        return None
    sched = _schedule_for(hours)
    first = _local_day(sched, now) - _ONE_DAY
    last = first + timedelta(days=_SEARCH_DAYS)
    for s, e in _merged(_raw_intervals(sched, first, last)):
        if e <= now_utc:
            continue
        if s > now_utc:
            return now_utc
        if not is_open(hours, e):
            return e
        # Open without a break through the whole window: every weekday is open
        # round the clock and no day off bites, so only a holiday beyond the
        # window (a dated one, or a yearly "02-29") can close the line.
        return _first_holiday_from(sched, _local_day(sched, e))
    return now_utc


def _first_holiday_from(sched: _Schedule, from_day: date) -> datetime | None:
    candidates = [d for d in sched.dated if d >= from_day]
    for month, dom in sched.yearly:
        # "02-29" may be up to 8 years away (2096 -> 2104).
        for year in range(from_day.year, min(from_day.year + 9, _LAST_DAY.year + 1)):
            try:
                day = date(year, month, dom)
            except ValueError:
                continue
            if day >= from_day:
                candidates.append(day)
                break
    if not candidates:
        return None
    return _wall_to_utc(sched.tz, datetime.combine(min(candidates), time()))


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _local_day(sched: _Schedule, instant: datetime) -> date:
    return min(max(instant.astimezone(sched.tz).date(), _FIRST_DAY), _LAST_DAY)


def _raw_intervals(sched: _Schedule, first: date, last: date) -> Iterator[Interval]:
    """Non-empty open stretches of the local days first..last, in order (may touch across spans/days)."""
    day = max(first, _FIRST_DAY)
    last = min(last, _LAST_DAY)
    while day <= last:
        spans = sched.spans[day.weekday()]
        if spans and not sched.closed_all_day(day):
            midnight = datetime.combine(day, time())
            for a, b in spans:
                start = _wall_to_utc(sched.tz, midnight + timedelta(minutes=a))
                end = _wall_to_utc(sched.tz, midnight + timedelta(minutes=b))
                if start < end:
                    yield start, end
        day += _ONE_DAY


def _merged(intervals: Iterable[Interval]) -> Iterator[Interval]:
    current: Interval | None = None
    for s, e in intervals:
        if current is None:
            current = (s, e)
        elif s <= current[1]:
            current = (current[0], max(current[1], e))
        else:
            yield current
            current = (s, e)
    if current is not None:
        yield current


def _wall_to_utc(tz: ZoneInfo, wall: datetime) -> datetime:
    """Naive local wall time -> UTC instant: ambiguous = first occurrence, nonexistent = end of the gap."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 reads the wall time with the offset before the jump (an
    # instant after the transition) and fold=1 with the offset after it (an
    # instant before). The transition is the first instant whose wall time is
    # >= ``wall``; find it by bisection on whole seconds (tzdata transitions
    # fall on whole seconds).
    lo = int(wall.replace(tzinfo=tz, fold=1).astimezone(UTC).timestamp())  # wall clock < wall
    hi = int(first.timestamp())  # wall clock >= wall
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


_Key = tuple[str, tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...], tuple[str, ...]]


def _schedule_for(hours: HoursConfig) -> _Schedule:
    key: _Key = (
        hours.timezone,
        tuple((day, tuple(spans)) for day, spans in sorted(hours.weekly.items())),
        tuple(sorted(hours.days_off)),
        tuple(sorted(hours.holidays)),
    )
    return _build_schedule(key)


@functools.lru_cache(maxsize=256)
def _build_schedule(key: _Key) -> _Schedule:
    tz_name, weekly, days_off, holidays = key
    spans: list[list[tuple[int, int]]] = [[] for _ in WEEKDAYS]
    for day, day_spans in weekly:
        wd = _weekday(day)
        spans[wd] = _merge_minutes(parse_span(s) for s in day_spans)
    dated: set[date] = set()
    yearly: set[tuple[int, int]] = set()
    for hol in holidays:
        parts = hol.split("-")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f"holiday {hol!r} is not YYYY-MM-DD or MM-DD")
        nums = [int(p) for p in parts]
        try:
            if len(nums) == 3:
                dated.add(date(nums[0], nums[1], nums[2]))
            else:
                date(2000, nums[0], nums[1])  # a leap year: "02-29" is real and matches leap years only
                yearly.add((nums[0], nums[1]))
        except ValueError:
            pass  # well-formed but not a real date: it never happens
    return _Schedule(
        tz=ZoneInfo(tz_name),
        spans=tuple(tuple(s) for s in spans),
        days_off=frozenset(_weekday(d) for d in days_off),
        dated=frozenset(dated),
        yearly=frozenset(yearly),
        last_dated=max(dated) if dated else None,
    )


def _weekday(name: str) -> int:
    try:
        return WEEKDAYS.index(name)
    except ValueError:
        raise ValueError(f"unknown day {name!r} (one of {', '.join(WEEKDAYS)})") from None


def _merge_minutes(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
