"""A browser session's events belong to whoever started it.

gradio names a browser session by a random hash the page makes, and takes that hash as proof
enough: anyone who learned it could cancel the session's reply (leaving its stream hanging),
read its live stream (`/queue/data`), keep it alive, or post events into it, a second login
too. This ASGI middleware, given to gradio's FastAPI app, binds each session hash to the first
who uses it (the login where the app has logins, else the address, as for turns on the model:
app/ui/handlers.py `user_of`) and refuses (403, with words) its events from anyone else.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from app.http_limits import read_body, refuse, replay
from app.login_gate import login_of
from app.settings import IPNetwork

# Sessions remembered; the oldest are forgotten first (a forgotten one is bound again).
MOST_SESSIONS = 65_536
# The routes whose body names a session (`session_hash`), and those whose query or path does.
BODY_ROUTES = ("/queue/join", "/run/predict", "/cancel", "/component_server")
NOT_YOURS = (
    "This session belongs to another login or address: reload the page to start your own. "
    "此会话属于另一个登录或地址：请刷新页面，开始你自己的会话。"
)


class SessionOwners:
    """ASGI middleware: a session's events from its owner only."""

    def __init__(self, app: Any, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)
        self._owners: OrderedDict[str, str] = OrderedDict()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        session: str | None = None
        if path.endswith(BODY_ROUTES) and scope.get("method") == "POST":
            body = await read_body(receive)
            receive = replay(body, receive)
            session = _session_in_body(body)
        elif path.endswith("/queue/data"):
            session = parse_qs(scope.get("query_string", b"").decode()).get("session_hash", [""])[0]
        elif "/heartbeat/" in path:
            session = path.rsplit("/heartbeat/", 1)[1].strip("/")
        if session and not self._is_owner(session, self._who(scope)):
            await refuse(send, 403, NOT_YOURS)
            return
        await self.app(scope, receive, send)

    def _who(self, scope: dict[str, Any]) -> str:
        import gradio as gr  # loaded by then: this runs inside gradio's app

        from app.ui.handlers import user_of

        login = login_of(scope)
        if login:
            return f"user:{login}"
        return user_of(gr.Request(request=Request(scope)), self.trusted) or "-"

    def _is_owner(self, session: str, who: str) -> bool:
        owner = self._owners.get(session)
        if owner is None:
            self._owners[session] = who
            if len(self._owners) > MOST_SESSIONS:
                self._owners.popitem(last=False)
            return True
        self._owners.move_to_end(session)
        return owner == who


def _session_in_body(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    session = value.get("session_hash") if isinstance(value, dict) else None
    return session if isinstance(session, str) else None
