"""Prometheus metrics of the Telegram gateway (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

UPDATES = Counter(
    "openlines_telegram_updates_total",
    "Webhook updates answered 200, by what was done (message, edited_message, callback_query, ignored:<type>)",
    ["account", "kind"],
)
PUBLISHED = Counter(
    "openlines_telegram_published_total", "Updates acknowledged by JetStream (duplicate = already stored)", ["duplicate"]
)
REJECTED = Counter("openlines_telegram_rejected_total", "Webhook requests refused with 4xx/503", ["code"])
SENT = Counter("openlines_telegram_sent_total", "Bot API messages sent (parts of outbound messages)", ["account", "method"])
DELIVERED = Counter("openlines_telegram_delivered_total", "Outbound messages fully delivered and acked", ["account"])
FAILED = Counter("openlines_telegram_delivery_failed_total", "Outbound messages given up (delivery_failed)", ["account"])
RETRIES = Counter("openlines_telegram_retries_total", "Bot API sends retried", ["reason"])
HELD = Gauge("openlines_telegram_outbound_held", "Outbound messages this replica holds (sending or waiting their turn)")
FILES = Counter(
    "openlines_telegram_client_files_total",
    "Files clients sent: kept in ol-tg-files, or not kept (the operator is told why)",
    ["account", "result"],
)
