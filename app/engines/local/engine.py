"""transformers in this process: one model, several replies decoded together, streamed, stopped.

One `LocalEngine` is built in `main` and shared by every browser session. Its scheduler
(scheduler.py) reads one prompt at a time on the model thread and decodes up to `max_batch`
replies in one batch (batch.py). Each request starts from the longest prefix of its prompt
that the prefix cache holds (reuse.py): only the images and videos after it are encoded, and
only the tokens after it are read. Stop (or a closed tab) ends the prefill between two layers
and the reply at the next token, without touching the others. Errors cross from the model
thread as exceptions, not timeouts; an out-of-memory with the prefix cache held is retried once
without it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING

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
from app.engines.local.generation import kv
from app.engines.local.generation.attention import stored_kv_dtype
from app.engines.local.generation.batch import BatchStep, Row
from app.engines.local.generation.bounds import PromptBound
from app.engines.local.generation.calls import Job, ModelCalls
from app.engines.local.generation.internals import ModelInternals
from app.engines.local.generation.out_of_memory import (
    free_accelerator_memory,
    is_out_of_memory,
)
from app.engines.local.generation.prefix_cache import PrefixCache
from app.engines.local.generation.prompt import (
    VisualBound,
    build_prompt,
    read_attachments,
    takes_thinking_switch,
)
from app.engines.local.generation.reuse import CachedGeneration
from app.engines.local.generation.scheduler import BatchScheduler
from app.engines.local.generation.watch import WatchHooks
from app.engines.local.loaded import LoadedModel
from app.engines.pump import Emit, pump
from app.media import Attached, Budget, MediaCache, MediaError
from app.media.worker import DecodePool, DecodeStopped
from app.said import message, say
from app.weights import WeightsKind

if TYPE_CHECKING:
    from app.media.cache import Decode

log = logging.getLogger(__name__)


class LocalEngine:
    """A transformers model and processor, loaded once, streaming one request at a time.

    `runner` is the thread the model was loaded on (model_thread.py says why every forward
    pass runs there); the bounds and the page's name for the model are `main`'s to decide."""

    name = "local"

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        runner: Executor,
        model_name: str,
        max_prompt_tokens: int,
        prefix_cache_bytes: int,
        notice: str | None = None,
        budget: Budget | None = None,
        media_cache: MediaCache | None = None,
        max_new_tokens: int = 1024,
        decoder: DecodePool | None = None,
        max_batch: int = 1,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.notice = notice
        self.loaded = loaded
        model, processor = loaded.model, loaded.processor
        self.model = model
        self.processor = processor
        self.budget = budget or Budget()
        self.media_cache = media_cache or MediaCache()
        # Files decoded in worker processes that Stop and a time budget end (None: here).
        self.decoder = decoder
        self.runner = runner
        self.family = family_of_model_type(model.config.model_type)
        self.runs_on_cpu = model.device.type == "cpu"
        self.max_concurrent = max_batch  # replies decoded together (more wait in the fair queue)
        self.weights: WeightsKind | None = loaded.weights.kind
        config = model.generation_config
        self.sampling_defaults = SamplingDefaults(
            config.temperature, config.top_p, config.top_k, config.repetition_penalty
        )
        self.supports_thinking = takes_thinking_switch(processor)
        self.bound = PromptBound(max_prompt_tokens, processor.tokenizer)
        stored = stored_kv_dtype(model)
        self.prefix_cache = PrefixCache(
            prefix_cache_bytes, lambda: kv.new_cache(model.config, stored)
        )
        # Checks, before any request, that this transformers has the internals the engine uses.
        internals = ModelInternals(model)
        self._hooks = WatchHooks(internals.vision_blocks, internals.language_layers)
        calls = ModelCalls(model, processor, internals, self._hooks, max_new_tokens)
        answer_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
        self._generation = CachedGeneration(calls, self.prefix_cache, answer_start)
        self.scheduler = BatchScheduler(
            runner,
            self._generation,
            BatchStep(model, internals),
            self._hooks,
            max_batch=max_batch,
            max_batch_tokens=max_batch_tokens or max_prompt_tokens,
            prefill=self._prefill,
        )
        # The model, processor and tokenizer are some 470,000 Python objects that live as long
        # as the app: a full garbage collection walked them all, 235 ms, a pause in every
        # stream now and then (0.32 s seen). Frozen, collections skip them.
        gc.freeze()

    @property
    def max_prompt_tokens(self) -> int:
        return self.bound.max_tokens

    def _decoder_for(self, request: ChatRequest, cancel: threading.Event) -> Decode | None:
        return self.decoder.for_request(cancel, request.asker) if self.decoder else None

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> dict[str, Attached]:
        self.bound.check_text(request.turns)
        visual = VisualBound.of(self.processor, self.max_prompt_tokens)
        budget = request.budget or self.budget
        try:
            read = read_attachments(
                request.turns, budget, self.media_cache, self._decoder_for(request, cancel), visual
            )
        except MediaError as err:
            raise EngineError(message(err)) from err
        return {path: attached for (path, _), attached in read.items()}

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        self.bound.check_text(request.turns)
        try:
            # On the model thread too: the processor's torch ops (resizing, normalizing) on
            # the request's thread give it a second OpenMP pool, and with more pool threads
            # than cores libgomp spins less and wakes slower: a decode step after a photo took
            # 162 ms instead of 122 (2 cores, int8; app/engines/local/model_thread.py).
            prompt = self.scheduler.submit(
                build_prompt,
                self.processor,
                request,
                request.budget or self.budget,
                self.media_cache,
                self._decoder_for(request, cancel),
                self.max_prompt_tokens,
            ).result()
        except DecodeStopped:
            return  # stopped while a file was read: the reply ends empty, as stopped
        self.bound.check_prompt(prompt)
        yield Delta(prompt=prompt.info)
        job = Job(prompt, request, cancel)
        try:
            yield from self._deltas(job)
        except EngineError:
            raise
        except Exception as err:
            raise self._user_error(err) from err
        yield Delta(usage=self._usage(job))

    def _deltas(self, job: Job) -> Iterator[Delta]:
        """The job run by the scheduler: its text as it comes, its progress until then."""

        def work(emit: Emit) -> None:
            job.emit = emit
            self.scheduler.run(job)

        progress = Progress(say("Starting", "正在开始"))
        for batch in pump(work, job.cancel, name="qwen-generate", idle_s=PROGRESS_TICK_S):
            news = [item for item in batch if isinstance(item, Progress)]
            progress = news[-1] if news else progress
            text = "".join(item for item in batch if isinstance(item, str))
            if text:
                yield Delta(text=text)
            elif not job.tokens:  # still reading: what, and (each tick) for how long
                yield Delta(progress=progress)

    def _usage(self, job: Job) -> Usage:
        return Usage(
            prompt_tokens=len(job.prompt.ids),
            completion_tokens=job.tokens,
            visual_tokens=job.prompt.visual_tokens,
            visual_by_attachment=job.prompt.costs,
            first_token_s=job.first_token_s,
            total_s=time.perf_counter() - job.started,
            cached_tokens=job.cached_tokens if self.prefix_cache.enabled else None,
            context_tokens=self.max_prompt_tokens,
        )

    def _prefill(self, job: Job) -> Row:
        """The model thread: a request's prompt read, retried once on out-of-memory without
        the prefix cache (the cache must never be why a request runs out)."""
        try:
            return self._generation.start(job)
        except Exception as err:
            held = job.cached_tokens or len(self.prefix_cache)
            if not is_out_of_memory(err) or job.tokens or not held:
                raise
            log.warning("out of memory with the prefix cache held; dropped it, retrying")
            self.prefix_cache.clear()
            free_accelerator_memory()
            return self._generation.start(job)

    def _user_error(self, error: BaseException) -> EngineError:
        if is_out_of_memory(error):
            free_accelerator_memory()
            return EngineError(
                say(
                    "The model ran out of memory on this request. Try fewer or smaller images, "
                    "a lower pixel budget in Settings, or restart the app with --load-in-4bit.",
                    "模型处理这个请求时内存不足。请少用或换小一些的图片、在设置中调低像素预算，"
                    "或用 --load-in-4bit 重新启动应用。",
                )
            )
        what = f"{type(error).__name__}: {error}"
        return EngineError(say(f"Generation failed: {what}", f"生成失败：{what}"))
