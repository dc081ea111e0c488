"""The one thread that runs the model: its load and every forward pass, one piece at a time.

Why one thread: PyTorch's CPU kernels run on an OpenMP pool that libgomp keeps per calling
thread, and a model used from another thread than the one that loaded it runs slower on every
token. Measured on 2 cores (Qwen3-VL-2B's real shapes, int8 weights, 64 tokens through the
engine): loaded on the main thread and generating on a new thread per request, as the app did,
153 ms a token; loaded there and generating on one long-lived thread, 156 ms; loaded and
generating on the same long-lived thread, 125 ms (the same kernels and OpenMP threads). So
`main` loads the model here and the local engine submits all of its model work here, in order
of arrival; request threads only wait for what it emits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any


class ModelThread(Executor):
    """An executor with one long-lived thread, first come first served (who comes first is
    decided before, by `app.fair_queue.FairQueue`). In a forked child (ZeroGPU runs each request in
    one) the parent's thread does not exist, so a child starts its own."""

    def __init__(self, name: str = "qwen-model") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
                self._pid = os.getpid()
            return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
