"""openlines website chat gateway: WebSocket endpoint + embeddable widget."""

from gateway_webchat.service import setup
from gateway_webchat.settings import Settings

__all__ = ["Settings", "setup"]
