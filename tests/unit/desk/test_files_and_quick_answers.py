"""File-name cleaning, type checks and the age of operator uploads; the quick_answers key of a line."""

from __future__ import annotations

import msgspec
import pytest
from nats.js import api as js_api

from desk.files import FileRefused, _Meta, _stored, check, clean_name
from openlines.lines import ConfigError, parse

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("price list.pdf", "price list.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\anna\\scan.jpg", "scan.jpg"),
        ("report%20May.pdf", "report May.pdf"),
        ('evil"; x=.txt', "evil__ x_.txt"),
        ("\x00\x1b[31m.png", "___31m.png"),
        ("...", "file"),
        ("", "file"),
        (None, "file"),
        ("Счёт №5.pdf", "Счёт _5.pdf"),
    ],
)
def test_clean_name(raw: str | None, clean: str) -> None:
    assert clean_name(raw) == clean


def test_a_long_name_keeps_its_extension() -> None:
    name = clean_name("a" * 300 + ".xlsx")
    assert len(name) == 120 and name.endswith(".xlsx")


def test_allowed_types_and_content() -> None:
    check("image/png", PNG_HEAD)
    check("application/pdf", b"%PDF-1.7")
    check("image/webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ")
    with pytest.raises(FileRefused, match="its content is not"):
        check("image/webp", b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(FileRefused, match="cannot be sent"):
        check("text/html", b"<html>")
    with pytest.raises(FileRefused, match="its content is not"):
        check("image/png", b"GIF89a......")
    with pytest.raises(FileRefused, match="empty"):
        check("text/plain", b"")


LINE = """
[operators.anna]
name = "Anna"

[[lines]]
id = "support"
name = "Support"
quick_answers = {answers}
"""


def test_quick_answers_are_optional_and_kept_in_order() -> None:
    cfg = parse(LINE.format(answers='["Hello!", "One moment, please."]'))
    assert cfg.lines[0].quick_answers == ["Hello!", "One moment, please."]
    assert parse(LINE.replace("quick_answers = {answers}", "")).lines[0].quick_answers == []


@pytest.mark.parametrize(
    ("answers", "problem"),
    [
        ('["Hi", "  "]', "lines[0] (support).quick_answers[1]: must not be empty"),
        ('["Hi", "Hi"]', "lines[0] (support).quick_answers: the same answer is listed twice"),
        (f'["{"x" * 4001}"]', "lines[0] (support).quick_answers[0]: 4001 characters; at most 4000"),
        ("[" + ", ".join(f'"a{i}"' for i in range(51)) + "]", "lines[0] (support).quick_answers: 51 answers; at most 50"),
        ("[1, 2]", "lines[0].quick_answers[0]: Expected `str`, got `int`"),
    ],
)
def test_bad_quick_answers_are_named(answers: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(LINE.format(answers=answers))
    assert problem in str(caught.value)


def _info(session: str, uploaded_at: float | None) -> js_api.ObjectInfo:
    meta = _Meta(name="a.pdf", mime="application/pdf", session=session, uploaded_at=uploaded_at)
    return js_api.ObjectInfo(name=f"{session}/f1", bucket="b", nuid="n", size=3, description=msgspec.json.encode(meta).decode())


def test_a_file_past_its_age_or_of_another_chat_is_not_found() -> None:
    assert _stored("s1", "f1", _info("s1", 1000.0), oldest=999.0) is not None
    assert _stored("s1", "f1", _info("s1", 1000.0), oldest=1001.0) is None  # NATS deletes it about now
    assert _stored("s1", "f1", _info("s1", None), oldest=1001.0) is not None  # stored before ages were recorded
    assert _stored("s2", "f1", _info("s1", 1000.0)) is None
