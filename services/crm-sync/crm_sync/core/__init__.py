"""Pure decisions of crm-sync: no I/O, no clock reads."""
