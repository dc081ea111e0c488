"""One streaming pump for every engine: work on a thread -> a queue -> batches for the caller.

The work (a `model.generate`, an HTTP stream) runs on another thread (a new one, or the `runner`'s:
the local engine's one model thread) and hands items over with `emit`. The caller iterates batches:
everything emitted since its last batch comes as one list, so at high token rates the UI sends
fewer, larger updates and the work loses less time to the caller's per-update work (they share the
GIL); with `idle_s`, an empty batch comes whenever the work has been silent that long (a long
prefill), so the caller can show the time passing and gradio gets a point at which to stop the
request. An exception inside the work is raised in the caller, not turned into a timeout.
Cancellation is the request's event: when it is set, `interrupt` is called once (to unblock I/O the
work waits on); when the caller stops early (Stop, a closed tab, an error upstream) the event is set
and the thread given a few seconds to end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

_END = object()
JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Failure:
    error: BaseException


Emit = Callable[[Any], None]


def pump(
    work: Callable[[Emit], None],
    cancel: threading.Event,
    *,
    name: str,
    interrupt: Callable[[], None] | None = None,
    idle_s: float | None = None,
    poll_s: float = 0.05,
    runner: Executor | None = None,
) -> Generator[list[Any], None, None]:
    """Run `work(emit)` on `runner` (else on a new thread called `name`); yield what it emits,
    in batches."""
    items: queue.Queue[Any] = queue.Queue()
    done = threading.Event()
    run = _task(work, items, done, name)
    if runner is None:
        threading.Thread(target=run, name=name, daemon=True).start()
    else:
        runner.submit(run)
    interrupted = False
    last_batch = time.perf_counter()
    try:
        while True:
            try:
                batch = [items.get(timeout=poll_s)]
            except queue.Empty:
                if cancel.is_set() and interrupt is not None and not interrupted:
                    interrupted = True
                    interrupt()
                if idle_s is not None and time.perf_counter() - last_batch >= idle_s:
                    last_batch = time.perf_counter()
                    yield []
                continue
            last_batch = time.perf_counter()
            while _is_item(batch[-1]) and not items.empty():
                batch.append(items.get_nowait())
            payload = [item for item in batch if _is_item(item)]
            if payload:
                yield payload
            if batch[-1] is _END:
                return
            if isinstance(batch[-1], _Failure):
                raise batch[-1].error
    finally:
        if not done.is_set():
            cancel.set()
            if interrupt is not None and not interrupted:
                interrupt()
            done.wait(timeout=JOIN_TIMEOUT_S)


def _task(
    work: Callable[[Emit], None], items: queue.Queue[Any], done: threading.Event, name: str
) -> Callable[[], None]:
    """`work`, wrapped to hand its items, its failure and its end to the queue."""

    def run() -> None:
        # The runner's thread goes by `name` while it does this work (what a thread dump or
        # a test sees), and by its own name again after.
        thread = threading.current_thread()
        own_name, thread.name = thread.name, name
        try:
            work(items.put)
        except BaseException as err:  # noqa: BLE001 - every failure must reach the caller
            items.put(_Failure(err))
        finally:
            thread.name = own_name
            items.put(_END)
            done.set()

    return run


def _is_item(value: Any) -> bool:
    return value is not _END and not isinstance(value, _Failure)
