from gateway_webchat.service import setup
from gateway_webchat.settings import Settings
from openlines.runner import main

main("gateway-webchat", Settings, setup)
