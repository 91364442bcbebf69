from __future__ import annotations

import msgspec
import pytest
from argon2 import PasswordHasher

from desk.auth import PasswordChecker, Signer, access_problem, same_origin
from desk.settings import Settings
from openlines.settings import SettingsError, load_settings
from openlines.state import OperatorAccount

SECRET = "s3cret-for-tests-0123456789-Kq7Zt9Wm3xRv"
NOW = 1_800_000_000.0
ANNA = OperatorAccount(id="anna", name="Anna", password_hash="$argon2id$hash-1", roles=["operator"])
BORIS = OperatorAccount(id="boris", name="Boris", password_hash="$argon2id$hash-2", roles=["operator"])


def test_cookie_round_trip_names_the_operator() -> None:
    signer = Signer(SECRET)
    value, issued = signer.issue(ANNA, NOW, 3600)
    read = signer.read(value, NOW + 10)
    assert read == issued
    assert read is not None and read.operator_id == "anna" and read.expires == int(NOW) + 3600


@pytest.mark.parametrize(
    "changed",
    [
        {"password_hash": "$argon2id$hash-new"},
        {"roles": ["operator", "supervisor"]},
        {"roles": []},
        {"permissions": []},
    ],
)
def test_a_cookie_does_not_outlive_a_change_of_password_roles_or_permissions(changed: dict[str, object]) -> None:
    signer = Signer(SECRET)
    value, _ = signer.issue(ANNA, NOW, 3600)
    session = signer.read(value, NOW)
    assert session is not None and signer.current(session, ANNA)
    after = msgspec.structs.replace(ANNA, **changed)
    assert not signer.current(session, after)


def test_renaming_an_operator_or_reordering_roles_keeps_the_session() -> None:
    signer = Signer(SECRET)
    session = signer.read(signer.issue(ANNA, NOW, 3600)[0], NOW)
    assert session is not None
    assert signer.current(session, msgspec.structs.replace(ANNA, name="Anna P."))
    two_roles = msgspec.structs.replace(ANNA, roles=["supervisor", "operator"])
    session2 = signer.read(signer.issue(two_roles, NOW, 3600)[0], NOW)
    assert session2 is not None and signer.current(session2, msgspec.structs.replace(two_roles, roles=["operator", "supervisor"]))


def test_the_stamp_reveals_nothing_without_the_secret() -> None:
    # Another secret, another stamp for the same account: the digest is keyed, not a hash of the hash.
    assert Signer(SECRET).stamp(ANNA) != Signer("another-secret-0123456789").stamp(ANNA)
    assert ANNA.password_hash not in Signer(SECRET).stamp(ANNA)


def test_a_session_carried_over_to_a_new_stamp_keeps_its_nonce_and_expiry() -> None:
    signer = Signer(SECRET)
    _, first = signer.issue(ANNA, NOW, 3600)
    changed = msgspec.structs.replace(ANNA, password_hash="$argon2id$hash-new")
    _, second = signer.issue(changed, NOW + 60, 3600, nonce=first.nonce, expires=first.expires)
    assert (second.nonce, second.expires) == (first.nonce, first.expires)
    assert signer.current(second, changed) and not signer.current(first, changed)


def test_cookies_of_the_earlier_format_are_refused() -> None:
    import base64
    import json

    signer = Signer(SECRET)
    payload = base64.urlsafe_b64encode(json.dumps({"o": "anna", "n": "n0nce", "e": NOW + 3600}).encode()).rstrip(b"=").decode()
    assert signer.read(f"v1.{payload}.{signer._sign(f'v1.{payload}')}", NOW) is None


def test_cookie_expires() -> None:
    signer = Signer(SECRET)
    value, _ = signer.issue(ANNA, NOW, 3600)
    assert signer.read(value, NOW + 3599) is not None
    assert signer.read(value, NOW + 3600) is None


@pytest.mark.parametrize("where", [0, 5, 20, -3, -1])
def test_tampered_cookie_is_refused(where: int) -> None:
    signer = Signer(SECRET)
    value, _ = signer.issue(ANNA, NOW, 3600)
    flipped = "A" if value[where] != "A" else "B"
    assert signer.read(value[:where] + flipped + value[where + 1 :] if where != -1 else value[:-1] + flipped, NOW) is None


def test_cookie_with_another_operator_swapped_in_is_refused() -> None:
    signer = Signer(SECRET)
    anna, _ = signer.issue(ANNA, NOW, 3600)
    boris, _ = signer.issue(BORIS, NOW, 3600)
    forged = ".".join([*boris.split(".")[:2], anna.split(".")[2]])
    assert signer.read(forged, NOW) is None


def test_cookie_from_another_secret_is_refused() -> None:
    value, _ = Signer("another-secret-0123456789").issue(ANNA, NOW, 3600)
    assert Signer(SECRET).read(value, NOW) is None


@pytest.mark.parametrize("junk", ["", "x", "v1.a.b", "v1..", "v2.e30.abc", "a.b.c.d"])
def test_junk_cookies_are_refused(junk: str) -> None:
    assert Signer(SECRET).read(junk, NOW) is None


def test_csrf_token_is_bound_to_the_login() -> None:
    signer = Signer(SECRET)
    _, first = signer.issue(ANNA, NOW, 3600)
    _, second = signer.issue(ANNA, NOW, 3600)
    token = signer.csrf_token(first.nonce)
    assert signer.csrf_ok(first.nonce, token)
    assert not signer.csrf_ok(second.nonce, token)
    assert not signer.csrf_ok(first.nonce, None)
    assert not signer.csrf_ok(first.nonce, "")
    assert not signer.csrf_ok(first.nonce, token[:-1])


def test_csrf_token_is_not_a_cookie_signature() -> None:
    signer = Signer(SECRET)
    value, session = signer.issue(ANNA, NOW, 3600)
    body = value.rsplit(".", 1)[0]
    assert signer.read(f"{body}.{signer.csrf_token(body)}", NOW) is None
    assert signer.csrf_token(session.nonce) != value.rsplit(".", 1)[1]


def test_login_form_token_needs_its_pre_login_cookie() -> None:
    signer = Signer(SECRET)
    token = signer.login_token("nonce-1")
    assert signer.login_token_ok("nonce-1", token)
    assert not signer.login_token_ok("nonce-2", token)
    assert not signer.login_token_ok(None, token)
    assert not signer.login_token_ok("nonce-1", signer.csrf_token("nonce-1"))


@pytest.mark.parametrize(
    ("origin", "referer", "ok"),
    [
        ("http://desk.example:8080", None, True),
        ("https://evil.example", None, False),
        ("null", None, False),
        (None, "http://desk.example:8080/", True),
        (None, "https://evil.example/page", False),
        (None, None, True),
    ],
)
def test_same_origin(origin: str | None, referer: str | None, ok: bool) -> None:
    assert same_origin(origin, referer, "desk.example:8080") is ok


def test_password_verification_with_a_real_argon2_hash() -> None:
    stored = PasswordHasher().hash("correct horse")
    checker = PasswordChecker()
    assert checker.verify(stored, "correct horse")
    assert not checker.verify(stored, "wrong horse")
    assert not checker.verify(None, "correct horse")  # unknown user: dummy verify, refused
    assert not checker.verify("not-a-hash", "correct horse")


def test_demo_hash_of_the_example_config_verifies() -> None:
    demo = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"
    assert PasswordChecker().verify(demo, "demo")


def test_access_needs_the_permission_and_an_operator_role() -> None:
    assert access_problem(OperatorAccount(id="a", name="A", roles=["operator"], permissions=["openlines"])) is None
    assert access_problem(OperatorAccount(id="a", name="A", roles=["supervisor"], permissions=["openlines"])) is None
    no_perm = access_problem(OperatorAccount(id="a", name="A", roles=["operator"], permissions=[]))
    assert no_perm is not None and "open-lines permission" in no_perm
    no_role = access_problem(OperatorAccount(id="a", name="A", roles=["admin"], permissions=["openlines"]))
    assert no_role is not None and "role" in no_role


def test_settings_require_a_long_cookie_secret() -> None:
    with pytest.raises(SettingsError, match="OPENLINES_COOKIE_SECRET must be set"):
        load_settings(Settings, env={})
    with pytest.raises(SettingsError, match="OPENLINES_COOKIE_SECRET is not a usable secret: it is 5 characters"):
        load_settings(Settings, env={"OPENLINES_COOKIE_SECRET": "short"})
    # What deploy/env.example and deploy/k8s/secrets.yaml once shipped: long enough, and public.
    for placeholder in ("change-me-to-32-random-characters", "change-me-32-random-characters-please", "x" * 40):
        with pytest.raises(SettingsError, match=r"OPENLINES_COOKIE_SECRET is not a usable secret.*openssl rand -hex 32"):
            load_settings(Settings, env={"OPENLINES_COOKIE_SECRET": placeholder})
    good = "0d6f2b8e4a1c9f7e3b5d0a2c4e6f8b1d"
    ok = load_settings(Settings, env={"OPENLINES_COOKIE_SECRET": good, "OPENLINES_COOKIE_SECURE": "true"})
    assert ok.cookie_secure is True and ok.http_port == 8080 and ok.session_hours == 12
    assert ok.public()["cookie_secret"] == "***"
