"""Prometheus metrics of the WhatsApp gateway (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WEBHOOKS = Counter("openlines_whatsapp_webhooks_total", "Webhook requests answered, by result", ["app", "result"])
MESSAGES = Counter(
    "openlines_whatsapp_messages_total",
    "Client messages stored (duplicate = JetStream had it already), by WhatsApp message type",
    ["account", "type", "duplicate"],
)
STATUSES = Counter(
    "openlines_whatsapp_statuses_total",
    "Status callbacks (sent, delivered, read, failed), by what was done",
    ["status", "result"],
)
IGNORED = Counter("openlines_whatsapp_ignored_total", "Webhook content answered 200 and not published, by what it was", ["what"])
REJECTED = Counter("openlines_whatsapp_rejected_total", "Webhook requests refused with 4xx/503", ["code"])
MEDIA = Counter("openlines_whatsapp_media_total", "Clients' files fetched from the Cloud API, by result", ["result"])
SENT = Counter("openlines_whatsapp_sent_total", "Cloud API messages sent (parts of outbound messages)", ["account", "type"])
DELIVERED = Counter("openlines_whatsapp_delivered_total", "Outbound messages fully handed to WhatsApp and acked", ["account"])
FAILED = Counter("openlines_whatsapp_delivery_failed_total", "Outbound messages given up (delivery_failed)", ["account", "code"])
RETRIES = Counter("openlines_whatsapp_retries_total", "Cloud API sends retried, by why", ["reason"])
UNCERTAIN_RESENDS = Counter(
    "openlines_whatsapp_uncertain_resends_total",
    "Parts sent again after a crash mid-send (the client may see them twice)",
    ["account"],
)
HELD = Gauge("openlines_whatsapp_outbound_held", "Outbound messages this replica holds (sending or waiting their turn)")
