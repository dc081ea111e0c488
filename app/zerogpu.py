"""Hugging Face ZeroGPU: run generation inside `spaces.GPU` where the Space has ZeroGPU.

ZeroGPU lends a GPU only to functions decorated with `spaces.GPU`. Where the `spaces` package is
missing, or present without ZeroGPU, nothing changes: there is no hard dependency on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def on_zero_gpu() -> bool:
    try:
        from spaces.config import Config
    except ImportError:
        return False
    return bool(getattr(Config, "zero_gpu", False))


def run_on_zero_gpu(engine: Any, duration_s: int = 120, force: bool = False) -> bool:
    """Route `engine.stream` through `spaces.GPU` on ZeroGPU (or when forced); True if done."""
    if not (force or on_zero_gpu()):
        return False
    import spaces

    inner = engine.stream

    # The GPU task gets the request alone (a cancel event cannot cross into ZeroGPU's worker);
    # Stop closes the generator below, which ends the task.
    @spaces.GPU(duration=duration_s)
    def generate_on_gpu(request: Any) -> Iterator[Any]:
        yield from inner(request, threading.Event())

    def stream(request: Any, cancel: threading.Event) -> Iterator[Any]:
        deltas = generate_on_gpu(request)
        try:
            for delta in deltas:
                yield delta
                if cancel.is_set():
                    break
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()

    engine.stream = stream
    log.info("ZeroGPU: generation runs inside spaces.GPU (up to %d s a request)", duration_s)
    return True
