"""Reading a server's event stream within bounds (app/engines/remote_stream.py), as pure
functions: events and comments, bounded lines and inflation, the deadlines on the clock. The
same against a misbehaving server through the launched app: tests/hostile/test_remote_faults.py."""

from __future__ import annotations

import gzip

import pytest

from app.engines import remote_stream
from app.engines.remote_stream import (
    MAX_EVENT_BYTES,
    Deadlines,
    StreamFailure,
    StreamWatch,
    _events,
    _inflated,
    _lines,
)


def _chunks(body: bytes, size: int = 7) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_events_come_whole_however_the_bytes_are_cut_and_comments_are_skipped():
    body = (
        b": keep-alive\n\n"
        b'data: {"a": 1}\r\n\r\n'
        b": ping\n"
        b'data: {"b":\ndata: 2}\n\n'  # one event over two data lines
        b"data: [DONE]\n\n"
        b'data: {"after": "done"}\n\n'
    )
    events = list(_events(_lines(iter(_chunks(body)))))
    assert events == [{"a": 1}, {"b": 2}]


def test_a_line_past_the_bound_is_refused_before_it_is_held_whole():
    body = [b"data: {"] + [b"x" * 65536] * (MAX_EVENT_BYTES // 65536 + 2)
    with pytest.raises(StreamFailure, match="a line of more than 1 MB"):
        list(_lines(iter(body)))


def test_an_error_event_is_the_servers_own_words():
    body = b'data: {"error": {"message": "overloaded"}}\n\n'
    with pytest.raises(remote_stream.ServerRefused) as refused:
        list(_events(_lines(iter([body]))))
    assert refused.value.body["error"]["message"] == "overloaded"


class _Response:
    def __init__(self, body: bytes, encoding: str) -> None:
        self.headers = {"content-encoding": encoding}
        self._body = body

    def iter_raw(self):
        yield from _chunks(self._body, 4096)


def test_a_compressed_body_is_inflated_in_bounded_steps(monkeypatch):
    events = b"".join(b'data: {"i": %d}\n\n' % i for i in range(100))
    inflated = b"".join(_inflated(_Response(gzip.compress(events), "gzip")))
    assert inflated == events
    monkeypatch.setattr(remote_stream, "MAX_BODY_BYTES", 1 << 20)
    bomb = gzip.compress(b"\n" * (8 << 20))  # newlines: no line bound would stop it
    with pytest.raises(StreamFailure, match="more than 1 MB in all"):
        for _ in _inflated(_Response(bomb, "gzip")):
            pass


def test_an_encoding_the_app_does_not_read_is_named():
    with pytest.raises(StreamFailure, match="'br'"):
        list(_inflated(_Response(b"", "br")))


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(remote_stream.time, "perf_counter", fake)
    return fake


def test_each_deadline_is_kept_on_the_clock(clock):
    deadlines = Deadlines(headers_s=5, first_token_s=20, silence_s=10, total_s=100)
    watch = StreamWatch(deadlines, "http://server/v1", max_tokens=50)
    clock.now += 6
    assert "did not answer within 5 s" in str(watch.broken())
    watch.answered()
    assert watch.broken() is None
    clock.now += 15
    assert "sent no token within 20 s" in str(watch.broken())
    watch.token("Hello")
    clock.now += 9
    assert watch.broken() is None
    clock.now += 2  # keep-alives do not reach the watch: only tokens do
    assert "stopped sending tokens for 10 s after 1" in str(watch.broken())
    watch.token(" there")
    clock.now += 80
    assert "still answering after 100 s" in str(watch.broken())


def test_a_reply_past_its_max_tokens_is_cut_there(clock):
    watch = StreamWatch(Deadlines(), "http://server/v1", max_tokens=4)
    shown = [watch.token("w") for _ in range(20)]
    assert shown.count(True) == 4 + remote_stream.TOKEN_SLACK
    assert "past the 4 tokens asked for" in str(watch.broken())
    long = StreamWatch(Deadlines(), "http://server/v1", max_tokens=4)
    assert not long.token("x" * 10_000)  # one chunk holding far more than 4 tokens can
    assert "past the 4 tokens asked for" in str(long.broken())
