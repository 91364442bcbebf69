"""normalise.py and the pure core of the e-mail gateway, on crafted messages."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from gateway_email.core import loopguard, replies
from gateway_email.deliver import classify, compose
from gateway_email.htmltext import html_to_text
from gateway_email.mailboxes import Mailbox, MailboxError, load_mailboxes
from gateway_email.normalise import MailError, normalise_address, parse_mail, strip_quotes, text_for_operator, to_inbound
from gateway_email.store import ChatState
from openlines.envelopes import Inbound, Outbound, decoder, encode

LANGS = ["en", "de"]
NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)


def parse(raw: bytes | str, **kw: object) -> object:
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    return parse_mail(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), max_attachment_bytes=1000, languages=LANGS, **kw)  # type: ignore[arg-type]


def mail(headers: str, body: str = "Hello", encoding: str = "utf-8") -> bytes:
    return f"{headers.strip()}\n\n{body}\n".encode(encoding)


# ---------------------------------------------------------------- text


def test_plain_text_is_preferred_and_the_quoted_history_is_stripped() -> None:
    raw = (
        b"From: Ann <ann@client.example.test>\nSubject: Order\nMessage-ID: <a@x>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/alternative; boundary="b"\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n'
        b"Thanks, it works.\n\nOn Mon, 6 Jan 2025 at 10:00, Acme <s@example.test> wrote:\n> Restart it.\n"
        b"--b\nContent-Type: text/html\n\n<p>HTML version</p>\n--b--\n"
    )
    m = parse(raw)
    assert m.text == "Thanks, it works."  # type: ignore[attr-defined]
    assert "Restart it." in m.full_text  # type: ignore[attr-defined]


def test_german_reply_header_and_signature_are_stripped_but_lists_are_kept() -> None:
    body = (
        "Ich brauche:\n- eine Kiste\n- zwei Taschen\n\n-- \nAnn Client\n\n"
        "Von: Support <s@example.test>\nGesendet: Montag\nAn: ann\nBetreff: x\n\nalt"
    )
    assert strip_quotes(body, LANGS) == "Ich brauche:\n- eine Kiste\n- zwei Taschen"


def test_a_mail_that_is_only_a_quote_keeps_its_text() -> None:
    assert strip_quotes("> only quoted\n> text", LANGS) == "> only quoted\n> text"


def test_html_only_mail_is_sanitised_into_text() -> None:
    raw = mail(
        "From: a@client.example.test\nSubject: s\nContent-Type: text/html; charset=utf-8",
        '<html><head><style>p{}</style><script>steal()</script></head><body><p onclick="x()">Hi <b>there</b>&amp; co</p>'
        '<p>See <a href="https://shop.example.test/o/1">my order</a></p><img src="https://t.example.test/pixel">'
        "<blockquote>old quoted text</blockquote></body></html>",
    )
    m = parse(raw)
    assert m.text.startswith("Hi there& co\n\nSee my order (https://shop.example.test/o/1)")  # type: ignore[attr-defined]
    for bad in ("steal", "<", "onclick", "pixel"):
        assert bad not in m.full_text  # type: ignore[attr-defined]


def test_html_lists_and_blockquotes_become_text_lines() -> None:
    text = html_to_text("<ul><li>one</li><li>two</li></ul><blockquote>q1<br>q2</blockquote>")
    assert text.splitlines()[:2] == ["- one", "- two"]
    assert "> q1" in text and "> q2" in text


def test_encoded_headers_and_a_koi8_body_are_decoded() -> None:
    raw = (
        b"From: =?utf-8?q?Ann_M=C3=BCller?= <Ann.Mueller@Client.Example.TEST>\nSubject: =?koi8-r?b?5MXMzw==?=\n"
        b"Content-Type: text/plain; charset=koi8-r\nContent-Transfer-Encoding: 8bit\n\n\xf0\xd2\xc9\xd7\xc5\xd4\n"
    )
    m = parse(raw)
    assert (m.sender, m.sender_name, m.subject, m.text) == ("ann.mueller@client.example.test", "Ann Müller", "Дело", "Привет")  # type: ignore[attr-defined]


def test_wrong_and_unknown_charsets_are_read_and_noted() -> None:
    wrong = parse(mail("From: a@client.example.test\nContent-Type: text/plain; charset=utf-8", "Caf\xe9", "latin-1"))
    assert wrong.text == "Café" and any("read as cp1252" in p for p in wrong.problems)  # type: ignore[attr-defined]
    unknown = parse(mail("From: a@client.example.test\nContent-Type: text/plain; charset=x-nope", "plain"))
    assert unknown.text == "plain" and any("unknown charset" in p for p in unknown.problems)  # type: ignore[attr-defined]


def test_malformed_mime_is_published_with_what_could_be_read() -> None:
    m = parse(mail('From: a@client.example.test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="zz"', "loose text"))
    assert "loose text" in m.text and m.problems  # type: ignore[attr-defined]


def test_a_mail_without_a_sender_is_refused_with_the_reason() -> None:
    with pytest.raises(MailError, match="no valid sender"):
        parse(mail("From: nobody at all\nSubject: x"))


def test_missing_message_id_gets_a_stable_hash_of_the_raw_bytes() -> None:
    raw = mail("From: a@client.example.test\nSubject: x")
    one, two = parse(raw), parse(raw)
    assert one.message_id == "" and one.key.startswith("sha256:") and one.key == two.key  # type: ignore[attr-defined]
    env = to_inbound("support", one, [], NOW)  # type: ignore[arg-type]
    assert env.id == f"email:support:{one.key}"  # type: ignore[attr-defined]


def test_sender_address_is_validated_and_lower_cased() -> None:
    assert normalise_address("Ann <Ann.Client@Example.TEST>") == "ann.client@example.test"
    assert normalise_address("no-at-sign") == ""
    assert normalise_address("two@@example.test") == ""


# ---------------------------------------------------------------- attachments


def test_attachments_are_kept_and_oversized_ones_listed_without_bytes() -> None:
    msg = EmailMessage()
    msg["From"] = "a@client.example.test"
    msg.set_content("files")
    msg.add_attachment(b"x" * 10, maintype="application", subtype="pdf", filename="=?utf-8?q?Rechnung_=C3=BC.pdf?=")
    msg.add_attachment(b"y" * 5000, maintype="image", subtype="jpeg", filename="big.jpg")
    m = parse_mail(msg.as_bytes(), max_attachment_bytes=1000, languages=LANGS)
    small, big = m.attachments
    assert (small.name, small.mime, small.kind, small.data) == ("Rechnung ü.pdf", "application/pdf", "file", b"x" * 10)
    assert (big.kind, big.size, big.data, big.omitted) == ("image", 5000, None, "larger than 1000 bytes")
    assert m.text == "files"


# ---------------------------------------------------------------- loop guard and bounces


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied"),
        ("Auto-Submitted: auto-generated; type=x", "Auto-Submitted: auto-generated"),
        ("Return-Path: <>", "empty Return-Path"),
        ("List-Id: <news.example.test>", "mailing list (List-* headers)"),
        ("List-Unsubscribe: <mailto:u@example.test>", "mailing list (List-* headers)"),
        ("Precedence: bulk", "Precedence: bulk"),
        ("Precedence: junk", "Precedence: junk"),
        ("X-Auto-Response-Suppress: OOF, AutoReply", "X-Auto-Response-Suppress"),
    ],
)
def test_mails_that_must_get_no_auto_reply(headers: str, reason: str) -> None:
    assert parse(mail(f"From: a@client.example.test\n{headers}")).no_auto_reply == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@example.test", "news-request@example.test", "owner-news@example.test"])
def test_robot_senders_get_no_auto_reply(sender: str) -> None:
    assert parse(mail(f"From: {sender}")).no_auto_reply  # type: ignore[attr-defined]


def test_a_person_may_get_an_auto_reply() -> None:
    m = parse(mail("From: a@client.example.test\nAuto-Submitted: no\nReturn-Path: <a@client.example.test>"))
    assert m.no_auto_reply == ""  # type: ignore[attr-defined]
    assert loopguard.no_auto_reply_reason(loopguard.HeaderFacts(sender="")) == "no sender address"


def test_a_delivery_status_notification_names_the_bounced_mail_and_the_reason() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.example.test\nSubject: Undelivered\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nSorry.\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        "Final-Recipient: rfc822; Gone@Client.example.test\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 unknown\n\n"
        "--B\nContent-Type: message/rfc822\n\nFrom: s@example.test\nMessage-ID: <out-1@mail.example.test>\n\nhi\n--B--\n"
    )
    m = parse(raw)
    assert m.report is not None and m.no_auto_reply == "delivery status notification"  # type: ignore[attr-defined]
    assert m.report.original_message_id == "<out-1@mail.example.test>"  # type: ignore[attr-defined]
    assert m.report.recipient == "gone@client.example.test" and "550 unknown" in m.report.reason  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the envelope


def test_envelope_carries_the_no_auto_reply_marker_and_decodes_as_plain_inbound() -> None:
    m = parse(mail("From: Ann <ann@client.example.test>\nSubject: Hi\nMessage-ID: <m1@client>\nPrecedence: list"))
    env = to_inbound("support", m, [], NOW)  # type: ignore[arg-type]
    assert env.id == "email:support:m1@client" and env.chat_id == env.user_id == "ann@client.example.test"
    assert env.profile.email == "ann@client.example.test" and env.no_auto_reply and env.channel_msg_id == "<m1@client>"
    # The router decodes plain Inbound: the extra fields are ignored, not refused.
    assert decoder(Inbound).decode(encode(env)).id == env.id


def test_new_conversations_show_their_subject_replies_do_not() -> None:
    new = parse(mail("From: a@client.example.test\nSubject: Broken lamp", "It flickers."))
    reply = parse(mail("From: a@client.example.test\nSubject: Re: Broken lamp\nIn-Reply-To: <x@y>", "Still."))
    assert text_for_operator(new) == "Broken lamp\n\nIt flickers."  # type: ignore[arg-type]
    assert text_for_operator(reply) == "Still."  # type: ignore[arg-type]


# ---------------------------------------------------------------- threading and outbound


def test_reply_subject_and_references() -> None:
    assert replies.reply_subject("Order 42") == "Re: Order 42"
    assert replies.reply_subject("RE: Order 42") == "RE: Order 42"
    assert replies.reply_subject("AW: Bestellung") == "AW: Bestellung"
    assert replies.reply_subject("") == "Re: Your message"
    assert replies.references(["<a@x>", "<b@x>"], "<c@x>") == ["<a@x>", "<b@x>", "<c@x>"]
    assert replies.references(["<a@x>", "<c@x>"], "<c@x>") == ["<a@x>", "<c@x>"]
    long = replies.references([f"<{i}@x>" for i in range(40)], "<last@x>")
    assert len(long) == replies.MAX_REFERENCES and long[0] == "<0@x>" and long[-1] == "<last@x>"
    assert replies.our_message_id("out:s1:r1", "mail.example.test") == replies.our_message_id("out:s1:r1", "mail.example.test")
    assert replies.is_ours(replies.our_message_id("x", "d.test"), "d.test")


def _mailbox() -> Mailbox:
    return Mailbox(
        account="support",
        imap_host="imap.example.test",
        username="support@example.test",
        password="pw",
        from_address="support@example.test",
        from_name="Acme Support",
    )


def _out(auto: bool = False) -> Outbound:
    return Outbound(
        id="out:s1:r1", session_id="s1", channel="email", account="support", chat_id="ann@client.example.test",
        text="It ships today.", auto=auto, created_at=NOW,
    )  # fmt: skip


def test_compose_threads_the_reply_onto_the_clients_last_mail() -> None:
    chat = ChatState(address="ann@client.example.test", subject="Order 42", last_message_id="<c2@x>", references=["<c1@x>"])
    msg = message_from_bytes(compose(_mailbox(), _out(), chat).as_bytes(), policy=policy.default)
    assert msg["To"] == "ann@client.example.test" and msg["Subject"] == "Re: Order 42"
    assert msg["In-Reply-To"] == "<c2@x>" and msg["References"] == "<c1@x> <c2@x>"
    assert msg["Message-ID"] == replies.our_message_id("out:s1:r1", "example.test")
    assert msg["Auto-Submitted"] is None and msg["From"] == "Acme Support <support@example.test>"
    auto = compose(_mailbox(), _out(auto=True), None)
    assert auto["Auto-Submitted"] == "auto-replied" and auto["In-Reply-To"] is None


def test_smtp_errors_are_temporary_or_permanent_by_their_code() -> None:
    import aiosmtplib

    from gateway_email.deliver import Permanent, Temporary

    assert isinstance(classify(aiosmtplib.SMTPDataError(554, "rejected")), Permanent)
    assert isinstance(classify(aiosmtplib.SMTPDataError(451, "later")), Temporary)
    refused = aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@y")])
    assert isinstance(classify(refused), Permanent) and "550 no such user" in str(classify(refused))
    assert isinstance(classify(aiosmtplib.SMTPServerDisconnected("gone")), Temporary)
    assert isinstance(classify(ConnectionRefusedError()), Temporary)


# ---------------------------------------------------------------- configuration


def test_mailboxes_from_inline_json_and_toml_file(tmp_path: object) -> None:
    inline = '[{"account": "support", "imap_host": "h", "username": "u", "password": "p", "from_address": "s@example.test"}]'
    mb = load_mailboxes(inline)["support"]
    assert (mb.imap_port_, mb.smtp_port_, mb.smtp_host_, mb.domain) == (993, 587, "h", "example.test")
    assert mb.public()["password"] == "***"
    from pathlib import Path

    path = Path(str(tmp_path)) / "mailboxes.toml"
    path.write_text(
        '[[mailboxes]]\naccount = "sales"\nimap_host = "h"\nimap_tls = "none"\n'
        'username = "u"\npassword = "p"\nfrom_address = "s@e.test"\n'
    )
    assert load_mailboxes(str(path))["sales"].imap_port_ == 143


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            '[{"account": "bad account", "imap_host": "h", "username": "u", "password": "p", "from_address": "a@b"}]',
            "bad account",
        ),
        (
            '[{"account": "a", "imap_host": "h", "username": "u", "password": "secret-pw", "from_address": "a@b", "typo": 1}]',
            "typo",
        ),
        ("[]", "non-empty"),
        ("/no/such/file.toml", "no such file"),
    ],
)
def test_bad_mailbox_settings_name_the_problem_and_never_the_password(value: str, error: str) -> None:
    with pytest.raises(MailboxError) as exc:
        load_mailboxes(value)
    assert error in str(exc.value) and "secret-pw" not in str(exc.value)


def test_inline_mailbox_passwords_never_reach_the_start_up_log() -> None:
    from gateway_email.settings import Settings
    from openlines.settings import load_settings

    inline = '[{"account": "support", "imap_host": "h", "username": "u", "password": "hunter2-pw", "from_address": "s@e.test"}]'
    s = load_settings(Settings, env={"OPENLINES_EMAIL_MAILBOXES": inline})
    assert "hunter2-pw" not in str(s.public()) and "support" in str(s.public()["email_mailboxes"])


def test_every_report_event_the_gateway_publishes_is_a_known_event_kind() -> None:
    from gateway_email.inbound import REPORT_EVENTS, REPORT_MARKS
    from openlines.envelopes import EVENT_KINDS, MARK_STATUSES

    assert set(REPORT_EVENTS.values()) <= set(EVENT_KINDS), set(REPORT_EVENTS.values()) - set(EVENT_KINDS)
    assert set(REPORT_MARKS) <= set(REPORT_EVENTS) and set(REPORT_MARKS.values()) <= set(MARK_STATUSES)
