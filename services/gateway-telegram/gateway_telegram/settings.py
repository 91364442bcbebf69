"""Settings of the Telegram gateway (``OPENLINES_*`` environment variables)."""

from __future__ import annotations

from openlines import admission
from openlines.settings import BaseSettings

DEFAULT_API_BASE = "https://api.telegram.org"


class Settings(BaseSettings, kw_only=True):
    telegram_bots: str  # inline JSON or the path of a .json/.toml file: [{account, token, secret}]
    telegram_api_base: str = DEFAULT_API_BASE  # Bot API server (a local Bot API server, or the test peer)
    http_port: int = 8083
    max_body: int = 1024 * 1024  # bytes of one webhook request; larger -> 413
    publish_timeout: float = 5.0  # seconds to wait for the PubAck before answering 503
    # Admission at the webhook edge (docs/channels/telegram.md, "Overload"): beyond these, 503 + Retry-After.
    max_in_flight: int = admission.DEFAULT_MAX_IN_FLIGHT  # webhook requests being handled at once per replica
    max_waiting: int = admission.DEFAULT_MAX_WAITING  # more that may wait for a slot
    admission_wait: float = admission.DEFAULT_WAIT  # seconds one may wait
    retry_after: int = admission.DEFAULT_RETRY_AFTER  # seconds, the Retry-After of a refusal
    telegram_timeout: float = 30.0  # seconds per Bot API request
    # Clients' files (docs/channels/telegram.md, "Files"): fetched before the message is published.
    telegram_file_max_bytes: int = 20 * 1024 * 1024  # larger files stay at Telegram (the cloud Bot API: 20 MB at most)
    telegram_file_timeout: float = 20.0  # seconds to fetch one file (getFile + download); slower ones stay at Telegram
    files_max_age_days: float = 90  # how long clients' files are kept in ol-tg-files (0 = forever)
    # Outbound
    telegram_consumer: str = "gateway-telegram"  # durable consumer name, shared by all replicas
    telegram_in_flight: int = 256  # outbound messages held (being sent or waiting their turn) per replica
    telegram_ack_wait: float = 30.0  # JetStream ack wait; held messages are kept alive with in_progress()
    telegram_chat_rate: float = 1.0  # messages per second to one private chat
    telegram_group_rate: float = 20 / 60  # messages per second to one group (Telegram: 20 per minute)
    telegram_chat_burst: int = 3  # messages a chat may get back to back before the rate applies
    telegram_bot_rate: float = 30.0  # messages per second per bot, over all chats
    telegram_max_attempts: int = 8  # tries of one transient failure (5xx, network) before delivery_failed
    telegram_backoff: float = 1.0  # first retry delay (doubles each try, at most telegram_backoff_max)
    telegram_backoff_max: float = 60.0
    telegram_max_download: int = 50 * 1024 * 1024  # bytes of an operator file fetched for re-upload
    telegram_sent_ttl: float = 30 * 24 * 3600.0  # how long delivered outbound ids are remembered (= OL_OUT max age)

    def __post_init__(self) -> None:
        if not self.telegram_api_base.startswith(("http://", "https://")):
            raise ValueError("OPENLINES_TELEGRAM_API_BASE must be an http(s) URL")
        if self.max_body < 1024:
            raise ValueError("OPENLINES_MAX_BODY must be at least 1024 bytes")
        if min(self.telegram_chat_rate, self.telegram_group_rate, self.telegram_bot_rate) <= 0 or self.telegram_chat_burst < 1:
            raise ValueError("OPENLINES_TELEGRAM_*_RATE must be > 0 and OPENLINES_TELEGRAM_CHAT_BURST >= 1")
        if self.telegram_in_flight < 1 or self.telegram_max_attempts < 1:
            raise ValueError("OPENLINES_TELEGRAM_IN_FLIGHT and OPENLINES_TELEGRAM_MAX_ATTEMPTS must be >= 1")
        if self.telegram_file_max_bytes < 0 or self.telegram_file_timeout <= 0 or self.files_max_age_days < 0:
            raise ValueError(
                "OPENLINES_TELEGRAM_FILE_MAX_BYTES and OPENLINES_FILES_MAX_AGE_DAYS must be >= 0, "
                "OPENLINES_TELEGRAM_FILE_TIMEOUT > 0"
            )
        self.limits()  # raises with the variables named

    def limits(self) -> admission.Limits:
        return admission.Limits(self.max_in_flight, self.max_waiting, self.admission_wait, self.retry_after)

    def public(self) -> dict[str, object]:
        out = super().public()
        # Inline JSON holds tokens and secrets; a path is fine to show.
        if self.telegram_bots.strip()[:1] in ("[", "{"):
            out["telegram_bots"] = "*** (inline)"
        return out
