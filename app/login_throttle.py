"""Wrong passwords slowed down: by address and by account, a growing wait after a few failures.

gradio's `/login` answers every attempt at once, so a script could try 190-730 passwords a second.
This ASGI middleware, in front of gradio's app, lets FREE_FAILURES wrong passwords through
without a wait, then makes each further attempt from the same address, or for the same account,
wait twice as long as the last (1 s, 2 s, 4 s ... up to MAX_WAIT_S): an attempt inside the wait
is refused with 429 and a sentence saying how long. A right password clears its address's and
account's count. Counts are forgotten after FORGET_S without a failure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]

FREE_FAILURES = 3
MAX_WAIT_S = 300.0
FORGET_S = 3600.0
MAX_FORM_BYTES = 64 << 10  # a login form is a few dozen bytes
MAX_KEYS = 100_000  # addresses and accounts remembered at once; the oldest go first


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds still to wait before the next attempt (0: none)."""
        if self.count < FREE_FAILURES:
            return 0.0
        wait = min(MAX_WAIT_S, 2.0 ** (self.count - FREE_FAILURES))
        return max(0.0, self.last + wait - now)


class LoginThrottle:
    """ASGI middleware: POSTs to a path ending in /login, counted and slowed as above."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._failures: dict[str, _Failures] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if not scope.get("path", "").rstrip("/").endswith("/login"):
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        keys = _keys(scope, body)
        now = time.monotonic()
        self._forget(now)
        wait = max((self._failures[k].wait_s(now) for k in keys if k in self._failures), default=0)
        if wait > 0:
            await _refuse(send, wait)
            return
        status: list[int] = []

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, _replay(body), watched)
        self._count(keys, ok=bool(status) and status[0] < 400, now=now)

    def _count(self, keys: list[str], ok: bool, now: float) -> None:
        for key in keys:
            if ok:
                self._failures.pop(key, None)
                continue
            failures = self._failures.pop(key, None) or _Failures()
            failures.count += 1
            failures.last = now
            self._failures[key] = failures  # last in the dict: the most recent

    def _forget(self, now: float) -> None:
        while self._failures:
            key, oldest = next(iter(self._failures.items()))
            if now - oldest.last < FORGET_S and len(self._failures) <= MAX_KEYS:
                return
            del self._failures[key]


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body") or len(body) > MAX_FORM_BYTES:
            return body[:MAX_FORM_BYTES]


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _keys(scope: Scope, body: bytes) -> list[str]:
    address = (scope.get("client") or ("-", 0))[0]
    form = parse_qs(body.decode("utf-8", "replace"))
    username = (form.get("username") or [""])[0]
    return [f"address:{address}"] + ([f"account:{username}"] if username else [])


async def _refuse(send: Any, wait_s: float) -> None:
    seconds = max(1, round(wait_s))
    body = json.dumps({"detail": f"Too many wrong passwords: try again in {seconds} s."}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(seconds).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
