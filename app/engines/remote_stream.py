"""One streamed chat completion from an OpenAI-compatible server, read within bounds.

A server can misbehave in ways that the `openai` client passes on to its caller: it can send
only keep-alive comments (servers built on sse-starlette do while a request is stuck; each one
restarts httpx's read timeout), ignore `max_tokens` and stream forever, stall before its headers,
compress its stream into a bomb, or send one enormous line. So the app reads the stream itself:

- `Deadlines`: a time for the server's headers, for the first token, for the silence between
  two tokens (comments and keep-alives are not progress), and for the whole reply; they are
  checked by the reader of the events (`StreamWatch`), on the clock, whatever the socket does;
- the body is asked for uncompressed; a server that compresses anyway is inflated in bounded
  steps, and no line (no event) may be longer than `MAX_EVENT_BYTES`, nor the body longer than
  `MAX_BODY_BYTES`;
- the app counts the tokens itself: a reply longer than the `max_tokens` it asked for is cut;
- `RemoteStream.interrupt()` shuts the socket down from another thread: a reader blocked in
  `recv` wakes at once (Stop, a deadline), where closing the response would wait for the
  server's next byte.

The events are JSON objects (the chunks of the completion); `HEADERS` marks the answer's arrival.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.said import Said, say

# The largest event (one `data:` line or several of one event) and the largest body read; past
# them the server is not sending a chat completion.
MAX_EVENT_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20
# The largest error body read for its message.
MAX_ERROR_BYTES = 64 << 10
READ_SIZE = 16 << 10
# What a reply may hold past its max_tokens: chunks, and characters a chunk (module docstring).
TOKEN_SLACK = 8
TOKEN_CHARACTERS = 64

HEADERS = object()  # emitted once the server's status and headers have arrived


@dataclass(frozen=True)
class Deadlines:
    """How long a remote request may take, in seconds (module docstring)."""

    connect_s: float = 10.0
    headers_s: float = 60.0
    first_token_s: float = 300.0
    silence_s: float = 60.0
    total_s: float = 1800.0


class StreamFailure(Exception):
    """The stream broke off or broke a bound; `said` is for the page."""

    def __init__(self, said: Said) -> None:
        super().__init__(str(said))
        self.said = said


class ServerRefused(Exception):
    """The server answered with an error status; `body` is its (bounded) JSON or text."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class RemoteStream:
    """One POST whose server-sent events are read within bounds; `interrupt` from any thread."""

    def __init__(self, client: Any, url: str, payload: dict[str, Any], headers: dict) -> None:
        self._client = client
        self._url = url
        self._payload = payload
        self._headers = {**headers, "Accept": "text/event-stream", "Accept-Encoding": "identity"}
        self._response: Any = None
        self._interrupted = False

    def events(self) -> Iterator[Any]:
        """`HEADERS`, then each event's JSON object, until `[DONE]` or the body's end."""
        request = self._client.build_request(
            "POST", self._url, json=self._payload, headers=self._headers
        )
        response = self._client.send(request, stream=True)
        self._response = response
        try:
            if self._interrupted:
                return
            if response.status_code >= 400:
                raise ServerRefused(response.status_code, _error_body(response))
            yield HEADERS
            lines = _lines(_inflated(response))
            yield from _events(lines)
        finally:
            response.close()

    def interrupt(self) -> None:
        """Wake a reader blocked on the socket and end the request (the server stops)."""
        self._interrupted = True
        response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


def _error_body(response: Any) -> Any:
    raw = b""
    for part in response.iter_raw():
        raw += part
        if len(raw) >= MAX_ERROR_BYTES:
            break
    text = raw[:MAX_ERROR_BYTES].decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _inflated(response: Any) -> Iterator[bytes]:
    """The body's bytes, inflated in bounded steps if the server compressed it anyway, and
    never more than MAX_BODY_BYTES in all."""
    encoding = response.headers.get("content-encoding", "identity").lower().strip()
    if encoding not in ("identity", "", "gzip", "deflate"):
        raise StreamFailure(
            say(
                f"The model server compressed its answer with {encoding!r}, which the app "
                "does not read: serve it uncompressed.",
                f"模型服务器用 {encoding!r} 压缩了回答，本应用无法读取：请让它不压缩。",
            )
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding != "identity" else None
    total = 0
    for raw in response.iter_raw():  # as it arrives (a size would wait to fill it)
        pending = raw
        while pending:
            if inflater is None:
                chunk, pending = pending, b""
            else:
                chunk = inflater.decompress(pending, READ_SIZE)
                pending = inflater.unconsumed_tail
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise StreamFailure(_too_long(f"more than {MAX_BODY_BYTES >> 20} MB in all"))
            yield chunk


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body's lines (without their ends), none longer than MAX_EVENT_BYTES."""
    held = b""
    for chunk in chunks:
        held += chunk
        *whole, held = held.split(b"\n")
        for line in whole:
            yield line.rstrip(b"\r")
        if len(held) > MAX_EVENT_BYTES:
            raise StreamFailure(_too_long(f"a line of more than {MAX_EVENT_BYTES >> 20} MB"))
    if held:
        yield held.rstrip(b"\r")


def _events(lines: Iterator[bytes]) -> Iterator[Any]:
    """Server-sent events' data as JSON; comments (keep-alives) skipped; `[DONE]` ends."""
    data: list[bytes] = []
    size = 0
    for line in lines:
        if line.startswith(b"data:"):
            part = line[5:].removeprefix(b" ")
            size += len(part)
            if size > MAX_EVENT_BYTES:
                raise StreamFailure(_too_long(f"an event of more than {MAX_EVENT_BYTES >> 20} MB"))
            data.append(part)
            continue
        if line or not data:
            continue  # a comment, another field, or a blank line with no data before it
        joined = b"\n".join(data)
        data, size = [], 0
        if joined.strip() == b"[DONE]":
            return
        yield _parsed(joined)
    if data and b"\n".join(data).strip() != b"[DONE]":
        yield _parsed(b"\n".join(data))


def _parsed(data: bytes) -> Any:
    try:
        event = json.loads(data)
    except ValueError as err:
        raise StreamFailure(
            say(
                f"The model server sent something that is not JSON: {data[:80]!r}",
                f"模型服务器发来的内容不是 JSON：{data[:80]!r}",
            )
        ) from err
    if isinstance(event, dict) and "error" in event:
        raise ServerRefused(200, event)
    return event


def _too_long(what: str) -> Said:
    return say(
        f"The model server sent {what}; the reply was cut there.",
        f"模型服务器发来的内容过长（{what}），回答在此截断。",
    )


class StreamWatch:
    """The deadlines of one request, checked on the clock each time its reader looks."""

    def __init__(self, deadlines: Deadlines, server: str, max_tokens: int) -> None:
        self.deadlines = deadlines
        self.server = server
        self.max_tokens = max_tokens
        self.started = time.perf_counter()
        self.headers_at: float | None = None
        self.last_token_at: float | None = None
        self.tokens = 0
        self.characters = 0

    def answered(self) -> None:
        self.headers_at = time.perf_counter()

    def token(self, text: str) -> bool:
        """A chunk with text arrived (a token, or a few: servers may join them); False where it
        is past the tokens asked for (it is not shown)."""
        self.last_token_at = time.perf_counter()
        self.tokens += 1
        self.characters += len(text)
        return self._past_max_tokens() is None

    def broken(self) -> Said | None:
        """Words for the first bound passed (a deadline, or more text than asked for), or
        None."""
        return self._past_max_tokens() or self._overdue()

    def _past_max_tokens(self) -> Said | None:
        # A few chunks of slack (a role or a usage chunk may carry text on some servers); a token
        # is rarely more than a few characters, never near TOKEN_CHARACTERS.
        most = self.max_tokens + TOKEN_SLACK
        if self.tokens <= most and self.characters <= most * TOKEN_CHARACTERS:
            return None
        return say(
            f"The model server kept sending past the {self.max_tokens} tokens asked for (it "
            "ignored max_tokens); the reply was cut there.",
            f"模型服务器发送的内容超过了请求的 {self.max_tokens} 个 token（它没有遵守 "
            "max_tokens）；回答在此截断。",
        )

    def _overdue(self) -> Said | None:
        now, d, server = time.perf_counter(), self.deadlines, self.server
        if now - self.started > d.total_s:
            return say(
                f"The model server at {server} was still answering after {d.total_s:.0f} s, "
                "the most one reply may take; the reply was cut there.",
                f"{server} 上的模型服务器在 {d.total_s:.0f} 秒后仍在回答，超过一个回答的上限；"
                "回答在此截断。",
            )
        if self.headers_at is None and now - self.started > d.headers_s:
            return say(
                f"The model server at {server} did not answer within {d.headers_s:.0f} s.",
                f"{server} 上的模型服务器在 {d.headers_s:.0f} 秒内没有回应。",
            )
        if self.last_token_at is None and now - self.started > d.first_token_s:
            return say(
                f"The model server at {server} sent no token within {d.first_token_s:.0f} s.",
                f"{server} 上的模型服务器在 {d.first_token_s:.0f} 秒内没有发来任何 token。",
            )
        if self.last_token_at is not None and now - self.last_token_at > d.silence_s:
            return say(
                f"The model server at {server} stopped sending tokens for {d.silence_s:.0f} s "
                f"after {self.tokens}; the reply so far is kept.",
                f"{server} 上的模型服务器在发出 {self.tokens} 个 token 后 {d.silence_s:.0f} 秒"
                "没有再发送；已收到的回答保留。",
            )
        return None
