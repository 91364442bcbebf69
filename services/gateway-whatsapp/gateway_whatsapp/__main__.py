import os

from gateway_whatsapp.accounts import VARIABLE, AccountsError, parse_accounts
from gateway_whatsapp.service import setup
from gateway_whatsapp.settings import Settings
from openlines.runner import main

# Check the accounts before waiting for NATS: a typo should stop the start at once.
# (Not in Settings: a settings error would echo the value, tokens and secrets included.)
if VARIABLE in os.environ:
    try:
        parse_accounts(os.environ[VARIABLE])
    except AccountsError as exc:
        raise SystemExit(f"gateway-whatsapp: configuration error: {exc}") from None

main("gateway-whatsapp", Settings, setup)
