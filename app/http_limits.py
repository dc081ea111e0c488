"""Bounds on what a request may send before any handler sees it: its size, how long its body may
take to arrive, and how many bodies one address may be sending at once.

gradio bounds uploaded files (`max_file_size`) but not the JSON of an event (a chat history, a
saved-chats store: a 250 MB store was read whole), nor the time a body takes (thousands of slow
connections, each sending a byte now and then, stopped the server answering anyone). This ASGI
middleware, given to gradio's FastAPI app, refuses with a status and a sentence:
413 for a body over its limit, 408 for one that does not arrive in time, 429 for an address
with too many bodies in flight. Uploads are streamed through (gradio counts their bytes
itself); every other body is read here first, within the limits, then handed on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

# Bodies one address may be sending at once; more are refused until some finish.
BODIES_PER_ADDRESS = 32
# JSON objects one body may hold. Parsed and checked, each costs the server ~1 KB: a history of
# 50,000 messages (2.6 MB of JSON) cost +145 MB before the prompt's bound refused it. A chat of
# a thousand turns, as the page sends it, holds about 12,000.
MOST_JSON_OBJECTS = 50_000


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestLimits:
    """ASGI middleware: body size (`max_bytes`, uploads `upload_max_bytes`), body time
    (`timeout_s`) and bodies in flight per address."""

    def __init__(self, app: Any, max_bytes: int, upload_max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes
        self.timeout_s = timeout_s
        self._in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("-", 0))[0]
        if self._in_flight[address] >= BODIES_PER_ADDRESS:
            await refuse(send, 429, "Too many requests at once from your address; try again.")
            return
        self._in_flight[address] += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self._in_flight[address] -= 1
            if self._in_flight[address] <= 0:
                del self._in_flight[address]

    async def _limited(self, scope: Scope, receive: Any, send: Any) -> None:
        upload = is_upload(scope)
        limit = self.upload_max_bytes if upload else self.max_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await refuse(send, 413, _too_large(limit))
            return
        deadline = time.monotonic() + self.timeout_s
        if upload:  # streamed on: gradio counts the files' bytes; the clock is ours
            await self._streamed(scope, self._timed(receive, deadline, limit), send)
            return
        try:
            body = await read_body(self._timed(receive, deadline, limit))
            _count_objects(body)
        except _Refused as refused:
            await refuse(send, refused.status, refused.message)
            return
        await self.app(scope, replay(body, receive), send)

    async def _streamed(self, scope: Scope, receive: Any, send: Any) -> None:
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except _Refused as refused:
            if not started:
                await refuse(send, refused.status, refused.message)

    def _timed(self, receive: Any, deadline: float, limit: int) -> Any:
        """`receive`, each message within what is left of the deadline, bytes counted."""
        seen = 0

        async def timed() -> Message:
            nonlocal seen
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                raise _Refused(
                    408,
                    f"The request's body did not arrive within {self.timeout_s:g} s "
                    "(--body-timeout-s); send it again.",
                ) from None
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _Refused(413, _too_large(limit))
            return message

        return timed


def header(scope: Scope, wanted: bytes) -> str | None:
    """The request's header `wanted` (lower case), or None."""
    for name, value in scope.get("headers", []):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


def content_length(scope: Scope) -> int | None:
    """The body's size the request declares, or None (none, or not a number)."""
    try:
        return int(header(scope, b"content-length") or "")
    except ValueError:
        return None


def is_upload(scope: Scope) -> bool:
    """A request to gradio's upload route (its files, streamed)."""
    return scope.get("path", "").rstrip("/").endswith("/upload")


class _TooManyObjects(Exception):
    pass


def _count_objects(body: bytes) -> None:
    """Refuse (413) a JSON body of more than MOST_JSON_OBJECTS objects, counted as it is parsed
    (the parser stops at the first one too many), before gradio parses and checks it whole."""
    if not body.lstrip().startswith((b"{", b"[")):
        return
    seen = 0

    def count(pairs: list) -> dict:
        nonlocal seen
        seen += 1
        if seen > MOST_JSON_OBJECTS:
            raise _TooManyObjects
        return {}  # the parse is for counting only: nothing is kept

    try:
        json.loads(body, object_pairs_hook=count)
    except _TooManyObjects:
        raise _Refused(
            413,
            f"The request holds more than {MOST_JSON_OBJECTS:,} items (messages, their parts, "
            "files); this app takes fewer in one request. Send the recent turns only.",
        ) from None
    except ValueError:
        return  # not JSON after all: gradio says what is wrong with it


def _too_large(limit: int) -> str:
    return (
        f"The request is larger than this app takes ({limit >> 20} MB; --max-request-mb for "
        "events, --max-upload-mb for files)."
    )


async def read_body(receive: Any) -> bytes:
    """The whole body of a request, from its `receive`."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "The connection closed before the request's body arrived.")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Any) -> Any:
    """A receive that gives the body read already, then what the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def refuse(send: Any, status: int, message: str) -> None:
    """Answer with `status` and `message` (as gradio's own errors: `detail`), and close."""
    body = json.dumps({"error": message, "detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
