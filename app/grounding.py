"""Boxes and points in a reply: parsed safely, mapped to image pixels per family, drawn.

Qwen replies ground objects in three forms:
- JSON (Qwen2.5-VL, Qwen3-VL, Qwen3.5): objects with "bbox_2d": [x1, y1, x2, y2] or
  "point_2d": [x, y] and a "label", in a ```json fence or not, often cut off mid-list;
- Qwen2-VL's tokens:
  <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>;
- the older tags: <ref>label</ref><box>(x1,y1),(x2,y2)</box>.
Parsing uses json and regular expressions only (never eval) and skips anything it cannot read.

Coordinates by family: Qwen2.5-VL gives absolute pixels of the resized model input; Qwen2-VL,
Qwen3-VL and Qwen3.5 give values relative to 0-1000.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

if TYPE_CHECKING:
    from PIL import Image

ABSOLUTE_FAMILIES = frozenset({"qwen2_5_vl"})
# Qwen's resize rule: sides in multiples of patch x merge (14 x 2 for Qwen2/2.5-VL, 16 x 2 for
# Qwen3-VL and Qwen3.5), within the processors' default pixel bounds.
_RESIZE_FACTOR = {"qwen2_vl": 28, "qwen2_5_vl": 28}
_MIN_PIXELS, _MAX_PIXELS = 56 * 56, 28 * 28 * 16384
_NUMBER = r"-?\d+(?:\.\d+)?"
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}|\{[^{}]*$")
_KEY_LIST = re.compile(r'"(bbox_2d|point_2d)"\s*:\s*\[([^\]]*)\]?')
_LABEL = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')
_TAGGED = re.compile(
    r"(?:<\|object_ref_start\|>|<ref>)(?P<label>.*?)(?:<\|object_ref_end\|>|</ref>)\s*"
    r"(?:<\|box_start\|>|<box>)\s*\(\s*(?P<x1>{n})\s*,\s*(?P<y1>{n})\s*\)\s*,\s*"
    r"\(\s*(?P<x2>{n})\s*,\s*(?P<y2>{n})\s*\)".replace("{n}", _NUMBER)
)
_UNLABELLED_TAG = re.compile(
    r"(?:<\|box_start\|>|<box>)\s*\(\s*(?P<x1>{n})\s*,\s*(?P<y1>{n})\s*\)\s*,\s*"
    r"\(\s*(?P<x2>{n})\s*,\s*(?P<y2>{n})\s*\)".replace("{n}", _NUMBER)
)
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


@dataclass(frozen=True)
class Mark:
    """A box (4 coordinates) or a point (2), in the model's own coordinate system."""

    coords: tuple[float, ...]
    label: str = ""

    @property
    def is_box(self) -> bool:
        return len(self.coords) == 4


def _numbers(raw: str) -> list[float]:
    return [float(n) for n in re.findall(_NUMBER, raw)]


def _from_object(text: str) -> Mark | None:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key, size in (("bbox_2d", 4), ("point_2d", 2)):
            coords = value.get(key)
            if isinstance(coords, list) and len(coords) == size:
                try:
                    values = tuple(float(c) for c in coords)
                except (TypeError, ValueError):
                    return None
                return Mark(values, str(value.get("label", "") or ""))
        return None
    # Not valid JSON (cut off, or a stray character): read the fields one by one.
    found = _KEY_LIST.search(text)
    if not found:
        return None
    numbers = _numbers(found.group(2))
    size = 4 if found.group(1) == "bbox_2d" else 2
    if len(numbers) != size or not found.group(0).endswith("]"):
        return None
    label = _LABEL.search(text)
    return Mark(tuple(numbers), label.group(1) if label else "")


def _finite(mark: Mark | None) -> TypeGuard[Mark]:
    return mark is not None and all(math.isfinite(c) for c in mark.coords)


def parse_marks(text: str) -> list[Mark]:
    """Every box and point in a reply, in order; unreadable pieces are skipped."""
    marks: list[Mark] = []
    for match in _TAGGED.finditer(text):
        coords = tuple(float(match.group(k)) for k in ("x1", "y1", "x2", "y2"))
        marks.append(Mark(coords, match.group("label").strip()))
    if not marks:
        for match in _UNLABELLED_TAG.finditer(text):
            marks.append(Mark(tuple(float(match.group(k)) for k in ("x1", "y1", "x2", "y2"))))
    if "bbox_2d" in text or "point_2d" in text:
        for match in _FLAT_OBJECT.finditer(text):
            mark = _from_object(match.group(0))
            if _finite(mark):
                marks.append(mark)
    return marks


def model_input_size(
    family: str,
    size: tuple[int, int],
    min_pixels: int = _MIN_PIXELS,
    max_pixels: int = _MAX_PIXELS,
) -> tuple[int, int]:
    """The (width, height) Qwen's resize rule makes of an image of `size` (sides in multiples
    of the family's block, within the pixel bounds; the processors' default bounds unless
    given): what Qwen2.5-VL's absolute coordinates refer to. transformers, vLLM, SGLang and
    llama.cpp's mtmd all apply this rule; an image already of such a size is left as it is."""
    factor = _RESIZE_FACTOR.get(family, 32)
    width, height = size
    w, h = (max(factor, round(side / factor) * factor) for side in (width, height))
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w, h = (max(factor, math.floor(side / beta / factor) * factor) for side in (width, height))
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w, h = (math.ceil(side * beta / factor) * factor for side in (width, height))
    return w, h


def to_pixels(
    mark: Mark, family: str, image_size: tuple[int, int], input_size: tuple[int, int] | None
) -> tuple[float, ...]:
    """The mark's coordinates in pixels of the image as shown (width, height = image_size)."""
    width, height = image_size
    if family in ABSOLUTE_FAMILIES:
        in_w, in_h = input_size or image_size
        sx, sy = width / in_w, height / in_h
    else:
        sx, sy = width / 1000, height / 1000
    out = []
    for i, value in enumerate(mark.coords):
        scale, limit = (sx, width) if i % 2 == 0 else (sy, height)
        out.append(min(max(value * scale, 0.0), float(limit)))
    if mark.is_box:  # a box given corner-swapped is still the same box
        x1, y1, x2, y2 = out
        out = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    return tuple(out)


def draw_marks(
    image: Image.Image,
    marks: list[Mark],
    family: str,
    input_size: tuple[int, int] | None = None,
) -> Image.Image:
    """A copy of `image` with each box outlined and each point dotted, labelled in colour."""
    from PIL import ImageDraw, ImageFont

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(canvas.size) / 40)))
    for index, mark in enumerate(marks):
        colour = PALETTE[index % len(PALETTE)]
        coords = to_pixels(mark, family, canvas.size, input_size)
        if mark.is_box:
            draw.rectangle(coords, outline=colour, width=line)
            anchor = (coords[0], coords[1])
        else:
            x, y = coords
            r = line * 3
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline="white", width=1)
            anchor = (x + r, y - r)
        if mark.label:
            left, top, right, bottom = draw.textbbox(anchor, mark.label, font=font)
            top_shift = bottom - top + 4
            box = (left, top - top_shift, right + 4, bottom - top_shift + 2)
            if box[1] < 0:  # no room above: label inside the box
                box = (left, top, right + 4, bottom + 2)
            draw.rectangle(box, fill=colour)
            draw.text((box[0] + 2, box[1]), mark.label, fill="white", font=font)
    return canvas
