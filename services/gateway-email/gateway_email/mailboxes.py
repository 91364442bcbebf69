"""The mailboxes this gateway serves, from ``OPENLINES_EMAIL_MAILBOXES``.

The variable holds either inline JSON or the path of a ``.toml`` / ``.json``
file. Either form is a list of mailboxes or ``{"mailboxes": [...]}``
(TOML: ``[[mailboxes]]`` tables). Every key is in docs/channels/email.md.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from openlines import subjects

Tls = Literal["none", "starttls", "ssl"]


class MailboxError(ValueError):
    pass


class Mailbox(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    account: str  # the channel account: lines bind it as { channel = "email", account = "<account>" }
    imap_host: str
    imap_port: int = 0  # 0 = 993 for ssl, else 143
    imap_tls: Tls = "ssl"
    username: str
    password: str
    folder: str = "INBOX"  # the folder the gateway reads
    smtp_host: str = ""  # empty = imap_host
    smtp_port: int = 0  # 0 = 465 for ssl, 587 for starttls, 25 for none
    smtp_tls: Tls = "starttls"
    smtp_username: str = ""  # empty = username (set smtp_password too when they differ)
    smtp_password: str = ""
    smtp_auth: bool = True  # False = send without logging in (a relay that trusts our address)
    from_address: str
    from_name: str = ""
    message_id_domain: str = ""  # domain of our Message-IDs; empty = the domain of from_address
    tls_verify: bool = True  # check the servers' certificates (turn off only for a lab server)
    tls_ca_file: str = ""  # extra CA bundle for a private CA
    use_idle: bool = True  # use IMAP IDLE when the server offers it; False = always poll
    # Where reading starts when there is no cursor yet (first start) or the
    # folder's UIDVALIDITY changed: "unseen" = from the oldest unread mail,
    # "all" = every mail in the folder, "none" = only mail that arrives from now on.
    backlog: Literal["unseen", "all", "none"] = "unseen"

    def __post_init__(self) -> None:
        subjects.token(self.account, "mailbox account")
        if "@" not in self.from_address:
            raise ValueError(f"mailbox {self.account}: from_address {self.from_address!r} is not an address")

    @property
    def imap_port_(self) -> int:
        return self.imap_port or (993 if self.imap_tls == "ssl" else 143)

    @property
    def smtp_host_(self) -> str:
        return self.smtp_host or self.imap_host

    @property
    def smtp_port_(self) -> int:
        return self.smtp_port or {"ssl": 465, "starttls": 587, "none": 25}[self.smtp_tls]

    @property
    def smtp_login(self) -> tuple[str, str] | None:
        if not self.smtp_auth:
            return None
        user = self.smtp_username or self.username
        password = self.smtp_password or (self.password if not self.smtp_username else "")
        return (user, password) if user and password else None

    @property
    def domain(self) -> str:
        return self.message_id_domain or self.from_address.rsplit("@", 1)[1].lower()

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.tls_ca_file or None)
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def public(self) -> dict[str, object]:
        """For logs: everything but the passwords."""
        out = msgspec.structs.asdict(self)
        for key in ("password", "smtp_password"):
            if out.get(key):
                out[key] = "***"
        return out


def load_mailboxes(value: str) -> dict[str, Mailbox]:
    """Parse the setting; the error names the mailbox and key at fault, never a password."""
    text = value.strip()
    raw: Any
    if text.startswith(("[", "{")):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MailboxError(f"OPENLINES_EMAIL_MAILBOXES is not valid JSON: {exc.msg} at {exc.pos}") from None
    else:
        path = Path(text)
        if not path.is_file():
            raise MailboxError(f"OPENLINES_EMAIL_MAILBOXES: no such file {text!r}")
        try:
            raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise MailboxError(f"{path}: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("mailboxes", [])
    if not isinstance(raw, list) or not raw:
        raise MailboxError("OPENLINES_EMAIL_MAILBOXES: expected a non-empty list of mailboxes")
    out: dict[str, Mailbox] = {}
    for i, item in enumerate(raw):
        try:
            mb = msgspec.convert(item, Mailbox)
        except (msgspec.ValidationError, ValueError) as exc:
            where = item.get("account", f"#{i + 1}") if isinstance(item, dict) else f"#{i + 1}"
            raise MailboxError(f"mailbox {where}: {exc}") from None
        if mb.account in out:
            raise MailboxError(f"mailbox {mb.account}: account listed twice")
        out[mb.account] = mb
    return out
