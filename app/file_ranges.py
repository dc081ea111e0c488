"""Range requests to gradio's file route, answered as HTTP says.

gradio answers a Range request for a file (a video player asks for pieces) with a 206 whose
headers are the request's own, copied: a `Set-Cookie` the client sent came back to it, and any
header a proxy added on the way in went out again. A request for several ranges at once got a
500. This ASGI middleware, given to gradio's FastAPI app, serves several ranges as the whole
file (a server may ignore Range, RFC 9110 14.2) and lets a 206 carry only the headers of a
response.
"""

from __future__ import annotations

from typing import Any

# What a 206 of a file may carry; the rest were the request's.
RESPONSE_HEADERS = frozenset(
    {
        b"accept-ranges",
        b"cache-control",
        b"content-disposition",
        b"content-length",
        b"content-range",
        b"content-type",
        b"date",
        b"etag",
        b"last-modified",
        b"server",
        b"vary",
        b"x-content-type-options",
    }
)


class FileRanges:
    """ASGI middleware: several ranges served whole; a 206's headers those of a response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "/file=" not in scope.get("path", ""):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if any(name == b"range" and b"," in value for name, value in headers):
            scope = {**scope, "headers": [(n, v) for n, v in headers if n != b"range"]}

        async def clean_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 206:
                kept = [(n, v) for n, v in message.get("headers", []) if n in RESPONSE_HEADERS]
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, clean_send)
