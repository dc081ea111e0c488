"""Fuzzing the media layer: valid images, videos and PDFs, mutated, read as attachments.

Every outcome must be visuals or a `MediaError` naming the file: never another exception, a
hang, or memory beyond a bound. Files are read as the app reads them, in a decoding worker
(app/media/worker.py) under a memory ceiling: read in this process, a mutated PDF of nested
forms made pdfium take all 24 GB here (an out-of-memory kill, or an abort under a ulimit); in a
worker it ends in a message naming the file, as it does in the app. CI runs a fixed, bounded set of
examples (derandomized, so a run is repeatable); `FUZZ_EXAMPLES=5000 FUZZ_RANDOM=1 pytest
tests/hostile/test_fuzz_media.py` runs a longer random one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.media import Budget, MediaError, read_attachment
from app.media.worker import DecodePool
from tests import media_factory as mf

# Pillow warns about the broken metadata it reads past: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
BUDGET = Budget(max_pixels=128 * 128, min_pixels=32 * 32, video_max_pixels=64 * 64)
# Slower than this for one file is a hang (the largest seed reads in well under a second).
HANG_S = 20.0
MEMORY_BOUND = 600 << 20  # of this process
WORKER_MEMORY = 3 << 30  # each worker's address space
EXTREMES = (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00")


def _seeds(folder: Path) -> dict[str, bytes]:
    from PIL import Image

    made = {
        "photo.jpg": mf.make_image(folder / "photo.jpg", size=(96, 64)),
        "shot.png": mf.make_image(folder / "shot.png", size=(64, 48), fmt="PNG"),
        "anim.gif": mf.make_gif(folder / "anim.gif", frames=4, size=(40, 30)),
        "clip.mp4": mf.make_video(folder / "clip.mp4", seconds=1, fps=8, size=(64, 48)),
        "clip.mkv": mf.make_video(folder / "clip.mkv", seconds=1, fps=8, size=(64, 48)),
        "doc.pdf": mf.make_pdf(folder / "doc.pdf", pages=2),
        # The shapes of round three, small: their counts and sizes are what mutations hit.
        "scans.jpg": mf.make_many_scan_jpeg(folder / "scans.jpg", repeats=3, size=(48, 32)),
        "forms.pdf": mf.make_nested_form_pdf(folder / "forms.pdf", depth=4),
        "icon.ico": mf.make_icon_with_big_png(folder / "icon.ico", side=16),
        "mjpeg.mkv": mf.make_growing_mjpeg_mkv(folder / "mjpeg.mkv", frames=3, side=96),
    }
    frames = [Image.new("RGB", (32, 24), (60 * i, 0, 0)) for i in range(3)]
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    made["anim.webp"], made["pages.tif"] = folder / "anim.webp", folder / "pages.tif"
    return {name: path.read_bytes() for name, path in made.items()}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    return _seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """A seed file with bytes flipped, runs overwritten, a cut, or a chunk repeated."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "repeat", "extreme"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(run)] = run
        elif kind == "cut":
            del data[at:]
        elif kind == "repeat":
            chunk = data[at : at + draw(st.integers(1, 64))]
            data[at:at] = chunk * draw(st.integers(1, 8))
        else:  # an extreme value where sizes, counts and lengths often are
            data[at : at + 4] = draw(st.sampled_from(EXTREMES))
    return name, bytes(data)


@pytest.fixture(scope="module")
def pool():
    decoder = DecodePool(workers=1, timeout_s=HANG_S, memory_bytes=WORKER_MEMORY)
    yield decoder
    decoder.close()


def test_mutated_media_gives_visuals_or_a_media_error(seeds, tmp_path, pool):
    outcomes = {"read": 0, "refused": 0}
    slowest = 0.0
    start_rss = _rss()
    peak = start_rss

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # a hang is timed below; the machine's load must not fail the run
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def read_one(data):
        nonlocal slowest, peak
        name, content = data.draw(mutated(seeds))
        path = tmp_path / name
        path.write_bytes(content)
        started = time.perf_counter()
        try:
            visuals = read_attachment(
                path, BUDGET, name=name, decode=pool.for_request(None)
            ).visuals
            assert visuals, "read, yet nothing to show"
            outcomes["read"] += 1
        except MediaError as err:
            assert str(err).startswith(f"{name}: "), err  # the message names the file
            outcomes["refused"] += 1
        elapsed = time.perf_counter() - started
        slowest = max(slowest, elapsed)
        assert elapsed < HANG_S, f"{name} took {elapsed:.1f} s"
        peak = max(peak, _rss())

    read_one()
    print(
        f"fuzzed {sum(outcomes.values())} inputs: {outcomes['read']} read, "
        f"{outcomes['refused']} refused; slowest {slowest:.2f} s; "
        f"memory +{(peak - start_rss) >> 20} MB; workers ended {pool.ended}"
    )
    assert outcomes["read"] and outcomes["refused"]  # the fuzzer reached both outcomes
    assert peak - start_rss < MEMORY_BOUND
