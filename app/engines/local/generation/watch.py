"""Hooks on the model's layers: Stop during a prefill, and what the prefill is doing.

A prefill (the vision encoder over an image, the language model over a long prompt) is one call
that can take minutes on a CPU. Forward pre-hooks on the vision blocks and the language layers
let a request's cancel event end it between two layers, and report how far it has come. They
are registered once per model and act only while a request's `Watch` is set on them. Each stage
is timed, so later requests can be told how long theirs should take (`StageRates`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
    """One request's cancel event and where its progress goes; the stage it is in."""

    cancel: threading.Event
    emit: Emit
    stage: str = ""
    kind: str | None = None  # "vision" or "language": which rate the stage is timed for
    tokens: int = 0
    started: float = 0.0
    estimate_s: float | None = None
    done: int = 0
    total: int = 0
    last_sent: float = field(default=0.0)


class StageRates:
    """Seconds a token of each kind of work took in this process: a running mean, weighted
    to the latest requests (the machine's load changes)."""

    def __init__(self) -> None:
        self._seconds_per_token: dict[str, float] = {}

    def observe(self, kind: str, tokens: int, seconds: float) -> None:
        rate = seconds / max(1, tokens)
        old = self._seconds_per_token.get(kind)
        self._seconds_per_token[kind] = rate if old is None else 0.5 * old + 0.5 * rate

    def estimate(self, kind: str | None, tokens: int) -> float | None:
        rate = self._seconds_per_token.get(kind or "")
        return None if rate is None else rate * tokens


class WatchHooks:
    """Pre-hooks on a model's vision blocks and language layers, acting for `self.watch`."""

    def __init__(self, vision_blocks: list[Any], language_layers: list[Any]) -> None:
        self.watch: Watch | None = None
        # Called between two layers of a prefill (the scheduler's decode step for the others).
        self.between_layers: Callable[[], None] = lambda: None
        self.rates = StageRates()
        self._vision_blocks = vision_blocks
        self._language_layers = language_layers
        for block in self._vision_blocks:
            block.register_forward_pre_hook(self._before_vision_block)
        for layer in self._language_layers:
            layer.register_forward_pre_hook(self._before_language_layer, with_kwargs=True)

    def set_stage(self, stage: str, kind: str | None = None, tokens: int = 0) -> None:
        """A new stage of the request: `tokens` tokens of `kind` work to do."""
        watch = self.watch
        if watch is None:
            return
        self.end_stage()
        watch.stage, watch.kind, watch.tokens = stage, kind, tokens
        watch.started, watch.done, watch.total = time.perf_counter(), 0, 0
        watch.estimate_s = self.rates.estimate(kind, tokens)
        self._report(watch, force=True)

    def end_stage(self) -> None:
        """The stage is done: its time per token goes into the rates of later estimates."""
        watch = self.watch
        if watch is not None and watch.kind is not None:
            self.rates.observe(watch.kind, watch.tokens, time.perf_counter() - watch.started)
            watch.kind = None

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
        self.between_layers()

    def _report(self, watch: Watch, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - watch.last_sent < PROGRESS_INTERVAL_S:
            return
        watch.last_sent = now
        fraction = (watch.done - 1) / watch.total if watch.total else None
        watch.emit(Progress(watch.stage, fraction, watch.started, watch.estimate_s))
