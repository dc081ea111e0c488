"""A scripted `Engine` for fast tests of the layers above the engines (handlers, replies, the
page): no model, but the whole contract (app/engines/base.py).

It reads attachments through the app's real media path (so bad files fail as they do), says
what it learned of the prompt first, reports progress before the first token, streams its
script one word a delta (`delay_s` apart, checking `cancel` before each), ends with the usage,
and turns a question containing FAIL into an EngineError. What a model computes is not here:
the tests with tiny checkpoints (tests/engine/test_engine_local.py,
tests/app/test_app_local.py) hold that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.engines.base import (
    ChatRequest,
    Delta,
    EngineError,
    ImageRef,
    Progress,
    PromptInfo,
    SamplingDefaults,
    Usage,
)
from app.media import Budget, MediaCache, MediaError, VideoClip, read_attachment

FAIL = "FAIL"  # a question with this word gets an EngineError, as a model's failure would
PIXELS_PER_TOKEN = 28 * 28  # what the scripted engine says a visual token costs


@dataclass
class ScriptedEngine:
    """An engine that answers every request with `script` (its words, then the usage)."""

    script: str = "A scripted answer from the test engine, one word at a time."
    delay_s: float = 0.0
    name: str = "scripted"
    model_name: str = "scripted test engine"
    family: str = "qwen3_vl"
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    supports_thinking: bool = False
    notice: str | None = None
    budget: Budget = field(default_factory=Budget)
    runs_on_cpu: bool = True
    max_concurrent: int = 1
    weights: str | None = None
    media_cache: MediaCache = field(default_factory=MediaCache)
    requests: list[ChatRequest] = field(default_factory=list)  # what it was asked, in order

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> dict:
        self._visuals(request)
        return {}  # no previews: the page's are made of a real engine's reading

    def _visuals(self, request: ChatRequest) -> tuple[list[ImageRef], list[tuple[str, int]]]:
        refs: list[ImageRef] = []
        costs: list[tuple[str, int]] = []
        budget = request.budget or self.budget
        for turn in request.turns:
            for attachment in turn.attachments:
                try:
                    read = read_attachment(
                        attachment.path, budget, self.media_cache, attachment.name
                    )
                except MediaError as err:
                    raise EngineError(str(err)) from err
                tokens = 0
                for index, visual in enumerate(read.visuals):
                    if isinstance(visual, VideoClip):
                        tokens += len(visual.frames) * 4
                        continue
                    refs.append(ImageRef(attachment, index, visual, visual.size))
                    tokens += max(1, visual.size[0] * visual.size[1] // PIXELS_PER_TOKEN)
                costs.append((attachment.name, tokens))
        return refs, costs

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        started = time.perf_counter()
        self.requests.append(request)
        question = next((t.text for t in reversed(request.turns) if t.role == "user"), "")
        refs, costs = self._visuals(request)
        yield Delta(prompt=PromptInfo(images=tuple(refs)))
        yield Delta(progress=Progress("Reading the prompt", 0.0, started))
        if FAIL in question:
            raise EngineError(f"The scripted engine was asked to fail ({question!r}).")
        words = self.script.split(" ")[: request.params.max_new_tokens or None]
        first: float | None = None
        sent = 0
        for word in words:
            if cancel.is_set():
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            first = first if first is not None else time.perf_counter() - started
            yield Delta(text=word if sent == 0 else f" {word}")
            sent += 1
        visual = sum(tokens for _, tokens in costs)
        prompt_tokens = sum(len(t.text.split()) for t in request.turns) + visual
        yield Delta(
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=sent,
                visual_tokens=visual,
                first_token_s=first,
                total_s=time.perf_counter() - started,
                visual_by_attachment=tuple(costs),
            )
        )
