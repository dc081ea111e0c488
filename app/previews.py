"""What the chat shows of an attachment the browser cannot show by itself: a video's still frame
and length, a PDF's first page and page count.

A browser plays few codecs (an MPEG-4 Part 2 clip, which this app reads, showed as an empty grey
player saying "0:00 / NaN:NaN"), and gradio shows a PDF as a bare file link. The frames and
pages that the request's own reading made for the model (the app's decoders, in their workers)
give both at no extra decoding: the first of them, shrunk, is kept beside the file as
`<name>.preview.json`, which gradio serves as it serves the file; the page's script reads it
(app/ui/page_code.py). Only files in gradio's upload folder get one (the page reaches no other);
each is written once; a failure (a full disk) leaves nothing behind and never touches the reply.
gradio removes its files after `--keep-files-hours` but not what lies beside them: a preview
goes once its file has gone or it is as old, looked at whenever a preview is made.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.files import DAY_S
from app.media import Attached, VideoClip

log = logging.getLogger(__name__)

PREVIEW_SUFFIX = ".preview.json"
# The poster's longest side in pixels: about a chat bubble's width (tens of KB as JPEG).
POSTER_SIDE = 480


def preview_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PREVIEW_SUFFIX)


def previewed_file(preview: Path) -> Path:
    return preview.with_name(preview.name.removesuffix(PREVIEW_SUFFIX))


def preview_of(attached: Attached) -> dict[str, Any] | None:
    """The preview of a video ({"poster", "seconds"}) or a document ({"poster", "pages"}) as
    read; None for what the browser shows by itself (a photo, an animation)."""
    from PIL import Image

    first = attached.visuals[0] if attached.visuals else None
    if attached.kind == "video" and isinstance(first, VideoClip):
        seconds = first.metadata()["duration"] or 0.0
        return {"poster": _jpeg_data_url(Image.fromarray(first.frames[0])), "seconds": seconds}
    if attached.kind == "pdf" and isinstance(first, Image.Image):
        return {"poster": _jpeg_data_url(first), "pages": attached.pages_in_file}
    return None


def _jpeg_data_url(image: Any) -> str:
    image = image.convert("RGB")
    image.thumbnail((POSTER_SIDE, POSTER_SIDE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


class Previews:
    """Previews kept beside the files under `root` (gradio's upload folder), each for as long
    as its file, `keep_s` at most."""

    def __init__(self, root: str | Path, keep_s: float = DAY_S) -> None:
        self.root = Path(root).resolve()
        self.keep_s = keep_s
        self._written: dict[Path, float] = {}  # preview -> when
        self._lock = threading.Lock()

    def keep(self, read: Mapping[str, Attached]) -> None:
        """A preview for each file read that has none yet and wants one."""
        self.sweep()
        for path, attached in read.items():
            target = preview_path(Path(path).resolve())
            if not target.parent.is_relative_to(self.root) or target.exists():
                continue
            try:
                preview = preview_of(attached)
                if preview is not None:
                    _write_whole(target, json.dumps(preview))
                    with self._lock:
                        self._written[target] = time.time()
            except Exception:  # a preview is a nicety: the reply goes on
                log.warning("could not keep a preview of %s", Path(path).name, exc_info=True)

    def sweep(self) -> None:
        """Remove the previews whose file has gone, or that are `keep_s` old."""
        cutoff = time.time() - self.keep_s
        with self._lock:
            gone = [
                preview
                for preview, when in self._written.items()
                if when < cutoff or not previewed_file(preview).exists()
            ]
            for preview in gone:
                del self._written[preview]
        for preview in gone:
            preview.unlink(missing_ok=True)


def _write_whole(target: Path, text: str) -> None:
    """`text` in `target`, all or nothing: written beside it, then renamed into place (two
    requests with the same file write one whole file; a full disk leaves none)."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".preview-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
