"""The operator workspace: login, chat list, transcript, reply, live over a WebSocket."""
