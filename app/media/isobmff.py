"""MP4/MOV box structure, read only as far as needed to find data references to other files.

An MP4 or MOV track may keep its samples in another file, named by a `dref` entry (a URL or a
QuickTime alias with an absolute path). FFmpeg does not follow them while `enable_drefs` is off,
but such a file then decodes to nothing, or to what the other file holds where that option is
ever turned on; either way the user deserves to hear why. Pure Python, no decoding.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# Boxes on the way from the file's top level down to each track's data reference box.
_PATH_TO_DREF = (b"moov", b"trak", b"mdia", b"minf", b"dinf")
# A movie box larger than this is refused: a real one, even of hours of video, is a few MB.
_MAX_MOOV_BYTES = 64 << 20
_SELF_CONTAINED = 0x000001  # the entry's flag: "the media data is in this file"
# Real files have a handful of top-level boxes; a file of millions of empty ones is not walked.
_MAX_TOP_LEVEL_BOXES = 1000


class OversizedIndex(Exception):
    """A movie box (the index of every sample) larger than any real file's."""


def _header(head: bytes, to_end: int) -> tuple[bytes, int, int] | None:
    """(type, header length, size) of the box starting with `head` (its first 16 bytes or
    fewer), `to_end` bytes from the end of what holds it; None where the header is malformed."""
    if len(head) < 8:
        return None
    size, kind = struct.unpack_from(">I4s", head)
    header = 8
    if size == 1 and len(head) == 16:
        size, header = struct.unpack_from(">Q", head, 8)[0], 16
    elif size == 0:  # the box runs to the end
        size = to_end
    return None if size < header else (kind, header, size)


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, body) of each box in `data`; stops at the first malformed header."""
    found, at = [], 0
    while (box := _header(data[at : at + 16], len(data) - at)) is not None:
        kind, header, size = box
        if at + size > len(data):
            break
        found.append((kind, data[at + header : at + size]))
        at += size
    return found


def _top_level_moov(fh: BinaryIO, file_size: int) -> bytes | None:
    """The body of the file's movie box, found by skipping from header to header; raises
    OversizedIndex for one over _MAX_MOOV_BYTES."""
    at = 0
    for _ in range(_MAX_TOP_LEVEL_BOXES):
        if at + 8 > file_size:
            return None
        fh.seek(at)
        box = _header(fh.read(16), file_size - at)
        if box is None:
            return None
        kind, header, size = box
        if kind == b"moov":
            if size > _MAX_MOOV_BYTES:
                raise OversizedIndex(size)
            fh.seek(at + header)
            return fh.read(size - header)
        at += size
    return None


def _dref_bodies(moov: bytes) -> list[bytes]:
    """Every data reference box's body, one level of the path at a time."""
    level = [moov]
    for container in _PATH_TO_DREF[1:]:
        level = [body for data in level for kind, body in _boxes(data) if kind == container]
    return [body for data in level for kind, body in _boxes(data) if kind == b"dref"]


def _refers_elsewhere(dref: bytes) -> bool:
    """Whether a dref body (version, flags, count, entries) has an entry outside this file."""
    return any(
        len(body) < 4 or not struct.unpack_from(">I", body)[0] & _SELF_CONTAINED
        for _, body in _boxes(dref[8:])
    )


def has_external_references(path: str | Path) -> bool:
    """Whether an MP4/MOV file's tracks refer to media data kept in other files."""
    path = Path(path)
    with path.open("rb") as fh:
        moov = _top_level_moov(fh, path.stat().st_size)
    return moov is not None and any(_refers_elsewhere(d) for d in _dref_bodies(moov))


def _tables(moov: bytes, kind: bytes) -> list[bytes]:
    """The bodies of every track's sample table box of `kind` (stsz, stz2, stts)."""
    level = [moov]
    for container in (b"trak", b"mdia", b"minf", b"stbl"):
        level = [body for data in level for k, body in _boxes(data) if k == container]
    return [body for data in level for k, body in _boxes(data) if k == kind]


def declared_samples(path: str | Path) -> int | None:
    """The most samples any track of an MP4/MOV file declares (from its sample-size and
    time-to-sample tables), or None where the file's movie box cannot be read here. FFmpeg
    allocates its index for them all when it opens the file: 80 million declared in a 3 KB
    file cost gigabytes."""
    path = Path(path)
    with path.open("rb") as fh:
        moov = _top_level_moov(fh, path.stat().st_size)
    if moov is None:
        return None
    counts = [0]
    for body in _tables(moov, b"stsz") + _tables(moov, b"stz2"):
        if len(body) >= 12:
            counts.append(struct.unpack_from(">I", body, 8)[0])
    for body in _tables(moov, b"stts"):
        if len(body) >= 8:
            entries = min(struct.unpack_from(">I", body, 4)[0], (len(body) - 8) // 8)
            counts.append(sum(struct.unpack_from(">I", body, 8 + 8 * i)[0] for i in range(entries)))
    return max(counts)
