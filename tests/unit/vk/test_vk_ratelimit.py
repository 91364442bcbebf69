from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway_vk.core.ratelimit import TokenBucket


def test_a_burst_goes_at_once_then_callers_are_spaced_by_the_rate() -> None:
    bucket = TokenBucket(rate=20.0, burst=20.0)
    waits = [bucket.reserve(100.0) for _ in range(22)]
    assert waits[:20] == [0.0] * 20
    assert waits[20:] == [0.05, 0.1]
    assert bucket.reserve(101.15) == 0.0  # refilled meanwhile


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200), st.floats(min_value=1, max_value=50))
def test_calls_never_exceed_the_rate_over_any_window(gaps: list[float], rate: float) -> None:
    bucket = TokenBucket(rate=rate, burst=rate)
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        starts.append(now + bucket.reserve(now))
    starts.sort()
    # in any window of length w there are at most burst + rate*w calls
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= rate + rate * (starts[j] - first) + 1e-6
