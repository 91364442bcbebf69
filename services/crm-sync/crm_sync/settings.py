"""Settings of crm-sync (``OPENLINES_*`` environment variables); every key is in docs/crm.md."""

from __future__ import annotations

from typing import Literal

import msgspec

from openlines.secretcheck import check_secret
from openlines.settings import BaseSettings

_SECRET_FIELDS = ("bitrix24_webhook", "bitrix24_access_token", "bitrix24_refresh_token", "bitrix24_client_secret")


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8087  # health and the built-in CRM's read API (metrics: OPENLINES_METRICS_PORT, 9087)
    # Bearer token the CRM read API (/crm/...) requires; empty = the read API is off.
    crm_api_token: str = ""
    crm_backend: Literal["builtin", "bitrix24"] = "builtin"
    # Bitrix24: an inbound webhook URL https://<portal>/rest/<user>/<code>/ ...
    bitrix24_webhook: str = ""
    # ... or OAuth: the portal URL and tokens (refreshed on expired_token when the client id/secret are set)
    bitrix24_portal: str = ""
    bitrix24_access_token: str = ""
    bitrix24_refresh_token: str = ""
    bitrix24_client_id: str = ""
    bitrix24_client_secret: str = ""
    bitrix24_oauth_url: str = "https://oauth.bitrix.info/oauth/token/"
    bitrix24_activity_type: int = 1  # TYPE_ID of the conversation activity (1 = meeting: never sends anything)
    crm_rate: float = 2.0  # steady requests per second to the CRM
    crm_burst: int = 50  # requests allowed at once before the steady rate applies
    crm_timeout: float = 10.0  # seconds for one CRM request
    crm_limit_retries: int = 5  # QUERY_LIMIT_EXCEEDED answers retried (with back-off) before the event waits
    crm_backoff: float = 1.0  # first back-off in seconds after QUERY_LIMIT_EXCEEDED, doubled each time
    crm_users: str = ""  # JSON {"<crm user id>": "<operator id>"}; empty = the built-in CRM's users are operator ids
    phone_region: str = ""  # ISO country (e.g. "LV") for numbers written without a country code
    consumer: str = "crm-sync"  # durable consumer name on OL_EVT
    # Events in hand at once, all replicas together (each client's in order: decision 030); 1 = one at a time.
    crm_concurrency: int = 16
    # Seconds before an unacknowledged event is redelivered (after a crash), and the lease of a
    # replica's claim on a client: heartbeats renew both every third of it. Longer than crm_timeout.
    ack_wait: float = 30.0
    # Longest one attempt at an event may take (its CRM calls, waits for the rate limit and the ack); cut
    # off, it is retried in place like a failure - what it created is found again, not made twice.
    crm_attempt_timeout: float = 300.0
    responsible_timeout: float = 0.3  # longest a responsible lookup may take (the router waits 0.5 s)
    responsible_cache_seconds: float = 300.0  # how long a responsible found in the CRM is remembered

    def __post_init__(self) -> None:
        if (
            self.crm_backend == "bitrix24"
            and not self.bitrix24_webhook
            and not (self.bitrix24_portal and self.bitrix24_access_token)
        ):
            raise ValueError(
                "OPENLINES_CRM_BACKEND=bitrix24 needs OPENLINES_BITRIX24_WEBHOOK, or OPENLINES_BITRIX24_PORTAL"
                " with OPENLINES_BITRIX24_ACCESS_TOKEN"
            )
        if self.crm_api_token:  # empty: the read API is off
            check_secret("OPENLINES_CRM_API_TOKEN", self.crm_api_token)
        if self.crm_rate <= 0 or self.crm_burst < 1:
            raise ValueError("OPENLINES_CRM_RATE must be > 0 and OPENLINES_CRM_BURST >= 1")
        if not 1 <= self.crm_concurrency <= 1000:
            raise ValueError(f"OPENLINES_CRM_CONCURRENCY must be 1-1000 (events in hand at once), not {self.crm_concurrency}")
        if self.ack_wait <= self.crm_timeout:
            # A replica takes a client over when the holder's claim has stood still for ack_wait;
            # the holder's last create, sent right after its last renewal, must have ended by then.
            raise ValueError(
                f"OPENLINES_ACK_WAIT ({self.ack_wait:g}) must be longer than OPENLINES_CRM_TIMEOUT ({self.crm_timeout:g})"
            )
        if self.crm_attempt_timeout <= self.crm_timeout:
            raise ValueError(
                f"OPENLINES_CRM_ATTEMPT_TIMEOUT ({self.crm_attempt_timeout:g}) must be longer than"
                f" OPENLINES_CRM_TIMEOUT ({self.crm_timeout:g})"
            )
        self.users()  # fail at start-up, not at the first event

    def users(self) -> dict[str, str]:
        """CRM user id -> operator id."""
        if not self.crm_users.strip():
            return {}
        try:
            data = msgspec.json.decode(self.crm_users, type=dict[str, str])
        except msgspec.DecodeError as exc:
            raise ValueError(f'OPENLINES_CRM_USERS must be a JSON object {{"<crm user id>": "<operator id>"}}: {exc}') from None
        return data

    def public(self) -> dict[str, object]:
        out = super().public()
        for name in _SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out
