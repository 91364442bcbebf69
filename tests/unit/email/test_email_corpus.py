"""The e-mail parser on mails that real clients and servers wrote (not written here).

The corpus lives beside the repository (``../shared/corpus/email``, origin,
licence and edge case of every file in ``../shared/corpus/SOURCES.md``) and is
read in place, never copied. Every file in the folder is a test case: those in
``EXPECTED`` are checked against what the gateway must publish; any other file
must still parse without an exception and give a message with a sender or a
clear classification (a report, or no usable sender).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway_email.normalise import Mail, MailError, parse_mail, strip_quotes, text_for_operator

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "email"
FILES = sorted(p.name for p in CORPUS.glob("*.eml")) if CORPUS.is_dir() else []


@dataclass(frozen=True)
class Expect:
    sender: str = ""  # "" with error set
    name: str | None = None  # display name, when it matters
    has: tuple[str, ...] = ()  # in the text the operator sees
    lacks: tuple[str, ...] = ()  # never in it
    attachments: tuple[tuple[str, str], ...] | None = None  # (name, mime); None = not checked
    report: str = ""  # Report.kind; set = never a chat
    refers_to: str = ""  # the Message-ID the report is about
    no_auto_reply: bool | None = None
    error: str = ""  # MailError text: the mail is refused (a dead_letter event)
    thread: str = ""  # In-Reply-To
    subject: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


EXPECTED: dict[str, Expect] = {
    # Body-only fixtures of a reply parser (no header block): no sender, refused; their text is checked below.
    "email_reply_parser__email_1_2.eml": Expect(error="no valid sender"),
    "email_reply_parser__email_2_2.eml": Expect(error="no valid sender"),
    "flanker__8bitmime.eml": Expect(sender="bob@example.com", has=("Превел", "123"), attachments=()),
    "flanker__broken-mime.eml": Expect(report="failed", has=(), no_auto_reply=True),
    "flanker__disposition-notification.eml": Expect(
        report="read", refers_to="<199509192301.23456@example.org>", no_auto_reply=True
    ),
    "flanker__enclosed.eml": Expect(
        sender="bob@example.net",
        name="Bob Marley",
        has=(
            "Hello",
            "---- Forwarded message ----",
            "From: Kirk Douglas <dan@example.com>",
            "Subject: Thanks!",
            "you're kicking ass",
        ),
        attachments=(("thanks.eml", "message/rfc822"),),
    ),
    "flanker__encoded-header.eml": Expect(sender="foo.bar@example.com", name="Foo, Bar", has=("hello, world",)),
    "flanker__false-multipart.eml": Expect(sender="broken.mime@notreallymultipart.com", has=("Broken MIME",), attachments=()),
    # Raw Latin-1 in the display name; the mail came through a list with Precedence: bulk.
    "flanker__from-encoding.eml": Expect(report="auto", name="Ingo Lütkebohle", no_auto_reply=True),
    "flanker__iphone.eml": Expect(
        sender="someone@somewhere.com",
        name="Danielle",
        has=("Hello", "~Danielle"),
        attachments=(("photo.JPG", "image/jpeg"),),
    ),
    "flanker__mailbox-full.eml": Expect(report="failed", refers_to="<4E326A95.3010907@example.com>", no_auto_reply=True),
    "flanker__mailformed-headers.eml": Expect(
        sender="headers@gmail.com", name="Юникод запрещен", has=("Hello",), lacks=("Content-Type", "\ufffd")
    ),
    "flanker__missing-boundaries.eml": Expect(sender="me@example.com", has=("Hi This is a broken message",)),
    "flanker__missing-final-boundary.eml": Expect(sender="me@example.com", has=("Some body",)),
    "flanker__no-ctype.eml": Expect(sender="bob@marley.com", has=("I'm just testing message parsing",)),
    "flanker__office365.eml": Expect(
        report="failed", refers_to="<20171013111011.20866.254C2F3A4D7AA526@ninomail.com>", no_auto_reply=True
    ),
    "flanker__torture-part.eml": Expect(
        sender="mrc@cac.washington.edu",
        has=("demonstration of multi-part mail", "---- Forwarded message ----", "From: Nathaniel Borenstein"),
    ),
    "flanker__yahoo.eml": Expect(
        report="complaint", refers_to="<20120711015015.4A8BE2E088E@www.example.com>", no_auto_reply=True
    ),
    "mail__attachment_message_rfc822.eml": Expect(
        sender="foo@example.com",
        has=("This is the first part.", "---- Forwarded message ----", "Subject: Another PDF", "Just attaching another PDF"),
        attachments=(("ForwardedMessage.eml", "message/rfc822"),),
    ),
    "mail__attachment_with_quoted_filename.eml": Expect(
        sender="jeff@37signals.com",
        subject="Eelanalüüsi päring",
        attachments=(("Eelanalüüsi päring.jpg", "image/jpeg"),),
    ),
    # A person writing through a list (List-Id only): a chat, but no auto-reply.
    "mail__empty_in_reply_to.eml": Expect(
        sender="ak@g.com", has=("illegal copy of our patient education software",), no_auto_reply=True
    ),
    "mail__japanese_attachment_long_name.eml": Expect(
        sender="mikel@test.lindsaar.net",
        attachments=(("かきくけこかきくけこかきくけこかきくけこかきくけこ.txt", "text/plain"),),
    ),
    "mail__japanese_iso_2022.eml": Expect(sender="raasdnil@gmail.com", subject="まみむめも", has=("すみません。",)),
    "mail__multiple_content_types.eml": Expect(sender="redacted@flashmail.net", has=("foo",), lacks=("<p>",)),
    # Outlook Express, multipart without a boundary parameter: the parts are found anyway.
    "mail__raw_email_bad_time.eml": Expect(
        sender="yusuf75thu@auracom.net", name="Атиковa", has=("scanned for viruses",), lacks=("Content-Type", "NextPart")
    ),
    "mail__raw_email_with_illegal_boundary.eml": Expect(
        sender="email_test@me.nowhere",
        has=("Hello\nThis is an outlook test",),
        lacks=("Content-Type", "NextPart", "<DIV>"),
        attachments=(),
    ),
    "mail__report_422.eml": Expect(
        report="delayed",
        refers_to="<15655788.13.1200472642578.JavaMail.Administrator@mail.ttttt.com.au>",
        no_auto_reply=True,
    ),
    "talon__aol.eml": Expect(sender="xxx@aol.com", has=("Hello",), lacks=("Original Message", "Hi\n")),
    "talon__apple_mail_2.eml": Expect(
        sender="adam@tictail.com",
        has=("Hello",),
        lacks=("wrote:",),
        thread="<CABzQGhkMXDxUt_tSVQcg=43aniUhtsVfCZVzu-PG0kwS_uzqMw@mail.gmail.com>",
    ),
    "talon__gmail.eml": Expect(sender="xxx@gmail.com", has=("Hello",), lacks=("wrote:", "> Hi")),
    "talon__outlook.eml": Expect(sender="me@example.com", has=("Hello",), lacks=("Sent:", "manager's comment")),
    # Yahoo "--- On ... wrote:" separator and the quoted mail below it are gone; the answer stays whole.
    "talon__reply-quotations-share-block.eml": Expect(
        sender="xxx@example.com",
        has=("Hi Katharine.", "look forward to hearing from you soon", "Joe XXX"),
        lacks=("wrote:", "New Booking Inquiry"),
    ),
    # Bottom posting: the answer is below the quote, so nothing may be cut.
    "talon__thunderbird.eml": Expect(sender="bob@xxx.mailgun.org", has=("Hello",)),
    "thunderbird__attachedMessageWithMissingHeaders.eml": Expect(
        sender="bruce@example.com",
        has=("one email attachment with missing headers", "---- Forwarded message ----", "This is my body"),
        attachments=(("message1.eml", "message/rfc822"),),
    ),
    "thunderbird__sample04.eml": Expect(sender="new@thunderbird.bug", subject="Алфавит", has=("Вопрос",)),
    "thunderbird__sample05.eml": Expect(sender="new@thunderbird.bug", subject="Алфавит", has=("Вопрос",)),
}


def parse(name: str) -> Mail:
    return parse_mail((CORPUS / name).read_bytes(), max_attachment_bytes=15 * 2**20, languages=["en", "de"])


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared mail corpus is not beside the repository ({CORPUS})")
@pytest.mark.parametrize("name", FILES)
def test_a_real_world_mail_gives_what_the_operator_should_see(name: str) -> None:
    expect = EXPECTED.get(name)
    if expect is None:
        # Not in the table: it must parse, and be a message with a sender or a clear classification.
        try:
            mail = parse(name)
        except MailError as exc:
            assert str(exc), name
            return
        assert mail.sender or mail.report is not None, name
        return
    if expect.error:
        with pytest.raises(MailError, match=expect.error):
            parse(name)
        return
    mail = parse(name)
    if expect.report:
        assert mail.report is not None, f"{name}: a report must never open a chat, got text {mail.text[:200]!r}"
        assert mail.report.kind == expect.report, (name, mail.report)
        if expect.refers_to:
            assert expect.refers_to in mail.report.refers_to, (name, mail.report.refers_to)
    else:
        assert mail.report is None, f"{name}: a person's mail taken for a report: {mail.report}"
        assert mail.sender == expect.sender
    if expect.name is not None:
        assert mail.sender_name == expect.name
    if expect.subject is not None:
        assert mail.subject == expect.subject
    seen = text_for_operator(mail)
    for part in expect.has:
        assert part in seen, f"{name}: {part!r} missing from {seen[:600]!r}"
    for part in expect.lacks:
        assert part not in seen, f"{name}: {part!r} should not be in {seen[:600]!r}"
    if expect.attachments is not None:
        assert [(a.name, a.mime) for a in mail.attachments] == list(expect.attachments)
        assert all(a.data for a in mail.attachments), "attachments are kept with their bytes"
    if expect.no_auto_reply is not None:
        assert bool(mail.no_auto_reply) == expect.no_auto_reply, mail.no_auto_reply
    if expect.thread:
        assert mail.in_reply_to == expect.thread


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared mail corpus is not beside the repository ({CORPUS})")
def test_every_corpus_file_has_an_expected_outcome_or_is_new() -> None:
    """The table names only files that exist (a renamed fixture must not silently stop being tested)."""
    assert set(EXPECTED) - set(FILES) == set()


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared mail corpus is not beside the repository ({CORPUS})")
def test_interleaved_answers_of_a_real_reply_are_kept() -> None:
    """Answers after an "On ... wrote:" quote: stripping used to leave only "Hi,"."""
    text = (CORPUS / "email_reply_parser__email_1_2.eml").read_text("utf-8")
    seen = strip_quotes(text, ["en"])
    assert "You can list the keys for the bucket" in seen
    assert "would do it." in seen


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared mail corpus is not beside the repository ({CORPUS})")
def test_outlook_reply_above_an_underscore_separator_keeps_only_the_answer() -> None:
    text = (CORPUS / "email_reply_parser__email_2_2.eml").read_text("utf-8")
    seen = strip_quotes(text, ["en"])
    assert seen.startswith("Outlook with a reply directly above line")
    assert "A new comment has been added" not in seen


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared mail corpus is not beside the repository ({CORPUS})")
@pytest.mark.parametrize("name", FILES)
def test_damaged_copies_of_a_real_mail_never_crash_the_parser(name: str) -> None:
    """Cut short, bytes flipped, MIME syntax spliced in: a mail is published, classified or refused, never a crash.

    (This found a declared charset with a NUL in it raising ValueError, and a U+FFFD in a
    text labelled base64 raising UnicodeEncodeError.)
    """
    raw = (CORPUS / name).read_bytes()
    rng = random.Random(name)
    for i in range(30):
        b = bytearray(raw)
        if i % 3 == 0:
            b = b[: rng.randrange(len(b))]
        elif i % 3 == 1:
            for _ in range(5):
                b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            at = rng.randrange(len(b))
            b[at:at] = rng.choice([b"\r\n--", b'"', b"=?utf-8?b?", b"\x00", b"\n\n", b"boundary=", b"charset=\x00"])
        try:
            mail = parse_mail(bytes(b), max_attachment_bytes=2**20, languages=["en"])
        except MailError:
            continue
        assert mail.sender or mail.report is not None
        text_for_operator(mail)
