"""Hugging Face ZeroGPU: an engine whose generation runs inside `spaces.GPU`.

ZeroGPU lends a GPU only to functions decorated with `spaces.GPU`. `for_zero_gpu` wraps an engine
in `ZeroGPUEngine` only where the `spaces` package reports ZeroGPU; elsewhere the engine is
returned as it is, and there is no hard dependency on `spaces`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from app.engines.base import ChatRequest, Delta, Engine

if TYPE_CHECKING:
    from app.media import Attached

log = logging.getLogger(__name__)


def on_zero_gpu() -> bool:
    try:
        from spaces.config import Config
    except ImportError:
        return False
    return bool(getattr(Config, "zero_gpu", False))


class ZeroGPUEngine:
    """`inner`, with each request's generation inside `spaces.GPU(duration=duration_s)`."""

    def __init__(self, inner: Engine, duration_s: int = 120) -> None:
        import spaces

        self.inner = inner
        self.name = inner.name
        self.model_name = inner.model_name
        self.family = inner.family
        self.sampling_defaults = inner.sampling_defaults
        self.supports_thinking = inner.supports_thinking
        self.notice = inner.notice
        self.weights = inner.weights
        self.budget = inner.budget
        self.runs_on_cpu = False
        # Each request runs in a GPU task of its own (a forked worker): replies cannot share a
        # batch there, so they take turns as before batching.
        self.max_concurrent = 1

        # The GPU task gets the request alone (a cancel event cannot cross into ZeroGPU's
        # worker); Stop closes the generator in `stream`, which ends the task.
        @spaces.GPU(duration=duration_s)
        def generate_on_gpu(request: ChatRequest) -> Iterator[Delta]:
            yield from inner.stream(request, threading.Event())

        self._generate_on_gpu = generate_on_gpu

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> dict[str, Attached]:
        return self.inner.read_media(request, cancel)  # on the CPU: no GPU time spent decoding

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        deltas = self._generate_on_gpu(request)
        try:
            for delta in deltas:
                yield delta
                if cancel.is_set():
                    break
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()


def for_zero_gpu(engine: Engine, duration_s: int = 120) -> Engine:
    """`engine` wrapped for ZeroGPU where the Space has it; `engine` itself elsewhere."""
    if not on_zero_gpu():
        return engine
    log.info("ZeroGPU: generation runs inside spaces.GPU (up to %d s a request)", duration_s)
    return ZeroGPUEngine(engine, duration_s)
