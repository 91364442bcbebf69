"""openlines Telegram gateway: one process serves many bots (aiogram 3)."""

from gateway_telegram.service import setup
from gateway_telegram.settings import Settings

__all__ = ["Settings", "setup"]
