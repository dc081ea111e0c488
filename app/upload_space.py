"""Uploads and the disk: refused with words when the disk is nearly full, and no partial file
left behind by an upload that failed or was abandoned.

gradio writes each uploaded file to a temporary file at the top of its upload folder while the
body arrives, and renames it into a folder of its own once whole. On a full disk the write
failed with a bare 500, and the part already written stayed for as long as gradio keeps files
(a day): the disk stayed full for everyone. A client that hung up mid-upload left its part too.
This ASGI middleware, given to gradio's FastAPI app, wraps its upload route:
- before the body is read, the free space is checked against what the request declares it
  sends plus a reserve (`min_free_bytes`); short of it, 507 and a sentence;
- a write that fails for want of space is answered 507 and a sentence too, and a form gradio's
  route cannot take (a file part without a name was a bare 500) 400 and a sentence;
- once an upload ends, however it ended, the top-level temporary files that no upload still
  writes are removed: all of them when no other upload is in flight, else those older than
  the longest an upload's body may take (`body_timeout_s`, app/http_limits.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from app.files import is_disk_full
from app.http_limits import content_length, header, is_upload, refuse
from app.said import Said, in_language, language_of_header, say

log = logging.getLogger(__name__)


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MB"


class UploadSpace:
    """ASGI middleware: an upload needs its declared size plus `min_free_bytes` free; partial
    files of uploads that ended are removed."""

    def __init__(self, app: Any, min_free_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.min_free_bytes = min_free_bytes
        self.body_timeout_s = body_timeout_s
        self._in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        uploads = getattr(scope.get("app"), "uploaded_file_dir", None)
        posted = scope.get("method") == "POST" and is_upload(scope)
        if scope["type"] != "http" or not posted or not uploads:
            await self.app(scope, receive, send)  # (no folder known: nothing to sweep)
            return
        folder = Path(uploads)
        language = language_of_header(header(scope, b"accept-language"))
        short = self._short_of_space(folder, max(content_length(scope) or 0, 0))
        if short is not None:
            await refuse(send, 507, in_language(short, language))
            return
        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        self._in_flight += 1
        try:
            await self.app(scope, receive, watched_send)
        except OSError as err:
            if not is_disk_full(err) or started:
                raise
            self._sweep(folder, others=self._in_flight - 1)  # before the answer: space is back
            await refuse(send, 507, in_language(self._full_message(folder), language))
        except (TypeError, ValueError) as err:  # gradio's route on a form it did not expect
            if started:
                raise
            await refuse(send, 400, in_language(_not_a_file_upload(err), language))
        finally:
            self._in_flight -= 1
            self._sweep(folder, others=self._in_flight)

    def _sweep(self, folder: Path, others: int) -> None:
        """Partial files go: all of them where no other upload is in flight, else those older
        than any upload in flight can be."""
        remove_partial_uploads(folder, self.body_timeout_s if others else 0.0)

    def _short_of_space(self, folder: Path, declared: int) -> Said | None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError:
            return None  # gradio's own route says what is wrong with its folder
        if free - declared >= self.min_free_bytes:
            return None
        return self._full_message(folder, free)

    def _full_message(self, folder: Path, free: int | None = None) -> Said:
        if free is None:
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                free = 0
        have, keep = _megabytes(free), _megabytes(self.min_free_bytes)
        return say(
            f"The server's disk is nearly full ({have} free; the app keeps {keep} free, "
            "--min-free-disk-mb), so it cannot take this file now. Try a smaller file, or later.",
            f"服务器磁盘将满（剩余 {have}；本应用保留 {keep}，--min-free-disk-mb），"
            "现在无法接收这个文件。请换一个更小的文件，或稍后再试。",
        )


def _not_a_file_upload(err: Exception) -> Said:
    return say(
        'The upload is not one this app can take: send each file as a part named "files" '
        f"with a file name ({err}).",
        f'无法接收这次上传：每个文件应作为名为 "files" 且带文件名的部分发送（{err}）。',
    )


def remove_partial_uploads(folder: Path, older_than_s: float) -> int:
    """Remove the temporary files at the top of gradio's upload `folder` (a whole upload lives
    in a folder of its own) changed more than `older_than_s` ago; return how many went."""
    cutoff = time.time() - older_than_s
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.name.startswith("tmp") or not entry.is_file() or entry.is_symlink():
                continue
            if older_than_s and entry.stat().st_mtime > cutoff:
                continue
            # Emptied first: a failed upload's file may still be open (gradio closes it only
            # on errors of its own), and an open file's blocks are freed only when it closes.
            os.truncate(entry, 0)
            entry.unlink()
            removed += 1
        except OSError as err:  # renamed into place by its upload meanwhile
            log.debug("could not remove %s: %s", entry, err)
    if removed:
        log.info("removed %d partial upload(s) from %s", removed, folder)
    return removed
