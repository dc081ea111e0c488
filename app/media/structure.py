"""Work a file would make its decoder do, read from its structure before any decoding: how many
scans a JPEG holds, how large the PNG inside an ICO entry is, how large a Motion-JPEG frame is.

Pixel checks on a header see one picture's size; these shapes pass them and still cost minutes
or gigabytes to decode (a JPEG repeating one progressive scan 2400 times, an icon whose entry is
a 13370x13370 PNG, a Motion-JPEG video whose frames grow to 16000x16000 after its first).
Pure Python; no decoding.
"""

from __future__ import annotations

import struct
from pathlib import Path

from app.media.limits import MediaError, check_size
from app.said import say

# Scans one JPEG may hold: a progressive photo has about ten, an MPO's few pictures a few dozen.
MAX_JPEG_SCANS = 100
_PNG = b"\x89PNG\r\n\x1a\n"
ICO_MAGIC = b"\x00\x00\x01\x00"
# The JPEG markers that start a frame and declare its size (SOF0-SOF15 but DHT, JPG and DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def check_jpeg_scans(path: str | Path, label: str) -> None:
    """Refuse a JPEG with more scans than any real one; each scan is a pass over the picture.
    Inside the compressed data every 0xFF byte is followed by 0x00 (stuffing), so each
    start-of-scan marker found is a real one (or one of an embedded thumbnail's)."""
    with open(path, "rb") as fh:
        scans = fh.read().count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise MediaError(
            say(
                f"{label}: a JPEG of {scans} scans (real ones have a few dozen at most) would "
                "take minutes to decode; refused before decoding",
                f"{label}：这个 JPEG 有 {scans} 次扫描（真实图片最多几十次），解码要花几分钟；"
                "已在解码前拒绝",
            )
        )


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG's header declares, or None where `data` is no PNG."""
    if not data.startswith(_PNG) or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def check_icon(path: str | Path, label: str) -> None:
    """Check the size each ICO entry's embedded PNG declares, from the file's own directory:
    the directory's sizes stop at 256, and Pillow decodes the largest entry while opening."""
    with open(path, "rb") as fh:
        head = fh.read(6)
        if len(head) < 6 or head[:4] != ICO_MAGIC:
            return
        count = struct.unpack_from("<H", head, 4)[0]
        directory = fh.read(16 * count)
        for index in range(len(directory) // 16):
            offset = struct.unpack_from("<I", directory, 16 * index + 12)[0]
            fh.seek(offset)
            size = png_size(fh.read(24))
            if size is not None:
                check_size(label, *size, what=say(f"icon {index + 1}", f"第 {index + 1} 个图标"))


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) the first start-of-frame marker in a JPEG (or Motion-JPEG frame)
    declares; None where none is found in its headers."""
    at = 2 if data.startswith(b"\xff\xd8") else 0
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = struct.unpack_from(">H", data, at + 2)[0]
        if marker in _SOF and at + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        if marker == 0xDA:  # compressed data follows: no frame header came first
            return None
        at += 2 + length
    return None
