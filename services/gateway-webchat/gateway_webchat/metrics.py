"""Prometheus metrics of the webchat gateway (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MESSAGES_PUBLISHED = Counter(
    "openlines_webchat_messages_published_total",
    "Visitor messages acknowledged by JetStream (duplicate = already in the dedup window)",
    ["duplicate"],
)
PUBLISH_FAILURES = Counter(
    "openlines_webchat_publish_failures_total",
    "Visitor messages answered with 'unavailable'",
    ["reason"],
)
REJECTED_FRAMES = Counter("openlines_webchat_rejected_frames_total", "Visitor frames refused", ["code"])
REFUSED_SOCKETS = Counter("openlines_webchat_refused_sockets_total", "WebSocket connections refused", ["reason"])
OPEN_SOCKETS = Gauge("openlines_webchat_open_sockets", "Visitor WebSockets open on this replica")
REPLIES_PUSHED = Counter("openlines_webchat_replies_pushed_total", "Reply frames queued to visitor sockets (live and replay)")
RATE_LIMITED = Counter(
    "openlines_webchat_rate_limited_total",
    "Refusals by the abuse limits (limit = messages: a visitor's messages a minute; new_visitor: new visits per address)",
    ["limit"],
)
UPLOADS = Counter("openlines_webchat_uploads_total", "Visitor file uploads: stored, or refused (by error code)", ["result"])
