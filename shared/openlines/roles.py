"""The roles an operator account can hold, and which of them each part of the product lets in.

Named once here: the line-config check, the doctor, the desk (its pages, API and
tokens) and the router (interceptions, notes) read these, so a new role or a
changed permission is one edit.
"""

from __future__ import annotations

from collections.abc import Iterable

ADMIN = "admin"
SUPERVISOR = "supervisor"
OPERATOR = "operator"

ROLES = (ADMIN, SUPERVISOR, OPERATOR)  # every role a lines file may give
DESK_ROLES = (OPERATOR, SUPERVISOR)  # may sign in to the operator workspace and answer chats
SUPERVISOR_ROLES = (ADMIN, SUPERVISOR)  # may watch every line, intercept chats, read statistics; an API token acts as one
ADMIN_ROLES = (ADMIN,)  # may configure lines, operators and roles


def is_supervisor(roles: Iterable[str]) -> bool:
    """Whether an account with these roles has a supervisor's reach."""
    return any(role in SUPERVISOR_ROLES for role in roles)


def may_use_desk(roles: Iterable[str]) -> bool:
    """Whether an account with these roles may sign in to the operator workspace."""
    return any(role in DESK_ROLES for role in roles)
