"""Hostile input, round three: files whose decoding costs far more than their pixels say.

Each shape is refused from its structure before decoding (a message naming the file and the
problem), or, where only decoding shows the cost, ended by the file's time budget and by Stop in
the worker process that decodes it; meanwhile the app keeps serving other users."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client, handle_file

from app.media import Budget, MediaCache, MediaError
from app.media.worker import DecodePool, DecodeStopped
from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests import media_factory as mf
from tests.hostile.test_hostile import PeakRss

# Generous bounds on time (about 10x what each takes here), there to catch a hang, not to time.
REFUSED_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    """(url, engine, pool) of an app whose files decode in workers within 3 s each."""
    settings = load_settings(["--max-new-tokens", "2000", "--decode-timeout-s", "3"], environ={})
    pool = DecodePool(timeout_s=3.0)
    engine = load_engine(
        str(tiny_checkpoint("qwen3_vl", suppress_eos=True)),
        media_cache=MediaCache(),
        max_new_tokens=2000,
        decoder=pool,
    )
    with launched_app(settings, engine) as url:
        yield url, engine, pool
    pool.close()


def _ask(url: str, path, text: str = "Describe", **kwargs) -> str:
    client = Client(url, verbose=False)
    return client.predict(
        {"text": text, "files": [handle_file(str(path))]}, api_name="/chat", **kwargs
    )


SHAPES = [
    ("scans.jpg", mf.make_many_scan_jpeg, r"JPEG of \d+ scans.*refused before decoding"),
    ("icon.ico", mf.make_icon_with_big_png, r"13370x13370 pixels \(icon 1\).*before decoding"),
    ("grow.mkv", mf.make_growing_mjpeg_mkv, r"16000x16000 pixels \(a frame\).*before decoding"),
    ("samples.mp4", mf.make_mp4_declaring_samples, r"80,000,000 frames or samples.*opening"),
]


@pytest.mark.parametrize(("name", "make", "problem"), SHAPES, ids=[s[0] for s in SHAPES])
def test_costly_shapes_are_refused_from_their_structure(served, tmp_path, name, make, problem):
    url, _, _ = served
    path = make(tmp_path / name)
    started = time.perf_counter()
    with PeakRss() as memory, pytest.raises(Exception, match=problem):
        _ask(url, path, max_new_tokens=4)
    assert time.perf_counter() - started < REFUSED_WITHIN_S
    assert memory.growth < 500 << 20  # before: +2.8 GB for the MP4's index, 1 GB for the icon
    hello = {"text": "hi", "files": []}
    reply = Client(url, verbose=False).predict(hello, max_new_tokens=4, api_name="/chat")
    assert isinstance(reply, str)


def test_a_file_that_decodes_too_long_is_refused_by_its_time_budget(served, tmp_path):
    url, _, pool = served
    slow = mf.make_nested_form_pdf(tmp_path / "forms.pdf", depth=22)  # ~35 s to draw here
    ended = pool.ended
    started = time.perf_counter()
    with pytest.raises(Exception, match=r"forms.pdf: reading it took longer .* \(3 s, --decode"):
        _ask(url, slow, max_new_tokens=4)
    assert time.perf_counter() - started < 3 + REFUSED_WITHIN_S
    assert pool.ended == ended + 1  # its worker process was ended, not left drawing


def test_another_user_waits_for_a_slow_file_no_longer_than_its_budget(served, tmp_path):
    url, _, _ = served
    slow = mf.make_nested_form_pdf(tmp_path / "forms.pdf", depth=22)
    other: dict[str, float] = {}

    def second_user() -> None:
        time.sleep(0.5)  # after the slow file has begun decoding
        started = time.perf_counter()
        Client(url, verbose=False).predict(
            {"text": "hi", "files": []}, max_new_tokens=4, api_name="/chat"
        )
        other["waited"] = time.perf_counter() - started

    thread = threading.Thread(target=second_user)
    thread.start()
    with pytest.raises(Exception, match="took longer"):
        _ask(url, slow, max_new_tokens=4)
    thread.join(timeout=60)
    # Before: the other user waited for the whole decode (33 s of a 36 s file).
    assert other["waited"] < 3 + REFUSED_WITHIN_S


def test_stop_ends_a_decode_in_progress(tiny_checkpoint, tmp_path):
    pool = DecodePool(timeout_s=120.0)
    try:
        slow = mf.make_nested_form_pdf(tmp_path / "forms.pdf", depth=22)
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()
        started = time.perf_counter()
        with pytest.raises(DecodeStopped):
            pool.decode(slow, Budget(), "forms.pdf", cancel)
        stopped_after = time.perf_counter() - started
        assert stopped_after < 1.0 + REFUSED_WITHIN_S  # before: 49 s after Stop
        assert pool.ended == 1
        # The pool goes on with a fresh worker.
        photo = mf.make_image(tmp_path / "photo.jpg", size=(96, 64))
        [image] = pool.decode(photo, Budget(), "photo.jpg").visuals
        assert image.size == (96, 64)
    finally:
        pool.close()


def test_a_worker_that_runs_out_of_memory_gives_a_message(tmp_path):
    pool = DecodePool(timeout_s=60.0, memory_bytes=600 << 20)
    try:
        big = mf.make_image(tmp_path / "big.png", size=(9000, 9000), fmt="PNG")  # 81 MP
        with pytest.raises(MediaError, match=r"big.png: too large to decode in the memory"):
            pool.decode(big, Budget(max_pixels=80_000_000), "big.png")
    finally:
        pool.close()


def test_a_closed_request_ends_the_decode_of_its_file(tiny_checkpoint, tmp_path):
    """A script's cancelled request (as a closed tab's) ends its file's decoding worker; the
    files are read before the request takes its turn, with a tick each second at which gradio
    can drop it (before: the decode ran on for 49 s)."""
    pool = DecodePool(timeout_s=120.0)
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")), decoder=pool)
    settings = load_settings(["--max-new-tokens", "8"], environ={})
    try:
        with launched_app(settings, engine) as url:
            slow = mf.make_nested_form_pdf(tmp_path / "forms.pdf", depth=22)
            job = Client(url, verbose=False).submit(
                {"text": "Describe", "files": [handle_file(str(slow))]}, api_name="/chat"
            )
            time.sleep(2.0)  # well into the drawing, which takes ~35 s
            cancelled = time.perf_counter()
            job.cancel()
            while pool.ended < 1 and time.perf_counter() - cancelled < 60:
                time.sleep(0.05)
            assert pool.ended == 1
            assert time.perf_counter() - cancelled < REFUSED_WITHIN_S
    finally:
        pool.close()


def test_one_users_many_slow_files_hold_anothers_photo_for_one_file_at_most(tmp_path):
    """Files take the decoders in turns by user: a flood of one user's slow-but-legitimate files
    holds another user's photo for the file being read, not for the whole flood (before: the
    free worker went to whichever file polled first, so the photo waited behind several)."""
    pool = DecodePool(workers=1, timeout_s=120.0)
    slow = mf.make_nested_form_pdf(tmp_path / "forms.pdf", depth=18)  # ~2 s to draw here
    photo = mf.make_image(tmp_path / "photo.jpg", size=(96, 64))
    flood_stop = threading.Event()
    finished: list[str] = []

    def flood_file() -> None:
        try:
            pool.decode(slow, Budget(), "forms.pdf", flood_stop, asker="address:flood")
            finished.append("flood")
        except DecodeStopped:
            pass

    flood = [threading.Thread(target=flood_file) for _ in range(8)]
    try:
        for thread in flood:
            thread.start()
            time.sleep(0.05)  # in line in order, the first one decoding
        pool.decode(photo, Budget(), "photo.jpg", asker="address:other")
        finished.append("photo")
    finally:
        flood_stop.set()
        for thread in flood:
            thread.join(timeout=60)
        pool.close()
    assert finished.index("photo") <= 1, finished  # at most the file that was being read
