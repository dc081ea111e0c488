"""Make the example media shown under the chat: a chart, a receipt and a short clip.

Run `python assets/make_examples.py` to draw them again; the files are committed so that the app
needs nothing at start-up. Everything is drawn here (Pillow, PyAV), nothing is downloaded.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent / "examples"


def chart(path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (640, 420), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    draw.text((180, 12), "Quarterly sales (thousand units)", fill="black", font=font)
    draw.line((60, 360, 610, 360), fill="black", width=2)
    draw.line((60, 60, 60, 360), fill="black", width=2)
    values = {"Q1": 120, "Q2": 180, "Q3": 150, "Q4": 240}
    colours = ["#4363d8", "#3cb44b", "#f58231", "#e6194b"]
    for i, ((quarter, value), colour) in enumerate(zip(values.items(), colours, strict=True)):
        left = 100 + i * 125
        top = 360 - value
        draw.rectangle((left, top, left + 70, 360), fill=colour)
        draw.text((left + 20, 368), quarter, fill="black", font=small)
        draw.text((left + 18, top - 20), str(value), fill="black", font=small)
    for tick in range(0, 301, 100):
        draw.text((22, 352 - tick), str(tick), fill="gray", font=small)
    image.save(path)


def receipt(path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    lines = [
        ("CORNER CAFE", ""),
        ("12 Market Street", ""),
        ("", ""),
        ("Cappuccino", "3.80"),
        ("Croissant", "2.60"),
        ("Orange juice", "4.10"),
        ("Bagel with cream cheese", "3.90"),
        ("", ""),
        ("Subtotal", "14.40"),
        ("Tax 8%", "1.15"),
        ("TOTAL", "15.55"),
        ("", ""),
        ("Paid by card  2026-11-29 09:41", ""),
        ("Thank you!", ""),
    ]
    image = Image.new("RGB", (420, 560), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=20)
    y = 30
    for left, right in lines:
        draw.text((30, y), left, fill="black", font=font)
        if right:
            draw.text((320, y), right, fill="black", font=font)
        y += 36
    image.save(path)


def clip(path: Path) -> None:
    """Three seconds of a red ball crossing a blue field, H.264 at 10 fps."""
    import av
    import numpy as np

    width, height, fps = 320, 180, 10
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(3 * fps):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[...] = (30, 60, 160)
            cx, cy = 20 + i * 9, 90
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 15**2] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    HERE.mkdir(exist_ok=True)
    chart(HERE / "chart.png")
    receipt(HERE / "receipt.png")
    clip(HERE / "ball.mp4")


if __name__ == "__main__":
    main()
