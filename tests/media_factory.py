"""Media the tests make themselves: images drawn with Pillow, videos encoded with PyAV."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw


def make_image(path: Path, size=(640, 480), color="red", mode="RGB", fmt=None, **save) -> Path:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle((10, 10, size[0] // 2, size[1] // 2), fill="blue")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **save)
    return path


def make_video(
    path: Path,
    seconds: float = 2.0,
    fps: int = 10,
    size=(160, 120),
    codec: str = "libx264",
    audio: bool = False,
    rotate: int | None = None,
    vfr_times: list[float] | None = None,
    fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """An H.264 (or other) clip whose frame i shows gray level 8*i (mod 256) for timing checks.

    `vfr_times` gives each frame's timestamp in seconds (a variable frame rate).
    """
    width, height = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.time_base = Fraction(1, 1000)
        if rotate is not None:
            stream.set_display_rotation(rotate)  # counter-clockwise, as phones record it
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        times = vfr_times or [i / fps for i in range(round(seconds * fps))]
        for i, t in enumerate(times):
            pixels = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            pixels[: height // 4, : width // 4] = (255, 0, 0)  # a red corner shows orientation
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _encode_tone(container, audio_stream, seconds)
    return path


def _encode_tone(container, stream, seconds: float) -> None:
    samples = int(16000 * seconds)
    tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)
    step = 1024
    for start in range(0, samples, step):
        chunk = tone[start : start + step]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = 16000
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        _encode_tone(container, stream, seconds)
    return path


def make_gif(path: Path, frames: int = 6, size=(80, 60), duration_ms: int = 100) -> Path:
    images = [Image.new("RGB", size, (40 * i % 256, 0, 0)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def make_pdf(path: Path, pages: int = 3) -> Path:
    images = [Image.new("RGB", (595, 842), "white") for _ in range(pages)]
    for i, image in enumerate(images):
        ImageDraw.Draw(image).text((50, 50), f"Page {i + 1}", fill="black")
    images[0].save(path, save_all=True, append_images=images[1:], format="PDF")
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_bomb_png(path: Path, side: int = 30000) -> Path:
    """A small PNG whose header declares side x side pixels (its data is not real)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (side * 3)
    data = zlib.compress(row * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def make_tall_gif(path: Path, width: int = 1, height: int = 65535, frames: int = 2) -> Path:
    """A tiny animated GIF (under 100 bytes) whose screen is `width` x `height`."""
    import struct

    data = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    for _ in range(frames):
        data += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 0.1 s a frame
        data += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(data + b"\x3b")
    return path


def make_png_metadata_bomb(path: Path, chunk: bytes = b"zTXt", megabytes: int = 100) -> Path:
    """A small PNG carrying a compressed text (zTXt) or colour-profile (iCCP) block that
    inflates to `megabytes` MB, before its pixels."""
    import struct
    import zlib

    def block(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    bomb = zlib.compress(b"\x00" * (megabytes << 20), 9)
    body = (b"Comment" if chunk == b"zTXt" else b"profile") + b"\x00\x00" + bomb
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + b"\x00" * 24) * 8)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + block(b"IHDR", header)
        + block(chunk, body)
        + block(b"IDAT", pixels)
        + block(b"IEND", b"")
    )
    return path


def make_tiff_with_a_huge_page(path: Path, side: int = 12000) -> Path:
    """A small two-page TIFF: a 64x64 first page, then a `side` x `side` one (compressed)."""
    first = Image.new("RGB", (64, 64), "red")
    huge = Image.new("1", (side, side), 1)
    first.save(path, save_all=True, append_images=[huge], compression="tiff_deflate")
    return path


def make_subtitle_only_mkv(path: Path) -> Path:
    """A Matroska file holding one subtitle track and nothing else."""
    srt = path.with_suffix(".srt")
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with av.open(str(srt)) as source, av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream_from_template(source.streams[0])
        for packet in source.demux(source.streams[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    srt.unlink()
    return path


def make_playlist(path: Path, entries: list[str]) -> Path:
    """An HLS playlist whose segments are `entries` (paths or URLs)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10", "#EXT-X-MEDIA-SEQUENCE:0"]
    for entry in entries:
        lines += ["#EXTINF:3.0,", entry]
    path.write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))
    return path


def make_external_reference_mp4(path: Path, source: Path, target: str) -> Path:
    """`source` (an MP4 from make_video) whose track's samples are said to live in `target`,
    named by an absolute path in a QuickTime alias; its own media data zeroed. A demuxer that
    follows the alias reads `target` at the sample offsets of `source`."""

    def alias(name: str) -> bytes:
        where = name.encode() + (b"\x00" if len(name.encode()) % 2 else b"")
        # Volume, file name, levels: 150 bytes FFmpeg skips or reads; then type 2, the path.
        body = bytes(150) + struct.pack(">hH", 2, len(where)) + where + struct.pack(">hH", -1, 0)
        return struct.pack(">I", 12 + len(body)) + b"alis" + bytes(4) + body

    def rewrite(data: bytes) -> bytes:
        out, at = [], 0
        while at < len(data):
            size, kind = struct.unpack_from(">I4s", data, at)
            body = data[at + 8 : at + size]
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"dinf"):
                body = rewrite(body)
            elif kind == b"dref":
                body = bytes(4) + struct.pack(">I", 1) + alias(target)
            elif kind == b"mdat":
                body = bytes(len(body))  # the movie box comes after it: offsets unchanged
            out.append(struct.pack(">I", 8 + len(body)) + kind + body)
            at += size
        return b"".join(out)

    path.write_bytes(rewrite(source.read_bytes()))
    return path


def make_pdf_page(path: Path, size=(10, 2000)) -> Path:
    """A one-page PDF whose page is `size` points."""
    Image.new("RGB", size, "white").save(path, format="PDF", resolution=72.0)
    return path


# --- shapes whose decoding costs far more than their pixels say (hostile input, round three) --


def make_many_scan_jpeg(path: Path, repeats: int = 2400, size=(256, 256)) -> Path:
    """A progressive JPEG whose last scan is repeated `repeats` times: each is a pass over the
    picture for the decoder."""
    import io

    buffer = io.BytesIO()
    image = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 8, h // 8, w * 7 // 8, h * 7 // 8), fill="green")
    image.save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    path.write_bytes(data[:end] + data[last_scan:end] * repeats + data[end:])
    return path


def make_nested_form_pdf(path: Path, depth: int = 24, fanout: int = 2) -> Path:
    """A one-page PDF of form XObjects each drawing the next `fanout` times, `depth` deep: a few
    KB that ask for fanout**depth drawings."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R "
        b"/Resources << /XObject << /F 5 0 R >> >> >>",
    ]
    page = b"/F Do"
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(page), page))
    for level in range(depth):
        number = 5 + level
        last = level == depth - 1
        body = b"0 0 1 1 re f" if last else b" ".join([b"q 0.9 0 0 0.9 1 1 cm /F Do Q"] * fanout)
        resources = b"" if last else b"/Resources << /XObject << /F %d 0 R >> >> " % (number + 1)
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] %s/Length %d >>\n"
            b"stream\n%s\nendstream" % (resources, len(body), body)
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))
    return path


def _png_with_size(width: int, height: int) -> bytes:
    """A small real PNG whose header then declares `width` x `height` (its CRC made right)."""
    import io
    import zlib

    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), "red").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def make_icon_with_big_png(path: Path, side: int = 13370) -> Path:
    """An ICO whose one entry (256x256 in the directory) holds a PNG declaring side x side."""
    png = _png_with_size(side, side)
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    path.write_bytes(header + entry + png)
    return path


def make_growing_mjpeg_mkv(path: Path, frames: int = 12, side: int = 16000) -> Path:
    """A Motion-JPEG MKV of 64x64 frames whose frames after the first declare side x side."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        for i in range(frames):
            pixels = np.full((64, 64, 3), (20 * i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 9) if data[i : i + 2] == b"\xff\xc0"]
    for at in starts[1:]:  # every frame's start-of-frame header but the first
        data[at + 5 : at + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def make_mp4_declaring_samples(path: Path, samples: int = 80_000_000) -> Path:
    """A short real MP4 whose sample-size table then declares `samples` samples."""
    make_video(path, seconds=1, fps=8, size=(64, 48))
    data = bytearray(path.read_bytes())
    at = data.index(b"stsz")
    # After the type: version and flags (4 bytes), the one size of all samples (4), the count.
    data[at + 12 : at + 16] = struct.pack(">I", samples)
    path.write_bytes(bytes(data))
    return path
