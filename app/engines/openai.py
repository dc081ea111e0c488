"""Any OpenAI-compatible server (vLLM, SGLang, LMDeploy, transformers serve) as the engine.

The UI process stays light: it decodes and budgets media itself (the same `app.media` path as
the local engine), sends images as base64 data URLs, and reads the streamed reply itself, within
deadlines and bounds (app/engines/remote_stream.py: the `openai` client passed on keep-alives,
endless streams and gzip bombs). The stream runs in the shared pump, so Stop shuts the
connection at once and the server stops generating. Up to `max_concurrent` requests go to the
server together (the fair queue orders the rest).
Reasoning deltas (`reasoning_content` or `reasoning`, from vLLM's and SGLang's reasoning parsers)
are wrapped in <think> tags so the UI shows them as it does for the local engine.

The same image always goes as the same bytes (the encoded data URL is kept with the decoded
image), so servers with prefix caching (vLLM, SGLang) reuse earlier turns of a conversation.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from app.engines.base import (
    PROGRESS_TICK_S,
    ChatRequest,
    Delta,
    EngineError,
    ImageRef,
    Progress,
    PromptInfo,
    SamplingDefaults,
    Usage,
    family_of_model_name,
)
from app.engines.pump import Emit, pump
from app.engines.remote_stream import (
    HEADERS,
    Deadlines,
    RemoteStream,
    ServerRefused,
    StreamFailure,
    StreamWatch,
)
from app.grounding import model_input_size
from app.media import Attached, Budget, MediaCache, MediaError, VideoClip, read_attachment
from app.media.worker import DecodePool, DecodeStopped
from app.said import Said, message, say
from app.weights import WeightsKind

log = logging.getLogger(__name__)

# Request fields outside OpenAI's own API that vLLM and SGLang take and other servers may refuse.
EXTENSION_FIELDS = ("top_k", "repetition_penalty", "seed", "chat_template_kwargs")


class _Rejected(Exception):
    def __init__(self, fields: set[str]) -> None:
        super().__init__(", ".join(sorted(fields)))
        self.fields = fields


def _data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}"


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


def server_message(body: Any, fallback: str = "") -> str:
    """The server's own error message from an error body, whatever its shape."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:500]
    return str(body or fallback)[:500]


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


@dataclass
class _Progress:
    """What one stream measured."""

    started: float
    first: float | None = None
    chunks: int = 0
    usage: Any = None


class OpenAIEngine:
    """Streams chat completions from an OpenAI-compatible server."""

    name = "openai"
    notice: str | None = None
    weights: WeightsKind | None = None
    runs_on_cpu = False  # the server's business
    # The server applies its own checkpoint's defaults; the UI shows its own.
    sampling_defaults = SamplingDefaults()

    def __init__(
        self,
        api_base: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        family: str | None = None,
        budget: Budget | None = None,
        media_cache: MediaCache | None = None,
        max_new_tokens: int = 1024,
        video_mode: Literal["frames", "url"] = "frames",
        deadlines: Deadlines | None = None,
        max_concurrent: int = 32,
        decoder: DecodePool | None = None,
    ) -> None:
        import httpx

        self.api_base = api_base.rstrip("/")
        if not self.api_base.endswith("/v1"):
            self.api_base += "/v1"
        self.deadlines = deadlines or Deadlines()
        # The server batches requests (vLLM, SGLang): they go to it together.
        self.max_concurrent = max_concurrent
        d = self.deadlines
        # The socket's own timeout is only a backstop: StreamWatch keeps the deadlines.
        self._http = httpx.Client(
            timeout=httpx.Timeout(
                max(d.headers_s, d.first_token_s, d.silence_s), connect=d.connect_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.budget = budget or Budget()
        self.media_cache = media_cache or MediaCache()
        # Files decoded in worker processes that Stop and a time budget end (None: here).
        self.decoder = decoder
        self.max_new_tokens = max_new_tokens
        self.video_mode = video_mode
        self.model, self.context_tokens = self._model_and_context(model)
        self.model_name = self.model.rstrip("/").rsplit("/", 1)[-1]
        self.family = family or family_of_model_name(self.model) or "qwen3_vl"
        if not family and family_of_model_name(self.model) is None:
            log.warning(
                "the served model's name %r names no Qwen-VL family; boxes are read as Qwen3-VL "
                "draws them (0-1000). Start with --family to say which it is.",
                self.model,
            )
        # Qwen3.5's templates take `enable_thinking` (vLLM and SGLang pass it on as a chat
        # template argument); Qwen3-VL Thinking models always think, the others never do.
        self.supports_thinking = self.family == "qwen3_5"
        # Fields the server refused, learned by any request and read by all: a frozenset,
        # replaced (under the lock) and never changed in place while a request reads it.
        self.unsupported_fields: frozenset[str] = frozenset()
        self._fields_lock = threading.Lock()
        self._urls: dict[tuple[str, int], str] = {}
        self._urls_lock = threading.Lock()

    def _model_and_context(self, model: str | None) -> tuple[str, int | None]:
        """The model's name (`model`, or the server's first) and its context where the server
        says it (vLLM and SGLang list `max_model_len` in /v1/models; asked only where the app
        asks for the name)."""
        if model is not None:
            return model, None
        served = self._served_model()
        length = served.get("max_model_len")
        return str(served["id"]), length if isinstance(length, int) and length > 0 else None

    def _served_model(self) -> dict[str, Any]:
        try:
            response = self._http.get(f"{self.api_base}/models", headers=self._headers)
            if response.status_code >= 400:
                raise ServerRefused(response.status_code, _json_or_text(response.text))
            models = response.json().get("data") or []
        except Exception as err:
            raise EngineError(self._error_message(err, starting=True)) from err
        if not models:
            raise EngineError(
                say(
                    f"The server at {self.api_base} serves no model (/v1/models is empty)",
                    f"{self.api_base} 上的服务器没有提供任何模型（/v1/models 为空）",
                )
            )
        return dict(models[0])

    def _error_message(self, err: BaseException, starting: bool = False, tokens: int = 0) -> Said:
        """Words for a failed call to the server; `starting`: the app's start-up asked (advice
        for the command line, not for the page); `tokens`: how many had arrived."""
        import httpx

        base = self.api_base
        if isinstance(err, StreamFailure):
            return err.said
        if isinstance(err, ServerRefused):
            said = server_message(err.body)
            if err.status == 200:
                return say(f"The model server reported: {said}", f"模型服务器报告：{said}")
            return say(
                f"The model server answered {err.status}: {said}",
                f"模型服务器返回 {err.status}：{said}",
            )
        if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
            if starting:
                then = say(
                    "Start it first, or give its URL with --api-base.",
                    "请先启动它，或用 --api-base 给出它的地址。",
                )
            else:
                then = say("Press Regenerate once it is back.", "它恢复后请按“重新生成”。")
            return say(
                f"Cannot reach the model server at {base} (connection refused or no such "
                f"host). Is it running? {then}",
                f"无法连接 {base} 上的模型服务器（连接被拒绝或没有这个主机）。它在运行吗？"
                f"{then.chinese}",
            )
        if isinstance(err, httpx.TimeoutException):
            return say(
                f"The model server at {base} did not answer in time.",
                f"{base} 上的模型服务器没有及时回应。",
            )
        if isinstance(err, httpx.TransportError) and tokens:
            return say(
                f"The connection to the model server at {base} was cut after {tokens} tokens; "
                "the reply so far is kept.",
                f"与 {base} 上的模型服务器的连接在 {tokens} 个 token 后中断；已收到的回答保留。",
            )
        what = f"{type(err).__name__}: {err}"
        return say(
            f"The connection to the model server failed: {what}", f"与模型服务器的连接失败：{what}"
        )

    # --- building the request ------------------------------------------------------------

    def _input_size(self, size: tuple[int, int], budget: Budget) -> tuple[int, int]:
        """The size an image is sent at: Qwen's own resize of it within the budget, which every
        server's processor then leaves as it is (one resize on the server's side: none). So
        Qwen2.5-VL's boxes, in pixels of the image as the model saw it, are in pixels of the
        image sent, whatever the server, as long as its bounds hold the budget's (llama.cpp's
        default holds 4096 tokens: 3.2 megapixels; its --image-max-tokens can lower that)."""
        return model_input_size(self.family, size, budget.min_pixels, budget.max_pixels)

    def _image_url(
        self, key: str, index: int, image: Any, size: tuple[int, int] | None = None
    ) -> str:
        """The data URL of an image (at `size`, where given), encoded once: the same image is
        the same bytes each turn."""
        from PIL import Image

        with self._urls_lock:
            url = self._urls.get((key, index))
        if url is None:
            if size is not None and image.size != size:
                image = image.resize(size, Image.Resampling.BICUBIC)
            url = _data_url(image)
            with self._urls_lock:
                if len(self._urls) > 512:  # a bound on memory; a re-encoding gives equal bytes
                    self._urls.clear()
                self._urls[(key, index)] = url
        return url

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> dict[str, Attached]:
        budget = request.budget or self.budget
        decode = self.decoder.for_request(cancel, request.asker) if self.decoder else None
        read: dict[str, Attached] = {}
        for attachment in {a for turn in request.turns for a in turn.attachments}:
            try:
                read[attachment.path] = read_attachment(
                    attachment.path, budget, self.media_cache, attachment.name, decode
                )
            except MediaError as err:
                raise EngineError(message(err)) from err
        return read

    def build_messages(
        self, request: ChatRequest, cancel: threading.Event | None = None
    ) -> tuple[list[dict], PromptInfo]:
        budget = request.budget or self.budget
        decode = self.decoder.for_request(cancel, request.asker) if self.decoder else None
        messages: list[dict] = []
        refs: list[ImageRef] = []
        for turn in request.turns:
            if turn.role != "user" or not turn.attachments:
                messages.append({"role": turn.role, "content": turn.text})
                continue
            parts: list[dict] = []
            for attachment in turn.attachments:
                try:
                    attached = read_attachment(
                        attachment.path, budget, self.media_cache, attachment.name, decode
                    )
                except MediaError as err:
                    raise EngineError(message(err)) from err
                for index, visual in enumerate(attached.visuals):
                    if isinstance(visual, VideoClip):
                        parts.extend(self._video_parts(attachment.name, attached.key, visual))
                        continue
                    size = self._input_size(visual.size, budget)
                    url = self._image_url(attached.key, index, visual, size)
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                    refs.append(ImageRef(attachment, index, visual, size))
            if turn.text:
                parts.append({"type": "text", "text": turn.text})
            messages.append({"role": "user", "content": parts})
        return messages, PromptInfo(opens_in_reasoning=False, images=tuple(refs))

    def _video_parts(self, name: str, key: str, clip: VideoClip) -> list[dict]:
        """A video as timestamped frames ("1.5 s:" then the frame), or as one video_url part."""
        from PIL import Image

        if self.video_mode == "url":
            return [_video_as_url(clip)]
        parts: list[dict] = [
            {"type": "text", "text": f"Video {name}: {len(clip.timestamps)} frames sampled."}
        ]
        for index, (t, frame) in enumerate(zip(clip.timestamps, clip.frames, strict=True)):
            url = self._image_url(f"{key}:frames", index, Image.fromarray(frame))
            parts.append({"type": "text", "text": f"{t:.1f} s:"})
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return parts

    def build_payload(self, request: ChatRequest, messages: list[dict]) -> dict[str, Any]:
        """The request's fields; the EXTENSION_FIELDS among them go as the client's extra_body."""
        params = request.params
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.bounded_max_new_tokens(self.max_new_tokens),
        }
        optional = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            # Not in OpenAI's own API, but vLLM, SGLang and LMDeploy take them.
            "top_k": params.top_k,
            "repetition_penalty": params.repetition_penalty,
            "seed": params.seed,
        }
        payload.update({k: v for k, v in optional.items() if v is not None})
        if params.enable_thinking is not None:
            payload["chat_template_kwargs"] = {"enable_thinking": params.enable_thinking}
        return payload

    # --- streaming -----------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        try:
            messages, info = self.build_messages(request, cancel)
        except DecodeStopped:
            return  # stopped while a file was read: the reply ends empty, as stopped
        yield Delta(prompt=info)
        measured = _Progress(time.perf_counter())
        while True:
            payload = self.build_payload(request, messages)
            for name in self.unsupported_fields:
                payload.pop(name, None)
            try:
                yield from self._stream_once(payload, cancel, measured)
                break
            except _Rejected as rejected:
                # A server that refuses an extension field (transformers serve refuses top_k
                # and repetition_penalty): drop those fields from now on and ask again.
                log.warning("%s does not take %s; sending without", self.api_base, rejected.fields)
                with self._fields_lock:
                    self.unsupported_fields = self.unsupported_fields | rejected.fields
        usage = measured.usage if isinstance(measured.usage, dict) else {}
        yield Delta(
            usage=Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or measured.chunks),
                visual_tokens=None,
                first_token_s=measured.first,
                total_s=time.perf_counter() - measured.started,
                context_tokens=self.context_tokens,
            )
        )

    def _stream_once(
        self, payload: dict[str, Any], cancel: threading.Event, measured: _Progress
    ) -> Iterator[Delta]:
        url = f"{self.api_base}/chat/completions"
        remote = RemoteStream(self._http, url, payload, self._headers)
        watch = StreamWatch(self.deadlines, self.api_base, payload["max_tokens"])

        def work(emit: Emit) -> None:
            try:
                for event in remote.events():
                    if cancel.is_set():
                        break
                    emit(event)
            except Exception:
                if not cancel.is_set():  # cut by Stop or a deadline: an ending, not a failure
                    raise

        joiner = ReasoningJoiner()
        waiting = Progress(
            say(
                f"Waiting for the model server at {self.api_base}",
                f"正在等待模型服务器 {self.api_base}",
            )
        )
        batches = pump(
            work, cancel, name="openai-stream", interrupt=remote.interrupt, idle_s=PROGRESS_TICK_S
        )
        try:
            with contextlib.closing(batches):
                for batch in batches:
                    text = self._read_batch(batch, joiner, measured, watch)
                    if text:
                        yield Delta(text=text)
                    else:  # a quiet second: waiting (shown before the first token)
                        yield Delta(progress=waiting if measured.first is None else None)
                    broken = watch.broken()
                    if broken is not None:
                        raise StreamFailure(broken)
        except Exception as err:
            rejected = self._rejected_fields(err, payload)
            if rejected and measured.chunks == 0:
                raise _Rejected(rejected) from err
            raise EngineError(self._error_message(err, tokens=watch.tokens)) from err
        closing = joiner.close()
        if closing:
            yield Delta(text=closing)

    def _read_batch(
        self, batch: list[Any], joiner: ReasoningJoiner, measured: _Progress, watch: StreamWatch
    ) -> str:
        text = ""
        for event in batch:
            if event is HEADERS:
                watch.answered()
                continue
            piece = self._read_chunk(event, joiner, measured)
            if piece and watch.token(piece):
                text += piece
        if text and measured.first is None:
            measured.first = time.perf_counter() - measured.started
        return text

    @staticmethod
    def _read_chunk(chunk: Any, joiner: ReasoningJoiner, measured: _Progress) -> str:
        measured.chunks += 1
        if not isinstance(chunk, dict):
            return ""
        measured.usage = chunk.get("usage") or measured.usage
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                text += joiner.feed(delta)
        return text

    def _rejected_fields(self, error: BaseException, payload: dict[str, Any]) -> set[str]:
        """The extension fields a 400/422 answer names as the problem (empty if it names none)."""
        if not isinstance(error, ServerRefused) or error.status not in (400, 422):
            return set()
        message = server_message(error.body)
        return {f for f in EXTENSION_FIELDS if f in payload and f in message}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
