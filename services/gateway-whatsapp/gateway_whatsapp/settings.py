"""Settings of the WhatsApp gateway (``OPENLINES_*`` environment variables)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from gateway_whatsapp.accounts import Accounts, parse_accounts
from openlines import admission
from openlines.settings import BaseSettings

DEFAULT_API_BASE = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"
DEFAULT_MEDIA_HOSTS = "lookaside.fbsbx.com"
_VERSION = re.compile(r"^v[0-9]{1,3}\.[0-9]{1,3}$")
MB = 1024 * 1024


class Settings(BaseSettings, kw_only=True):
    whatsapp_accounts: str  # inline JSON or the path of a .json/.toml file: {apps: [...], numbers: [...]}
    whatsapp_api_base: str = DEFAULT_API_BASE  # the Graph API (the test peer in tests)
    whatsapp_api_version: str = DEFAULT_API_VERSION
    # Hosts a media URL the Graph API hands out may point at (https only); the API's own origin is always allowed.
    whatsapp_media_hosts: str = DEFAULT_MEDIA_HOSTS
    http_port: int = 8086
    max_body: int = 3 * MB  # bytes of one webhook request; larger -> 413 (status batches can be large)
    publish_timeout: float = 5.0  # seconds to wait for a PubAck before answering 503
    max_in_flight: int = admission.DEFAULT_MAX_IN_FLIGHT
    max_waiting: int = admission.DEFAULT_MAX_WAITING
    admission_wait: float = admission.DEFAULT_WAIT
    retry_after: int = admission.DEFAULT_RETRY_AFTER
    whatsapp_timeout: float = 30.0  # seconds per Graph API request
    whatsapp_media_timeout: float = 60.0  # seconds to fetch one client's file (media URL + download)
    whatsapp_max_download: int = 100 * MB  # bytes of one client's file (WhatsApp's document limit)
    whatsapp_media_concurrency: int = 4  # client files fetched at once per replica (bounds memory)
    files_max_age_days: float = 90  # how long clients' files are kept in ol-wa-files (0 = forever)
    # Outbound
    whatsapp_consumer: str = "gateway-whatsapp"  # durable consumer on OL_OUT, shared by the replicas
    whatsapp_in_flight: int = 256  # outbound messages held per replica (sending or waiting their turn)
    whatsapp_ack_wait: float = 30.0
    whatsapp_number_rate: float = 80.0  # messages per second per phone number (Cloud API default throughput)
    whatsapp_user_rate: float = 1 / 6  # messages per second to one client (WhatsApp's pair rate)
    whatsapp_user_burst: int = 20  # messages one client may get back to back before the pair rate applies
    whatsapp_max_attempts: int = 8  # tries of a transient failure before delivery_failed
    whatsapp_backoff: float = 1.0  # first retry delay (doubling, at most whatsapp_backoff_max)
    whatsapp_backoff_max: float = 60.0
    whatsapp_max_upload: int = 100 * MB  # bytes of an operator's file uploaded to WhatsApp
    whatsapp_sent_ttl: float = 30 * 24 * 3600.0  # how long send records are kept (= OL_OUT max age)

    def __post_init__(self) -> None:
        if not self.whatsapp_api_base.startswith(("http://", "https://")):
            raise ValueError("OPENLINES_WHATSAPP_API_BASE must be an http(s) URL")
        if not _VERSION.match(self.whatsapp_api_version):
            raise ValueError("OPENLINES_WHATSAPP_API_VERSION must look like v23.0")
        if self.max_body < 1024:
            raise ValueError("OPENLINES_MAX_BODY must be at least 1024 bytes")
        if min(self.whatsapp_number_rate, self.whatsapp_user_rate) <= 0 or self.whatsapp_user_burst < 1:
            raise ValueError("OPENLINES_WHATSAPP_*_RATE must be > 0 and OPENLINES_WHATSAPP_USER_BURST >= 1")
        if min(self.whatsapp_in_flight, self.whatsapp_max_attempts, self.whatsapp_media_concurrency) < 1:
            raise ValueError(
                "OPENLINES_WHATSAPP_IN_FLIGHT, OPENLINES_WHATSAPP_MAX_ATTEMPTS and"
                " OPENLINES_WHATSAPP_MEDIA_CONCURRENCY must be >= 1"
            )
        if self.files_max_age_days < 0:
            raise ValueError("OPENLINES_FILES_MAX_AGE_DAYS must be 0 (keep forever) or more")
        self.limits()

    def limits(self) -> admission.Limits:
        return admission.Limits(self.max_in_flight, self.max_waiting, self.admission_wait, self.retry_after)

    def accounts(self) -> Accounts:
        return parse_accounts(self.whatsapp_accounts)

    def media_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.whatsapp_media_hosts.split(",") if h.strip())

    def api_origin(self) -> tuple[str, str]:
        parts = urlsplit(self.whatsapp_api_base)
        return parts.scheme, parts.netloc.lower()

    def public(self) -> dict[str, object]:
        out = super().public()
        # Inline JSON holds tokens and secrets; a path is fine to show.
        if self.whatsapp_accounts.strip()[:1] in ("[", "{"):
            out["whatsapp_accounts"] = "*** (inline)"
        return out
