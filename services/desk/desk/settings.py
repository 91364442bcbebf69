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

    def __post_init__(self) -> None:
        if len(self.cookie_secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"OPENLINES_COOKIE_SECRET must be at least {MIN_SECRET_CHARS} characters "
                "(use a long random string, e.g. `openssl rand -hex 32`)"
            )
        if not 1 <= self.session_hours <= 24 * 31:
            raise ValueError("OPENLINES_SESSION_HOURS must be between 1 and 744")
