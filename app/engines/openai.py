"""Any OpenAI-compatible server (vLLM, SGLang, LMDeploy, transformers serve) as the engine.

The UI process stays light: it decodes and budgets media itself (the same `app.media` path as
the local engine), sends images as base64 data URLs, and streams the server-sent events back.
The HTTP stream runs on a thread feeding a queue, so Stop closes the connection at once and the
server stops generating. Reasoning deltas (`reasoning_content` or `reasoning`, from vLLM's and
SGLang's reasoning parsers) are wrapped in <think> tags so the UI shows them as it does for the
local engine.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from app.engines.base import ChatRequest, Delta, EngineError, ImageRef, PromptInfo, Usage
from app.media import Budget, MediaCache, MediaError, VideoClip, load_attachment

log = logging.getLogger(__name__)

_END = object()


# Request fields outside OpenAI's own API that vLLM and SGLang take and other servers may refuse.
EXTENSION_FIELDS = frozenset({"top_k", "repetition_penalty", "seed", "chat_template_kwargs"})


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _Rejected(Exception):
    def __init__(self, fields: set[str]) -> None:
        super().__init__(", ".join(sorted(fields)))
        self.fields = fields


def _rejected_fields(error: BaseException, payload: dict[str, Any]) -> set[str]:
    """The extension fields a 400/422 answer names as the problem (empty if it names none)."""
    import httpx

    if not isinstance(error, httpx.HTTPStatusError) or error.response.status_code not in (400, 422):
        return set()
    message = _server_message(error.response)
    return {f for f in EXTENSION_FIELDS if f in payload and f in message}


def _data_url(image: Any, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _frames_as_parts(name: str, clip: VideoClip) -> list[dict]:
    """A video as timestamped frames: text "name at 1.5 s:" then the frame, for each frame."""
    from PIL import Image

    parts: list[dict] = [
        {
            "type": "text",
            "text": f"Video {name}: {len(clip.timestamps)} frames sampled in time order.",
        }
    ]
    for t, frame in zip(clip.timestamps, clip.frames, strict=True):
        parts.append({"type": "text", "text": f"{t:.1f} s:"})
        parts.append({"type": "image_url", "image_url": {"url": _data_url(Image.fromarray(frame))}})
    return parts


def _video_as_url(clip: VideoClip) -> dict:
    """The sampled frames re-encoded as a small H.264 MP4, for servers that take video_url."""
    import av

    buffer = io.BytesIO()
    fps = max(1, round(len(clip.timestamps) / max(clip.timestamps[-1], 1e-3)))
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = clip.frames.shape[1] // 2 * 2, clip.frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in clip.frames:
            cropped = frame[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(cropped, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    url = f"data:video/mp4;base64,{base64.b64encode(buffer.getvalue()).decode()}"
    return {"type": "video_url", "video_url": {"url": url}}


def _server_message(response: Any) -> str:
    """The server's own error message from an error body, whatever its shape."""
    try:
        body = json.loads(response.read())
    except (ValueError, UnicodeDecodeError):
        return response.text[:300] if hasattr(response, "text") else ""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:500]
    return str(body)[:500]


class ReasoningJoiner:
    """Turns streamed deltas into one text: reasoning deltas (`reasoning_content` from vLLM and
    SGLang, `reasoning` from newer vLLM) wrapped in <think>...</think>, then the content."""

    def __init__(self) -> None:
        self.in_reasoning = False

    def feed(self, delta: dict[str, Any]) -> str:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        content = delta.get("content")
        text = ""
        if reasoning:
            text += ("" if self.in_reasoning else "<think>") + reasoning
            self.in_reasoning = True
        if content:
            text += ("</think>" if self.in_reasoning else "") + content
            self.in_reasoning = False
        return text

    def close(self) -> str:
        closing = "</think>" if self.in_reasoning else ""
        self.in_reasoning = False
        return closing


class OpenAIEngine:
    """Streams chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(
        self,
        api_base: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        budget: Budget | None = None,
        media_cache: MediaCache | None = None,
        max_new_tokens: int = 1024,
        video_mode: Literal["frames", "url"] = "frames",
        family: str = "qwen3_vl",
        timeout_s: float = 60.0,
    ) -> None:
        import httpx

        self.api_base = api_base.rstrip("/")
        if not self.api_base.endswith("/v1"):
            self.api_base += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.budget = budget or Budget()
        self.media_cache = media_cache or MediaCache()
        self.max_new_tokens = max_new_tokens
        self.video_mode = video_mode
        self.family = family
        self.model = model or self._served_model()
        self.checkpoint = self.model
        self.generation_defaults = None
        self.processor = None
        self.unsupported_fields: set[str] = set()

    def _served_model(self) -> str:
        import httpx

        try:
            response = self._client.get(f"{self.api_base}/models")
            response.raise_for_status()
            models = response.json().get("data") or []
        except httpx.HTTPError as err:
            raise EngineError(self._http_message(err)) from err
        if not models:
            raise EngineError(
                f"The server at {self.api_base} serves no model (/v1/models is empty)"
            )
        return str(models[0]["id"])

    def _http_message(self, err: BaseException) -> str:
        import httpx

        if isinstance(err, httpx.ConnectError):
            return (
                f"Cannot reach the model server at {self.api_base} (connection refused or no "
                "such host). Is it running? Press Regenerate once it is back."
            )
        if isinstance(err, httpx.TimeoutException):
            kind = type(err).__name__
            return f"The model server at {self.api_base} did not answer in time ({kind})."
        if isinstance(err, httpx.HTTPStatusError):
            return (
                f"The model server answered {err.response.status_code}: "
                f"{_server_message(err.response)}"
            )
        return f"The connection to the model server failed: {type(err).__name__}: {err}"

    # --- building the request ------------------------------------------------------------

    def build_messages(self, request: ChatRequest) -> tuple[list[dict], PromptInfo]:
        budget = request.budget or self.budget
        messages: list[dict] = []
        refs: list[ImageRef] = []
        for turn in request.turns:
            if turn.role != "user" or not turn.attachments:
                messages.append({"role": turn.role, "content": turn.text})
                continue
            parts: list[dict] = []
            for attachment in turn.attachments:
                try:
                    visuals = load_attachment(
                        attachment.path, budget, self.media_cache, attachment.name
                    )
                except MediaError as err:
                    raise EngineError(str(err)) from err
                for index, (kind, value) in enumerate(visuals):
                    if kind == "image":
                        parts.append({"type": "image_url", "image_url": {"url": _data_url(value)}})
                        refs.append(ImageRef(attachment, index, None))
                    elif self.video_mode == "url":
                        parts.append(_video_as_url(value))
                    else:
                        parts.extend(_frames_as_parts(attachment.name, value))
            if turn.text:
                parts.append({"type": "text", "text": turn.text})
            messages.append({"role": "user", "content": parts})
        return messages, PromptInfo(opens_in_reasoning=False, images=tuple(refs))

    def build_payload(self, request: ChatRequest, messages: list[dict]) -> dict[str, Any]:
        params = request.params
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.bounded_max_new_tokens(self.max_new_tokens),
        }
        if params.temperature is not None:
            payload["temperature"] = params.temperature
        if params.top_p is not None:
            payload["top_p"] = params.top_p
        # Not in OpenAI's own API, but vLLM, SGLang and LMDeploy take them as extra fields.
        if params.top_k is not None:
            payload["top_k"] = params.top_k
        if params.repetition_penalty is not None:
            payload["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.enable_thinking is not None:
            payload["chat_template_kwargs"] = {"enable_thinking": params.enable_thinking}
        return payload

    # --- streaming -----------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        messages, info = self.build_messages(request)
        yield Delta(prompt=info)
        started = time.perf_counter()
        while True:
            payload = self.build_payload(request, messages)
            for field in self.unsupported_fields:
                payload.pop(field, None)
            try:
                yield from self._stream_once(payload, cancel, started)
                return
            except _Rejected as rejected:
                # A server that refuses an extension field (transformers serve refuses top_k
                # and repetition_penalty): drop those fields from now on and ask again.
                log.warning("%s does not take %s; sending without", self.api_base, rejected.fields)
                self.unsupported_fields |= rejected.fields

    def _stream_once(
        self, payload: dict[str, Any], cancel: threading.Event, started: float
    ) -> Iterator[Delta]:
        items: queue.Queue = queue.Queue()
        holder: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._client.stream(
                    "POST", f"{self.api_base}/chat/completions", json=payload
                ) as response:
                    holder["response"] = response
                    if response.status_code >= 400:
                        response.read()
                        response.raise_for_status()
                    for line in response.iter_lines():
                        if cancel.is_set():
                            break
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        items.put(json.loads(data))
            except BaseException as err:  # noqa: BLE001 - every failure must reach the user
                if not cancel.is_set():
                    items.put(_Failure(err))
            finally:
                items.put(_END)

        thread = threading.Thread(target=run, name="openai-stream", daemon=True)
        thread.start()
        first: float | None = None
        usage: dict[str, Any] = {}
        joiner = ReasoningJoiner()
        chunks = 0
        finished = False
        try:
            while True:
                try:
                    batch = [items.get(timeout=0.05)]
                except queue.Empty:
                    if cancel.is_set():
                        break
                    continue
                # All chunks queued since the last yield go out as one delta (fewer, larger
                # UI updates at high rates).
                while isinstance(batch[-1], dict) and not items.empty():
                    batch.append(items.get_nowait())
                text = ""
                for item in batch:
                    if not isinstance(item, dict):
                        continue
                    if item.get("error"):
                        finished = True
                        raise EngineError(f"The model server reported: {item['error']}")
                    usage = item.get("usage") or usage
                    for choice in item.get("choices") or []:
                        text += joiner.feed(choice.get("delta") or {})
                chunks += sum(isinstance(item, dict) for item in batch)
                if text:
                    if first is None:
                        first = time.perf_counter() - started
                    yield Delta(text=text)
                tail = batch[-1]
                if tail is _END:
                    finished = True
                    break
                if isinstance(tail, _Failure):
                    finished = True
                    rejected = _rejected_fields(tail.error, payload)
                    if rejected and chunks == 0:
                        raise _Rejected(rejected)
                    raise EngineError(self._http_message(tail.error)) from tail.error
            closing = joiner.close()
            if closing:
                yield Delta(text=closing)
            yield Delta(
                usage=Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or chunks),
                    visual_tokens=None,
                    first_token_s=first,
                    total_s=time.perf_counter() - started,
                )
            )
        finally:
            if not finished or cancel.is_set():
                # Closing the response closes the connection: the server stops generating.
                cancel.set()
                response = holder.get("response")
                if response is not None:
                    response.close()
                thread.join(timeout=5)
