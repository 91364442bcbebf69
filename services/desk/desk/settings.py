"""The desk's own settings, on top of what every service reads."""

from __future__ import annotations

from typing import Literal

from desk.hosts import check_public_url, is_loopback
from openlines.secretcheck import check_secret
from openlines.settings import BaseSettings


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8080
    # Signs the session cookie. Every desk replica must share it; changing it
    # logs every operator out.
    cookie_secret: str
    # Set to true when the desk is served over HTTPS (directly or behind a
    # TLS-terminating proxy): the browser then only sends the cookie over HTTPS.
    cookie_secure: bool = False
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
    # Sign-in rate limiting: failed attempts within the window, per login and per client address.
    login_window_seconds: int = 900
    login_failures_per_login: int = 5
    login_failures_per_address: int = 20
    # Behind a reverse proxy every request comes from the proxy: set to true to take the
    # client address from the last X-Forwarded-For entry (the one our proxy added).
    trust_forwarded_for: bool = False

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.desk_allowed_hosts.split(",") if h.strip()]

    def __post_init__(self) -> None:
        check_secret("OPENLINES_COOKIE_SECRET", self.cookie_secret)
        if not 1 <= self.session_hours <= 24 * 31:
            raise ValueError("OPENLINES_SESSION_HOURS must be between 1 and 744")
        if self.desk_public_url:
            check_public_url(self.desk_public_url, "OPENLINES_DESK_PUBLIC_URL")
        elif not is_loopback(self.http_host):
            raise ValueError(
                f"OPENLINES_DESK_PUBLIC_URL must be set when the desk listens on {self.http_host!r} (not loopback): "
                "the address operators and clients reach it at, e.g. https://desk.example.com"
            )
        if self.max_upload_bytes < 1:
            raise ValueError("OPENLINES_MAX_UPLOAD_BYTES must be positive")
        if self.files_max_age_days < 0:
            raise ValueError("OPENLINES_FILES_MAX_AGE_DAYS must be 0 (keep forever) or more")
        if self.login_window_seconds < 1 or self.login_failures_per_login < 1 or self.login_failures_per_address < 1:
            raise ValueError("OPENLINES_LOGIN_WINDOW_SECONDS and OPENLINES_LOGIN_FAILURES_PER_* must be positive")
