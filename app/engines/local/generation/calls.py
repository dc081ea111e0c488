"""The model's work for one request: encode its new images and videos, read its prompt up to a
point, decode the reply. Each call tells the watch hooks what it is doing (progress, Stop)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from app.engines.base import ChatRequest
from app.engines.local.generation import kv
from app.engines.local.generation.generate_kwargs import generate_kwargs
from app.engines.local.generation.internals import ENCODERS, ModelInternals
from app.engines.local.generation.prompt import Prompt
from app.engines.local.generation.sampling import RowSampler
from app.engines.local.generation.streamer import TokenStreamer
from app.engines.local.generation.watch import WatchHooks
from app.engines.pump import Emit
from app.said import Said, say

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


@dataclass(eq=False)  # one per reply: compared by identity
class Job:
    """One request on its way through the model: what it asks, where its output goes (`emit`,
    read by the caller through the pump), and what the model thread measures."""

    prompt: Prompt
    request: ChatRequest
    cancel: threading.Event
    emit: Emit = field(default=lambda item: None)
    tokens: int = 0
    first_token_s: float | None = None
    cached_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    # Set by the model thread when the job is over (its reply whole, stopped, or failed).
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.ended.set()


class ModelCalls:
    """`generate` and the vision encoder on one model, as a request's stages."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        internals: ModelInternals,
        hooks: WatchHooks,
        max_new_tokens: int,
    ) -> None:
        self.model = model
        self.internals = internals
        self.hooks = hooks
        self.max_new_tokens = max_new_tokens
        self._tokenizer = processor.tokenizer
        self._control_tokens = control_tokens(self._tokenizer)

    def encode_media(self, prompt: Prompt, cached: int) -> dict[str, Any] | None:
        """The vision encoder's outputs for the images and videos after the cached part."""
        outputs: dict[str, Any] = {}
        for kind, (grid_name, pixels_name, _) in ENCODERS.items():
            new = [s for s in prompt.media if s.kind == kind and s.start >= cached]
            if not new:
                continue
            names = ", ".join(dict.fromkeys(span.name for span in new))
            tokens = sum(span.end - span.start for span in new)
            stage = say(
                f"Reading {names} · {tokens} visual tokens",
                f"正在读取 {names} · {tokens} 个视觉 token",
            )
            self.hooks.set_stage(stage, "vision", tokens)
            grid = prompt.inputs[grid_name]
            first = new[0].index
            rows = int(grid[:first].prod(-1).sum())
            pixels = prompt.inputs[pixels_name][rows:]
            outputs[kind] = self.internals.encode(kind, pixels, grid[first:])
        return outputs or None

    def read(self, prompt: Prompt, cache: Any, features: Any, stop_at: int | None = None) -> Any:
        """Read the prompt into `cache`, up to `stop_at` (None: all of it), in one forward; the
        logits of the token after it (1, vocabulary), float32, as the model gave them (the
        reply's first token, where the whole prompt was read)."""
        end = len(prompt.ids) if stop_at is None else stop_at
        tokens = end - kv.length(cache)
        self.hooks.set_stage(reading_conversation(tokens), "language", tokens)
        out = self.model.generate(
            **self.internals.model_inputs(prompt.inputs, stop_at),
            **self.internals.encoded(features),
            cache=cache,
            max_new_tokens=1,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        return out.logits[0]

    def rope_offset(self) -> int:
        """The RoPE offset of the prompt just read (each reply keeps its own)."""
        return self.internals.rope_offset()

    def sampler(self, job: Job) -> RowSampler:
        """How the job's reply picks its tokens: its settings over the checkpoint's."""
        params = job.request.params
        kwargs = generate_kwargs(params, self.max_new_tokens)
        plan = self.internals.sampling_plan(kwargs, len(job.prompt.ids))
        return RowSampler(plan, list(job.prompt.ids), params.seed)

    def streamer(self, job: Job) -> TokenStreamer:
        """Each token's text to the job (without control tokens); the first token's time."""
        control_tokens = self._control_tokens

        def on_token(count: int) -> None:
            if job.first_token_s is None:
                job.first_token_s = time.perf_counter() - job.started
                self.hooks.end_stage()
            job.tokens += count

        def on_text(text: str) -> None:
            text = control_tokens.sub("", text)
            if text:
                job.emit(text)

        return TokenStreamer(self._tokenizer, on_text, on_token)


# Tags that split a reply into reasoning and answer (app/render.py): kept, they mean something.
REASONING_TAGS = frozenset({"<think>", "</think>"})


def control_tokens(tokenizer: Any) -> re.Pattern[str]:
    """The tokens of the chat protocol a reply must never show: the tokenizer's special tokens
    and every token it added (`<|im_start|>`, `<|fim_prefix|>`, `<tool_call>`: some are added
    without the special flag), but grounding's and the reasoning tags."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    control = (set(tokenizer.all_special_tokens) | added) - GROUNDING_TOKENS - REASONING_TAGS
    return re.compile("|".join(re.escape(t) for t in sorted(control, key=len, reverse=True)))


def reading_conversation(tokens: int) -> Said:
    return say(f"Reading the conversation · {tokens} tokens", f"正在读取对话 · {tokens} 个 token")
