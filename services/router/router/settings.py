from __future__ import annotations

from openlines.settings import BaseSettings


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8082  # health and metrics only
    partition_lease_seconds: float = 10.0  # a dead replica's inbound partitions move to the others after this
    timer_consumer: str = "router-timers"  # durable consumer name on OL_TIMER
    sweep_seconds: float = 30.0  # how often capacity claims left by a killed replica are looked for
    ack_wait: float = 10.0  # seconds before an unacknowledged inbound message is redelivered (after a crash)
