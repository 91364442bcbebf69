from __future__ import annotations

from openlines.settings import BaseSettings
from router.core.flood import FloodRule


class Settings(BaseSettings, kw_only=True):
    http_port: int = 8082  # health and metrics only
    # A dead replica's inbound partitions move to the others after this (renewed every third of it; decision 023).
    partition_lease_seconds: float = 1.5
    timer_consumer: str = "router-timers"  # durable consumer name on OL_TIMER
    sweep_seconds: float = 30.0  # how often capacity claims left by a killed replica are looked for
    # How often desk replicas that stopped heartbeating (killed -9, cut off) are looked for; their
    # operators' pages count as closed from then on (router/presence.py).
    desk_sweep_seconds: float = 5.0
    # Seconds before an unacknowledged inbound message is redelivered (after a crash); a message worked on
    # longer stays its replica's by in-progress heartbeats every third of it.
    ack_wait: float = 1.5
    # Inbound messages of one partition in hand at once (decision 029): different clients' are handled side by
    # side, one client's in order - also while two replicas both pull on the partition for a moment (decision
    # 033). 32 by default (decision 038); 1 handles a partition one message at a time.
    in_hand: int = 32
    # Operator commands one replica handles side by side (router/commands.py AtOnce); beyond it, the next waits.
    commands_at_once: int = 64
    # The flood guard (docs/security.md): beyond flood_limit client messages per chat per flood_window
    # seconds the chat is flagged for a supervisor and its messages are stored but not pushed to the operator.
    flood_limit: int = 30  # 0 = off
    flood_window: float = 60.0
    flood_channels: str = "telegram,vk,whatsapp"  # comma-separated channels it guards (webchat has its own limit per visitor)

    def __post_init__(self) -> None:
        if not 0.5 <= self.partition_lease_seconds <= 300:
            raise ValueError("OPENLINES_PARTITION_LEASE_SECONDS must be between 0.5 and 300 (seconds)")
        if not 0.5 <= self.ack_wait <= 300:
            raise ValueError("OPENLINES_ACK_WAIT must be between 0.5 and 300 (seconds)")
        if not 0.1 <= self.desk_sweep_seconds <= 300:
            raise ValueError("OPENLINES_DESK_SWEEP_SECONDS must be between 0.1 and 300 (seconds)")
        if not 1 <= self.in_hand <= 256:
            raise ValueError("OPENLINES_IN_HAND must be between 1 and 256")
        if not 1 <= self.commands_at_once <= 10_000:
            raise ValueError("OPENLINES_COMMANDS_AT_ONCE must be between 1 and 10000")
        if self.flood_limit < 0 or self.flood_window <= 0:
            raise ValueError("OPENLINES_FLOOD_LIMIT must be >= 0 and OPENLINES_FLOOD_WINDOW > 0 (seconds)")

    def flood_rule(self) -> FloodRule:
        channels = frozenset(c.strip() for c in self.flood_channels.split(",") if c.strip())
        return FloodRule(limit=self.flood_limit, window=self.flood_window, channels=channels)
