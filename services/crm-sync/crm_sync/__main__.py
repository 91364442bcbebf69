from crm_sync.service import setup
from crm_sync.settings import Settings
from openlines.runner import main

main("crm-sync", Settings, setup)
