"""Classes of mail the shared corpus covers thinly, made here in the shapes real software writes them:
legacy charsets in headers, broken MIME, RFC 2231 file names, reports (DSN, MDN, ARF) and vacation replies."""

from __future__ import annotations

import pytest

from gateway_email.core import loopguard, quotes
from gateway_email.deliver import compose
from gateway_email.mailboxes import Mailbox
from gateway_email.normalise import Mail, parse_mail, repair_boundary, strip_quotes, text_for_operator
from gateway_email.store import ChatState
from openlines.envelopes import Outbound

LANGS = ["en", "de"]


def parse(raw: bytes) -> Mail:
    return parse_mail(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), max_attachment_bytes=10_000, languages=LANGS)


# ---------------------------------------------------------------- legacy charsets in headers


@pytest.mark.parametrize(
    ("from_bytes", "body_charset", "name"),
    [
        ("Иван Петров".encode("koi8-r"), "koi8-r", "Иван Петров"),
        ("Иван Петров".encode("cp1251"), "windows-1251", "Иван Петров"),
        ("Jürgen Müller".encode("latin-1"), "iso-8859-1", "Jürgen Müller"),
        ("Jürgen Müller".encode("latin-1"), "us-ascii", "Jürgen Müller"),  # no hint: Windows-1252
        ("Jürgen Müller".encode(), "us-ascii", "Jürgen Müller"),  # raw UTF-8
    ],
)
def test_raw_8bit_display_names_are_read_in_the_mails_charset_not_replaced(
    from_bytes: bytes, body_charset: str, name: str
) -> None:
    raw = (
        b'From: "' + from_bytes + b'" <client@example.test>\nSubject: Hi\n'
        b"Content-Type: text/plain; charset=" + body_charset.encode() + b"\n\nHello\n"
    )
    m = parse(raw)
    assert m.sender == "client@example.test" and m.sender_name == name
    assert any("8-bit" in p for p in m.problems)


def test_a_raw_koi8_subject_follows_the_body_charset() -> None:
    raw = b"From: a@example.test\nSubject: " + "Заказ".encode("koi8-r") + b"\nContent-Type: text/plain; charset=koi8-r\n\n"
    raw += "Где мой заказ?".encode("koi8-r") + b"\n"
    m = parse(raw)
    assert m.subject == "Заказ" and "Где мой заказ?" in m.text


def test_encoded_words_in_iso_2022_jp_and_windows_1251() -> None:
    raw = (
        b"From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?= <yamada@example.test>\n"
        b"Subject: =?windows-1251?B?z/Do4uXy?=\nContent-Type: text/plain; charset=iso-2022-jp\n\n"
        + "こんにちは".encode("iso-2022-jp")
        + b"\n"
    )
    m = parse(raw)
    assert m.sender_name == "山田" and m.subject == "Привет" and "こんにちは" in m.text


# ---------------------------------------------------------------- broken MIME


def test_an_unquoted_boundary_with_equals_signs_is_split_into_its_parts() -> None:
    raw = (
        b"From: a@example.test\nSubject: s\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/alternative; boundary=----=_NextPart_000_0001_01C8.AB=CD\n\n"
        b"This is a multi-part message in MIME format.\n\n"
        b"------=_NextPart_000_0001_01C8.AB=CD\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xfc\xdfe, the text\n\n"
        b"------=_NextPart_000_0001_01C8.AB=CD\nContent-Type: text/html\n\n<p>html</p>\n"
        b"------=_NextPart_000_0001_01C8.AB=CD--\n"
    )
    m = parse(raw)
    assert m.text.endswith("Grüße, the text") and "NextPart" not in m.text and "MIME boundary repaired" in m.problems


def test_a_multipart_without_any_boundary_line_in_its_body_is_published_as_text() -> None:
    m = parse(b"From: a@example.test\nSubject: s\nContent-Type: multipart/mixed\n\nJust text, no parts.\n")
    assert m.text == "Just text, no parts." and m.sender == "a@example.test"
    assert repair_boundary(b"Content-Type: multipart/mixed\n\nJust text\n", "mixed") is None


def test_text_labelled_base64_that_is_not_base64_is_shown_as_written() -> None:
    raw = b"From: a@example.test\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nPlease call me back.\n"
    assert parse(raw).text == "Please call me back."


def test_rfc2231_file_names_in_a_legacy_charset_and_in_continuations() -> None:
    raw = (
        b'From: a@example.test\nSubject: s\nContent-Type: multipart/mixed; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nsee files\n"
        b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename*=koi8-r''%F3%DE%C5%D4.pdf\n\n%PDF\n"
        b"--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment;\n"
        b" filename*0*=utf-8''%E8%AB%8B%E6%B1%82;\n filename*1*=%E6%9B%B8.txt\n\nx\n--b--\n"
    )
    assert [a.name for a in parse(raw).attachments] == ["Счет.pdf", "請求書.txt"]


# ---------------------------------------------------------------- reports: never a chat


def report(report_type: str, part: str, extra: str = "", sender: str = "mailer-daemon@mx.example.test") -> bytes:
    return (
        f"From: {sender}\nTo: support@example.test\nSubject: Report\nMessage-ID: <r1@mx.example.test>\n{extra}"
        f'MIME-Version: 1.0\nContent-Type: multipart/report; report-type={report_type}; boundary="R"\n\n'
        f"--R\nContent-Type: text/plain\n\nHuman readable part.\n--R\n{part}\n"
        "--R\nContent-Type: text/rfc822-headers\n\nFrom: support@example.test\nMessage-ID: <out-9@mail.example.test>\n\n--R--\n"
    ).encode()


@pytest.mark.parametrize(
    ("action", "kind"), [("failed", "failed"), ("delayed", "delayed"), ("delivered", "delivered"), ("relayed", "delivered")]
)
def test_a_dsn_becomes_a_status_by_its_action(action: str, kind: str) -> None:
    part = (
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.test\n\n"
        f"Final-Recipient: rfc822; c@client.example.test\nAction: {action}\nStatus: 4.4.7\n"
    )
    m = parse(report("delivery-status", part))
    assert m.report is not None and m.report.kind == kind and m.report.original_message_id == "<out-9@mail.example.test>"
    assert m.report.recipient == "c@client.example.test" and m.attachments == []


@pytest.mark.parametrize(("disposition", "kind"), [("displayed", "read"), ("deleted", "disposition")])
def test_a_read_receipt_refers_to_our_mail_by_original_message_id(disposition: str, kind: str) -> None:
    part = (
        "Content-Type: message/disposition-notification\n\nReporting-UA: client.example.test; Thunderbird\n"
        "Final-Recipient: rfc822;c@client.example.test\nOriginal-Message-ID: <out-7@mail.example.test>\n"
        f"Disposition: manual-action/MDN-sent-manually; {disposition}\n"
    )
    m = parse(report("disposition-notification", part, sender="c@client.example.test"))
    assert m.report is not None and m.report.kind == kind and m.report.refers_to[0] == "<out-7@mail.example.test>"
    assert m.no_auto_reply == "read receipt"


def test_an_arf_spam_complaint_names_the_complained_about_mail() -> None:
    part = (
        "Content-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: SomeGenerator/1.0\nVersion: 1\n"
        "Original-Rcpt-To: c@client.example.test\n"
    )
    m = parse(report("feedback-report", part, sender="fbl@isp.example.test"))
    assert m.report is not None and m.report.kind == "complaint" and "<out-9@mail.example.test>" in m.report.refers_to
    assert "abuse" in m.report.reason


def test_a_bounce_without_a_dsn_part_that_says_it_is_only_a_warning_is_delayed() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.test\nSubject: Delivery Status Notification (Delay)\n\n"
        b"THIS IS A WARNING MESSAGE ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.\nMessage-ID: <out-3@mail.example.test>\n"
    )
    m = parse(raw)
    assert m.report is not None and m.report.kind == "delayed" and m.report.refers_to == ["<out-3@mail.example.test>"]


# ---------------------------------------------------------------- vacation replies and bulk mail


@pytest.mark.parametrize(
    "headers",
    [
        # RFC 3834 marking (as Gmail's vacation responder does).
        "Subject: Re: Your order\nAuto-Submitted: auto-replied\n",
        # Outlook/Exchange-style out-of-office subject with Auto-Submitted and X-Auto-Response-Suppress.
        "Subject: Automatic reply: Your order\nAuto-Submitted: auto-generated\nX-Auto-Response-Suppress: All\n",
        # Responders that mark themselves only by the subject or a non-standard header.
        "Subject: Out of Office: Your order\n",
        "Subject: Автоответ: Your order\n",
        "Subject: Re: Your order\nX-Autoreply: yes\n",
        "Subject: Re: Your order\nPrecedence: junk\n",
        "Subject: Sale!\nPrecedence: bulk\n",
    ],
)
def test_vacation_replies_and_bulk_mail_open_no_chat(headers: str) -> None:
    raw = f"From: c@client.example.test\n{headers}In-Reply-To: <out-5@mail.example.test>\n\nI am away until Monday.\n"
    m = parse(raw.encode())
    assert m.report is not None and m.report.kind == "auto", m.report
    assert m.report.refers_to == ["<out-5@mail.example.test>"] and "away until Monday" in m.report.reason
    assert m.no_auto_reply


def test_auto_submitted_no_and_a_mailing_list_relaying_a_person_are_chats() -> None:
    person = parse(b"From: c@client.example.test\nAuto-Submitted: no\nSubject: Help\n\nHello\n")
    listed = parse(b"From: c@client.example.test\nList-Id: <support.lists.example.test>\nSubject: Help\n\nHello\n")
    assert person.report is None and not person.no_auto_reply
    assert listed.report is None and listed.no_auto_reply == "mailing list (List-* headers)"
    assert not loopguard.vacation_subject("Re: Autoreparatur") and loopguard.vacation_subject("AW: Abwesenheitsnotiz: x")


# ---------------------------------------------------------------- quotes


def test_interleaved_answers_are_kept_and_a_top_posted_reply_loses_its_quote() -> None:
    interleaved = "Hi,\nOn Mon, Anna wrote:\n> When did you order?\nOn Friday.\n> Which size?\nXL, please.\n"
    assert strip_quotes(interleaved, LANGS) == interleaved.strip()
    top = "XL, please.\n\nOn Mon, 6 Jan 2025 at 10:00, Anna <a@example.test> wrote:\n> Which size?\n"
    assert strip_quotes(top, LANGS) == "XL, please."
    assert quotes.trim_trailing_quote("Thanks\n\n--- On Wed, 4/4/12, x <x@y> wrote:\n\n> quoted") == "Thanks"


def test_an_inline_forward_keeps_the_forwarded_text() -> None:
    text = (
        "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Shop <shop@example.test>\n"
        "Date: Mon, 6 Jan 2025\nSubject: Order 42\n\nYour order 42 was cancelled.\n"
    )
    assert "Your order 42 was cancelled." in strip_quotes(text, LANGS)


def test_forwarded_attachment_without_own_text_shows_the_forwarded_mail() -> None:
    raw = (
        b'From: c@client.example.test\nSubject: Fwd: Invoice\nContent-Type: multipart/mixed; boundary="F"\n\n'
        b"--F\nContent-Type: message/rfc822\n\nFrom: Shop <shop@example.test>\nSubject: Invoice 7\n"
        b"Date: Mon, 6 Jan 2025 10:00:00 +0000\n\nPlease pay invoice 7.\n--F--\n"
    )
    m = parse(raw)
    seen = text_for_operator(m)
    assert "---- Forwarded message ----\nFrom: Shop <shop@example.test>" in seen and "Please pay invoice 7." in seen
    assert [(a.name, a.mime) for a in m.attachments] == [("Invoice 7.eml", "message/rfc822")]
    assert m.attachments[0].data is not None and b"Please pay invoice 7." in m.attachments[0].data


# ---------------------------------------------------------------- replies copy the others of a conversation


def test_our_reply_copies_the_others_who_wrote_in_the_conversation_but_auto_replies_do_not() -> None:
    from datetime import UTC, datetime

    mb = Mailbox(account="support", imap_host="h", username="u", password="p", from_address="support@example.test")
    chat = ChatState(address="ann@client.example.test", cc=["bob@client.example.test"], last_message_id="<m@c>")
    out = Outbound(id="o1", session_id="s", channel="email", account="support", chat_id=chat.address,
                   text="Hi", created_at=datetime(2025, 1, 6, tzinfo=UTC))  # fmt: skip
    assert compose(mb, out, chat)["Cc"] == "bob@client.example.test"
    auto = Outbound(id="o2", session_id="s", channel="email", account="support", chat_id=chat.address,
                    text="Welcome", auto=True, created_at=datetime(2025, 1, 6, tzinfo=UTC))  # fmt: skip
    assert compose(mb, auto, chat)["Cc"] is None
