"""The media path on files the tests make: images, video, GIF, PDF, and broken input."""

import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from app.media import (
    Budget,
    MediaCache,
    MediaError,
    VideoClip,
    open_image,
    open_video,
    read_attachment,
    sniff,
)
from tests import media_factory as mf


def load_attachment(path, budget, cache=None, name=None):
    """The model inputs of one attached file (images, or a video), as the engines read it."""
    return read_attachment(path, budget, cache, name).visuals


def sniff_kind(path):
    return sniff(path).kind


BUDGET = Budget(max_pixels=256 * 256, min_pixels=32 * 32, video_max_pixels=64 * 64)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (200, 100), "white")
    image.paste((255, 0, 0), (0, 0, 50, 50))  # red at the top left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    shown = open_image(tmp_path / "phone.jpg", BUDGET)
    assert shown.size == (100, 200)
    assert shown.getpixel((shown.width - 10, 10))[0] > 200  # red now at the top right


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "1", "L", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / f"img-{mode.replace(';', '')}.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    if mode == "I;16":
        Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(path)
    elif mode in ("RGBA", "LA"):
        image = Image.new(mode, (64, 64), (0, 0) if mode == "LA" else (0, 0, 0, 0))
        image.save(path)
    else:
        mf.make_image(path, size=(64, 64), mode=mode)
    out = open_image(path, BUDGET)
    assert out.mode == "RGB"
    if mode in ("RGBA", "LA"):
        assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent composited on white


def test_a_big_photo_is_scaled_into_the_budget(tmp_path):
    path = mf.make_image(tmp_path / "big.jpg", size=(4000, 3000))
    out = open_image(path, BUDGET)
    assert out.width * out.height <= BUDGET.max_pixels
    assert abs(out.width / out.height - 4 / 3) < 0.02


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = mf.make_bomb_png(tmp_path / "bomb.png")
    started = time.perf_counter()
    with pytest.raises(MediaError, match=r"bomb.png.*refused before decoding"):
        load_attachment(path, BUDGET)
    # Not a timing: decoding the bomb would take minutes and gigabytes; refusing it takes
    # milliseconds, and 10 s is far more than ten times that.
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty"),
        ("notes.jpg", lambda p: p.write_text("just some text"), "not an image, video or PDF"),
        ("cut.jpg", lambda p: mf.truncate(mf.make_image(p, size=(800, 600)), 0.3), "truncated"),
        ("cut.mp4", lambda p: mf.truncate(mf.make_video(p, seconds=3), 0.5), "truncated"),
        ("sound.mp4", lambda p: mf.make_audio_only(p), "only audio"),
        ("data.bin", lambda p: p.write_bytes(bytes(range(256)) * 8), "not an image, video or PDF"),
    ],
)
def test_bad_files_say_which_file_and_why(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(MediaError) as info:
        load_attachment(path, BUDGET, name=name)
    assert name in str(info.value) and message in str(info.value)


def test_type_is_judged_by_content(tmp_path):
    jpeg_named_mp4 = mf.make_image(tmp_path / "photo.mp4", fmt="JPEG")
    assert sniff_kind(jpeg_named_mp4) == "image"
    video_named_png = mf.make_video(tmp_path / "clip.png", fmt="mp4")
    assert sniff_kind(video_named_png) == "video"


def test_video_sampled_at_two_fps_with_timing(tmp_path):
    path = mf.make_video(tmp_path / "v.mp4", seconds=4, fps=10)
    clip = open_video(path, BUDGET)
    assert clip.frames.shape[0] == 8 and clip.frames.dtype == np.uint8
    assert clip.frames.shape[1] * clip.frames.shape[2] <= BUDGET.video_max_pixels
    # Frame i is drawn with gray level 8*i: the sampled frames are the ones at the sample times.
    gray = clip.frames[:, -1, -1, 0].astype(int)
    expected = [8 * round(t * 10) % 256 for t in clip.timestamps]
    assert np.all(np.abs(gray - expected) <= 4)
    assert np.allclose(clip.timestamps, [0.25 + 0.5 * i for i in range(8)], atol=0.051)
    assert clip.metadata()["frames_indices"] == [round(t * clip.fps) for t in clip.timestamps]


def test_frame_cap_and_minimum(tmp_path):
    long = open_video(mf.make_video(tmp_path / "long.mp4", seconds=60, fps=5), BUDGET)
    assert long.frames.shape[0] == BUDGET.video_max_frames
    short = open_video(mf.make_video(tmp_path / "short.mp4", seconds=0.5, fps=10), BUDGET)
    assert short.frames.shape[0] == BUDGET.video_min_frames


def test_variable_frame_rate_samples_by_timestamp(tmp_path):
    times = [0.0, 0.1, 0.2, 1.5, 1.6, 2.8]
    clip = open_video(mf.make_video(tmp_path / "vfr.mkv", vfr_times=times), BUDGET)
    # Six targets over 2.9 s (at 0.24, 0.73, 1.21, 1.69, 2.18, 2.66); each takes the nearest frame.
    assert list(clip.timestamps) == [0.2, 0.2, 1.5, 1.6, 1.6, 2.8]


def test_rotation_metadata_is_respected(tmp_path):
    clip = open_video(mf.make_video(tmp_path / "r.mp4", size=(160, 96), rotate=90), BUDGET)
    first = clip.frames[0]
    assert first.shape[0] > first.shape[1]  # landscape stored, portrait shown
    assert first[-5, 5, 0] > 200 and first[5, 5, 0] < 100  # the red corner turned to bottom left


def test_animated_gif_is_a_short_video(tmp_path):
    [clip] = load_attachment(mf.make_gif(tmp_path / "a.gif", frames=6), BUDGET)
    assert isinstance(clip, VideoClip) and clip.frames.shape[0] >= 2


def test_pdf_pages_become_images(tmp_path):
    pages = load_attachment(mf.make_pdf(tmp_path / "d.pdf", pages=10), BUDGET)
    assert len(pages) == BUDGET.max_pdf_pages
    assert all(isinstance(page, Image.Image) for page in pages)
    assert all(img.width * img.height <= BUDGET.max_pixels * 1.05 for img in pages)


def test_cache_decodes_a_file_once(tmp_path):
    cache = MediaCache(max_bytes=10_000_000)
    path = mf.make_video(tmp_path / "v.mp4")
    first = load_attachment(path, BUDGET, cache)
    again = load_attachment(path, BUDGET, cache)
    assert again is first and cache.hits == 1 and cache.misses == 1
    # Another budget is another entry, but only where it changes what the kind reads.
    load_attachment(path, replace(BUDGET, max_pixels=128 * 128), cache)
    assert cache.misses == 1
    load_attachment(path, replace(BUDGET, video_fps=1.0), cache)
    assert cache.misses == 2


def test_an_image_is_keyed_by_the_image_budget_alone(tmp_path):
    cache = MediaCache(max_bytes=10_000_000)
    path = mf.make_image(tmp_path / "a.png")
    first = read_attachment(path, BUDGET, cache)
    same = read_attachment(path, replace(BUDGET, video_fps=0.5, max_pdf_pages=2), cache)
    assert same.key == first.key and cache.misses == 1
    other = read_attachment(path, replace(BUDGET, max_pixels=128 * 128), cache)
    assert other.key != first.key and cache.misses == 2
    # Without a cache the key is the same as with one.
    assert read_attachment(path, BUDGET).key == first.key


def test_cache_is_bounded(tmp_path):
    cache = MediaCache(max_bytes=300_000)
    for i in range(5):
        load_attachment(
            mf.make_image(tmp_path / f"{i}.png", color=(i, 0, 0), fmt="PNG"), BUDGET, cache
        )
    assert cache._bytes <= 300_000 and len(cache._items) < 5


def test_truncated_video_keeps_what_decodes(tmp_path):
    path = mf.make_video(tmp_path / "cut.mp4", seconds=4, options={"movflags": "+faststart"})
    mf.truncate(path, 0.8)
    clip = open_video(path, BUDGET)
    assert 2 <= clip.frames.shape[0] < 8  # the start of the clip, not the whole of it
    assert max(clip.timestamps) < 3.0


def test_an_hour_of_video_holds_only_the_sampled_frames(tmp_path):
    import tracemalloc

    path = mf.make_video(tmp_path / "hour.mp4", seconds=3600, fps=1, size=(320, 240))
    budget = Budget(video_max_pixels=320 * 240, video_max_frames=32)
    tracemalloc.start()
    try:
        clip = open_video(path, budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip.frames.shape == (32, 240, 320, 3)
    assert clip.timestamps[0] < 60 and clip.timestamps[-1] > 3500
    sampled = clip.frames.nbytes
    # Python-side peak: the sampled frames, their stacked copy, and little else; 3600 decoded
    # frames would be 800 MB.
    assert peak < 2 * sampled + 10_000_000


def test_animated_webp_is_a_short_video(tmp_path):
    frames = [Image.new("RGB", (64, 48), (50 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], duration=200)
    [clip] = load_attachment(tmp_path / "a.webp", BUDGET)
    assert isinstance(clip, VideoClip) and clip.frames.shape[0] == 4
    assert clip.timestamps[-1] >= 0.6


def test_animated_images_are_told_apart_from_videos(tmp_path):
    assert sniff_kind(mf.make_gif(tmp_path / "a.gif")) == "animation"
    assert sniff_kind(mf.make_image(tmp_path / "still.gif", fmt="GIF")) == "image"
