"""Settings of the webchat gateway (``OPENLINES_*`` environment variables)."""

from __future__ import annotations

from gateway_webchat.core import address
from gateway_webchat.core.limits import Rate
from openlines import admission, files
from openlines.secretcheck import check_secret
from openlines.settings import BaseSettings


class Settings(BaseSettings, kw_only=True):
    webchat_secret: str  # HMAC key of visitor tokens; every replica needs the same one
    http_port: int = 8081
    max_text: int = 4000  # characters of one visitor message
    max_frame: int = 16384  # bytes of one WebSocket frame
    widget_public_url: str = ""  # how browsers reach this gateway (the widget script in /demo); empty = same origin
    accounts: str = ""  # comma-separated allow-list of widget accounts; empty = any subject-safe token
    demo_account: str = "demo"
    publish_timeout: float = 5.0
    ws_heartbeat: float = 25.0  # WebSocket ping interval; finds dead sockets behind NAT/proxies
    send_queue: int = 512  # frames queued for one socket before it counts as stuck and is closed
    # Admission (docs/channels/webchat.md, "Overload"): beyond these, 503 + Retry-After / an error frame with retry_after.
    max_sockets: int = 10_000  # open visitor sockets per replica; more handshakes get 503
    max_in_flight: int = admission.DEFAULT_MAX_IN_FLIGHT  # visitor messages being published at once per replica
    max_waiting: int = admission.DEFAULT_MAX_WAITING  # more that may wait for a slot
    admission_wait: float = admission.DEFAULT_WAIT  # seconds one may wait
    retry_after: int = admission.DEFAULT_RETRY_AFTER  # seconds, the retry_after of a refusal
    # Abuse limits (docs/channels/webchat.md, "Abuse limits"), per replica; 0 per minute = no limit.
    visitor_messages_per_minute: float = 20.0  # messages one visitor may send a minute, on average
    visitor_message_burst: int = 5  # ... and at once, after a quiet while
    new_visitors_per_minute: float = 10.0  # new visitors (tokens issued) per client address a minute
    new_visitor_burst: int = 10
    trusted_proxies: str = ""  # comma-separated addresses/networks of our reverse proxies; empty = trust no header
    client_ip_header: str = "X-Forwarded-For"  # where a trusted proxy puts the client address
    visitor_ttl: int = 24 * 3600  # seconds a visitor token is valid; every connection renews it
    visitor_grace: int = 30 * 24 * 3600  # seconds after expiry an expired token may still be renewed
    hello_timeout: float = 10.0  # seconds a new socket has to send its hello frame
    # Files (docs/channels/webchat.md, "Files")
    webchat_upload_max_bytes: int = 10 * 1024 * 1024  # the largest file a visitor may upload
    webchat_upload_types: str = (
        ""  # comma-separated MIME types visitors may upload; empty = images, PDF, office, text, audio, video
    )
    visitor_uploads_per_minute: float = 10.0  # uploads one visitor may make a minute (0 = no limit)
    visitor_upload_burst: int = 3
    webchat_file_link_ttl: int = 30 * 24 * 3600  # seconds a file link in the widget works
    files_max_age_days: float = 90  # how long visitors' files are kept in ol-webchat-files (0 = forever)

    def __post_init__(self) -> None:
        check_secret("OPENLINES_WEBCHAT_SECRET", self.webchat_secret)
        if self.max_text < 1 or self.max_frame < 64:
            raise ValueError("OPENLINES_MAX_TEXT must be >= 1 and OPENLINES_MAX_FRAME >= 64")
        if self.max_sockets < 1:
            raise ValueError("OPENLINES_MAX_SOCKETS must be >= 1")
        self.limits()  # raises with the variables named
        if self.webchat_upload_max_bytes < 1 or self.webchat_file_link_ttl < 60 or self.files_max_age_days < 0:
            raise ValueError(
                "OPENLINES_WEBCHAT_UPLOAD_MAX_BYTES must be >= 1, OPENLINES_WEBCHAT_FILE_LINK_TTL >= 60, "
                "OPENLINES_FILES_MAX_AGE_DAYS >= 0"
            )
        for mime in self.upload_types():
            if "/" not in mime or mime.startswith("text/html") or mime in ("image/svg+xml", "application/xhtml+xml"):
                raise ValueError(f"OPENLINES_WEBCHAT_UPLOAD_TYPES: {mime!r} is not a type visitors may upload")
        for name in ("visitor_message", "new_visitor", "visitor_upload"):
            if getattr(self, f"{name}_burst") < 1:
                raise ValueError(f"OPENLINES_{name.upper()}_BURST must be >= 1")
        if self.visitor_ttl < 60 or self.visitor_grace < 0:
            raise ValueError("OPENLINES_VISITOR_TTL must be >= 60 (seconds) and OPENLINES_VISITOR_GRACE >= 0")
        if self.hello_timeout <= 0:
            raise ValueError("OPENLINES_HELLO_TIMEOUT must be > 0 (seconds)")
        try:
            self.proxies()
        except ValueError as exc:
            raise ValueError(f"OPENLINES_TRUSTED_PROXIES: {exc}") from None

    def limits(self) -> admission.Limits:
        return admission.Limits(self.max_in_flight, self.max_waiting, self.admission_wait, self.retry_after)

    def message_rate(self) -> Rate:
        return Rate(self.visitor_messages_per_minute, self.visitor_message_burst)

    def new_visitor_rate(self) -> Rate:
        return Rate(self.new_visitors_per_minute, self.new_visitor_burst)

    def upload_rate(self) -> Rate:
        return Rate(self.visitor_uploads_per_minute, self.visitor_upload_burst)

    def upload_types(self) -> frozenset[str]:
        listed = frozenset(t.strip().lower() for t in self.webchat_upload_types.split(",") if t.strip())
        return listed or frozenset(files.SENDABLE)

    def proxies(self) -> tuple[address.Network, ...]:
        return address.parse_networks(self.trusted_proxies)

    def allowed_accounts(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.accounts.split(",") if a.strip())
