"""Pure decisions of the e-mail gateway: no I/O, no clock, no randomness."""
