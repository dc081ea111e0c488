"""Folders of files the app makes (drawn boxes, exports, imported chats), each file kept for a
while and then removed, so that the disk does not fill with them.

gradio removes its own cache's files (uploads, and its copies of what the app shows) through
`delete_cache`; these are the app's own. A folder is swept whenever a new file is made in it:
without new files, nothing grows.
"""

from __future__ import annotations

import atexit
import errno
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0
# Errors that say the disk (or the user's quota) is full.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in NO_SPACE


@dataclass(frozen=True)
class Folder:
    """A folder whose entries are removed `keep_s` seconds after they were last changed."""

    path: Path
    keep_s: float = DAY_S

    @classmethod
    def new(cls, prefix: str, keep_s: float = DAY_S) -> Folder:
        """A new temporary folder, removed with what it holds when the process exits."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        return cls(path, keep_s)

    def sweep(self) -> int:
        """Remove the entries older than `keep_s`; return how many went."""
        cutoff = time.time() - self.keep_s
        removed = 0
        for entry in list(self.path.iterdir()) if self.path.is_dir() else []:
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except OSError as err:  # another request removed it first, or it is not ours
                log.debug("could not remove %s: %s", entry, err)
        return removed

    def fresh(self) -> Path:
        """The folder, swept, ready for a new file."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.sweep()
        return self.path
