"""Prometheus metrics of the VK gateway (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "openlines_vk_callback_events_total",
    "Callback API requests by outcome (published, duplicate, ignored, confirmation, refused, unavailable)",
    ["account", "outcome"],
)
REFUSED = Counter("openlines_vk_callback_refused_total", "Callback API requests refused", ["status", "code"])
RETRIED_EVENTS = Counter("openlines_vk_callback_retries_total", "Callback API requests VK marked as retries (X-Retry-Counter)")
PROFILE_LOOKUPS = Counter("openlines_vk_profile_lookups_total", "users.get lookups (hit, fetched, failed)", ["outcome"])
SENT = Counter("openlines_vk_messages_sent_total", "messages.send calls that VK accepted (one per part)", ["account"])
DELIVERY_FAILED = Counter("openlines_vk_delivery_failed_total", "Outbound messages given up on", ["account", "reason"])
API_RETRIES = Counter("openlines_vk_api_retries_total", "Retryable VK API failures", ["account", "code"])
THROTTLED = Counter("openlines_vk_throttled_total", "API calls that waited for the per-token rate limit", ["account"])
API_SECONDS = Histogram("openlines_vk_api_seconds", "Duration of VK API calls", ["method"])
