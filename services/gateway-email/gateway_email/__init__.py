"""openlines e-mail gateway: IMAP in, SMTP out (see docs/channels/email.md)."""

from gateway_email.service import setup
from gateway_email.settings import Settings

__all__ = ["Settings", "setup"]
