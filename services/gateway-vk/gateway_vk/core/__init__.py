"""Pure decisions of the VK gateway: no I/O, no clock reads (the shell passes ``now``)."""
