"""Pure decisions of the webchat gateway: no I/O, no clock reads (the shell passes ``now``)."""
