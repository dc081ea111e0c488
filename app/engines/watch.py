"""Hooks on the model's layers: Stop during a prefill, and what the prefill is doing.

A prefill (the vision encoder over an image, the language model over a long prompt) is one call
that can take minutes on a CPU. Forward pre-hooks on the vision blocks and the language layers
let a request's cancel event end it between two layers, and report how far it has come. They
are registered once per model and act only while a request's `Watch` is set on them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.engines.base import Progress
from app.engines.pump import Emit

# Progress goes out at most this often (and at every change of stage).
PROGRESS_INTERVAL_S = 0.5


class Cancelled(Exception):
    """The request was stopped while the model was reading its prompt."""


@dataclass
class Watch:
    """One request's cancel event and where its progress goes."""

    cancel: threading.Event
    emit: Emit
    stage: str = ""
    done: int = 0
    total: int = 0
    last_sent: float = field(default=0.0)


class WatchHooks:
    """Pre-hooks on `model`'s vision blocks and language layers, acting for `self.watch`."""

    def __init__(self, model: Any) -> None:
        self.watch: Watch | None = None
        inner = model.model
        self._vision_blocks = list(getattr(getattr(inner, "visual", None), "blocks", []))
        self._language_layers = list(inner.language_model.layers)
        for block in self._vision_blocks:
            block.register_forward_pre_hook(self._before_vision_block)
        for layer in self._language_layers:
            layer.register_forward_pre_hook(self._before_language_layer, with_kwargs=True)

    def set_stage(self, stage: str) -> None:
        watch = self.watch
        if watch is None:
            return
        watch.stage, watch.done, watch.total = stage, 0, 0
        self._report(watch, force=True)

    def _before_vision_block(self, module: Any, args: Any) -> None:
        self._step(len(self._vision_blocks))

    def _before_language_layer(self, module: Any, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None and hidden.shape[1] > 1:  # a prefill; decoding stops by token
            self._step(len(self._language_layers))

    def _step(self, total: int) -> None:
        watch = self.watch
        if watch is None:
            return
        if watch.cancel.is_set():
            raise Cancelled
        watch.total = total
        watch.done = min(total, watch.done + 1)
        self._report(watch)

    def _report(self, watch: Watch, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - watch.last_sent < PROGRESS_INTERVAL_S:
            return
        watch.last_sent = now
        fraction = (watch.done - 1) / watch.total if watch.total else None
        watch.emit(Progress(watch.stage, fraction))
