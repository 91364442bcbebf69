"""Real mail servers for the e-mail gateway tests.

- :class:`Dovecot`: a real Dovecot IMAP server started from a temp directory
  on a free port with test users (config from docs ENVIRONMENT "A real IMAP
  server"); optional implicit-TLS and STARTTLS with a self-signed certificate.
- :class:`SmtpSink`: a real SMTP server (``aiosmtpd``) that records every mail
  it accepts and can be told to answer 4xx/5xx for chosen recipients.
- :func:`imap_client`: an ``aioimaplib`` client logged in as a test user (to
  APPEND client mails, DELETE/CREATE folders).

:func:`dovecot_server` and :func:`smtp_server` start them for a test module's
fixtures; :func:`dovecot_server` skips with a clear reason when the
``dovecot`` binary is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from support.servers import creds_env, free_port, stop_process
from support.timing import scaled

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
DOVEADM = shutil.which("doveadm") or ("/usr/bin/doveadm" if Path("/usr/bin/doveadm").exists() else None)
PASSWORD = "test-password"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class Dovecot:
    """A real Dovecot on free ports; users ``<name>@example.test`` with :data:`PASSWORD`."""

    def __init__(self, directory: Path, users: tuple[str, ...] = ("support@example.test",), *, tls: bool = False) -> None:
        self.dir = directory
        self.users = users
        self.port = free_port()
        self.tls = tls
        self.ssl_port = free_port() if tls else 0
        self.cert: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert DOVECOT and DOVEADM
        d = self.dir
        (d / "run").mkdir(parents=True, exist_ok=True)
        (d / "mail").mkdir(exist_ok=True)
        os.chmod(d, 0o755)
        dv = pwd.getpwnam("dovecot")
        gid = grp.getgrnam("dovecot").gr_gid
        hashed = subprocess.run([DOVEADM, "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD], check=True, capture_output=True, text=True)
        lines = [f"{u}:{hashed.stdout.strip()}:{dv.pw_uid}:{gid}::{d}/mail/%u\n" for u in self.users]
        (d / "users").write_text("".join(lines))
        ssl = "ssl = no\n"
        ssl_listener = ""
        if self.tls:
            self.cert, key = _self_signed(d)
            ssl = f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{key}\n"
            ssl_listener = f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.ssl_port}\n    ssl = yes\n  }}\n"
        (d / "dovecot.conf").write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/run/state
log_path = {d}/dovecot.log
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{d}/mail/%u
default_internal_user = dovecot
default_login_user = dovenull
default_internal_group = dovecot
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
{ssl_listener}  chroot =
}}
service anvil {{
  chroot =
}}
"""
        )
        subprocess.run(["chown", "-R", "dovecot:dovecot", str(d / "mail")], check=True)
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(d / "dovecot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + scaled(15)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err} {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if s.recv(64).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def log(self) -> str:
        f = self.dir / "dovecot.log"
        return f.read_text()[-3000:] if f.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None


@contextlib.asynccontextmanager
async def imap_client(server: Dovecot, user: str = "support@example.test") -> AsyncIterator[Any]:
    import aioimaplib

    client = aioimaplib.IMAP4(host="127.0.0.1", port=server.port, timeout=30)
    await client.wait_hello_from_server()
    resp = await client.login(user, PASSWORD)
    assert resp.result == "OK", resp
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.logout()


async def append(server: Dovecot, raw: bytes | EmailMessage, folder: str = "INBOX", user: str = "support@example.test") -> None:
    """Deliver one client mail the way an MTA's LDA would: IMAP APPEND."""
    data = raw.as_bytes(policy=policy.SMTP) if isinstance(raw, EmailMessage) else raw
    async with imap_client(server, user) as client:
        resp = await client.append(data, mailbox=folder)
        assert resp.result == "OK", resp


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SmtpSink:
    """A real SMTP server; ``answers[address]`` is a list of replies given (one per attempt) before accepting."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    answers: dict[str, list[str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    _controller: Any = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        self.attempts[address] = self.attempts.get(address, 0) + 1
        queued = self.answers.get(address)
        if queued:
            return queued.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 Message accepted for delivery"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]


def dovecot_dir() -> Path:
    """A directory the ``dovecot`` user can reach (pytest's tmp_path sits under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="openlines-dovecot-"))
    os.chmod(d, 0o755)
    return d


@contextlib.contextmanager
def dovecot_server(*, tls: bool = False) -> Iterator[Dovecot]:
    """A running Dovecot with users support@ and sales@example.test; skips the test when Dovecot is missing."""
    if not DOVECOT or not DOVEADM:
        pytest.skip("dovecot is not installed (apt-get install -y dovecot-imapd); the e-mail gateway needs a real IMAP server")
    root = dovecot_dir()
    server = Dovecot(root, users=("support@example.test", "sales@example.test"), tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def smtp_server() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    await asyncio.to_thread(sink.start)
    try:
        yield sink
    finally:
        await asyncio.to_thread(sink.stop)


# ---------------------------------------------------------------- the gateway under test


def mailbox_config(
    imap: Dovecot,
    smtp: SmtpSink,
    *,
    account: str = "support",
    user: str = "support@example.test",
    folder: str = "INBOX",
    **extra: Any,
) -> dict[str, Any]:
    """One ``OPENLINES_EMAIL_MAILBOXES`` entry pointing at the test servers (plain, no TLS)."""
    cfg: dict[str, Any] = {
        "account": account,
        "imap_host": "127.0.0.1",
        "imap_port": imap.port,
        "imap_tls": "none",
        "username": user,
        "password": PASSWORD,
        "folder": folder,
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "smtp_tls": "none",
        "smtp_auth": False,  # aiosmtpd without AUTH, like a trusting relay
        "from_address": user,
        "from_name": "Acme Support",
        "message_id_domain": "mail.example.test",
    }
    cfg.update(extra)
    return cfg


def gateway_env(nats_url: str, mailboxes: list[dict[str, Any]], **settings: Any) -> dict[str, str]:
    """Environment for ``python -m gateway_email`` (short timings for tests)."""
    import json

    env = {
        "OPENLINES_NATS_URL": nats_url,
        **creds_env("gateway-email"),
        "OPENLINES_HTTP_PORT": "0",
        "OPENLINES_EMAIL_MAILBOXES": json.dumps(mailboxes),
        "OPENLINES_LEASE_TTL": "2",
        "OPENLINES_SMTP_BACKOFF": "0.2",
        "OPENLINES_SHUTDOWN_TIMEOUT": "3",
    }
    env.update({f"OPENLINES_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.asynccontextmanager
async def running_gateway(nats_url: str, mailboxes: list[dict[str, Any]], **settings: Any) -> AsyncIterator[Any]:
    """The e-mail gateway in-process (``launch``), stopped on exit."""
    from gateway_email import Settings, setup
    from openlines.runner import launch
    from openlines.settings import load_settings

    s = load_settings(Settings, env=gateway_env(nats_url, mailboxes, **settings))
    svc = await launch("gateway-email", s, setup, first_attempts=5)
    try:
        yield svc
    finally:
        if not svc.stopping.is_set():  # a test may have stopped it already
            await svc.stop()


def client_mail(
    sender: str,
    text: str,
    *,
    subject: str = "Order 42",
    message_id: str | None = None,
    to: str = "support@example.test",
    html: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = message_id or make_msgid(domain="client.example.test")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg
