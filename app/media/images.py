"""Photos, pages of a TIFF, and animated GIF/WebP/PNG: opened, checked, oriented, to RGB, scaled.

Sizes are checked from the headers before any pixel is decoded: the picture, every page read,
the animation's frames (and their total).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.media.limits import (
    Budget,
    MediaError,
    check_size,
    frame_count,
    frame_pixels,
    sample_times,
    scaled_size,
)
from app.media.sniff import IMAGE_FORMATS, PILLOW_ERRORS
from app.media.structure import check_jpeg_scans
from app.media.video import VideoClip
from app.media.words import damaged, page, too_many_pixels
from app.said import say

if TYPE_CHECKING:
    from PIL import Image

# Pixels decoded for all the frames of one animation, at most.
ANIMATION_PIXELS = 1_000_000_000


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB whatever the mode: alpha composited on white, 16-bit scaled, palette/CMYK converted."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 0
        arr = arr * (255.0 / top) if top > 255 else arr
        im = Image.fromarray(arr.clip(0, 255).astype("uint8"), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _decoded(im: Any, budget: Budget) -> Image.Image:
    """The current frame of an open image, decoded (shrunk while decoding where the format can),
    oriented by its EXIF, and in RGB."""
    from PIL import ImageOps

    # Let the decoder shrink a big JPEG while decoding: a 12 MP photo stays small.
    im.draft("RGB", scaled_size(im.width, im.height, budget.max_pixels * 4))
    im.load()
    return to_rgb(ImageOps.exif_transpose(im) or im)


def check_structure(path: str | Path, im: Any, label: str) -> None:
    """The work an open image's decoder would do, checked from the file's structure."""
    if im.format in ("JPEG", "MPO"):
        check_jpeg_scans(path, label)


def _fit(im: Image.Image, budget: Budget) -> Image.Image:
    from PIL import Image

    size = scaled_size(im.width, im.height, budget.max_pixels, budget.min_pixels)
    return im.resize(size, Image.Resampling.BICUBIC) if size != im.size else im


def open_image(path: str | Path, budget: Budget, name: str | None = None) -> Image.Image:
    """An RGB image, EXIF-oriented, scaled into the pixel budget; refuses bombs before decoding."""
    from PIL import Image

    label = name or Path(path).name
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            check_size(label, *im.size)
            check_structure(path, im, label)
            decoded = _decoded(im, budget)
    except MediaError:
        raise
    except Image.DecompressionBombError as err:
        raise MediaError(too_many_pixels(label)) from err
    except PILLOW_ERRORS as err:
        raise MediaError(damaged(label, "image", err)) from err
    return _fit(decoded, budget)


def open_pages(path: str | Path, budget: Budget, name: str | None = None) -> list[Image.Image]:
    """The first pages of a multi-page TIFF (as many as a PDF's), each checked, then decoded."""
    from PIL import Image

    label = name or Path(path).name
    pages = []
    try:
        with Image.open(path, formats=("TIFF",)) as im:
            count = min(getattr(im, "n_frames", 1), budget.max_pdf_pages)
            for index in range(count):  # every page read is checked before any is decoded
                im.seek(index)
                width, height = im.size
                check_size(label, width, height, what=page(index))
            for index in range(count):
                im.seek(index)
                pages.append(_fit(_decoded(im, budget), budget))
    except MediaError:
        raise
    except (*PILLOW_ERRORS, Image.DecompressionBombError) as err:
        raise MediaError(damaged(label, "document", err)) from err
    return pages


def _frame_starts(im: Any, label: str) -> list[float]:
    """When each frame of an animation starts, in seconds (from the frames' durations); each
    frame's size is checked before it is decoded (a GIF frame may be larger than its screen)."""
    starts, t = [], 0.0
    for index in range(getattr(im, "n_frames", 1)):
        # Durations are read after seeking and loading: WebP fills them in only then.
        im.seek(index)
        width, height = im.size
        check_size(label, width, height, what=say(f"frame {index + 1}", f"第 {index + 1} 帧"))
        im.load()
        starts.append(t)
        t += max(im.info.get("duration", 100) or 100, 10) / 1000
    return [*starts, t]


def open_animated_image(path: str | Path, budget: Budget, name: str | None = None) -> VideoClip:
    """An animated GIF, WebP or PNG as a short video, sampled by each frame's display time."""
    import numpy as np
    from PIL import Image

    label = name or Path(path).name
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            width, height = im.size
            count = getattr(im, "n_frames", 1)
            check_size(label, width, height, what=say("each frame", "每一帧"))
            if count * width * height > ANIMATION_PIXELS:
                raise MediaError(
                    say(
                        f"{label}: {count} frames of {width}x{height} are more than this app "
                        "decodes; refused before decoding",
                        f"{label}：{count} 帧 {width}x{height} 的画面超过本应用能解码的量；"
                        "已在解码前拒绝",
                    )
                )
            *starts, duration = _frame_starts(im, label)
            n = frame_count(duration, budget)
            size = scaled_size(width, height, frame_pixels(n, budget))
            frames, times = [], []
            for target in sample_times(duration, n):
                index = max(i for i, s in enumerate(starts) if s <= target)
                im.seek(index)
                frames.append(np.asarray(to_rgb(im.copy()).resize(size)))
                times.append(starts[index])
    except MediaError:
        raise
    except Image.DecompressionBombError as err:
        raise MediaError(
            say(
                f"{label}: a frame declares too many pixels; refused",
                f"{label}：有一帧声明的像素过多；已拒绝",
            )
        ) from err
    except PILLOW_ERRORS as err:
        raise MediaError(damaged(label, "animation", err)) from err
    rate = len(starts) / duration if duration else 10.0
    indices = tuple(min(len(starts) - 1, round(t * rate)) for t in times)
    return VideoClip(np.stack(frames), rate, len(starts), indices, tuple(times))
