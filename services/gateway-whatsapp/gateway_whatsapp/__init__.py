"""openlines WhatsApp gateway: the WhatsApp Business Cloud API, many phone numbers per process."""

from gateway_whatsapp.service import setup
from gateway_whatsapp.settings import Settings

__all__ = ["Settings", "setup"]
