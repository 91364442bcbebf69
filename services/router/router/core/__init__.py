"""Pure decisions of the router: (config, state, now) -> decision. No I/O here."""
