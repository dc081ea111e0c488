"""Decoding in child processes, so that a time budget and Stop can end it.

A decoder may run for minutes inside C code on a crafted file (a JPEG of thousands of
progressive scans, a PDF of forms nested in forms, a video of thousands of 4K frames), where no
Python check can reach it and the thread cannot be stopped. Here each file is read by
`load_visuals` in a worker process; the caller waits for its answer while watching the
request's cancel event and the file's time budget, and ends the process when either runs out.
A worker also runs under a memory ceiling, so a decoder that allocates without bound fails
with a MemoryError (a message naming the file) rather than taking the machine's memory.

Workers start on first use (fresh interpreters: no copy of the server's threads or model) and
are reused; one ended (stopped, out of time, crashed) is replaced by a fresh one on the next
request. Files take the workers in fair turns by who asks (app/fair_queue.py), one file a
turn: one user's eight slow videos hold another user's photo for one file's decode at most,
not eight.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from app.fair_queue import FairQueue
from app.media.limits import Budget, MediaError
from app.media.words import too_large_for_memory
from app.said import message, say

if TYPE_CHECKING:
    from app.media.cache import Decode, Decoded

log = logging.getLogger(__name__)

# How often the caller looks at the cancel event and the clock while a worker decodes.
POLL_S = 0.05


class DecodeStopped(Exception):
    """The user stopped the request while one of its files was being read."""


def serve(fd: int, memory_bytes: int) -> None:
    """A worker's loop (`python -c`, see _Worker): read each (path, budget, label) sent on the
    socket `fd`, answer with the visuals or an error message."""
    import resource

    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    from app.media.cache import load_visuals

    conn = Connection(fd)
    while True:
        try:
            path, budget, label = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", load_visuals(path, budget, label)))
        except MediaError as err:
            conn.send(("error", message(err)))
        except MemoryError:
            conn.send(("error", too_large_for_memory(label)))


# The app's own folder, for the workers' imports whatever the server's working directory.
_ROOT = Path(__file__).resolve().parents[2]


class _Worker:
    """One decoding process: a fresh interpreter running `serve` (not a fork of the server,
    whose threads and model it must not copy; not multiprocessing's spawn, which would import
    the server's main script again)."""

    def __init__(self, memory_bytes: int | None) -> None:
        import os
        import socket
        import subprocess
        import sys

        mine, theirs = socket.socketpair()
        code = f"from app.media.worker import serve; serve({theirs.fileno()}, {memory_bytes or 0})"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env, cwd=_ROOT
        )
        theirs.close()
        self.conn = Connection(os.dup(mine.fileno()))
        mine.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.conn.close()


class DecodePool:
    """Up to `workers` files decoded at once, each within `timeout_s` and ended by Stop."""

    def __init__(
        self, workers: int = 2, timeout_s: float = 30.0, memory_bytes: int | None = 8 << 30
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._idle: list[_Worker] = []
        # Files only reach this line through requests the app took, each bounded in its files:
        # the line's own bounds are not the guard here.
        self._turns = FairQueue(workers, max_in_line=1 << 30, per_user=1 << 30)
        self._lock = threading.Lock()
        self.ended = 0  # workers ended for a stop, a timeout or a crash (for tests and logs)

    def for_request(self, cancel: threading.Event | None, asker: str = "") -> Decode:
        """The decode function of one request of `asker`: stopped when `cancel` is set."""

        def decode(path: str | Path, budget: Budget, label: str) -> Decoded:
            return self.decode(path, budget, label, cancel, asker)

        return decode

    def decode(
        self,
        path: str | Path,
        budget: Budget,
        label: str,
        cancel: threading.Event | None = None,
        asker: str = "",
    ) -> Decoded:
        stop = cancel or threading.Event()
        with self._turns.turn(asker) as ticket:
            while not self._turns.wait(ticket, stop, POLL_S):  # workers busy with other files
                if stop.is_set():
                    raise DecodeStopped
            return self._on_worker(path, budget, label, cancel)

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.end()
        return _Worker(self.memory_bytes)

    def _on_worker(
        self, path: str | Path, budget: Budget, label: str, cancel: threading.Event | None
    ) -> Decoded:
        worker = self._take()
        try:
            worker.conn.send((str(Path(path).absolute()), budget, label))
            self._wait(worker, label, cancel, time.monotonic() + self.timeout_s)
            status, value = worker.conn.recv()
        except (EOFError, OSError) as err:  # the worker died: a decoder crashed on the file
            self._end(worker, label, "crashed")
            raise MediaError(
                say(
                    f"{label}: the decoder failed on this file; it cannot be read",
                    f"{label}：解码器在这个文件上出错了；无法读取",
                )
            ) from err
        except DecodeStopped:
            self._end(worker, label, "stopped")
            raise
        except BaseException:
            self._end(worker, label, "ran out of time or was interrupted")
            raise
        with self._lock:
            self._idle.append(worker)
        if status == "error":
            raise MediaError(value)
        return value

    def _wait(
        self, worker: _Worker, label: str, cancel: threading.Event | None, deadline: float
    ) -> None:
        """Until the worker has answered (or died); DecodeStopped or MediaError when the
        request is stopped or the file's time is up."""
        while not worker.conn.poll(POLL_S):
            if cancel is not None and cancel.is_set():
                raise DecodeStopped
            if time.monotonic() > deadline:
                limit = f"{self.timeout_s:g}"
                raise MediaError(
                    say(
                        f"{label}: reading it took longer than this app gives one file "
                        f"({limit} s, --decode-timeout-s); refused. A shorter or smaller file, "
                        "or one saved again by an ordinary program, will do.",
                        f"{label}：读取时间超过了本应用给一个文件的时限（{limit} 秒，"
                        "--decode-timeout-s）；已拒绝。换一个更短或更小的文件，"
                        "或用普通程序重新保存一次即可。",
                    )
                )
            if not worker.alive():
                raise EOFError("the worker process ended")

    def _end(self, worker: _Worker, label: str, why: str) -> None:
        log.info("decoding %s %s; its worker process ended", label, why)
        worker.end()
        with self._lock:
            self.ended += 1

    def close(self) -> None:
        with self._lock:
            for worker in self._idle:
                worker.end()
            self._idle.clear()
