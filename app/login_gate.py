"""What a visitor without a login learns of an app that has logins (`--auth`): nothing of its
API or model.

gradio's own routes refuse the API's description (`/config`, `/gradio_api/info`: 401) to a
visitor who has not logged in, but its login page (`GET /`) embeds that description in a script
(`window.gradio_api_info`: every endpoint, its parameters, code to call it), and
`/manifest.json` names the model. This ASGI middleware, given to gradio's FastAPI app, empties
the one and refuses the other (401) until the visitor has logged in.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

# The login page's script that holds the API's description (gradio's index.html writes it on
# one line, its JSON with "<" escaped, so the first ";</script>" ends it).
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
NO_API_INFO = b"window.gradio_api_info = {};</script>"


def login_of(scope: dict[str, Any]) -> str | None:
    """The login gradio gave the request's cookie, where it carries one."""
    app = scope.get("app")
    cookies = Request(scope).cookies
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    return getattr(app, "tokens", {}).get(token) if token else None


def logged_in(scope: dict[str, Any]) -> bool:
    """Whether the request carries a login gradio gave (or the app has no logins)."""
    return not getattr(scope.get("app"), "auth", None) or login_of(scope) is not None


class LoginGate:
    """ASGI middleware: the login page without the API's description, no manifest, until the
    visitor has logged in."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        watched = scope["type"] == "http" and path in ("/", "/manifest.json")
        if not watched or logged_in(scope):
            await self.app(scope, receive, send)
        elif path == "/manifest.json":
            await _not_logged_in(send)
        else:
            await self.app(scope, receive, _without_api_info(send))


def _without_api_info(send: Any) -> Any:
    """A `send` that holds the page back, empties its API description, and sends it whole."""
    start: dict[str, Any] = {}
    body = bytearray()

    async def rewriting_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        page = API_INFO.sub(NO_API_INFO, bytes(body), count=1)
        headers = [(n, v) for n, v in start.get("headers", []) if n != b"content-length"]
        headers.append((b"content-length", str(len(page)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": page})

    return rewriting_send


async def _not_logged_in(send: Any) -> None:
    body = json.dumps({"detail": "Not authenticated"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
