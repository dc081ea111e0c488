"""Hostile input, through the launched app: each file and request is made by the test, refused
with one sentence naming the problem, and the next normal request is answered."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from app.media import MediaCache
from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests import media_factory as mf


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    """(url, engine) of an app on a tiny Qwen3-VL whose replies run long."""
    settings = load_settings(["--max-new-tokens", "2000"], environ={})
    engine = load_engine(
        str(tiny_checkpoint("qwen3_vl", suppress_eos=True)),
        media_cache=MediaCache(),
        max_new_tokens=2000,
    )
    with launched_app(settings, engine) as url:
        yield url, engine


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest resident memory of this process (the app runs in it) while in the block."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.growth = self.peak - self.before


def _ask(url: str, files: list[Path], **kwargs) -> str:
    message = {"text": "What is this?", "files": [handle_file(str(f)) for f in files]}
    return Client(url, verbose=False).predict(message, max_new_tokens=4, api_name="/chat", **kwargs)


def _answers_normally(url: str) -> None:
    assert isinstance(_ask(url, []), str)


HOSTILE_FILES = [
    ("tall.gif", mf.make_tall_gif, "1x65535 (each frame) is too long and thin"),
    ("pages.tif", mf.make_tiff_with_a_huge_page, "12000x12000 pixels (page 2)"),
    ("ztxt.png", mf.make_png_metadata_bomb, "its metadata is too large"),
    ("iccp.png", lambda p: mf.make_png_metadata_bomb(p, b"iCCP"), "its metadata is too large"),
]


@pytest.mark.parametrize(
    ("name", "make", "problem"), HOSTILE_FILES, ids=[h[0] for h in HOSTILE_FILES]
)
def test_memory_bombs_are_refused_before_decoding(served, tmp_path, name, make, problem):
    url, _ = served
    bomb = make(tmp_path / name)
    assert bomb.stat().st_size < 300_000  # small files...
    with (
        PeakRss() as memory,
        pytest.raises(Exception, match=f"{re.escape(name)}: .*{re.escape(problem)}"),
    ):
        _ask(url, [bomb])
    # ...that once took gigabytes (the GIF 1.6 GB, the TIFF 144 MP of pixels).
    assert memory.growth < 100 << 20, f"{memory.growth >> 20} MB"
    _answers_normally(url)


def _refused_alike(url: str, present: Path, missing: Path, problem: str) -> None:
    """Both files refused for `problem`, in the same words (their names aside): the answer does
    not depend on whether the server file they point to exists, so it cannot be probed."""
    messages = []
    for pointer in (present, missing):
        with pytest.raises(Exception, match=problem) as info:
            _ask(url, [pointer])
        messages.append(str(info.value).replace(pointer.name, "NAME"))
    assert messages[0] == messages[1]


def test_a_playlist_is_refused_and_reads_no_server_file(served, tmp_path):
    url, _ = served
    secret = mf.make_video(tmp_path / "elsewhere.mp4", seconds=2)
    present = mf.make_playlist(tmp_path / "present.m3u8", [f"file:{secret}", str(secret)])
    missing = mf.make_playlist(tmp_path / "absent.m3u8", ["file:/nowhere/clip.mp4"])
    _refused_alike(url, present, missing, "playlist, which points to other files")
    concat = tmp_path / "list.txt"
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    with pytest.raises(Exception, match=r"list\.txt: is an FFmpeg concat list"):
        _ask(url, [concat])
    _answers_normally(url)


def test_a_video_kept_in_another_file_is_refused_and_that_file_not_read(served, tmp_path):
    url, _ = served
    secret = mf.make_video(tmp_path / "elsewhere.mp4", seconds=2)
    present = mf.make_external_reference_mp4(tmp_path / "alias.mp4", secret, str(secret))
    missing = mf.make_external_reference_mp4(tmp_path / "gone.mp4", secret, "/nowhere/clip.mp4")
    _refused_alike(url, present, missing, "kept in other files")
    _answers_normally(url)


def test_references_are_found_in_the_box_structure(tmp_path):
    from app.media.isobmff import has_external_references

    plain = mf.make_video(tmp_path / "plain.mp4", seconds=1)
    assert not has_external_references(plain)
    assert has_external_references(mf.make_external_reference_mp4(tmp_path / "r.mp4", plain, "/x"))
    assert not has_external_references(mf.make_video(tmp_path / "p.mov", seconds=1, fmt="mov"))


SHAPES = [
    ("thin.pdf", mf.make_pdf_page, "10x2000 (page 1) is too long and thin"),
    ("thin.mp4", lambda p: mf.make_video(p, size=(16, 2432), seconds=1), "16x2432 is too long"),
    ("subs.mkv", mf.make_subtitle_only_mkv, "has no video track"),
]


@pytest.mark.parametrize(("name", "make", "problem"), SHAPES, ids=[s[0] for s in SHAPES])
def test_bad_shapes_and_tracks_are_named_in_words(served, tmp_path, name, make, problem):
    url, _ = served
    with pytest.raises(Exception, match=f"{re.escape(name)}: {re.escape(problem)}") as info:
        _ask(url, [make(tmp_path / name)])
    assert "Something went wrong" not in str(info.value)
    _answers_normally(url)


def test_a_huge_prompt_is_refused_at_once_with_the_limit(served):
    url, engine = served
    started = time.perf_counter()
    with pytest.raises(Exception, match=r"more than this app reads in one prompt \(4,096 tokens"):
        _ask(url, [], system_prompt="Remember this. " * 70_000)  # about 1 MB
    # Not a timing: read through the model the prompt would take minutes; refused, it takes
    # about a second (tokenizing 1 MB), and 30 s leaves a loaded machine far more than 10x.
    assert time.perf_counter() - started < 30
    assert engine.max_prompt_tokens == 4096  # the tiny model's context
    _answers_normally(url)


def test_images_count_against_the_prompt_bound(tiny_checkpoint, media):
    settings = load_settings(["--max-prompt-tokens", "40"], environ={})
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")), max_prompt_tokens=40)
    with launched_app(settings, engine) as url:
        with pytest.raises(Exception, match=r"With its images and videos this prompt is \d+ tok"):
            _ask(url, [media / "red.jpg", media / "clip.mp4"])
        _answers_normally(url)


def test_stop_ends_a_long_prefill_between_layers(served, media):
    """A slow prefill (each language layer slowed to 2 s) ends at the next layer after Stop."""
    url, engine = served
    entered: list[float] = []

    def slow(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] > 1:
            entered.append(time.perf_counter())
            time.sleep(2.0)

    layers = list(engine.model.model.language_model.layers)
    assert len(layers) >= 2
    handles = [layer.register_forward_pre_hook(slow, with_kwargs=True) for layer in layers]
    try:
        client = Client(url, verbose=False)
        job = client.submit(
            {"text": "Describe", "files": [handle_file(str(media / "green.png"))]},
            api_name="/chat",
        )
        deadline = time.perf_counter() + 30
        while not entered and time.perf_counter() < deadline:
            time.sleep(0.01)
        stopped = time.perf_counter()
        job.cancel()  # returns once the server has closed the request
        while _generating() and time.perf_counter() - stopped < 10:
            time.sleep(0.02)
        assert not _generating()
        # The layer reading when Stop came finishes; no later layer starts (without the
        # engine's hooks, every layer would still read the whole prompt).
        assert len(entered) == 1
    finally:
        for handle in handles:
            handle.remove()
    _answers_normally(url)


def _generating() -> bool:
    return any(t.name == "qwen-generate" and t.is_alive() for t in threading.enumerate())
