"""The desk's own settings, on top of what every service reads."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from desk.hosts import check_public_url, is_loopback
from openlines.secretcheck import check_secret
from openlines.settings import BaseSettings


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8080
    # Signs the session cookie. Every desk replica must share it; changing it
    # logs every operator out.
    cookie_secret: str
    # Whether the session cookie is marked Secure (the browser sends it over HTTPS only).
    # Unset: decided from desk_public_url - https -> Secure; plain http on a loopback host
    # (127.0.0.1, localhost, ::1) -> not; none set (a desk on loopback) -> Secure when the request
    # came over HTTPS (X-Forwarded-Proto counts when trust_forwarded_for is set). true/false: as said.
    cookie_secure: bool | None = None
    session_hours: int = 12
    # The same variables crm-sync reads: which CRM holds the clients' records.
    # "builtin": the desk's CRM page lists crm-sync's KV buckets; "bitrix24":
    # the page says the records live in the portal (linked when the portal URL is set).
    crm_backend: Literal["builtin", "bitrix24"] = "builtin"
    bitrix24_portal: str = ""  # https://<portal>.bitrix24.com - shown as a link, never a secret
    # How operators and clients reach the desk (https://desk.example.com): the address in the
    # links of files operators send, and the Host the desk answers to. Required unless the desk
    # listens on loopback only (make dev), where links use the loopback address of the request.
    desk_public_url: str = ""
    # More host names the desk answers to (comma-separated), besides its public URL's and loopback.
    desk_allowed_hosts: str = ""
    max_upload_bytes: int = 10 * 1024 * 1024
    # How long files operators send are kept (and their links work); NATS deletes older ones. 0 = forever.
    # Every desk replica must have the same value: each brings the store to its own on start-up.
    files_max_age_days: float = 90
    # Sign-in rate limiting, failed attempts within the window: one login from one client address is
    # locked out after per_source; one address (any logins) after per_address; one login from everywhere
    # is never locked, only slowed (each attempt waits login_slow_seconds) after per_login.
    login_window_seconds: int = 900
    login_failures_per_source: int = 5
    login_failures_per_address: int = 20
    login_failures_per_login: int = 50
    login_slow_seconds: float = 3.0
    # Behind a reverse proxy every request comes from the proxy: set to true to take the
    # client address from the last X-Forwarded-For entry (the one our proxy added).
    trust_forwarded_for: bool = False
    # How often this replica renews its key in ol-desk-presence. Three renewals missed (killed -9, cut off
    # from NATS) and the router counts its operators' pages closed; every replica should use the same value.
    desk_heartbeat_seconds: float = 5.0
    # How long an operator's command that is safe to repeat (openlines.commands.REPEATABLE: close, accept,
    # reply ...) is asked of the router again while it does not answer - a router replica killed while at it,
    # restarting, "unavailable" - before the operator gets 503; retries included. 0 = ask once.
    command_retry_seconds: float = 10.0
    # The conversation index behind views and search (kept in memory by every replica, rebuilt from
    # the streams on start): how many messages (the newest) and conversations it holds at most.
    search_max_messages: int = 300_000
    search_max_sessions: int = 100_000

    # SLA alert e-mails (a line's sla.notify_emails): the SMTP server they go through. Empty host = no
    # e-mail. "starttls" (submission, 587) or "tls" (implicit, 465); "none" only to a server on this machine.
    sla_smtp_host: str = ""
    sla_smtp_port: int = 587
    sla_smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    sla_smtp_username: str = ""
    sla_smtp_password: str = ""
    sla_mail_from: str = ""  # the sender address of the alerts, e.g. openlines@example.com
    sla_mail_retry_seconds: float = 30.0  # a refused or failed alert mail is tried again after this long

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.desk_allowed_hosts.split(",") if h.strip()]

    def __post_init__(self) -> None:
        check_secret("OPENLINES_COOKIE_SECRET", self.cookie_secret)
        if not 1 <= self.session_hours <= 24 * 31:
            raise ValueError("OPENLINES_SESSION_HOURS must be between 1 and 744")
        if self.desk_public_url:
            check_public_url(self.desk_public_url, "OPENLINES_DESK_PUBLIC_URL")
            if (
                self.cookie_secure is None
                and urlsplit(self.desk_public_url).scheme == "http"
                and not loopback_url(self.desk_public_url)
            ):
                raise ValueError(
                    f"OPENLINES_DESK_PUBLIC_URL={self.desk_public_url} is plain http on a host other than this machine: "
                    "session cookies would cross the network unencrypted. Serve the desk over https (or behind a TLS "
                    "proxy) and give its https:// address, or set OPENLINES_COOKIE_SECURE=false to accept that risk"
                )
        elif not is_loopback(self.http_host):
            raise ValueError(
                f"OPENLINES_DESK_PUBLIC_URL must be set when the desk listens on {self.http_host!r} (not loopback): "
                "the address operators and clients reach it at, e.g. https://desk.example.com"
            )
        if self.search_max_messages < 1 or self.search_max_sessions < 1:
            raise ValueError("OPENLINES_SEARCH_MAX_MESSAGES and OPENLINES_SEARCH_MAX_SESSIONS must be positive")
        if self.max_upload_bytes < 1:
            raise ValueError("OPENLINES_MAX_UPLOAD_BYTES must be positive")
        if self.files_max_age_days < 0:
            raise ValueError("OPENLINES_FILES_MAX_AGE_DAYS must be 0 (keep forever) or more")
        if (
            self.login_window_seconds < 1
            or min(self.login_failures_per_login, self.login_failures_per_address, self.login_failures_per_source) < 1
        ):
            raise ValueError("OPENLINES_LOGIN_WINDOW_SECONDS and OPENLINES_LOGIN_FAILURES_PER_* must be positive")
        if self.sla_smtp_host:
            if not self.sla_mail_from or "@" not in self.sla_mail_from or any(c in self.sla_mail_from for c in "\r\n<>"):
                raise ValueError(
                    "OPENLINES_SLA_MAIL_FROM must be the sender address of SLA alerts when OPENLINES_SLA_SMTP_HOST is set"
                )
            if not 0.1 <= self.sla_mail_retry_seconds <= 3600:
                raise ValueError("OPENLINES_SLA_MAIL_RETRY_SECONDS must be between 0.1 and 3600")
            if self.sla_smtp_tls == "none" and not is_loopback(self.sla_smtp_host):
                raise ValueError(
                    f"OPENLINES_SLA_SMTP_TLS=none with OPENLINES_SLA_SMTP_HOST={self.sla_smtp_host}: alerts (and the password) "
                    "would cross the network unencrypted; use starttls or tls, or a relay on this machine"
                )
        if not 0 <= self.command_retry_seconds <= 60:
            raise ValueError("OPENLINES_COMMAND_RETRY_SECONDS must be between 0 (ask once) and 60 (seconds)")
        if not 0.1 <= self.desk_heartbeat_seconds <= 60:
            raise ValueError("OPENLINES_DESK_HEARTBEAT_SECONDS must be between 0.1 and 60 (seconds)")
        if not 0 <= self.login_slow_seconds <= 60:
            raise ValueError("OPENLINES_LOGIN_SLOW_SECONDS must be between 0 and 60")

    def secure_cookies(self, request_https: bool) -> bool:
        """Whether to mark cookies Secure, for a request that came over HTTPS (``request_https``) or not."""
        if self.cookie_secure is not None:
            return self.cookie_secure
        if self.desk_public_url:
            return not loopback_url(self.desk_public_url)
        return request_https


def loopback_url(url: str) -> bool:
    """A plain-http address on this machine (development): the only place cookies may go without TLS by default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "http" and (is_loopback(host) or host.endswith(".localhost"))
