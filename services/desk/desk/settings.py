"""The desk's own settings, on top of what every service reads."""

from __future__ import annotations

from typing import Literal

from openlines.settings import BaseSettings

MIN_SECRET_CHARS = 16


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
    # Where clients' channels fetch the files operators attach (https://desk.example.com).
    # Empty: the address the operator's browser used. Gateways (Telegram downloads the
    # file to re-upload it) and visitors must be able to reach it.
    public_url: str = ""
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

    def __post_init__(self) -> None:
        if len(self.cookie_secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"OPENLINES_COOKIE_SECRET must be at least {MIN_SECRET_CHARS} characters "
                "(use a long random string, e.g. `openssl rand -hex 32`)"
            )
        if not 1 <= self.session_hours <= 24 * 31:
            raise ValueError("OPENLINES_SESSION_HOURS must be between 1 and 744")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("OPENLINES_PUBLIC_URL must start with http:// or https://")
        if self.max_upload_bytes < 1:
            raise ValueError("OPENLINES_MAX_UPLOAD_BYTES must be positive")
        if self.files_max_age_days < 0:
            raise ValueError("OPENLINES_FILES_MAX_AGE_DAYS must be 0 (keep forever) or more")
        if self.login_window_seconds < 1 or self.login_failures_per_login < 1 or self.login_failures_per_address < 1:
            raise ValueError("OPENLINES_LOGIN_WINDOW_SECONDS and OPENLINES_LOGIN_FAILURES_PER_* must be positive")
