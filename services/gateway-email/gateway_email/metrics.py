"""Prometheus metrics of the e-mail gateway (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MAILS = Counter(
    "openlines_email_inbound_total",
    "Inbound mails handled, by result (published, duplicate, bounce, own, dead_letter)",
    ["account", "result"],
)
SENT = Counter(
    "openlines_email_outbound_total",
    "Outbound messages, by result (sent, retry, failed, suppressed, duplicate)",
    ["account", "result"],
)
OWNED = Gauge("openlines_email_mailboxes_owned", "Mailboxes this replica holds the lease of")
IMAP_ERRORS = Counter("openlines_email_imap_errors_total", "IMAP sessions that ended in an error", ["account"])
