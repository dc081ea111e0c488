"""An attachment read within a budget, once: decoded visuals cached by content and budget.

`read_attachment` is the one entry to the media layer: it sniffs the file, reads it with the
reader its content calls for, and keeps the result in a `MediaCache`. Whatever a file holds, the
outcome is its visuals or a `MediaError` naming the file: a failure nobody foresaw inside a
decoder is still reported as that file's problem, never as a server error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.media.limits import Budget, MediaError
from app.media.video import VideoClip
from app.media.words import missing, too_large_for_memory
from app.said import say

if TYPE_CHECKING:
    from PIL import Image

    # What one attached file becomes for the model: images (a photo, pages) or video clips (a
    # video, an animated GIF or WebP). isinstance tells them apart.
    Visual = Image.Image | VideoClip
    # How a file is decoded: (path, budget, label) -> its kind and visuals.
    Decode = Callable[[str | Path, Budget, str], "Decoded"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """What a decoder made of one file: its sniffed kind (which budget fields it was read with,
    `Budget.part`) and its visuals; a document's page count (more than its visuals where only
    its first pages were read)."""

    kind: str
    visuals: list[Visual]
    pages_in_file: int | None = None


@dataclass(frozen=True)
class Attached:
    """An attachment read within a budget: its visuals, and a key naming its content and budget
    (the same file read with the same budget always gives the same key); its sniffed kind, and
    a document's page count."""

    key: str
    visuals: list[Visual]
    kind: str = ""
    pages_in_file: int | None = None


def content_key(path: str | Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _visual_bytes(visuals: list[Visual]) -> int:
    total = 0
    for value in visuals:
        if isinstance(value, VideoClip):
            total += value.frames.nbytes
        else:
            total += value.width * value.height * 3
    return total


class MediaCache:
    """Decoded attachments keyed by content and the part of the budget their kind is read
    with; least recently used dropped past a size."""

    def __init__(self, max_bytes: int = 1 << 30, max_kinds: int = 1 << 16) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Decoded] = OrderedDict()
        # Each file's kind, learnt from its first decoding: it says which key to look under.
        self._kinds: OrderedDict[str, str] = OrderedDict()
        self._max_kinds = max_kinds
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_load(
        self, digest: str, budget: Budget, load: Callable[[], Decoded]
    ) -> tuple[str, Decoded]:
        """(key, decoded) of the file with content `digest` read within `budget`."""
        with self._lock:
            kind = self._kinds.get(digest)
            if kind is not None and (key := (digest, budget.part(kind))) in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return _text(key), self._items[key]
        decoded = load()
        key = (digest, budget.part(decoded.kind))
        size = _visual_bytes(decoded.visuals)
        with self._lock:
            self.misses += 1
            self._kinds[digest] = decoded.kind
            if len(self._kinds) > self._max_kinds:
                self._kinds.popitem(last=False)
            if key not in self._items and size <= self._max_bytes:
                self._items[key] = decoded
                self._bytes += size
                while self._bytes > self._max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= _visual_bytes(dropped.visuals)
        return _text(key), decoded


def _text(key: tuple[str, str]) -> str:
    return f"{key[0]}:{key[1]}"


def load_visuals(path: str | Path, budget: Budget, label: str) -> Decoded:
    """The model inputs in one file, read by the reader its content calls for."""
    from app.media.images import open_animated_image, open_image, open_pages
    from app.media.pdf import open_pdf
    from app.media.sniff import sniff
    from app.media.video import open_video

    try:
        sniffed = sniff(path, label)
        kind = sniffed.kind
        if kind == "image":
            return Decoded(kind, [open_image(path, budget, label)])
        if kind == "pages":
            return Decoded(kind, list(open_pages(path, budget, label)))
        if kind == "pdf":
            pages, count = open_pdf(path, budget, label)
            return Decoded(kind, list(pages), pages_in_file=count)
        if kind == "animation":
            return Decoded(kind, [open_animated_image(path, budget, label)])
        return Decoded("video", [open_video(path, budget, label, sniffed.format)])
    except MediaError:
        raise
    except MemoryError as err:
        raise MediaError(too_large_for_memory(label)) from err
    except Exception as err:  # a decoder failing in a way nobody foresaw: still this file's
        log.warning("reading %s failed unexpectedly", label, exc_info=True)
        raise MediaError(
            say(
                f"{label}: the file is damaged and cannot be read ({err})",
                f"{label}：文件已损坏，无法读取（{err}）",
            )
        ) from err


def read_attachment(
    path: str | Path,
    budget: Budget,
    cache: MediaCache | None = None,
    name: str | None = None,
    decode: Decode | None = None,
) -> Attached:
    """One attached file read within `budget`: one image, one video, or pages of a document;
    decoded by `decode` (a worker pool's, app/media/worker.py) or, without one, here."""
    label = name or Path(path).name
    decode = decode or load_visuals
    try:
        digest = content_key(path)
    except OSError as err:
        if not Path(path).is_file():
            raise MediaError(missing(label)) from err
        raise MediaError(
            say(f"{label}: the file cannot be read ({err})", f"{label}：无法读取文件（{err}）")
        ) from err
    if cache is None:
        decoded = decode(path, budget, label)
        key = _text((digest, budget.part(decoded.kind)))
    else:
        key, decoded = cache.get_or_load(digest, budget, lambda: decode(path, budget, label))
    return Attached(key, decoded.visuals, decoded.kind, decoded.pages_in_file)
