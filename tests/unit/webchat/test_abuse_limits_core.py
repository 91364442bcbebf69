"""The pure parts of the widget's abuse limits: token buckets and the client address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_webchat.core.address import client_key, parse_networks
from gateway_webchat.core.limits import Buckets, Rate

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8")


def test_a_burst_is_allowed_then_refused_with_the_seconds_until_the_next_token() -> None:
    b = Buckets(Rate(per_minute=20, burst=5))
    assert all(b.take("v", now=100.0).allowed for _ in range(5))
    refused = b.take("v", now=100.0)
    assert not refused.allowed and refused.retry_after == 3  # one token every 3 s
    assert b.take("other", now=100.0).allowed  # keys are separate
    assert not b.take("v", now=102.0).allowed
    assert b.take("v", now=103.0).allowed


def test_a_refusal_tells_at_least_one_second_and_a_slow_rate_tells_more() -> None:
    b = Buckets(Rate(per_minute=1, burst=1))
    assert b.take("ip", now=0.0).allowed
    assert b.take("ip", now=0.0).retry_after == 60
    assert b.take("ip", now=59.5).retry_after == 1


def test_no_limit_when_the_rate_is_zero() -> None:
    b = Buckets(Rate(per_minute=0, burst=0))
    assert all(b.take("v", now=0.0).allowed for _ in range(1000))
    assert len(b) == 0


@given(st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), min_size=1, max_size=200))
def test_never_more_than_burst_plus_the_refill_over_any_stretch(times: list[float]) -> None:
    rate = Rate(per_minute=20, burst=5)
    b = Buckets(rate)
    times.sort()
    allowed = [t for t in times if b.take("v", now=t).allowed]
    if allowed:
        span = allowed[-1] - allowed[0]
        assert len(allowed) <= rate.burst + span * rate.per_minute / 60 + 1e-9


def test_memory_is_bounded_and_refilled_buckets_go_first() -> None:
    b = Buckets(Rate(per_minute=60, burst=2), max_keys=3)
    b.take("old", now=0.0)
    b.take("busy1", now=100.0)
    b.take("busy2", now=100.0)
    b.take("new", now=100.0)  # "old" has refilled long ago: dropped, nothing else
    assert len(b) == 3
    for _ in range(2):
        b.take("busy1", now=100.0)
    assert not b.take("busy1", now=100.0).allowed  # still remembered


def test_client_key_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_key("203.0.113.9", None, PROXIES) == "203.0.113.9"
    # A client cannot pick its address by sending the header itself.
    assert client_key("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_key("10.1.2.3", "198.51.100.1", PROXIES) == "198.51.100.1"
    # Read from the right: what the client wrote before our proxy appended the real address is ignored.
    assert client_key("10.1.2.3", "1.1.1.1, 198.51.100.1", PROXIES) == "198.51.100.1"
    assert client_key("10.1.2.3", "1.1.1.1, 198.51.100.1, 192.168.1.1", PROXIES) == "198.51.100.1"
    assert client_key("10.1.2.3", "garbage, 10.0.0.5", PROXIES) == "10.0.0.5"
    assert client_key("10.1.2.3", "", PROXIES) == "10.1.2.3"


def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    a = client_key("2001:db8:1:2::1", None, PROXIES)
    assert a == client_key("2001:db8:1:2:ffff::9", None, PROXIES) == "2001:db8:1:2::/64"
    assert a != client_key("2001:db8:1:3::1", None, PROXIES)
    assert client_key("::ffff:203.0.113.9", None, PROXIES) == "203.0.113.9"
    assert client_key("fd00::1", "[2001:db8:5::7]", PROXIES) == "2001:db8:5::/64"


def test_a_bad_trusted_proxy_entry_is_named() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        parse_networks("10.0.0.0/8, nope")
