"""Settings of the e-mail gateway (``OPENLINES_*`` environment variables)."""

from __future__ import annotations

from openlines.settings import BaseSettings

MIB = 1024 * 1024


class Settings(BaseSettings, kw_only=True):
    # The mailboxes: a path to a TOML or JSON file, or inline JSON (see docs/channels/email.md).
    email_mailboxes: str
    http_port: int = 8085  # health and metrics only
    poll_interval: float = 30.0  # seconds between checks when the server offers no IDLE
    idle_renew: float = 25 * 60.0  # re-issue IDLE this often (RFC 2177: before the server's 30-minute timeout)
    imap_timeout: float = 60.0  # seconds for one IMAP command (a FETCH of a large mail included)
    lease_ttl: float = 30.0  # a dead replica's mailboxes are taken over after this many seconds
    max_message_bytes: int = 40 * MIB  # larger mails are published with their headers and a note only
    max_attachment_bytes: int = 15 * MIB  # larger attachments are listed but not stored
    max_text_chars: int = 20_000  # text an operator sees from one mail
    reply_languages: str = "en,de,fr,es,it,nl,pl,sv"  # languages (known to mail-parser-reply) whose reply markers we strip
    outbound_consumer: str = "gateway-email"  # durable consumer on ol.out.email.> shared by the replicas
    smtp_timeout: float = 30.0
    smtp_attempts: int = 12  # temporary SMTP failures are retried this many times, then reported as failed
    smtp_backoff: float = 5.0  # first retry delay; doubles up to smtp_backoff_max
    smtp_backoff_max: float = 600.0
    # Operators' files go as MIME parts; mail servers commonly take 25 MB a mail, and base64 adds a third.
    email_attachments_max_bytes: int = 15 * MIB  # all files of one reply together; more -> delivery_failed
    files_max_age_days: float = 90  # how long clients' attachments are kept in ol-email-files (0 = forever)

    def __post_init__(self) -> None:
        if not self.email_mailboxes.strip():
            raise ValueError("OPENLINES_EMAIL_MAILBOXES must name a TOML/JSON file or hold inline JSON")
        if self.lease_ttl < 1 or self.poll_interval <= 0 or self.idle_renew <= 0:
            raise ValueError("OPENLINES_LEASE_TTL must be >= 1 s; OPENLINES_POLL_INTERVAL and OPENLINES_IDLE_RENEW > 0")
        if self.idle_renew >= 29 * 60:
            raise ValueError("OPENLINES_IDLE_RENEW must be below 1740 s (29 minutes, RFC 2177)")
        if self.smtp_attempts < 1:
            raise ValueError("OPENLINES_SMTP_ATTEMPTS must be >= 1")
        if self.email_attachments_max_bytes < 1 or self.files_max_age_days < 0:
            raise ValueError("OPENLINES_EMAIL_ATTACHMENTS_MAX_BYTES must be >= 1 and OPENLINES_FILES_MAX_AGE_DAYS >= 0")
        from gateway_email.mailboxes import load_mailboxes

        load_mailboxes(self.email_mailboxes)  # fail at start-up, naming the mailbox and key at fault

    def public(self) -> dict[str, object]:
        """Start-up log: inline mailbox JSON holds passwords, so only the accounts are shown."""
        out = super().public()
        value = self.email_mailboxes.strip()
        if value.startswith(("[", "{")):
            from gateway_email.mailboxes import load_mailboxes

            out["email_mailboxes"] = f"(inline JSON: {', '.join(load_mailboxes(value))})"
        return out

    def languages(self) -> list[str]:
        return [lang.strip() for lang in self.reply_languages.split(",") if lang.strip()]
