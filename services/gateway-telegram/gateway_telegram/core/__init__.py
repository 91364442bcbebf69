"""Pure decisions of the Telegram gateway: no I/O, no clock reads, no randomness."""
