"""The previews the chat shows of a video and a PDF, made of what the app's decoders read."""

from __future__ import annotations

import base64
import errno
import io
import json
import os

import pytest
from PIL import Image

from app.media import Budget, read_attachment
from app.previews import POSTER_SIDE, Previews, preview_path
from tests import media_factory as mf


def _read(*paths):
    return {str(p): read_attachment(p, Budget()) for p in paths}


def _poster(preview: dict) -> Image.Image:
    head, data = preview["poster"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_a_video_gets_a_still_frame_and_its_length_and_a_pdf_its_first_page_and_count(tmp_path):
    clip = mf.make_video(tmp_path / "clip.mp4", seconds=3.0, size=(640, 360), codec="mpeg4")
    report = mf.make_pdf(tmp_path / "report.pdf", pages=12)  # more than the 8 pages read
    photo = mf.make_image(tmp_path / "photo.jpg")
    Previews(tmp_path).keep(_read(clip, report, photo))
    video = json.loads(preview_path(clip).read_text())
    assert video["seconds"] == pytest.approx(3.0, abs=0.15)
    assert max(_poster(video).size) <= POSTER_SIDE
    assert _poster(video).size[0] > _poster(video).size[1]  # the clip's shape
    page = json.loads(preview_path(report).read_text())
    assert page["pages"] == 12
    assert _poster(page).size[1] > _poster(page).size[0]  # an A4 page
    assert not preview_path(photo).exists()  # the browser shows a photo itself


def test_previews_only_where_the_page_reaches_and_once(tmp_path):
    served, elsewhere = tmp_path / "gradio", tmp_path / "assets"
    served.mkdir(), elsewhere.mkdir()
    inside = mf.make_video(served / "a.mp4")
    outside = mf.make_video(elsewhere / "b.mp4")
    previews = Previews(served)
    previews.keep(_read(inside, outside))
    assert preview_path(inside).exists()
    assert not preview_path(outside).exists()  # never written outside gradio's folder
    preview_path(inside).write_text("kept")
    previews.keep(_read(inside))
    assert preview_path(inside).read_text() == "kept"


def test_a_full_disk_leaves_no_preview_and_no_half_file(tmp_path, monkeypatch):
    clip = mf.make_video(tmp_path / "clip.mp4")
    read = _read(clip)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    Previews(tmp_path).keep(read)  # said in the log; no exception reaches the reply
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_preview_goes_once_its_file_has_gone_or_it_is_as_old_as_gradio_keeps_files(tmp_path):
    first, second = mf.make_video(tmp_path / "a.mp4"), mf.make_video(tmp_path / "b.mp4")
    previews = Previews(tmp_path, keep_s=3600)
    previews.keep(_read(first, second))
    first.unlink()  # gradio removed the upload
    previews.sweep()
    assert not preview_path(first).exists()
    assert preview_path(second).exists()
    previews.keep_s = 0
    previews.sweep()
    assert not preview_path(second).exists()
