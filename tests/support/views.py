"""The lines of the views and search tests: two lines, an operator on one of them, one on both, a supervisor.

"support" (webchat account demo; boris and carol) and "vip" (webchat account
vip; carol and anna). Anna is a supervisor.
"""

from __future__ import annotations

from support.desk_admin import DEMO_HASH  # of the password "demo"

LINES = f"""
[operators.anna]
name = "Anna Petrova"
password_hash = "{DEMO_HASH}"
roles = ["operator", "supervisor"]

[operators.boris]
name = "Boris Ivanov"
password_hash = "{DEMO_HASH}"

[operators.carol]
name = "Carol Smith"
password_hash = "{DEMO_HASH}"

[[lines]]
id = "support"
name = "Customer support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
operators = ["boris", "carol"]
max_chats_per_operator = 2

[[lines]]
id = "vip"
name = "VIP desk"
channels = [{{ channel = "webchat", account = "vip" }}]
[lines.queue]
operators = ["carol", "anna"]
"""
