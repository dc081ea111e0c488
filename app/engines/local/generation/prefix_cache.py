"""Prefix cache: the model state of earlier conversations, reused when a prompt begins the same.

An entry is what the model read and wrote in one request: its token ids, the content keys of
the images and videos among them, and the KV cache holding their state. A new prompt reuses the
longest prefix any entry shares with it, matched by token ids and media keys (never by browser
session, so Regenerate, Undo, an edited message and API clients all hit it; never by text, since
a re-tokenised reply may differ from the generated ids). Only the rest is then read: earlier
images are not encoded again. Entries are kept apart by owner (a login, else a browser session):
a prompt is matched only against its owner's entries, so no user can learn from the cached
count, or the time to the first token, what another user sent.

Entries live within a byte budget, least recently used first out. An entry being extended by a
request is taken out of the cache until the request puts it back, so it is never evicted while
in use. A request that extends an entry in place takes it; one that shares only part of it gets
a copy of that part, and the entry stays for its own conversation.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engines.local.generation import kv
from app.engines.local.generation.prompt import MediaSpan

log = logging.getLogger(__name__)


@dataclass
class Entry:
    owner: str  # whose requests made it: only theirs may reuse it
    ids: tuple[int, ...]
    media: tuple[MediaSpan, ...]
    cache: Any
    marks: kv.Marks = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class Reuse:
    """What a request starts from: a cache holding `tokens` tokens of its prompt."""

    cache: Any
    tokens: int
    marks: kv.Marks
    # The cached sequence the prompt was matched against, and where the prompt left it.
    matched_length: int = 0
    shared: int = 0


def shared_prefix(
    ids: Sequence[int],
    media: Sequence[MediaSpan],
    other_ids: Sequence[int],
    other_media: Sequence[MediaSpan],
) -> int:
    """How many leading tokens two sequences share, media included (same ids, same content)."""
    limit = min(len(ids), len(other_ids))
    n = next((i for i in range(limit) if ids[i] != other_ids[i]), limit)
    theirs = {span.start: span for span in other_media}
    for span in media:
        if span.start >= n:
            break
        match = theirs.get(span.start)
        if match is None or match.key != span.key or match.end != span.end:
            return span.start
        if span.end > n:  # the match ends inside a picture: none of it is usable
            return span.start
    return n


class PrefixCache:
    """Least-recently-used entries within `max_bytes`; `max_bytes` 0 turns the cache off."""

    def __init__(self, max_bytes: int, new_cache: Callable[[], Any]) -> None:
        self.max_bytes = max_bytes
        self._new_cache = new_cache
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._next_id = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def take(self, ids: Sequence[int], media: Sequence[MediaSpan], owner: str = "") -> Reuse:
        """The best start for a prompt of `owner`: a cache holding its longest prefix among
        that owner's entries (at most all but its last token, which the model must read to
        answer), or an empty cache."""
        with self._lock:
            best: tuple[int, int, int] | None = None  # (usable tokens, shared, entry id)
            for entry_id, entry in self._entries.items():
                if entry.owner != owner:
                    continue
                shared = shared_prefix(ids, media, entry.ids, entry.media)
                usable = _usable(entry, min(shared, len(ids) - 1))
                if usable > 0 and (best is None or usable >= best[0]):
                    best = (usable, shared, entry_id)
            if best is None:
                return Reuse(self._new_cache(), 0, {})
            usable, shared, entry_id = best
            entry = self._entries[entry_id]
            marks = {n: states for n, states in entry.marks.items() if n <= usable}
            if usable == len(entry.ids):  # a plain extension: the request takes the entry
                del self._entries[entry_id]
                return Reuse(entry.cache, usable, marks, len(entry.ids), shared)
            self._entries.move_to_end(entry_id)
            copied = kv.copy_prefix(entry.cache, usable, entry.marks)
            return Reuse(copied, usable, marks, len(entry.ids), shared)

    def put(
        self,
        ids: Sequence[int],
        media: Sequence[MediaSpan],
        cache: Any,
        marks: kv.Marks,
        owner: str = "",
    ) -> None:
        """Keep `cache` (the state of `ids`) for later prompts of `owner`, within the budget."""
        if not self.enabled or not ids:
            return
        kv.compact(cache)  # kept at what it holds: the room to grow is the next request's
        entry = Entry(owner, tuple(ids), tuple(media), cache, marks)
        entry.nbytes = kv.nbytes(cache) + kv.nbytes(marks)
        if entry.nbytes > self.max_bytes:
            log.info("prefix cache: an entry of %d MB exceeds the budget", entry.nbytes >> 20)
            return
        with self._lock:
            # Entries this one contains (an earlier state of the same conversation) add nothing.
            for entry_id, old in list(self._entries.items()):
                if old.owner != owner:
                    continue
                shared = shared_prefix(old.ids, old.media, entry.ids, entry.media)
                if shared == len(old.ids) and kv.can_cut_to(cache, shared, marks):
                    del self._entries[entry_id]
            self._entries[self._next_id] = entry
            self._next_id += 1
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                total -= dropped.nbytes


def _usable(entry: Entry, tokens: int) -> int:
    """The longest length up to `tokens` that the entry's cache can be cut back to."""
    if kv.can_cut_to(entry.cache, tokens, entry.marks):
        return tokens
    return max((n for n in entry.marks if n <= tokens), default=0)
