from __future__ import annotations

from openlines.settings import BaseSettings


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8082  # health and metrics only
    consumer: str = "router"  # durable consumer name on OL_IN
    batch: int = 32  # inbound messages fetched at once (handled one by one, in order)
    ack_wait: float = 30.0  # seconds before an unacknowledged inbound message is redelivered
