from openlines.runner import main
from router.app import setup
from router.settings import Settings

main("router", Settings, setup)
