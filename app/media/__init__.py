"""Images, video and documents in: sniff, open, check, orient, decode, sample, keep to budgets.

Type is judged by content, never by the file name, and each kind is read only by the readers
allowed for it. Every failure a user can cause raises `MediaError` with a message that names the
file and the problem. Heavy imports (PIL, av, pypdfium2, numpy) happen inside the functions that
use them.

    limits.py   budgets, size and shape checks before decoding
    sniff.py    what a file is; the allowed Pillow formats and FFmpeg demuxers
    isobmff.py  MP4/MOV boxes: data references to other files
    images.py   photos, TIFF pages, animated GIF/WebP/PNG
    video.py    video with PyAV, sampled by time
    pdf.py      PDF pages
    cache.py    an attachment read once, by content and budget
"""

from app.media.cache import (
    Attached,
    MediaCache,
    content_key,
    read_attachment,
)
from app.media.images import open_animated_image, open_image, open_pages
from app.media.limits import (
    BOMB_PIXELS,
    CPU_MAX_PIXELS,
    MAX_ASPECT,
    MIN_SIDE,
    Budget,
    MediaError,
    scaled_size,
)
from app.media.pdf import open_pdf
from app.media.sniff import sniff
from app.media.video import VideoClip, open_video

__all__ = [
    "BOMB_PIXELS",
    "CPU_MAX_PIXELS",
    "MAX_ASPECT",
    "MIN_SIDE",
    "Attached",
    "Budget",
    "MediaCache",
    "MediaError",
    "VideoClip",
    "content_key",
    "open_animated_image",
    "open_image",
    "open_pages",
    "open_pdf",
    "open_video",
    "read_attachment",
    "scaled_size",
    "sniff",
]
