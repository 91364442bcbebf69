from gateway_vk.service import setup
from gateway_vk.settings import Settings
from openlines.runner import main

main("gateway-vk", Settings, setup)
