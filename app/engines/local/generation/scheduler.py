"""Continuous batching on the model thread: prompts read one at a time, replies decoded together.

Requests come from their own threads (`run` waits for its job to end). The model thread loops:
it reads one waiting prompt (its prefill) where the batch has room (more, one after another,
while the batch stepped less than PREFILL_SLICE_S ago), then decodes one token of every reply in
the batch (batch.py); a reply leaves at its end or its Stop and the others never wait for it.
A prefill does not freeze the others' streams for its whole length: between two layers of it
(the watch hooks' points, watch.py), once PREFILL_SLICE_S has passed since the last step, the
batch takes a decode step. Room is `max_batch` replies and a memory bound on the tokens they may
hold together; who comes in when the batch is full was decided before, by the
fair queue (app/fair_queue.py admits `max_batch` requests to the engine at a time).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from app.engines.local.generation import kv
from app.engines.local.generation.batch import BatchStep, Row
from app.engines.local.generation.calls import Job
from app.engines.local.generation.out_of_memory import is_out_of_memory
from app.engines.local.generation.reuse import CachedGeneration
from app.engines.local.generation.watch import Cancelled, Watch, WatchHooks

log = logging.getLogger(__name__)
T = TypeVar("T")

# Longest a prefill runs between two decode steps of the others (a layer may run longer): each
# such step costs the prefill one token's time, so not much more often than a stream needs.
PREFILL_SLICE_S = 0.5
# How often a request's thread looks at its Stop while its job waits for the model thread.
POLL_S = 0.05


class BatchScheduler:
    """Jobs on one model: prefills one at a time, decode steps for all."""

    def __init__(
        self,
        runner: Executor,
        generation: CachedGeneration,
        step: BatchStep,
        hooks: WatchHooks,
        *,
        max_batch: int,
        max_batch_tokens: int,
        prefill: Callable[[Job], Row],
        prefill_slice_s: float = PREFILL_SLICE_S,
    ) -> None:
        self.runner = runner
        self.generation = generation
        self.step = step
        self.hooks = hooks
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self._prefill = prefill
        self.prefill_slice_s = prefill_slice_s
        # What the batch did, for the page's log and the tests: the most replies in one step,
        # and the steps taken between two layers of a prefill.
        self.largest_batch = 0
        self.steps_during_prefill = 0
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()
        self._rows: list[Row] = []
        self._held: deque[Row] = deque()  # set aside when a step ran out of memory
        self._tasks: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = deque()
        self._running = False
        self._pid = os.getpid()
        self._last_step = 0.0
        hooks.between_layers = self._step_during_prefill

    def run(self, job: Job) -> None:
        """Queue `job` and wait for its end (its text goes out through `job.emit`); raise its
        error. A job stopped before its prefill leaves the queue at once."""
        with self._lock:
            self._waiting.append(job)
        self._ensure_running()
        while not job.ended.wait(POLL_S):
            if job.cancel.is_set() and self._withdraw(job):
                return
        if job.error is not None:
            raise job.error

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` on the model thread between two decode steps (a request's processor
        work: on another thread it would start a second OpenMP pool, model_thread.py)."""
        future: Future[T] = Future()
        with self._lock:
            self._tasks.append((fn, args, future))
        self._ensure_running()
        return future

    def _ensure_running(self) -> None:
        if self._pid != os.getpid():  # a forked child (ZeroGPU): the parent's loop is not here
            self._pid, self._running = os.getpid(), False
            self._lock = threading.Lock()
        with self._lock:
            start, self._running = not self._running, True
        if start:
            self.runner.submit(self._loop)

    def _withdraw(self, job: Job) -> bool:
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                return True
        return False

    def _loop(self) -> None:
        """The model thread's work while there is any; a failure of its own (not a job's)
        ends every job with it, and the next job starts the loop afresh."""
        try:
            self._serve()
        except BaseException as err:
            log.exception("the batch scheduler failed; every reply in it ends")
            self._fail_all(err)
            raise

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            jobs = [*self._waiting, *(row.job for row in (*self._rows, *self._held))]
            futures = [future for *_, future in self._tasks]
            self._waiting.clear()
            self._tasks.clear()
            self._rows, self._held = [], deque()
            self._running = False
        for job in jobs:
            job.end(error)
        for future in futures:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

    def _serve(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                self._run_tasks()
                job = self._next_job()
                if job is None and not self._rows and not self._held:
                    with self._lock:
                        if not self._waiting and not self._tasks:
                            self._running = False
                            return
                    continue  # a task came in meanwhile
                if job is not None:
                    self._start(job)
                    if self._more_to_read_first():
                        continue
                self._decode_step()

    def _more_to_read_first(self) -> bool:
        """Whether the next waiting prompt is read before the batch's next step: while the
        batch has stepped within PREFILL_SLICE_S, prompts that came together are read one
        after another and their replies step together (a reply of two tokens otherwise ended
        before the next prompt was read, and short replies never shared a step)."""
        with self._lock:
            waiting = bool(self._waiting)
        recent = time.perf_counter() - self._last_step < self.prefill_slice_s
        return waiting and recent and len(self._rows) < self.max_batch

    def _run_tasks(self) -> None:
        while True:
            with self._lock:
                if not self._tasks:
                    return
                fn, args, future = self._tasks.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # noqa: BLE001 - the caller's to raise
                    future.set_exception(err)

    def _next_job(self) -> Job | None:
        """The next prompt to read, where the batch has room for it (held rows first)."""
        if self._held and len(self._rows) < self.max_batch and self._fits(self._held[0]):
            self._rows.append(self._held.popleft())
        with self._lock:
            if not self._waiting or len(self._rows) + len(self._held) >= self.max_batch:
                return None
            job = self._waiting[0]
            if not self._fits_tokens(len(job.prompt.ids) + self.generation.max_new_tokens(job)):
                return None
            return self._waiting.popleft()

    def _fits(self, row: Row) -> bool:
        return self._fits_tokens(row.tokens_held)

    def _fits_tokens(self, tokens: int) -> bool:
        """Room for a reply that may hold `tokens` more (the first always fits: its prompt was
        bounded on its own)."""
        held = sum(row.tokens_held for row in (*self._rows, *self._held))
        return not held or held + tokens <= self.max_batch_tokens

    def _start(self, job: Job) -> None:
        """Read `job`'s prompt; its reply joins the batch (or ends, stopped, failed, done)."""
        if job.cancel.is_set():
            job.end()
            return
        self.hooks.watch = Watch(job.cancel, job.emit)
        try:
            row = self._prefill(job)
        except Cancelled:
            job.end()
            return
        except Exception as err:  # noqa: BLE001 - the job's failure is its caller's to raise
            job.end(err)
            return
        finally:
            self.hooks.watch = None
        if row.sampler.finished() or job.cancel.is_set():
            self._finish(row)
        else:
            self._rows.append(row)

    def _step_during_prefill(self) -> None:
        """Between two layers of a prefill: the batch's decode step, if one is due."""
        if self._rows and time.perf_counter() - self._last_step >= self.prefill_slice_s:
            self.steps_during_prefill += 1
            self._decode_step()

    def _decode_step(self) -> None:
        """One token for every reply in the batch; the replies that ended leave it."""
        for row in [row for row in self._rows if row.job.cancel.is_set()]:
            self._rows.remove(row)
            self._finish(row)
        if not self._rows:
            return
        rows = list(self._rows)
        self.largest_batch = max(self.largest_batch, len(rows))
        try:
            logits = self.step.logits(rows)
        except Exception as err:  # noqa: BLE001 - each reply's failure is its caller's
            self._step_failed(rows, err)
            return
        finally:
            self._last_step = time.perf_counter()
        for index, row in enumerate(rows):
            self.generation.advance(row, logits[index : index + 1])
            if row.sampler.finished():
                self._rows.remove(row)
                self._finish(row)

    def _step_failed(self, rows: list[Row], error: Exception) -> None:
        """Out of memory with several replies: the newest waits (the batch shrinks) and the
        others go on; anything else, or a reply alone, ends each reply with the error (as do
        recurrent states, updated in place layer by layer: a step that failed part-way
        cannot be taken back)."""
        cuttable = all(kv.is_cuttable(row.cache) for row in rows)
        if is_out_of_memory(error) and len(rows) > 1 and cuttable:
            log.warning("out of memory decoding %d replies at once; one waits", len(rows))
            for row in rows:  # the step's token, written into some layers, is read again
                kv.cut(row.cache, len(row.sampler.ids) - 1, {})
            self._held.append(self._rows.pop())
            return
        for row in rows:
            self._rows.remove(row)
            row.streamer.end()
            row.job.end(error)

    def _finish(self, row: Row) -> None:
        try:
            self.generation.finish(row)
        except Exception as err:  # noqa: BLE001
            row.job.end(err)
            return
        row.job.end()
