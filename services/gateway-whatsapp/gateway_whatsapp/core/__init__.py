"""Pure decisions of the WhatsApp gateway: no I/O, no clock reads (``now`` is passed in)."""
