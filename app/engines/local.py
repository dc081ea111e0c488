"""transformers in this process: load once, reuse what was read, generate, stream, cancel.

One `LocalEngine` is built in `main` and shared by every browser session; a lock keeps one
generation at a time on the model. Each request starts from the longest prefix of its prompt
that the prefix cache holds: only the images and videos after it are encoded, and only the
tokens after it are read. Stop (or a closed tab) ends the prefill between two layers and the
reply at the next token. Errors cross from the generation thread as exceptions, not timeouts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engines import kv
from app.engines.base import (
    PROGRESS_TICK_S,
    ChatRequest,
    Delta,
    EngineError,
    Progress,
    SamplingDefaults,
    Usage,
    family_of_model_type,
)
from app.engines.checkpoint import LoadOptions, load_model, weights_kind
from app.engines.memory import (
    available_bytes,
    default_max_prompt_tokens,
    default_prefix_cache_bytes,
)
from app.engines.model_thread import ModelThread
from app.engines.prefix_cache import PrefixCache, Reuse
from app.engines.prompt import (
    Prompt,
    VisualBound,
    build_prompt,
    read_attachments,
    takes_thinking_switch,
    text_of,
)
from app.engines.pump import Emit, pump
from app.engines.streamer import TokenStreamer
from app.engines.watch import Cancelled, Watch, WatchHooks
from app.media import Budget, MediaCache, MediaError
from app.media.worker import DecodePool, DecodeStopped
from app.trial import TRIAL_BANNER, trial_name

if TYPE_CHECKING:
    from app.media.cache import Decode

log = logging.getLogger(__name__)

# Special tokens that carry meaning in a reply (Qwen2-VL's grounding) and so are kept in the text.
GROUNDING_TOKENS = frozenset(
    {
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
    }
)
# Text is counted against the prompt bound in pieces of this many characters.
TEXT_PIECE_CHARS = 1 << 16
# The processor's outputs that only the vision encoder reads (the engine runs it itself).
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")


@dataclass
class _Job:
    """One request on its way through the model: what it asks, where its output goes (`emit`,
    read by the caller through the pump), and what the generation thread measures."""

    prompt: Prompt
    request: ChatRequest
    cancel: threading.Event
    emit: Emit = field(default=lambda item: None)
    tokens: int = 0
    first_token_s: float | None = None
    cached_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


class LocalEngine:
    """A transformers model and processor, loaded once, streaming one request at a time."""

    name = "local"
    counts_visual_tokens = True

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        budget: Budget | None = None,
        media_cache: MediaCache | None = None,
        max_new_tokens: int = 1024,
        checkpoint: str = "",
        max_prompt_tokens: int | None = None,
        prefix_cache_bytes: int | None = None,
        decoder: DecodePool | None = None,
        runner: Executor | None = None,
    ) -> None:
        self.checkpoint = checkpoint or str(getattr(model.config, "_name_or_path", ""))
        trial = trial_name(self.checkpoint)
        # A name for people (the page title): never a server path.
        self.model_name = trial or Path(self.checkpoint).name
        self.notice = TRIAL_BANNER if trial else None
        self.model = model
        self.processor = processor
        self.budget = budget or Budget()
        self.media_cache = media_cache or MediaCache()
        # Files decoded in worker processes that Stop and a time budget end (None: here).
        self.decoder = decoder
        self.max_new_tokens = max_new_tokens
        # Every forward pass runs on this one thread (app/engines/model_thread.py says why);
        # the model should have been loaded there too.
        self.runner = runner or ModelThread()
        self.family = family_of_model_type(model.config.model_type)
        self.runs_on_cpu = model.device.type == "cpu"
        self.weights: str | None = weights_kind(model)
        config = model.generation_config
        self.sampling_defaults = SamplingDefaults(
            config.temperature, config.top_p, config.top_k, config.repetition_penalty
        )
        self.supports_thinking = takes_thinking_switch(processor)
        self._lock = threading.Lock()
        control = sorted(set(processor.tokenizer.all_special_tokens) - GROUNDING_TOKENS, key=len)
        self._control_tokens = re.compile("|".join(re.escape(t) for t in reversed(control)))
        self._answer_start_id = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
        self._hooks = WatchHooks(model)
        vision = getattr(model.model, "visual", None) or model
        self._vision_device = next(vision.parameters()).device
        free = available_bytes(model.device.type == "cuda")
        per_token = kv.bytes_per_token(model.config, model.dtype.itemsize)
        context = model.config.get_text_config().max_position_embeddings
        self.max_prompt_tokens = max_prompt_tokens or default_max_prompt_tokens(
            context, free, per_token
        )
        if prefix_cache_bytes is None:
            prefix_cache_bytes = default_prefix_cache_bytes(free)
        self.prefix_cache = PrefixCache(prefix_cache_bytes, self._new_cache)

    @classmethod
    def load(
        cls, checkpoint: str, options: LoadOptions | None = None, **kwargs: Any
    ) -> LocalEngine:
        runner = ModelThread()
        model, processor = runner.submit(load_model, checkpoint, options or LoadOptions()).result()
        return cls(model, processor, checkpoint=checkpoint, runner=runner, **kwargs)

    def _new_cache(self) -> Any:
        return kv.new_cache(self.model.config)

    # --- bounds ---------------------------------------------------------------------------

    def _check_text(self, request: ChatRequest) -> None:
        """Refuse a conversation whose text alone is over the bound, before any media is read.
        The text is tokenized a piece at a time and counting stops once past the bound: a
        30 MB message costs what a prompt at the bound costs, not 30 MB of tokens."""
        text = text_of(request.turns)
        limit = self.max_prompt_tokens
        if len(text.encode()) <= limit:  # no token is shorter than a byte
            return
        tokenize = self.processor.tokenizer
        tokens = 0
        for start in range(0, len(text), TEXT_PIECE_CHARS):
            piece = text[start : start + TEXT_PIECE_CHARS]
            tokens += len(tokenize(piece, add_special_tokens=False)["input_ids"])
            if tokens > limit:
                raise EngineError(
                    f"This conversation's text is over {limit:,} tokens, more than this app "
                    f"reads in one prompt ({limit:,} tokens, --max-prompt-tokens). Shorten the "
                    "message or start a new chat."
                )

    def _check_prompt(self, prompt: Prompt) -> None:
        if len(prompt.ids) > self.max_prompt_tokens:
            raise EngineError(
                f"With its images and videos this prompt is {len(prompt.ids):,} tokens, more than "
                f"this app reads in one prompt ({self.max_prompt_tokens:,} tokens, "
                "--max-prompt-tokens). Lower the pixel budget or video frames in Settings, attach "
                "fewer files, or start a new chat."
            )

    # --- streaming ------------------------------------------------------------------------

    def _decoder_for(self, cancel: threading.Event) -> Decode | None:
        return self.decoder.for_request(cancel) if self.decoder else None

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> None:
        self._check_text(request)
        bound = VisualBound.of(self.processor, self.max_prompt_tokens)
        budget = request.budget or self.budget
        try:
            read_attachments(
                request.turns, budget, self.media_cache, self._decoder_for(cancel), bound
            )
        except MediaError as err:
            raise EngineError(str(err)) from err

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        self._check_text(request)
        try:
            # On the model thread too: the processor's torch ops (resizing, normalizing) on
            # the request's thread give it a second OpenMP pool, and with more pool threads
            # than cores libgomp spins less and wakes slower: a decode step after a photo took
            # 162 ms instead of 122 (2 cores, int8; app/engines/model_thread.py).
            prompt = self.runner.submit(
                build_prompt,
                self.processor,
                request,
                request.budget or self.budget,
                self.media_cache,
                self._decoder_for(cancel),
                self.max_prompt_tokens,
            ).result()
        except DecodeStopped:
            return  # stopped while a file was read: the reply ends empty, as stopped
        self._check_prompt(prompt)
        yield Delta(prompt=prompt.info)
        job = _Job(prompt, request, cancel)

        def work(emit: Emit) -> None:
            job.emit = emit
            self._run(job)

        progress = Progress("Starting")
        try:
            for batch in pump(
                work, cancel, name="qwen-generate", idle_s=PROGRESS_TICK_S, runner=self.runner
            ):
                news = [item for item in batch if isinstance(item, Progress)]
                progress = news[-1] if news else progress
                text = "".join(item for item in batch if isinstance(item, str))
                if text:
                    yield Delta(text=text)
                elif not job.tokens:  # still reading: what, and (each tick) for how long
                    yield Delta(progress=progress)
        except Cancelled:
            pass  # stopped while reading the prompt: the reply ends empty, as stopped
        except EngineError:
            raise
        except Exception as err:
            raise self._user_error(err) from err
        yield Delta(usage=self._usage(job))

    def _usage(self, job: _Job) -> Usage:
        return Usage(
            prompt_tokens=len(job.prompt.ids),
            completion_tokens=job.tokens,
            visual_tokens=job.prompt.visual_tokens,
            visual_by_attachment=job.prompt.costs,
            first_token_s=job.first_token_s,
            total_s=time.perf_counter() - job.started,
            cached_tokens=job.cached_tokens if self.prefix_cache.enabled else None,
        )

    def _run(self, job: _Job) -> None:
        """The generation thread: one request on the model, retried once on out-of-memory
        without the prefix cache (the cache must never be why a request runs out)."""
        with self._lock:
            if job.cancel.is_set():
                return
            self._hooks.watch = Watch(job.cancel, job.emit)
            try:
                try:
                    self._generate(job)
                except Exception as err:
                    held = job.cached_tokens or len(self.prefix_cache)
                    if not _is_out_of_memory(err) or job.tokens or not held:
                        raise
                    log.warning("out of memory with the prefix cache held; dropped it, retrying")
                    self.prefix_cache.clear()
                    _free_accelerator_memory()
                    self._generate(job)
            finally:
                self._hooks.watch = None

    def _generate(self, job: _Job) -> None:
        import torch

        prompt = job.prompt
        owner = job.request.owner
        reuse = self.prefix_cache.take(prompt.ids, prompt.media, owner)
        job.cached_tokens = reuse.tokens
        _log_reuse(prompt, reuse)
        marks = dict(reuse.marks)
        try:
            with torch.inference_mode():
                features = self._encode_media(prompt, reuse.tokens)
                if not kv.is_cuttable(reuse.cache):
                    features = self._read_to_marks(prompt, reuse, features, marks)
                sequences = self._decode(job, reuse.cache, features)
        except Cancelled:
            self._keep_what_was_read(prompt, reuse, marks, owner)
            raise
        cached = kv.length(reuse.cache)
        self.prefix_cache.put(sequences[:cached], prompt.media, reuse.cache, marks, owner)

    def _read_to_marks(self, prompt: Prompt, reuse: Reuse, features: Any, marks: kv.Marks) -> Any:
        """For a state that cannot be cut back (Qwen3.5's linear attention): read up to where a
        later prompt may leave this one, keeping a copy of the state there: the start of the
        answer's turn (Thinking templates drop earlier reasoning after it; an edited question
        leaves before it) and the last prompt token (Regenerate). Returns the media features
        still to read (none)."""
        for stop_at in (self._answer_start(prompt.ids), len(prompt.ids) - 1):
            if stop_at > kv.length(reuse.cache):
                self._read(prompt, reuse.cache, features, stop_at=stop_at)
                marks[stop_at] = kv.mark(reuse.cache)
                features = None
        return features

    def _keep_what_was_read(
        self, prompt: Prompt, reuse: Reuse, marks: kv.Marks, owner: str
    ) -> None:
        """A prefill stopped between layers leaves the cache half-written: cut it back to what
        it held before (where the cache allows that) and keep it."""
        if reuse.tokens and kv.is_cuttable(reuse.cache):
            kv.cut(reuse.cache, reuse.tokens, marks)
            self.prefix_cache.put(
                prompt.ids[: reuse.tokens], prompt.media, reuse.cache, marks, owner
            )

    def _answer_start(self, ids: tuple[int, ...]) -> int:
        """Where the answer's turn starts: the last `<|im_start|>` of the prompt."""
        for index in range(len(ids) - 1, -1, -1):
            if ids[index] == self._answer_start_id:
                return index
        return len(ids) - 1

    def _encode_media(self, prompt: Prompt, cached: int) -> dict[str, Any] | None:
        """The vision encoder's outputs for the images and videos after the cached part."""
        outputs: dict[str, Any] = {}
        for kind, grid_name, pixels_name, encode in (
            ("image", "image_grid_thw", "pixel_values", self.model.model.get_image_features),
            ("video", "video_grid_thw", "pixel_values_videos", self.model.model.get_video_features),
        ):
            new = [s for s in prompt.media if s.kind == kind and s.start >= cached]
            if not new:
                continue
            names = ", ".join(dict.fromkeys(span.name for span in new))
            tokens = sum(span.end - span.start for span in new)
            self._hooks.set_stage(f"Reading {names} · {tokens} visual tokens", "vision", tokens)
            grid = prompt.inputs[grid_name]
            first = new[0].index
            rows = int(grid[:first].prod(-1).sum())
            # The vision encoder's own device: on a model spread over GPUs, the first one's.
            device = self._vision_device
            pixels = prompt.inputs[pixels_name][rows:].to(device)
            outputs[kind] = encode(pixels, grid[first:].to(device), return_dict=True)
        return outputs or None

    def _model_inputs(self, prompt: Prompt, stop_at: int | None = None) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for name, value in prompt.inputs.items():
            if name in PIXEL_INPUTS:
                continue
            if stop_at is not None and name in ("input_ids", "attention_mask", "mm_token_type_ids"):
                value = value[:, :stop_at]
            inputs[name] = value.to(self.model.device)
        # Qwen-VL keeps the multimodal RoPE offset of the last request on the model; computed
        # afresh from this whole prompt (a stale one misplaces every token after a cache hit).
        self.model.model.rope_deltas = None
        return inputs

    def _read(self, prompt: Prompt, cache: Any, features: Any, stop_at: int) -> None:
        """Read the prompt up to `stop_at` into `cache` (one forward; the sampled token unused)."""
        tokens = stop_at - kv.length(cache)
        self._hooks.set_stage(f"Reading the conversation · {tokens} tokens", "language", tokens)
        extra = {"mm_encoder_outputs": features} if features else {}
        self.model.generate(
            **self._model_inputs(prompt, stop_at),
            **extra,
            cache=cache,
            max_new_tokens=1,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
        )

    def _decode(self, job: _Job, cache: Any, features: Any) -> list[int]:
        """Read the rest of the prompt, then generate the reply; return every id read or made."""
        from transformers import StoppingCriteriaList

        prompt = job.prompt
        tokens = len(prompt.ids) - kv.length(cache)
        self._hooks.set_stage(f"Reading the conversation · {tokens} tokens", "language", tokens)
        control_tokens = self._control_tokens

        def on_token(count: int) -> None:
            if job.first_token_s is None:
                job.first_token_s = time.perf_counter() - job.started
                self._hooks.end_stage()
            job.tokens += count

        def on_text(text: str) -> None:
            text = control_tokens.sub("", text)
            if text:
                job.emit(text)

        extra = {"mm_encoder_outputs": features} if features else {}
        if job.request.params.seed is not None:
            from transformers import set_seed

            set_seed(job.request.params.seed)
        sequences = self.model.generate(
            **self._model_inputs(prompt),
            **extra,
            **self._generate_kwargs(job.request),
            cache=cache,
            streamer=TokenStreamer(self.processor.tokenizer, on_text, on_token),
            stopping_criteria=StoppingCriteriaList([_stop_on_cancel(job.cancel)]),
        )
        return list(sequences[0].tolist())

    def _generate_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        params = request.params
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.bounded_max_new_tokens(self.max_new_tokens)
        }
        if params.temperature is not None:
            if params.temperature <= 0:
                kwargs["do_sample"] = False
                # Silence sampling-only defaults that greedy decoding would warn about.
                kwargs.update(temperature=None, top_p=None, top_k=None)
            else:
                kwargs["do_sample"] = True
                kwargs["temperature"] = params.temperature
        if kwargs.get("do_sample", True):
            if params.top_p is not None:
                kwargs["top_p"] = params.top_p
            if params.top_k is not None:
                kwargs["top_k"] = params.top_k
        if params.repetition_penalty is not None:
            kwargs["repetition_penalty"] = params.repetition_penalty
        return kwargs

    def _user_error(self, error: BaseException) -> EngineError:
        if _is_out_of_memory(error):
            _free_accelerator_memory()
            return EngineError(
                "The model ran out of memory on this request. Try fewer or smaller images, a "
                "lower pixel budget in Settings, or restart the app with --load-in-4bit."
            )
        return EngineError(f"Generation failed: {type(error).__name__}: {error}")


def _stop_on_cancel(cancel: threading.Event) -> Any:
    """A stopping criterion that ends generate() at the next token once `cancel` is set."""
    import torch
    from transformers import StoppingCriteria

    class StopOnCancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return StopOnCancel()


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _free_accelerator_memory() -> None:
    """Give the CUDA caches back, on every visible GPU (a model may be spread over them)."""
    import torch

    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        with torch.cuda.device(index):
            torch.cuda.empty_cache()


def _log_reuse(prompt: Prompt, reuse: Reuse) -> None:
    if reuse.matched_length and reuse.tokens < reuse.shared:
        log.info(
            "prefix cache: the prompt shares %d tokens with a cached one of %d; reused %d "
            "(the cache can be cut back only there)",
            reuse.shared,
            reuse.matched_length,
            reuse.tokens,
        )
    elif reuse.matched_length and reuse.shared < reuse.matched_length:
        log.info(
            "prefix cache: the prompt leaves a cached sequence of %d tokens at token %d (an "
            "edited turn, or a template that drops earlier reasoning); reused %d of %d",
            reuse.matched_length,
            reuse.shared,
            reuse.tokens,
            len(prompt.ids),
        )
