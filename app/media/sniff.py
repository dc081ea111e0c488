"""What a file is, judged by its content, and the only readers allowed to open it.

Names and extensions are never trusted. Images are opened only by the Pillow formats listed in
IMAGE_FORMATS, and videos only by FFmpeg demuxers that read the one file they are given, chosen
here from the file's signature (MP4/MOV without data references, Matroska/WebM, AVI, MPEG
program and transport streams, FLV, Ogg, ASF). FFmpeg is never left to probe: its probing picks
demuxers that open other files or URLs by reference (HLS and DASH playlists, concat lists, image
sequences), and those are refused here with a message that says what the file is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.media.isobmff import OversizedIndex, declared_samples, has_external_references
from app.media.limits import MediaError
from app.media.structure import ICO_MAGIC, check_icon
from app.media.words import damaged, missing, too_many_pixels
from app.said import chinese, say

Kind = Literal["image", "pages", "animation", "video", "pdf"]

# Pillow formats read: common photo and screenshot formats (JPEG includes cameras' MPO).
# Others are refused: EPS, for one, would run Ghostscript.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "TGA", "ICO")
# Multi-frame files of these formats are animations, read as short videos; a multi-page TIFF is
# a document, read page by page.
ANIMATED_FORMATS = frozenset({"GIF", "WEBP", "PNG"})
# Errors Pillow raises for broken data: the documented ones, and those its plugins raise on
# malformed headers (KeyError and TypeError from TIFF tags, IndexError from GIF frames, struct
# errors from short fields: found by fuzzing).
PILLOW_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    IndexError,
    struct.error,
)
# Signatures of image files, to tell a damaged image from a file that is no image at all.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
# Signatures of text files that point at other files, and what to call them.
PLAYLISTS = (
    (b"#EXTM3U", say("an M3U/HLS playlist", "一个 M3U/HLS 播放列表")),
    (b"ffconcat", say("an FFmpeg concat list", "一个 FFmpeg 拼接列表")),
    (b"[playlist]", say("a PLS playlist", "一个 PLS 播放列表")),
    (b"<?xml", say("an XML manifest (DASH or similar)", "一个 XML 清单（DASH 之类）")),
    (b"<MPD", say("a DASH manifest", "一个 DASH 清单")),
)
# Samples one MP4/MOV track may declare: nine hours at 60 frames a second. FFmpeg indexes every
# declared sample when it opens the file (tens of bytes each).
MAX_SAMPLES = 2_000_000
# Demuxer options: the file protocol only, and no MOV/MP4 data references to other files.
_PROTOCOLS = {"protocol_whitelist": "file"}
_MOV_OPTIONS = {"enable_drefs": "0", "use_absolute_path": "0"}


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    format: str  # the Pillow format, the FFmpeg demuxer, or "pdf"


def video_format(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with `head`, among those allowed; else None."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mov"  # MP4, MOV, M4V, 3GP
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # MKV, WebM
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"  # MPEG program stream (.mpg, .vob)
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"  # a sync byte every 188 bytes
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"  # WMV
    return None


def open_container(path: str | Path, fmt: str) -> Any:
    """`path` opened by FFmpeg's `fmt` demuxer only, reading nothing but that file."""
    import av

    options = _PROTOCOLS | (_MOV_OPTIONS if fmt == "mov" else {})
    return av.open(str(path), format=fmt, options=options)


def _image_kind(path: Path, head: bytes, label: str) -> Sniffed | None:
    from PIL import Image, UnidentifiedImageError

    if head.startswith(ICO_MAGIC):  # Pillow decodes an icon's largest entry while opening it
        check_icon(path, label)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            fmt, frames = str(im.format), getattr(im, "n_frames", 1)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as err:
        raise MediaError(too_many_pixels(label)) from err
    except ValueError as err:  # Pillow's own limits on metadata (text, colour profiles)
        raise MediaError(
            say(
                f"{label}: its metadata is too large to read ({err}); refused",
                f"{label}：元数据太大，无法读取（{err}）；已拒绝",
            )
        ) from err
    except PILLOW_ERRORS as err:
        if head.startswith(IMAGE_SIGNATURES):
            raise MediaError(damaged(label, "image", err)) from err
        return None
    if frames > 1 and fmt == "TIFF":
        return Sniffed("pages", fmt)
    if frames > 1 and fmt in ANIMATED_FORMATS:
        return Sniffed("animation", fmt)
    return Sniffed("image", fmt)


def _check_movie_box(path: Path, label: str) -> None:
    """An MP4/MOV refused from its movie box before FFmpeg opens it: tracks kept in other
    files, or more samples than FFmpeg should index."""
    try:
        external = has_external_references(path)
        samples = declared_samples(path) or 0
    except OversizedIndex as err:
        raise MediaError(
            say(
                f"{label}: its index of frames is {err.args[0] >> 20} MB, larger than any real "
                "video's; refused before opening",
                f"{label}：它的帧索引有 {err.args[0] >> 20} MB，比任何真实视频的都大；"
                "已在打开前拒绝",
            )
        ) from err
    if external:
        raise MediaError(
            say(
                f"{label}: its video is kept in other files (external data references); this "
                "app reads only the file you upload: export the video as one self-contained file",
                f"{label}：它的视频存放在其他文件中（外部数据引用）；本应用只读取你上传的文件："
                "请把视频导出为一个独立完整的文件",
            )
        )
    if samples > MAX_SAMPLES:
        raise MediaError(
            say(
                f"{label}: declares {samples:,} frames or samples in one track, more than this "
                f"app opens ({MAX_SAMPLES:,}); refused before opening",
                f"{label}：一条轨道声明了 {samples:,} 个帧或样本，超过本应用能打开的上限"
                f"（{MAX_SAMPLES:,}）；已在打开前拒绝",
            )
        )


def _video_kind(path: Path, head: bytes, label: str) -> Sniffed:
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for signature, what in PLAYLISTS:
        if stripped.startswith(signature):
            raise MediaError(
                say(
                    f"{label}: is {what}, which points to other files; this app reads only the "
                    "file you upload: upload the video itself",
                    f"{label}：这是{chinese(what)}，它指向其他文件；本应用只读取你上传的文件："
                    "请上传视频本身",
                )
            )
    fmt = video_format(head)
    if fmt is None:
        raise MediaError(
            say(
                f"{label}: not an image, video or PDF this app can read "
                "(judged by content, not the name)",
                f"{label}：不是本应用能读取的图片、视频或 PDF（按内容判断，而非文件名）",
            )
        )
    if fmt == "mov":
        _check_movie_box(path, label)
    try:
        with open_container(path, fmt) as container:
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
    except Exception as err:  # av raises many kinds for damaged files
        raise MediaError(
            say(
                f"{label}: the video is damaged or truncated and cannot be opened",
                f"{label}：视频已损坏或不完整，无法打开",
            )
        ) from err
    if has_video:
        return Sniffed("video", fmt)
    if has_audio:
        raise MediaError(
            say(
                f"{label}: has only audio; this app reads images and video",
                f"{label}：只有音频；本应用读取的是图片和视频",
            )
        )
    raise MediaError(
        say(
            f"{label}: has no video track (only subtitles or data)",
            f"{label}：没有视频轨道（只有字幕或数据）",
        )
    )


def sniff(path: str | Path, name: str | None = None) -> Sniffed:
    """What a file is, by its content; raises MediaError for anything the app does not take."""
    label = name or Path(path).name
    p = Path(path)
    if not p.is_file():
        raise MediaError(missing(label))
    if p.stat().st_size == 0:
        raise MediaError(
            say(f"{label}: the file is empty (0 bytes)", f"{label}：文件是空的（0 字节）")
        )
    with p.open("rb") as fh:
        head = fh.read(1024)
    if head.startswith(b"%PDF-"):
        return Sniffed("pdf", "pdf")
    return _image_kind(p, head, label) or _video_kind(p, head, label)
