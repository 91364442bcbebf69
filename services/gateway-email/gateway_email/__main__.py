from gateway_email.service import setup
from gateway_email.settings import Settings
from openlines.runner import main

main("gateway-email", Settings, setup)
