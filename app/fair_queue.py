"""Whose request the model takes next: users in turn, each user's requests in order.

One model serves everyone, one request at a time. First come, first served lets one user (a
script firing twenty requests, a flood) hold everyone else for as long as their requests take;
here the next turn goes to the waiting user served least recently, so a single question waits
for at most one request of each other user.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class FairQueue:
    """A fair lock: least recently served user first, first in first out within a user."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: dict[str, deque[int]] = {}
        self._served: dict[str, int] = {}  # user -> when last served (a count of turns)
        self._tickets = itertools.count()
        self._turn_count = itertools.count()
        self._holder: int | None = None

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
        """Requests that will have the model before `ticket` (the one holding it included)."""
        with self._changed:
            order = self._order()
            if ticket not in order:
                return 0
            return order.index(ticket) + (self._holder is not None)

    @contextmanager
    def turn(self, user: str) -> Iterator[int]:
        """A place in line for one request of `user`, given back on leaving the block.

        Inside, `wait(ticket, ...)` until it is this request's turn; it then holds the model
        until the block ends."""
        with self._changed:
            ticket = next(self._tickets)
            self._waiting.setdefault(user, deque()).append(ticket)
        try:
            yield ticket
        finally:
            with self._changed:
                queue = self._waiting.get(user)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                if not queue:
                    self._waiting.pop(user, None)
                if self._holder == ticket:
                    self._holder = None
                self._changed.notify_all()

    def wait(self, ticket: int, cancel: threading.Event, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for `ticket`'s turn; True once it holds the model."""
        with self._changed:
            if self._holder == ticket:
                return True

            def my_turn() -> bool:
                if cancel.is_set() or self._holder is not None:
                    return cancel.is_set()
                order = self._order()
                return bool(order) and order[0] == ticket

            if not self._changed.wait_for(my_turn, timeout=timeout_s) or cancel.is_set():
                return False
            self._holder = ticket
            user = next(u for u, q in self._waiting.items() if ticket in q)
            self._waiting[user].remove(ticket)
            if not self._waiting[user]:
                del self._waiting[user]
            self._served[user] = next(self._turn_count)
            return True
