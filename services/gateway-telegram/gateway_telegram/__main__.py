import os

from gateway_telegram.bots import BotsError, parse_bots
from gateway_telegram.service import setup
from gateway_telegram.settings import Settings
from openlines.runner import main

# Check the bot list before waiting for NATS: a typo should stop the start at
# once. (Not in Settings: a settings error would echo the value, tokens included.)
if "OPENLINES_TELEGRAM_BOTS" in os.environ:
    try:
        parse_bots(os.environ["OPENLINES_TELEGRAM_BOTS"])
    except BotsError as exc:
        raise SystemExit(f"gateway-telegram: configuration error: {exc}") from None

main("gateway-telegram", Settings, setup)
