"""Views, search, taking from the queue and tags: the workspace's lists beyond "My chats".

``GET /api/conversations`` answers from the conversation index (desk.index):
``view`` = ``mine`` | ``queue`` (waiting chats of one's lines) | ``lines`` (every
open chat of one's lines) | ``closed`` | ``all``, narrowed by ``q`` (client
name, phone, e-mail, words of the messages), ``line``, ``channel``, ``status``
and ``tag``. An operator sees the conversations of the lines whose queue they
are in, and those they hold or held; supervisors and admins see every line.
Taking a chat and tagging one are router commands (the router checks again).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from desk.http import DESK, ApiError, Authed, Desk, _body, _chat_action, _result, _session_id
from desk.index import VIEWS, Found, Query, Viewer
from desk.supervise import supervisor_problem
from openlines import tags
from openlines.commands import Tag, Take
from openlines.envelopes import CHANNELS
from openlines.lines import LineConfig

MAX_QUERY = 200
STATUSES = ("waiting", "assigned", "answered", "closed")


async def viewer_of(request: web.Request, user: Authed) -> tuple[Viewer, list[LineConfig]]:
    """What the user may see, and the lines they pick from (theirs; every line for supervisors)."""
    lines = request.app[DESK].lines
    if supervisor_problem(user.account.roles) is None:
        return Viewer(user.operator_id, None), await lines.all()
    mine = await lines.of(user.operator_id)
    return Viewer(user.operator_id, frozenset(line.id for line in mine)), mine


def _param(request: web.Request, name: str, allowed: tuple[str, ...] | None = None) -> str:
    value = request.query.get(name, "").strip()
    if not value:
        return ""
    if allowed is not None and value not in allowed:
        raise ApiError(400, "invalid", f"{name} must be one of {', '.join(allowed)}")
    if len(value) > 64:
        raise ApiError(400, "invalid", f"{name} is too long")
    return value


async def api_conversations(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    text = request.query.get("q", "").strip()
    if len(text) > MAX_QUERY:
        raise ApiError(400, "invalid", f"the search is {len(text)} characters; at most {MAX_QUERY}")
    tag = _param(request, "tag")
    if tag:
        try:
            tag = tags.normalise(tag)
        except tags.BadTag as exc:
            raise ApiError(400, "invalid", str(exc)) from None
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise ApiError(400, "invalid", "limit must be a number") from None
    query = Query(
        view=_param(request, "view", VIEWS) or "all",
        text=text,
        line=_param(request, "line"),
        channel=_param(request, "channel", CHANNELS),
        status=_param(request, "status", STATUSES),
        tag=tag,
        limit=max(1, min(limit, 200)),
    )
    viewer, lines = await viewer_of(request, user)
    index = desk.index
    found, used = await asyncio.gather(index.find(viewer, query), index.tags(viewer))
    in_queue = {line.id for line in lines if user.operator_id in line.queue.operators}
    names = await _operator_names(desk, {str(f.session.get("operator_id") or "") for f in found})
    chats = [await _row(desk, f, in_queue, names) for f in found]
    return web.json_response(
        {
            "view": query.view,
            "ready": index.ready,
            "chats": chats,
            "filters": {
                "lines": [{"id": line.id, "name": line.name or line.id} for line in sorted(lines, key=lambda x: x.name.lower())],
                "channels": list(CHANNELS),
                "statuses": list(STATUSES),
                "tags": used,
            },
        }
    )


async def _operator_names(desk: Desk, ids: set[str]) -> dict[str, str]:
    accounts = await asyncio.gather(*(desk.reader.account(i) for i in sorted(ids) if i))
    return {a.id: a.name for a in accounts if a is not None}


async def _row(desk: Desk, f: Found, in_queue: set[str], names: dict[str, str]) -> dict[str, Any]:
    s = f.session
    line_id = str(s.get("line_id", ""))
    out = dict(s)
    out["status"] = s.get("status", "waiting")  # records leave defaults out
    for private in ("flood_window", "flood_count", "declined_by"):
        out.pop(private, None)
    out["line_name"] = await desk.reader.line_name(line_id)
    out["operator_name"] = names.get(str(s.get("operator_id") or ""), "")
    out["can_take"] = out["status"] == "waiting" and line_id in in_queue
    out["tags"] = s.get("tags", [])
    if f.matched:
        out["matched"] = f.matched
        out["snippet"] = f.snippet
    return out


async def api_take(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    return await _result(desk, await desk.command("take", Take(operator_id=user.operator_id, session_id=sid)))


async def api_tags(request: web.Request) -> web.StreamResponse:
    """``{"add": [...], "remove": [...]}``: tags on a conversation (its operators, its line's operators, supervisors)."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=True)
    sid = _session_id(request)
    body = await _body(request)
    add, remove = body.get("add", []), body.get("remove", [])
    if not isinstance(add, list) or not isinstance(remove, list) or not all(isinstance(t, str) for t in [*add, *remove]):
        raise ApiError(400, "invalid", "add and remove must be lists of tags")
    if not add and not remove:
        raise ApiError(400, "invalid", "give tags to add or to remove")
    if len(add) + len(remove) > tags.MAX_TAGS * 2:
        raise ApiError(400, "invalid", f"at most {tags.MAX_TAGS} tags per conversation")
    try:
        plus = [tags.normalise(t) for t in add]
        minus = [tags.normalise(t) for t in remove]
    except tags.BadTag as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    result = await desk.command("tag", Tag(operator_id=user.operator_id, session_id=sid, add=plus, remove=minus))
    return await _result(desk, result)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/conversations", api_conversations)
    app.router.add_post("/api/sessions/{session_id}/take", api_take)
    app.router.add_post("/api/sessions/{session_id}/tags", api_tags)
