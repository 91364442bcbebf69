"""Links to files in the widget: signed for one visitor, for one file, for a while."""

from __future__ import annotations

import pytest

from gateway_webchat.files import BadLink, Claim, Links, owns
from openlines.envelopes import Attachment

SECRET = "links-secret-0123456789abcdef-Kq7Zt9Wm3xRv"
DESK_FILE = Attachment(kind="file", name="price list.pdf", ref="ol-desk-files:s-1/AbCdEfGhIjKlMnOpQrStUvWx")
OWN_FILE = Attachment(kind="image", name="me.png", ref="ol-webchat-files:demo/visitor-aaaaaaaaaaaa/FileIdFileIdFileIdFile")


def parts(path: str) -> tuple[str, str, str]:
    _, files, claim, signature, name = path.split("/")
    assert files == "files"
    return claim, signature, name


def test_a_link_opens_its_file_for_its_visitor_until_it_expires() -> None:
    links = Links(SECRET, ttl=3600)
    claim, signature, name = parts(links.path("demo", "visitor-aaaaaaaaaaaa", DESK_FILE, now=1000))
    assert name == "price%20list.pdf"
    got = links.verify(claim, signature, now=1000 + 3599)
    assert got == Claim(account="demo", visitor="visitor-aaaaaaaaaaaa", ref=DESK_FILE.ref, expires=4600)
    with pytest.raises(BadLink, match="expired"):
        links.verify(claim, signature, now=4601)


def test_a_changed_claim_or_another_servers_signature_opens_nothing() -> None:
    links = Links(SECRET, ttl=3600)
    claim, signature, _ = parts(links.path("demo", "visitor-aaaaaaaaaaaa", DESK_FILE, now=1000))
    other = Links("another-secret-0123456789abcdef-Kq7Zt9W", ttl=3600)
    other_claim, other_signature, _ = parts(other.path("demo", "visitor-aaaaaaaaaaaa", DESK_FILE, now=1000))
    for c, s in ((claim[:-2] + "AA", signature), (claim, signature[:-2] + "AA"), (other_claim, other_signature), ("x", "y")):
        with pytest.raises(BadLink):
            links.verify(c, s, now=1000)


def test_only_stored_files_get_links_and_a_visitors_link_opens_only_their_own_uploads() -> None:
    links = Links(SECRET, ttl=3600)
    assert links.path("demo", "v", Attachment(kind="file", url="https://desk.example.com/files/x"), now=0) == ""
    assert links.path("demo", "v", Attachment(kind="image", ref="AgACAgIAAxkBAAI"), now=0) == ""  # a Telegram file id
    assert links.path("demo", "v", Attachment(kind="file", ref="ol-email-files:support/ab12"), now=0) == ""
    assert owns(Claim("demo", "visitor-aaaaaaaaaaaa", OWN_FILE.ref, 0))
    assert not owns(Claim("demo", "visitor-bbbbbbbbbbbb", OWN_FILE.ref, 0))
    assert not owns(Claim("shop", "visitor-aaaaaaaaaaaa", OWN_FILE.ref, 0))
    assert owns(Claim("demo", "anyone-at-all-xxxx", DESK_FILE.ref, 0))  # an operator's file, sent to this visitor
