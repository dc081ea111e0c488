"""Video with PyAV (its wheel carries FFmpeg): one threaded decoding pass, frames sampled by time.

Each sample time takes the decoded frame nearest to it (so variable frame rates sample right);
only the previous frame is held while decoding, and sampled frames go straight into one array,
so memory grows with the sampled frames alone. Rotation metadata of phone videos is applied, and
the timing is kept for the processor (Qwen3-VL writes timestamps into the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.media.limits import (
    Budget,
    MediaError,
    check_size,
    frame_count,
    frame_pixels,
    sample_times,
    scaled_size,
)
from app.media.structure import jpeg_frame_size
from app.said import say

A_FRAME = say("a frame", "某一帧")

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class VideoClip:
    """Sampled frames (T x H x W x 3 uint8) and the timing the processor needs."""

    frames: np.ndarray
    fps: float
    total_num_frames: int
    frames_indices: tuple[int, ...]
    timestamps: tuple[float, ...]

    def metadata(self) -> dict[str, Any]:
        return {
            "fps": self.fps,
            "total_num_frames": self.total_num_frames,
            "frames_indices": list(self.frames_indices),
            "duration": self.total_num_frames / self.fps if self.fps else None,
        }


def _rotate(arr: np.ndarray, degrees: int) -> np.ndarray:
    import numpy as np

    turns = (round(degrees / 90)) % 4
    # Display-matrix rotation is counter-clockwise; np.rot90 with k>0 is counter-clockwise too.
    return np.ascontiguousarray(np.rot90(arr, k=turns)) if turns else arr


def _duration(container: Any, stream: Any, rate: float) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration / 1_000_000)
    if stream.frames:
        return float(stream.frames / rate)
    return 0.0


class _Sampler:
    """Takes the frame nearest each sample time into one array made at the first frame."""

    def __init__(self, targets: list[float], pixels: int) -> None:
        self.targets = targets
        self.pixels = pixels
        self.out: np.ndarray | None = None
        self.times: list[float] = []
        self.size: tuple[int, int] | None = None
        self.previous: tuple[float, Any] | None = None

    @property
    def done(self) -> bool:
        return len(self.times) >= len(self.targets)

    def take(self, frame: Any, t: float) -> None:
        import numpy as np

        if self.size is None:
            self.size = scaled_size(frame.width, frame.height, self.pixels)
        # One swscale call scales and converts; AREA is both the better downscaler and
        # faster than the default bilinear here (0.16 s vs 0.21 s for 120 720p frames).
        arr = frame.reformat(
            width=self.size[0], height=self.size[1], format="rgb24", interpolation="AREA"
        ).to_ndarray()
        arr = _rotate(arr, int(getattr(frame, "rotation", 0) or 0))
        if self.out is None:  # one slot more for the even padding
            self.out = np.empty((len(self.targets) + 1, *arr.shape), np.uint8)
        self.out[len(self.times)] = arr
        self.times.append(max(t, 0.0))

    def see(self, frame: Any, t: float) -> None:
        """A decoded frame at time t: it (or the one before) serves every target it passed."""
        while not self.done and t >= self.targets[len(self.times)]:
            target = self.targets[len(self.times)]
            if self.previous is not None and target - self.previous[0] < t - target:
                self.take(self.previous[1], self.previous[0])
            else:
                self.take(frame, t)
        self.previous = (t, frame)

    def finish(self, step: float) -> None:
        """Targets past the last frame: it stands for those within one sampling step of it (a
        clip ends between samples); a truncated file stops there."""
        if self.previous is None:
            return
        while not self.done and self.targets[len(self.times)] - self.previous[0] <= step:
            self.take(self.previous[1], self.previous[0])


def _decode(
    container: Any, stream: Any, sampler: _Sampler, start: float, label: str
) -> Exception | None:
    """Run the decoding pass; a decoding error ends it, keeping what decoded (returned). Every
    frame's size is checked as it comes (a stream may change size midway): a Motion-JPEG
    frame's from its header before it is decoded, any other's once decoded."""
    mjpeg = stream.codec_context.name == "mjpeg"
    try:
        for packet in container.demux(stream):
            if mjpeg and packet.size:
                size = jpeg_frame_size(bytes(packet))
                if size is None:
                    continue  # no frame header to check: a damaged frame, not decoded
                check_size(label, *size, what=A_FRAME)
            for frame in packet.decode():
                check_size(label, frame.width, frame.height, what=A_FRAME)
                if frame.pts is None:
                    continue
                sampler.see(frame, float(frame.pts * stream.time_base) - start)
                if sampler.done:
                    return None
    except MediaError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt data: keep what decoded
        return err
    return None


def open_video(
    path: str | Path, budget: Budget, name: str | None = None, fmt: str | None = None
) -> VideoClip:
    """Frames sampled by timestamp in one threaded pass of the allowed demuxer `fmt`."""
    from app.media.sniff import open_container, sniff

    label = name or Path(path).name
    fmt = fmt or sniff(path, label).format
    try:
        container = open_container(path, fmt)
    except Exception as err:
        raise MediaError(
            say(
                f"{label}: cannot be opened as a video ({err})",
                f"{label}：无法作为视频打开（{err}）",
            )
        ) from err
    with container:
        if not container.streams.video:
            raise MediaError(
                say(
                    f"{label}: has no video track (audio only?)",
                    f"{label}：没有视频轨道（只有音频？）",
                )
            )
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise MediaError(
                say(
                    f"{label}: the video track is in a format this app cannot decode",
                    f"{label}：视频轨道的格式本应用无法解码",
                )
            )
        check_size(label, stream.codec_context.width or 1, stream.codec_context.height or 1)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        duration = _duration(container, stream, rate)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if duration > 0:
            n = frame_count(duration, budget)
            targets = sample_times(duration, n)
        else:  # unknown length: sample at the chosen rate from the start, up to the cap
            n = budget.video_max_frames
            targets = [i / budget.video_fps for i in range(n)]
        sampler = _Sampler(targets, frame_pixels(n, budget))
        error = _decode(container, stream, sampler, start, label)
        sampler.finish(1 / budget.video_fps)
    return _clip(label, sampler, error, duration, rate)


def _clip(
    label: str, sampler: _Sampler, error: Exception | None, duration: float, rate: float
) -> VideoClip:
    out, times = sampler.out, sampler.times
    if out is None or not times:
        if error is not None or sampler.previous is None:
            raise MediaError(
                say(
                    f"{label}: the video is damaged or truncated; no frame could be decoded",
                    f"{label}：视频已损坏或不完整，一帧也无法解码",
                )
            )
        raise MediaError(say(f"{label}: the video has no frames", f"{label}：视频没有任何帧"))
    if len(times) % 2:
        out[len(times)] = out[len(times) - 1]
        times.append(times[-1])
    total = max(1, round(max(duration, times[-1]) * rate))
    indices = tuple(min(total - 1, round(t * rate)) for t in times)
    return VideoClip(out[: len(times)], rate, total, indices, tuple(times))
