from desk.app import setup
from desk.settings import Settings
from openlines.runner import main

main("desk", Settings, setup)
