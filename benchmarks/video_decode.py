"""Video decoding and sampling against one bare threaded PyAV decode pass, in the same run.

A 60 s 1280x720 30 fps H.264 clip (made here with PyAV) is decoded:
- baseline: one bare threaded PyAV pass over every frame (`thread_type = "AUTO"`), nothing kept;
- app: `app.media.open_video` sampling at 2 fps within the default budgets.
Each runs in its own fresh process, so peak RSS growth is measured cleanly. Targets: time at most
1.25x the baseline; RSS growth at most the sampled frames' size plus 200 MB.

    python -m benchmarks.video_decode [--seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

MEASURE = r"""
import json, sys, threading, time
import av, psutil
from app.media import Budget, open_video
path, mode = sys.argv[1], sys.argv[2]
process = psutil.Process()
rss0 = process.memory_info().rss
peak = [rss0]
done = threading.Event()
def sample():  # the peak resident set, sampled every 10 ms while decoding
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.01)
sampler = threading.Thread(target=sample)
sampler.start()
started = time.perf_counter()
sampled_bytes = 0
if mode == "bare":
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            pass
else:
    clip = open_video(path, Budget())
    sampled_bytes = clip.frames.nbytes
elapsed = time.perf_counter() - started
done.set()
sampler.join()
print(json.dumps({"s": elapsed, "rss_growth": peak[0] - rss0, "sampled": sampled_bytes}))
"""


def make_clip(path: Path, seconds: int) -> None:
    """An H.264 720p30 clip with moving content (GOP 60), like a phone recording."""
    import av
    import numpy as np

    width, height, fps = 1280, 720, 30
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "g": "60"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        for i in range(seconds * fps):
            frame = np.roll(base, i * 4, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def measure(path: Path, mode: str) -> dict:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), mode],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(seconds: int = 60, repeat: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        started = time.perf_counter()
        make_clip(clip, seconds)
        made = time.perf_counter() - started
        print(f"made a {seconds} s 1280x720 30 fps H.264 clip in {made:.1f} s")
        bare = [measure(clip, "bare") for _ in range(repeat)]
        app = [measure(clip, "app") for _ in range(repeat)]
    bare_s = min(r["s"] for r in bare)
    app_s = min(r["s"] for r in app)
    growth = max(r["rss_growth"] for r in app)
    sampled = app[0]["sampled"]
    return {
        "bare_s": bare_s,
        "app_s": app_s,
        "time_ratio": app_s / bare_s,
        "rss_growth_mb": growth / 1e6,
        "sampled_mb": sampled / 1e6,
        "rss_over_allowance": growth / (sampled + 200e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = run(args.seconds, args.repeat)
    print(f"bare threaded PyAV pass : {r['bare_s']:.2f} s (best of {args.repeat})")
    print(f"app decode + 2 fps      : {r['app_s']:.2f} s")
    print(f"time ratio              : {r['time_ratio']:.2f}x  (target <= 1.25)")
    print(
        f"peak RSS growth         : {r['rss_growth_mb']:.0f} MB for {r['sampled_mb']:.0f} MB of "
        f"sampled frames; ratio to allowance (frames + 200 MB) {r['rss_over_allowance']:.2f} "
        "(target <= 1.00)"
    )


if __name__ == "__main__":
    main()
