"""Pictures drawn on the spot, and the questions about them that the seeing model answers.

The seeing model (scripts/train_seeing.py) is trained on these and nothing else; the tests draw
fresh ones to check its answers, and the trial shows some as examples. Each task is answered in
a word or two, and each is one that a broken pipeline gets wrong: a colour (red and blue swapped,
a wrong normalisation), a shape, a count, a corner (an image turned or laid out wrongly), the
second of two pictures (images swapped), the digit on a PDF's second page (pages shuffled), the
colour a clip starts or ends with (frames out of order).

Everything here is plain Pillow and PyAV; `random.Random(seed)` makes each set the same again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from app.engines.base import Attachment, Turn

SIZE = 128  # pixels a side of every picture
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 225),
    "yellow": (235, 205, 25),
    "purple": (140, 50, 180),
    "orange": (245, 135, 20),
}
SHAPES = ("circle", "square", "triangle")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
CLIP_FPS = 4
CLIP_FRAMES = 8  # 2 s: the first half one colour, the second another


@dataclass(frozen=True)
class Question:
    """A question about files to be attached (drawn by `make` into a folder), and its answer;
    where `earlier` holds (question, answer) turns, the files come with the first of them and
    this question follows them, about the same files."""

    task: str
    text: str
    answer: str
    make: Callable[[Path], list[Path]]
    earlier: tuple[tuple[str, str], ...] = ()

    def turns(self, files: list[Path]) -> tuple[Turn, ...]:
        """The chat's turns that ask this question about `files` (made by `make`)."""
        attachments = tuple(Attachment(str(f), f.name) for f in files)
        turns: list[Turn] = []
        for text, answer in self.earlier:
            turns += [Turn("user", text, () if turns else attachments), Turn("assistant", answer)]
        return (*turns, Turn("user", self.text, () if turns else attachments))


def _background(rng: random.Random) -> Image.Image:
    shade = rng.randint(235, 255)
    return Image.new("RGB", (SIZE, SIZE), (shade, shade, shade))


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    colour: tuple[int, int, int],
    box: tuple[int, int, int, int],
) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=colour)


def shape_picture(
    rng: random.Random, colour: str, shape: str, corner: str | None = None
) -> Image.Image:
    """One shape of `colour` on a light ground: in `corner`'s quarter, else anywhere."""
    image = _background(rng)
    size = rng.randint(30, 52) if corner else rng.randint(36, 80)
    if corner:
        half = SIZE // 2
        x0 = (half if "right" in corner else 0) + rng.randint(4, half - size - 4)
        y0 = (half if "bottom" in corner else 0) + rng.randint(4, half - size - 4)
    else:
        x0, y0 = rng.randint(4, SIZE - size - 4), rng.randint(4, SIZE - size - 4)
    _draw_shape(ImageDraw.Draw(image), shape, COLOURS[colour], (x0, y0, x0 + size, y0 + size))
    return image


def dots_picture(rng: random.Random, count: int) -> Image.Image:
    """`count` black dots that do not touch."""
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[int, int]] = []
    while len(placed) < count:
        x, y = rng.randint(14, SIZE - 14), rng.randint(14, SIZE - 14)
        if all((x - a) ** 2 + (y - b) ** 2 > 30**2 for a, b in placed):
            placed.append((x, y))
            draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=(20, 20, 20))
    return image


def digit_picture(rng: random.Random, digit: int) -> Image.Image:
    """A page with one large digit."""
    image = _background(rng)
    font = ImageFont.load_default(size=rng.randint(70, 90))
    x, y = rng.randint(30, 50), rng.randint(10, 25)
    ImageDraw.Draw(image).text((x, y), str(digit), fill=(15, 15, 15), font=font)
    return image


def save_png(image: Image.Image, path: Path) -> Path:
    image.save(path, format="PNG")
    return path


def save_pdf(pages: list[Image.Image], path: Path) -> Path:
    """A PDF of `pages`, each a third of an inch wide: the app renders a page at most 4x (its
    points as pixels), so each reaches the model as a SIZE-pixel picture whatever the budget."""
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72.0 * 4)
    return path


def save_clip(frames: list[Image.Image], path: Path, fps: int = CLIP_FPS) -> Path:
    """An MP4 (H.264) of `frames`, as a phone or a screen recorder would write one."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- the tasks: each draws its picture(s) and asks about them --------------------------------


def colour_question(rng: random.Random) -> Question:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    image = shape_picture(rng, colour, shape)
    return Question(
        "colour", "What colour is the shape?", colour, lambda d: [save_png(image, d / "a.png")]
    )


def shape_question(rng: random.Random) -> Question:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    image = shape_picture(rng, colour, shape)
    return Question("shape", "What shape is it?", shape, lambda d: [save_png(image, d / "a.png")])


def count_question(rng: random.Random) -> Question:
    count = rng.randint(1, 5)
    image = dots_picture(rng, count)
    return Question(
        "count", "How many dots are there?", str(count), lambda d: [save_png(image, d / "a.png")]
    )


def corner_question(rng: random.Random) -> Question:
    corner = rng.choice(CORNERS)
    image = shape_picture(rng, rng.choice(list(COLOURS)), rng.choice(SHAPES), corner)
    return Question(
        "corner", "Where is the shape?", corner, lambda d: [save_png(image, d / "a.png")]
    )


def second_question(rng: random.Random) -> Question:
    first, second = rng.sample(list(COLOURS), 2)
    images = [shape_picture(rng, c, rng.choice(SHAPES)) for c in (first, second)]
    return Question(
        "second",
        "What colour is the shape in the second picture?",
        second,
        lambda d: [save_png(images[0], d / "a.png"), save_png(images[1], d / "b.png")],
    )


def page_question(rng: random.Random) -> Question:
    first, second = rng.sample(range(10), 2)
    pages = [digit_picture(rng, first), digit_picture(rng, second)]
    return Question(
        "page", "What digit is on page 2?", str(second), lambda d: [save_pdf(pages, d / "a.pdf")]
    )


def _clip_question(rng: random.Random, which: str) -> Question:
    start, end = rng.sample(list(COLOURS), 2)
    shape = rng.choice(SHAPES)
    half = CLIP_FRAMES // 2
    frames = [shape_picture(rng, start, shape) for _ in range(half)]
    frames += [shape_picture(rng, end, shape) for _ in range(CLIP_FRAMES - half)]
    return Question(
        f"clip {which}",
        f"What colour is the shape {'at the start' if which == 'first' else 'at the end'}?",
        start if which == "first" else end,
        lambda d: [save_clip(frames, d / "a.mp4")],
    )


def clip_first_question(rng: random.Random) -> Question:
    return _clip_question(rng, "first")


def clip_last_question(rng: random.Random) -> Question:
    return _clip_question(rng, "last")


# What each question of a one-shape picture asks.
ABOUT_A_SHAPE = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "corner": "Where is the shape?",
}


def follow_up_question(rng: random.Random) -> Question:
    """Two questions about one picture: the second a follow-up, the picture not sent again."""
    facts = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES)}
    facts["corner"] = rng.choice(CORNERS)
    image = shape_picture(rng, facts["colour"], facts["shape"], facts["corner"])
    first, then = rng.sample(list(ABOUT_A_SHAPE), 2)
    return Question(
        "follow-up",
        ABOUT_A_SHAPE[then],
        facts[then],
        lambda d: [save_png(image, d / "a.png")],
        earlier=((ABOUT_A_SHAPE[first], facts[first]),),
    )


TASKS: dict[str, Callable[[random.Random], Question]] = {
    "colour": colour_question,
    "shape": shape_question,
    "count": count_question,
    "corner": corner_question,
    "second": second_question,
    "page": page_question,
    "clip first": clip_first_question,
    "clip last": clip_last_question,
    "follow-up": follow_up_question,
}


def questions(task: str, count: int, seed: int) -> list[Question]:
    """`count` questions of `task`, the same for the same seed."""
    rng = random.Random(f"{task}:{seed}")
    return [TASKS[task](rng) for _ in range(count)]


# The trial's examples: (question, what to draw), drawn afresh into a folder at each start.
TRIAL_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("colour", "What colour is the shape?"),
    ("count", "How many dots are there?"),
    ("corner", "Where is the shape?"),
    ("clip last", "What colour is the shape at the end?"),
    ("page", "What digit is on page 2?"),
    ("shape", "What shape is it?"),
)


def draw_examples(folder: Path, seed: int = 7) -> list[tuple[str, Path]]:
    """The trial's example questions, each with its one file drawn into `folder`."""
    made = []
    for task, text in TRIAL_EXAMPLES:
        question = questions(task, 1, seed)[0]
        where = folder / task.replace(" ", "-")
        where.mkdir(parents=True, exist_ok=True)
        [path] = question.make(where)
        made.append((text, path))
    return made
