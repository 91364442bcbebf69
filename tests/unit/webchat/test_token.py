from __future__ import annotations

import pytest

from gateway_webchat import token
from gateway_webchat.token import TokenError, TokenExpired, VisitorToken, issue, sign

TTL = 24 * 3600
GRACE = 7 * 24 * 3600


def verify(secret: str, tok: str, account: str, now: float = 1000.0) -> VisitorToken:
    return token.verify(secret, tok, account, now=now, ttl=TTL, grace=GRACE)


SECRET = "unit-secret-0123456789abcdef-Kq7Zt9Wm3xRv"


def test_issued_token_verifies_for_its_account() -> None:
    tok, visitor = issue(SECRET, "demo", now=1_700_000_000.7)
    assert visitor.account == "demo" and visitor.issued_at == 1_700_000_000
    assert len(visitor.visitor) >= 16
    assert verify(SECRET, tok, "demo", now=1_700_000_000 + TTL) == visitor


def test_each_new_visitor_gets_a_different_id_and_the_token_is_url_safe() -> None:
    tokens = {issue(SECRET, "demo", now=0)[0] for _ in range(50)}
    assert len(tokens) == 50
    for tok in tokens:
        assert all(c.isalnum() or c in "-_." for c in tok)


def test_token_for_another_account_is_refused() -> None:
    tok, _ = issue(SECRET, "shop", now=0)
    with pytest.raises(TokenError, match="another account"):
        verify(SECRET, tok, "demo")


def test_token_signed_with_another_secret_is_refused() -> None:
    tok, _ = issue("some-other-secret-xxxxxxxx", "demo", now=0)
    with pytest.raises(TokenError, match="signature"):
        verify(SECRET, tok, "demo")


@pytest.mark.parametrize("part", [1, 2, 3, 4])
def test_tampering_with_any_part_is_refused(part: int) -> None:
    tok, _ = issue(SECRET, "demo", now=1000)
    pieces = tok.split(".")
    pieces[part] = ("B" if pieces[part][0] != "B" else "C") + pieces[part][1:]
    if part == 3:
        pieces[part] = "1001"
    with pytest.raises(TokenError):
        verify(SECRET, ".".join(pieces), "demo")


def test_swapping_visitor_ids_between_tokens_is_refused() -> None:
    a, _ = issue(SECRET, "demo", now=0)
    _, vb = issue(SECRET, "demo", now=0)
    pieces = a.split(".")
    pieces[2] = vb.visitor
    with pytest.raises(TokenError):
        verify(SECRET, ".".join(pieces), "demo")


@pytest.mark.parametrize(
    "garbage",
    ["", "x", "v1.demo", "v2.demo.AAAAAAAAAAAAAAAAAAAAAA.1.sig", "a.b.c.d.e", "é" * 10, "v1." + "a" * 600, "....."],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, garbage, "demo")


def test_sign_refuses_values_that_are_not_subject_safe() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, VisitorToken("de.mo", "A" * 22, 0))
    with pytest.raises(ValueError):
        sign(SECRET, VisitorToken("demo", "short", 0))


def test_a_token_past_its_validity_is_expired_but_renewable_within_the_grace() -> None:
    tok, visitor = issue(SECRET, "demo", now=1000)
    with pytest.raises(TokenExpired, match="expired; renew") as caught:
        verify(SECRET, tok, "demo", now=1000 + TTL + 1)
    assert caught.value.token == visitor
    with pytest.raises(TokenExpired):
        verify(SECRET, tok, "demo", now=1000 + TTL + GRACE)


def test_a_token_past_the_grace_is_refused_for_good() -> None:
    tok, _ = issue(SECRET, "demo", now=1000)
    with pytest.raises(TokenError, match="too long ago") as caught:
        verify(SECRET, tok, "demo", now=1000 + TTL + GRACE + 1)
    assert not isinstance(caught.value, TokenExpired)


def test_a_token_from_the_future_is_refused_beyond_a_little_clock_skew() -> None:
    tok, visitor = issue(SECRET, "demo", now=10_000)
    assert verify(SECRET, tok, "demo", now=10_000 - token.CLOCK_SKEW) == visitor
    with pytest.raises(TokenError, match="future"):
        verify(SECRET, tok, "demo", now=10_000 - token.CLOCK_SKEW - 1)


def test_an_expired_token_with_a_bad_signature_is_not_renewable() -> None:
    tok, _ = issue("some-other-secret-xxxxxxxx", "demo", now=0)
    with pytest.raises(TokenError, match="signature") as caught:
        verify(SECRET, tok, "demo", now=TTL + 5)
    assert not isinstance(caught.value, TokenExpired)


def test_issue_for_a_known_visitor_keeps_the_visitor() -> None:
    _, first = issue(SECRET, "demo", now=0)
    tok, again = issue(SECRET, "demo", now=500, visitor=first.visitor)
    assert (again.visitor, again.issued_at) == (first.visitor, 500)
    assert verify(SECRET, tok, "demo", now=600) == again
