"""Running one request on the engine for a browser session: the growing `Reply`, Stop, the log.

Every reply, from the page or the `/chat` API, goes through `RequestRunner`: it turns an engine's
deltas into a `Reply` (text, progress before the first token, stats, error), draws the reply's
boxes on the image the request read, and logs one line per request. `SessionCancels` holds the
cancel events of each session's running requests, so Stop, Clear and a closed tab reach them.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from app.engines.base import PROGRESS_TICK_S, ChatRequest, Delta, Engine, EngineError, Usage
from app.engines.pump import pump
from app.fair_queue import FairQueue, TooManyWaiting
from app.files import Folder
from app.grounding import draw_marks, parse_marks
from app.media.worker import DecodeStopped
from app.previews import Previews
from app.render import STOPPED, Reply, format_progress, format_stats, seconds
from app.said import joined, message, say

log = logging.getLogger(__name__)

# At most one update per this many seconds while text streams (the first at once): each update
# costs the server work that holds the GIL the generation thread needs, and eyes see no
# difference past ~25 updates a second. Text held back goes out with the next token or the end.
UPDATE_INTERVAL_S = 0.04


class Cancel(threading.Event):
    """A generation's cancel event; `cleared` says the chat was cleared, `detached` that its
    user opened another chat, not just stopped."""

    cleared = False
    detached = False


class SessionCancels:
    """The cancel events of the generations each browser session has running.

    Stop (and closing the tab) sets them: the engine ends the prefill between two layers, or
    generate() at its next token, and the reply finishes normally, partial text and stats kept.
    Clear sets them too, marked cleared, so the reply's last update leaves the chat empty.
    (gradio's own `cancels=` would kill the event instead, and the page then marks the chat
    "Error".)
    """

    def __init__(self) -> None:
        self._events: dict[str, set[Cancel]] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> Cancel:
        event = Cancel()
        with self._lock:
            self._events.setdefault(session, set()).add(event)
        return event

    def finish(self, session: str, event: Cancel) -> None:
        with self._lock:
            events = self._events.get(session, set())
            events.discard(event)
            if not events:
                self._events.pop(session, None)

    def cancel(self, session: str, cleared: bool = False, detached: bool = False) -> None:
        with self._lock:
            for event in self._events.get(session, ()):
                event.cleared = event.cleared or cleared
                event.detached = event.detached or detached
                event.set()


class RequestRunner:
    """Runs one request on the engine and yields the growing `Reply`; logs one line a request."""

    def __init__(
        self,
        engine: Engine,
        cancels: SessionCancels,
        turns: FairQueue | None = None,
        output_dir: Folder | None = None,
        previews: Previews | None = None,
    ) -> None:
        self.engine = engine
        self.cancels = cancels
        self.turns = turns or FairQueue()
        self.output_dir = output_dir or Folder.new("qwen-chat-")
        self.previews = previews  # the page's posters of videos and PDFs (None: no page)

    def annotate(self, reply: Reply) -> str | None:
        """The last image of the prompt with the reply's boxes drawn, saved as PNG; or None."""
        marks = parse_marks(reply.answer())
        if not marks or not reply.prompt.images:
            return None
        ref = reply.prompt.images[-1]
        if ref.image is None:
            return None
        try:
            drawn = draw_marks(ref.image, marks, self.engine.family, ref.input_size)
            with tempfile.NamedTemporaryFile(
                dir=self.output_dir.fresh(), prefix="boxes-", suffix=".png", delete=False
            ) as out:
                drawn.save(out, format="PNG")
            return out.name
        except OSError as err:  # the reply stands without a drawing
            log.warning("could not draw boxes on %s: %s", ref.attachment.name, err)
            return None

    def __call__(
        self, request: ChatRequest, session: str, user: str | None = None
    ) -> Iterator[Reply]:
        """The reply to `request` as it grows; `user` says whose turns it takes, on the file
        decoders and the model (by default, the session's)."""
        request = dataclasses.replace(request, asker=user or session)
        reply = Reply()
        cancel = self.cancels.start(session)
        started = time.perf_counter()
        usage: Usage | None = None  # logged even when the reply fails
        outcome = "ok"
        try:
            yield from self._read_media(request, reply, cancel, started)
            with self.turns.turn(request.asker) as ticket:
                yield from self._wait_for_turn(ticket, reply, cancel, started)
                for _ in self._follow(request, reply, cancel, started):
                    yield reply
            usage = reply.usage
            reply.cleared, reply.detached = cancel.cleared, cancel.detached
            if cancel.is_set():
                outcome = "stopped"
                reply.stats = joined([reply.stats, STOPPED]) if reply.stats else STOPPED
            reply.annotated = self.annotate(reply)
        except EngineError as err:
            outcome, reply.error = "error", message(err)
        except TooManyWaiting as err:
            outcome, reply.error = "refused", err.said
        except Exception as err:  # a bug or an input nobody foresaw: still a message
            log.exception("request failed unexpectedly")
            outcome = "error"
            what = f"{type(err).__name__}: {err}"
            reply.error = say(
                f"Something went wrong on the server: {what}", f"服务器出错了：{what}"
            )
        except GeneratorExit:
            outcome = "stopped"
            raise
        finally:
            cancel.set()
            self.cancels.finish(session, cancel)
            _log_request(session, request, usage, started, outcome)
        reply.finished = True
        yield reply

    def _read_media(
        self, request: ChatRequest, reply: Reply, cancel: Cancel, started: float
    ) -> Iterator[Reply]:
        """Read the request's files before it takes its turn on the model (the decoders take
        files in turns by user: no one waits long for another's files), showing how long it
        takes each second: a point, too, at which gradio can drop a request whose user has
        gone, and the decode with it."""
        names = list(dict.fromkeys(a.name for t in request.turns for a in t.attachments))
        if not names:
            return
        shown = ", ".join(names[:3])
        more = len(names) - 3
        shown_zh = shown + (f" 等 {len(names)} 个文件" if more > 0 else "")
        shown += f" and {more} more" if more > 0 else ""

        def work(_emit: Any) -> None:
            read = self.engine.read_media(request, cancel)
            if self.previews is not None:
                self.previews.keep(read)

        try:
            for _ in pump(work, cancel, name="qwen-read-media", idle_s=PROGRESS_TICK_S):
                took = seconds(time.perf_counter() - started)
                reply.waiting = joined([say(f"Reading {shown}", f"正在读取 {shown_zh}"), took])
                yield reply
        except DecodeStopped:
            return  # stopped: the turn below sees the cancel, and the reply ends as stopped

    def _wait_for_turn(
        self, ticket: int, reply: Reply, cancel: Cancel, started: float
    ) -> Iterator[Reply]:
        """Until this request's turn on the model: the wait, shown (and updated) each second."""
        while not self.turns.wait(ticket, cancel, PROGRESS_TICK_S):
            if cancel.is_set():
                return
            ahead = self.turns.ahead_of(ticket)
            waited = seconds(time.perf_counter() - started)
            plural = "s" if ahead != 1 else ""
            reply.waiting = joined(
                [
                    say("Waiting for the model", "正在等待模型"),
                    say(f"{ahead} request{plural} first", f"前面还有 {ahead} 个请求"),
                    waited,
                ]
            )
            yield reply

    def _follow(
        self, request: ChatRequest, reply: Reply, cancel: Cancel, started: float
    ) -> Iterator[None]:
        """Apply the engine's deltas to `reply`; yield whenever the page should be updated."""
        if cancel.is_set():  # stopped while waiting for its turn
            return
        shown_at = 0.0
        for delta in self.engine.stream(request, cancel):
            if delta.prompt is not None:
                reply.prompt = delta.prompt
            if delta.progress is not None and not reply.raw:
                now = time.perf_counter()
                reply.waiting = format_progress(delta.progress, now - started, now)
                yield
            if delta.text:
                reply.raw += delta.text
                now = time.perf_counter()
                if now - shown_at >= UPDATE_INTERVAL_S:
                    shown_at = now
                    yield
            if delta.usage is not None:
                reply.usage = delta.usage
                reply.stats = format_stats(delta.usage)
            if delta == Delta():
                yield  # the engine waits: a point at which gradio can drop the request


def _log_request(
    session: str, request: ChatRequest, usage: Usage | None, started: float, outcome: str
) -> None:
    attachments = sum(len(t.attachments) for t in request.turns)
    cached = "-" if usage is None or usage.cached_tokens is None else usage.cached_tokens
    log.info(
        "request session=%s attachments=%d tokens_in=%s cached=%s tokens_out=%s time=%.2fs %s",
        session[:8],
        attachments,
        usage.prompt_tokens if usage else "-",
        cached,
        usage.completion_tokens if usage else "-",
        time.perf_counter() - started,
        outcome,
    )
