"""Budgets and limits: how many pixels and frames reach the model, and what is refused unread.

Every path into pixels (a photo, each page of a TIFF or PDF, each frame of an animation or a
video) goes through `check_size` before anything is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from app.said import chinese, say

# A file whose header declares more pixels than this is refused before it is decoded.
BOMB_PIXELS = 128_000_000
# Smallest side fed to the processor: Qwen's resize rule needs at least one 32-pixel merge block.
MIN_SIDE = 32
# Longest side over shortest side; Qwen's processors refuse more than 200.
MAX_ASPECT = 150


class MediaError(ValueError):
    """A file that cannot be used; the message names the file and says why."""


# The image budget on a CPU, chosen by measurement (docs/benchmarks.md, "A CPU that answers"): with
# the Qwen3-VL-2B shapes (all 28 layers, fp32) on 2 cores, a 1 MP photo's first token comes after 29
# s at this budget (391 visual tokens); 41 s at 0.5 MP, 83 s at the GPU default's 1 MP.
CPU_MAX_PIXELS = 512 * 28 * 28


@dataclass(frozen=True)
class Knob:
    """How one budget field is set from outside: its flag's help (the flag, `--video-fps`, and
    the environment variable, `QWEN_DEMO_VIDEO_FPS`, are named after the field), the least value
    that works, and whether the settings panel offers it as a slider from `low` (a number, or
    the name of the budget field whose value it is) to `high` (or the launch value, if higher)."""

    help: str
    least: float = 1
    panel: bool = False
    low: float | str = 0
    high: float = 0
    step: float = 1


def _knob(default: Any, **knob: Any) -> Any:
    return field(default=default, metadata={"knob": Knob(**knob)})


@dataclass(frozen=True)
class Budget:
    """How many pixels and frames each file reaches the model with: declared once, here; the
    flags, environment variables, validation, settings panel and `/chat` parameters derive
    from these fields (app/settings.py, app/ui/panel.py)."""

    min_pixels: int = _knob(28 * 28 * 4, help="smallest image size in pixels fed to the model")
    max_pixels: int = _knob(
        1280 * 28 * 28,
        help=f"largest image size in pixels fed to the model ({CPU_MAX_PIXELS} on a CPU unless "
        "given, where a photo's first answer then comes in about 30 s)",
        panel=True,
        low="min_pixels",
        high=1280 * 28 * 28,
        step=28 * 28,
    )
    video_fps: float = _knob(
        2.0,
        help="frames sampled per second of video",
        least=0.01,
        panel=True,
        low=0.25,
        high=8.0,
        step=0.25,
    )
    video_min_frames: int = _knob(4, help="fewest frames sampled from a video")
    video_max_frames: int = _knob(
        64,
        help="most frames sampled from a video",
        panel=True,
        low="video_min_frames",
        high=256,
        step=2,
    )
    video_max_pixels: int = _knob(448 * 448, help="largest size of one video frame in pixels")
    video_total_pixels: int = _knob(64 * 448 * 448, help="pixel budget of all frames of a video")
    max_pdf_pages: int = _knob(8, help="PDF pages read (from the first)")

    def part(self, kind: str) -> str:
        """The fields a file of `kind` (a sniffed kind: image, pages, pdf, animation, video) is
        read with, as text: what its cache keys hold, so that changing the video rate leaves
        every image cached, and an image's pixels leave every video."""
        return ",".join(f"{name}={getattr(self, name)}" for name in FIELDS_READ[kind])

    def problems(self) -> list[str]:
        """What in this budget cannot work, in the flags' words (empty when all is well)."""
        found = [
            f"{flag_of(f.name)} must be at least {f.metadata['knob'].least:g}"
            for f in fields(self)
            if getattr(self, f.name) < f.metadata["knob"].least
        ]
        for low, high in (
            ("min_pixels", "max_pixels"),
            ("video_min_frames", "video_max_frames"),
            ("video_max_pixels", "video_total_pixels"),
        ):
            if getattr(self, high) < getattr(self, low):
                found.append(f"{flag_of(high)} must be at least {flag_of(low)}")
        return found


def knobs() -> dict[str, tuple[Knob, Any]]:
    """Every budget field's name -> (its knob, its default)."""
    return {f.name: (f.metadata["knob"], f.default) for f in fields(Budget)}


def flag_of(name: str) -> str:
    """The command-line flag of the setting `name` (`video_fps` -> `--video-fps`)."""
    return "--" + name.replace("_", "-")


# What each kind of file is read with. Stills (pages too) also by the processor, which resizes
# them within [min_pixels, max_pixels]; videos' frames are scaled into their own budget.
STILL_FIELDS = ("min_pixels", "max_pixels")
MOVING_FIELDS = (
    "video_fps",
    "video_min_frames",
    "video_max_frames",
    "video_max_pixels",
    "video_total_pixels",
)
FIELDS_READ = {
    "image": STILL_FIELDS,
    "pages": (*STILL_FIELDS, "max_pdf_pages"),
    "pdf": (*STILL_FIELDS, "max_pdf_pages"),
    "animation": MOVING_FIELDS,
    "video": MOVING_FIELDS,
}


def check_size(label: str, width: float, height: float, what: str = "") -> None:
    """Refuse a picture too large to decode or too long and thin to read, before decoding it.

    `what` says which part of the file it is ("page 3", "frame 12"), when it is not all of it.
    """
    where = f" ({what})" if what else ""
    where_zh = f"（{chinese(what)}）" if what else ""
    size = f"{width:.0f}x{height:.0f}"
    if width < 1 or height < 1:
        raise MediaError(
            say(
                f"{label}: declares a picture of {size} pixels{where}; nothing to read",
                f"{label}：声明的画面为 {size} 像素{where_zh}，没有可读的内容",
            )
        )
    if width * height > BOMB_PIXELS:
        most = BOMB_PIXELS // 1_000_000
        raise MediaError(
            say(
                f"{label}: declares {size} pixels{where}, more than this app decodes "
                f"({most} megapixels); refused before decoding",
                f"{label}：声明 {size} 像素{where_zh}，超过本应用能解码的上限（{most} 百万像素）；"
                "已在解码前拒绝",
            )
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise MediaError(
            say(
                f"{label}: {size}{where} is too long and thin to read (more than {MAX_ASPECT}:1)",
                f"{label}：{size}{where_zh} 太细长，无法读取（长宽比超过 {MAX_ASPECT}:1）",
            )
        )


def scaled_size(width: int, height: int, max_pixels: int, min_pixels: int = 0) -> tuple[int, int]:
    """(w, h) with the same aspect, within [min_pixels, max_pixels] and no side below MIN_SIDE."""
    pixels = width * height
    scale = 1.0
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
    elif min_pixels and pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
    rounding = math.floor if scale < 1 else round  # never a pixel over the budget
    w, h = max(1, rounding(width * scale)), max(1, rounding(height * scale))
    if min(w, h) < MIN_SIDE:
        grow = MIN_SIDE / min(w, h)
        w, h = round(w * grow), round(h * grow)
    return w, h


def frame_count(duration: float, budget: Budget) -> int:
    """How many frames to sample from `duration` seconds: the rate within the bounds, even."""
    wanted = round(duration * budget.video_fps)
    n = max(budget.video_min_frames, min(budget.video_max_frames, wanted))
    return n + (n % 2)  # the processors group frames in pairs


def frame_pixels(n_frames: int, budget: Budget) -> int:
    """Pixels of one sampled frame: the per-frame budget, or less where the total needs it."""
    return max(
        MIN_SIDE * MIN_SIDE, min(budget.video_max_pixels, budget.video_total_pixels // n_frames)
    )


def sample_times(duration: float, n: int) -> list[float]:
    """n sample times spread evenly over [0, duration), each at the middle of its slot."""
    step = duration / n
    return [step * (i + 0.5) for i in range(n)]
