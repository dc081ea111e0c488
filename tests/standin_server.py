"""A stand-in OpenAI-compatible server on loopback that misbehaves on request.

The last user message names what the server does with the request (`BEHAVIOURS`), so one server
and one launched app cover every case. It streams over HTTP/1.1 with chunked encoding, as vLLM
and SGLang do, so a connection cut mid-body is a cut and not an ending. It counts the requests
it answers at once (`most_slow_at_once`, of its `slow` replies), for the tests of several
users.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "qwen3-vl-standin"
CONTEXT = 4096  # the served model's context, as vLLM lists it (`max_model_len`)
WORD = "word "


def _chunk(index: int, text: str) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class StandIn:
    """The server: `url` for the app; what it saw, for the tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at_once = 0  # requests being answered now, of any behaviour
        self.slow_at_once = 0
        self.most_slow_at_once = 0  # the most `slow` requests answered at once
        self.requests = 0
        self.finished: list[str] = []  # the behaviours whose handler ran to its end
        self.hung_up_at: float | None = None  # when a `quiet` request's client went
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                model = {"id": MODEL, "max_model_len": CONTEXT}
                self._send_json(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(size))
                behaviour = _last_user_text(payload).strip().split()[0]
                slow = behaviour == "slow"
                with stand_in.lock:
                    stand_in.requests += 1
                    stand_in.at_once += 1
                    stand_in.slow_at_once += slow
                    stand_in.most_slow_at_once = max(
                        stand_in.most_slow_at_once, stand_in.slow_at_once
                    )
                try:
                    getattr(self, f"_{behaviour}")(payload)
                    stand_in.finished.append(behaviour)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the app hung up: what Stop and the deadlines do
                finally:
                    with stand_in.lock:
                        stand_in.at_once -= 1
                        stand_in.slow_at_once -= slow

            # --- what the server can do ----------------------------------------------------

            def _normal(self, payload: dict) -> None:
                """A few words, then [DONE]."""
                self._start_stream()
                for i in range(5):
                    self._write(_chunk(i, WORD))
                self._write(b"data: [DONE]\n\n")
                self._end()

            def _slow(self, payload: dict) -> None:
                """Ten words over three seconds (several users at once)."""
                self._start_stream()
                for i in range(10):
                    time.sleep(0.3)
                    self._write(_chunk(i, WORD))
                self._write(b"data: [DONE]\n\n")
                self._end()

            def _keepalive(self, payload: dict) -> None:
                """One word, then only keep-alive comments, for a minute."""
                self._start_stream()
                self._write(_chunk(0, WORD))
                for _ in range(120):
                    time.sleep(0.5)
                    self._write(b": keep-alive\n\n")
                self._end()

            def _quiet(self, payload: dict) -> None:
                """One word, then a keep-alive every 15 s (as sse-starlette sends while a
                request is stuck), until the client hangs up, which it notices at once."""
                self._start_stream()
                self._write(_chunk(0, WORD))
                last = time.monotonic()
                while not self._hung_up(0.05):
                    if time.monotonic() - last > 15:
                        self._write(b": ping\n\n")
                        last = time.monotonic()
                stand_in.hung_up_at = time.perf_counter()

            def _hung_up(self, wait_s: float) -> bool:
                readable, _, _ = select.select([self.connection], [], [], wait_s)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

            def _endless(self, payload: dict) -> None:
                """Words past any max_tokens, for a minute."""
                self._start_stream()
                deadline = time.monotonic() + 60
                i = 0
                while time.monotonic() < deadline:
                    self._write(_chunk(i, WORD))
                    i += 1
                    time.sleep(0.001)
                self._end()

            def _stall(self, payload: dict) -> None:
                """Nothing at all for a minute, not even the headers."""
                time.sleep(60)

            def _bomb(self, payload: dict) -> None:
                """A gzip bomb: 1 MB of compressed zeros that inflate to 1 GB, in an SSE
                stream's clothes."""
                body = zeros_bomb()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _longline(self, payload: dict) -> None:
                """One word, then a `data:` line of 100 MB without a newline."""
                self._start_stream()
                self._write(_chunk(0, WORD))
                self._write(b"data: {")
                for _ in range(100):
                    self._write(b"x" * (1 << 20))
                self._end()

            def _cut(self, payload: dict) -> None:
                """Three words, then the connection cut mid-body."""
                self._start_stream()
                for i in range(3):
                    self._write(_chunk(i, WORD))
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            # --- HTTP ------------------------------------------------------------------------

            def _start_stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _write(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _send_json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _last_user_text(payload: dict) -> str:
    content = [m for m in payload["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if p.get("type") == "text")


@functools.cache
def zeros_bomb() -> bytes:
    """1 GB of zeros, gzip-compressed at the highest level (about 1 MB)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as zipped:
        block = b"\0" * (1 << 20)
        for _ in range(1024):
            zipped.write(block)
    return buffer.getvalue()
