"""openlines VK gateway: Callback API receiver and messages.send sender."""

from gateway_vk.service import setup
from gateway_vk.settings import Settings

__all__ = ["Settings", "setup"]
