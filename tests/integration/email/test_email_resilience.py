"""The e-mail gateway when things go wrong: a SIGKILL mid-batch, a folder whose
UIDVALIDITY changed, broken or huge mails, two replicas, TLS, no IDLE.

Real Dovecot, real nats-server; the gateway runs in-process or as
``python -m gateway_email`` when it must be killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import msgspec
import pytest
from peers.mailservers import (
    Dovecot,
    SmtpSink,
    append,
    client_mail,
    dovecot_server,
    gateway_env,
    imap_client,
    mailbox_config,
    running_gateway,
)
from support import events
from support.timing import wait_for

from openlines import bus, subjects

pytestmark = pytest.mark.mail


async def published(nc: Any, account: str = "support") -> list[dict[str, Any]]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("email", account))
    return [msgspec.json.decode(data) for _, data in rows]


async def count_published(nc: Any, account: str = "support") -> int:
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM_IN, subjects_filter=subjects.inbound_account("email", account))
    except Exception:
        return 0
    return sum((info.state.subjects or {}).values())


async def at_least(nc: Any, n: int, account: str = "support") -> list[dict[str, Any]] | None:
    got = await published(nc, account)
    return got if len(got) >= n else None


def start_gateway_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway_email"],
        env={**os.environ, **env, "OPENLINES_LOG_LEVEL": "warning"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_gateway_killed_mid_batch_loses_and_doubles_nothing_after_restart(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    total = 40
    async with imap_client(imap) as client:
        for i in range(total):
            mail = client_mail(
                f"client{i}@client.example.test", f"Mail number {i}", message_id=f"<batch-{i}@client.example.test>"
            )
            assert (await client.append(mail.as_bytes(), mailbox="INBOX")).result == "OK"
    env = gateway_env(nats_server.url, [mailbox_config(imap, smtp)])
    proc = start_gateway_process(env)
    try:
        await wait_for(lambda: count_published(nc), timeout=30, interval=0.005, what="first mails published")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        at_kill = await count_published(nc)
        proc = start_gateway_process(env)
        got = await wait_for(lambda: at_least(nc, total), timeout=60, what=f"all {total} mails after the restart")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    ids = [e["id"] for e in got]
    assert len(ids) == total == len(set(ids)), f"killed at {at_kill}/{total}"
    assert sorted(ids) == sorted(f"email:support:batch-{i}@client.example.test" for i in range(total))


async def test_uidvalidity_change_resyncs_without_duplicates(nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink) -> None:
    async with imap_client(imap) as client:
        assert (await client.create("Support")).result == "OK"
    old = [client_mail(f"c{i}@client.example.test", f"old {i}", message_id=f"<old-{i}@client.example.test>") for i in range(2)]
    for m in old:
        await append(imap, m, folder="Support")
    mbox = mailbox_config(imap, smtp, folder="Support")
    async with running_gateway(nats_server.url, [mbox]) as svc:
        await wait_for(lambda: at_least(nc, 2), timeout=20, what="first two mails")
        from gateway_email.service import EMAIL

        store = svc.app[EMAIL].store
        before = await store.cursor("support")
    # The folder is recreated (a restore, a migration): new UIDVALIDITY, the same mails plus a new one.
    async with imap_client(imap) as client:
        assert (await client.delete("Support")).result == "OK"
        assert (await client.create("Support")).result == "OK"
    for m in [*old, client_mail("c9@client.example.test", "new one", message_id="<new-9@client.example.test>")]:
        await append(imap, m, folder="Support")
    async with running_gateway(nats_server.url, [mbox]) as svc:
        got = await wait_for(lambda: at_least(nc, 3), timeout=20, what="the new mail")
        after = await wait_for(lambda: _cursor_at(svc, 3), timeout=10, what="cursor moved past the resynchronised folder")
    assert before is not None and after.uidvalidity != before.uidvalidity
    assert [e["id"] for e in got] == [
        "email:support:old-0@client.example.test",
        "email:support:old-1@client.example.test",
        "email:support:new-9@client.example.test",
    ]


async def _cursor_at(svc: Any, uid: int) -> Any:
    from gateway_email.service import EMAIL

    cur = await svc.app[EMAIL].store.cursor("support")
    return cur if cur is not None and cur.last_uid >= uid else None


def _raw(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


async def test_broken_mails_get_a_clear_outcome_and_the_mailbox_keeps_going(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    big = client_mail("big@client.example.test", "See the attached video.", message_id="<big@client.example.test>")
    big.add_attachment(os.urandom(20 * 1024 * 1024), maintype="video", subtype="mp4", filename="video.mp4")
    small = client_mail("small@client.example.test", "A photo.", message_id="<small@client.example.test>")
    small.add_attachment(b"\x89PNG fake image bytes", maintype="image", subtype="png", filename="photo.png")
    mails: list[bytes] = [
        # multipart without its boundary ever appearing, and a bogus transfer encoding
        _raw(
            "From: broken@client.example.test",
            "Subject: broken",
            "Message-ID: <broken@client.example.test>",
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="nope"',
            "",
            "this text is not in any part",
            "",
        ),
        # declares UTF-8 but is Windows-1252; encoded-word with an unknown charset in the subject
        _raw(
            "From: =?x-unknown?q?Bad_Name?= <charset@client.example.test>",
            "Subject: =?x-unknown?q?Caf=E9?=",
            "Message-ID: <charset@client.example.test>",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            "Caf\xe9 cr\xe8me, na\xefve",
            "",
        ),
        # no Message-ID at all
        _raw("From: nomsgid@client.example.test", "Subject: hello", "", "No id here.", ""),
        # no usable sender: dead-lettered with the reason
        _raw("From: not an address", "Subject: who?", "Message-ID: <nosender@client.example.test>", "", "?", ""),
        big.as_bytes(),
        small.as_bytes(),
        client_mail("after@client.example.test", "Still working?", message_id="<after@client.example.test>").as_bytes(),
    ]
    async with imap_client(imap) as client:
        for raw in mails:
            assert (await client.append(raw, mailbox="INBOX")).result == "OK"
    async with running_gateway(nats_server.url, [mailbox_config(imap, smtp)]) as svc:
        got = await wait_for(lambda: at_least(nc, 6), timeout=60, what="every readable mail published")
        by_sender = {e["chat_id"]: e for e in got}
        assert set(by_sender) == {
            "broken@client.example.test",
            "charset@client.example.test",
            "nomsgid@client.example.test",
            "big@client.example.test",
            "small@client.example.test",
            "after@client.example.test",
        }
        assert "this text is not in any part" in by_sender["broken@client.example.test"]["text"]
        assert "Café crème, naïve" in by_sender["charset@client.example.test"]["text"]
        nomsgid = by_sender["nomsgid@client.example.test"]
        assert nomsgid["id"].startswith("email:support:sha256:") and "No id here." in nomsgid["text"]
        video = by_sender["big@client.example.test"]["attachments"][0]
        assert video["name"] == "video.mp4" and video["kind"] == "video" and video["size"] > 20_000_000
        assert "ref" not in video and video["extra"]["omitted"].startswith("larger than")
        photo = by_sender["small@client.example.test"]["attachments"][0]
        assert photo["kind"] == "image" and photo["mime"] == "image/png"
        from gateway_email.service import EMAIL
        from gateway_email.store import OBJ_FILES

        # read as the test (admin): the gateway's identity writes its files store, readers are others'
        store, key = photo["ref"].split(":", 1)
        assert store == OBJ_FILES
        stored = await (await nc.jetstream().object_store(OBJ_FILES)).get(key)
        assert stored.data == b"\x89PNG fake image bytes"
        dead = await wait_for(lambda: events(nc, "dead_letter"), timeout=10, what="dead letter for the sender-less mail")
        assert len(dead) == 1 and "no valid sender" in dead[0].reason
        assert svc.app[EMAIL].workers["support"].state == "owner"


async def test_only_one_replica_owns_a_mailbox_and_another_takes_over_when_it_stops(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    from gateway_email.service import EMAIL

    mbox = mailbox_config(imap, smtp)
    async with running_gateway(nats_server.url, [mbox]) as first:
        await wait_for(lambda: first.app[EMAIL].workers["support"].state == "owner", timeout=15, what="first owns")
        async with running_gateway(nats_server.url, [mbox]) as second:
            await append(imap, client_mail("a@client.example.test", "one", message_id="<one@client.example.test>"))
            await wait_for(lambda: at_least(nc, 1), timeout=15, what="mail via the owner")
            assert second.app[EMAIL].workers["support"].state.startswith("waiting")
            await first.stop()
            await wait_for(lambda: second.app[EMAIL].workers["support"].state == "owner", timeout=15, what="takeover")
            await append(imap, client_mail("b@client.example.test", "two", message_id="<two@client.example.test>"))
            got = await wait_for(lambda: at_least(nc, 2), timeout=15, what="mail via the new owner")
    assert [e["id"] for e in got] == ["email:support:one@client.example.test", "email:support:two@client.example.test"]


async def test_implicit_tls_starttls_idle_renewal_and_polling_without_idle(nc: Any, nats_server: Any, smtp: SmtpSink) -> None:
    with dovecot_server(tls=True) as server:
        assert server.cert is not None
        tls = {"tls_ca_file": str(server.cert)}
        boxes = [
            mailbox_config(server, smtp, account="ssl", imap_port=server.ssl_port, imap_tls="ssl", **tls),
            mailbox_config(
                server, smtp, account="starttls", user="sales@example.test", imap_tls="starttls", use_idle=False, **tls
            ),
        ]
        async with running_gateway(nats_server.url, boxes, poll_interval=0.3, idle_renew=0.3) as svc:
            from gateway_email.service import EMAIL

            workers = svc.app[EMAIL].workers
            await wait_for(lambda: all(w.state == "owner" for w in workers.values()), timeout=20, what="both mailboxes open")
            assert workers["ssl"].idle and not workers["starttls"].idle
            # IDLE is ended and re-issued on time (RFC 2177), and the mailbox still hears new mail afterwards.
            await wait_for(lambda: workers["ssl"].waits >= 2, timeout=10, what="IDLE renewed")
            await append(server, client_mail("x@client.example.test", "over TLS"))
            await append(server, client_mail("y@client.example.test", "over STARTTLS"), user="sales@example.test")
            await wait_for(lambda: at_least(nc, 1, "ssl"), timeout=15, what="mail over implicit TLS")
            await wait_for(lambda: at_least(nc, 1, "starttls"), timeout=15, what="mail over STARTTLS, polled")


async def test_mails_that_arrive_while_the_gateway_reads_others_are_not_left_waiting(
    nc: Any, nats_server: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    """A mail delivered while the gateway fetches an earlier one is announced to it inside that
    command's answer, not while it idles: it must still be read now, not at the next mail."""
    total = 30
    async with running_gateway(nats_server.url, [mailbox_config(imap, smtp)]) as svc:
        from gateway_email.service import EMAIL

        worker = svc.app[EMAIL].workers["support"]
        await wait_for(lambda: worker.state == "owner" and worker.idle, timeout=20, what="mailbox open")
        async with imap_client(imap) as client:
            for i in range(total):
                mail = client_mail(f"c{i}@client.example.test", f"Mail {i}", message_id=f"<burst-{i}@client.example.test>")
                assert (await client.append(mail.as_bytes(), mailbox="INBOX")).result == "OK"
                await asyncio.sleep(0.003 * (i % 7))  # land at every point of the gateway's reading
        got = await wait_for(lambda: at_least(nc, total), timeout=20, what=f"all {total} mails without a further one")
    assert sorted(e["id"] for e in got) == sorted(f"email:support:burst-{i}@client.example.test" for i in range(total))
