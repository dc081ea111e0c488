"""Whose request the engine takes next: users in turn, each user's requests in order.

An engine serves `capacity` requests at once (the local model one; a serving engine behind
`--backend openai` as many as `--max-concurrent`). First come, first served lets one user (a
script firing twenty requests, a flood) hold everyone else for as long as their requests take;
here each free place goes to the waiting user served least recently, so a single question waits
for at most one request of each other user. Every request reaches this line (gradio's own
queue, first come first served, lets them all through): at most `max_in_line` in all and
`per_user` of one user (waiting or served, by default half the line, so that no one flood fills
it); more are refused at once, with words.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from app.said import Said, say


class TooManyWaiting(Exception):
    """The line, or a user's part of it, is full."""

    def __init__(self, said: Said) -> None:
        super().__init__(str(said))
        self.said = said


class FairQueue:
    """A fair semaphore of `capacity` places: least recently served user first, first in first
    out within a user; at most `max_in_line` requests in line, `per_user` of one user."""

    def __init__(
        self, capacity: int = 1, max_in_line: int = 64, per_user: int | None = None
    ) -> None:
        self.capacity = capacity
        self.max_in_line = max_in_line
        self.per_user = per_user or max(1, max_in_line // 2)
        self._changed = threading.Condition()
        self._waiting: dict[str, deque[int]] = {}
        self._served: dict[str, int] = {}  # user -> when last served (a count of turns)
        self._tickets = itertools.count()
        self._turn_count = itertools.count()
        self._holders: set[int] = set()
        self._in_line: dict[str, int] = {}  # user -> requests waiting or served

    def _order(self) -> list[int]:
        """The order in which the waiting requests will get the model, as things stand."""
        queues = {user: deque(q) for user, q in self._waiting.items() if q}
        served = dict(self._served)
        order: list[int] = []
        while queues:
            # Never served first (by arrival), then whoever was served longest ago.
            user = min(queues, key=lambda u: (served.get(u, -1), queues[u][0]))
            order.append(queues[user].popleft())
            served[user] = 1 << 62 | len(order)
            if not queues[user]:
                del queues[user]
        return order

    def ahead_of(self, ticket: int) -> int:
        """Requests that will have a place before `ticket` (one being served, where every place
        is taken, included)."""
        with self._changed:
            order = self._order()
            if ticket not in order:
                return 0
            return order.index(ticket) + (len(self._holders) >= self.capacity)

    @contextmanager
    def turn(self, user: str) -> Iterator[int]:
        """A place in line for one request of `user`, given back on leaving the block.

        Inside, `wait(ticket, ...)` until it is this request's turn; it then holds a place
        until the block ends. Raises TooManyWaiting where `user` has `per_user` in line."""
        with self._changed:
            self._check_room(user)
            ticket = next(self._tickets)
            self._waiting.setdefault(user, deque()).append(ticket)
            self._in_line[user] = self._in_line.get(user, 0) + 1
        try:
            yield ticket
        finally:
            with self._changed:
                queue = self._waiting.get(user)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                if not queue:
                    self._waiting.pop(user, None)
                self._holders.discard(ticket)
                self._in_line[user] -= 1
                if not self._in_line[user]:
                    del self._in_line[user]
                self._changed.notify_all()

    def _check_room(self, user: str) -> None:
        if self._in_line.get(user, 0) >= self.per_user:
            raise TooManyWaiting(
                say(
                    f"You already have {self.per_user} questions waiting or being answered: "
                    "wait for one to finish, or stop one, then ask again.",
                    f"你已经有 {self.per_user} 个问题在等待或正在回答：请等其中一个完成或停止"
                    "一个，再提问。",
                )
            )
        if sum(self._in_line.values()) >= self.max_in_line:
            raise TooManyWaiting(
                say(
                    f"The app already has {self.max_in_line} questions waiting, as many as it "
                    "takes: try again in a moment.",
                    f"本应用已有 {self.max_in_line} 个问题在等待，已达上限：请稍后再试。",
                )
            )

    def wait(self, ticket: int, cancel: threading.Event, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `ticket`'s turn; True once it holds a place."""
        with self._changed:
            if ticket in self._holders:
                return True

            def my_turn() -> bool:
                free = self.capacity - len(self._holders)
                if cancel.is_set() or free <= 0:
                    return cancel.is_set()
                return ticket in self._order()[:free]

            if not self._changed.wait_for(my_turn, timeout=timeout_s) or cancel.is_set():
                return False
            self._holders.add(ticket)
            user = next(u for u, q in self._waiting.items() if ticket in q)
            self._waiting[user].remove(ticket)
            if not self._waiting[user]:
                del self._waiting[user]
            self._served[user] = next(self._turn_count)
            return True
