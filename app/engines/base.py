"""The contract every engine keeps.

A `ChatRequest` (turns with attachments, generation parameters) goes in; an iterator of `Delta`
comes out. Cancellation is a `threading.Event` the caller sets; the engine must stop generating
at its next token. Errors a user should read are `EngineError`s with a message for people.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from app.media import Budget, MediaCache


@dataclass(frozen=True)
class Attachment:
    """A file the user attached: its path on the server and its original name."""

    path: str
    name: str


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    """None means: use the checkpoint's generation config."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    enable_thinking: bool | None = None

    def bounded_max_new_tokens(self, cap: int) -> int:
        """The reply length asked for, or `cap` when none is; never above `cap`."""
        return min(self.max_new_tokens or cap, cap)


@dataclass(frozen=True)
class ChatRequest:
    turns: tuple[Turn, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    # Pixel and frame budget for this request's media; None: the engine's own.
    budget: Budget | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int | None  # None where the engine cannot tell (a remote server)
    first_token_s: float | None
    total_s: float
    # Visual tokens per attached file, by name, in prompt order.
    visual_by_attachment: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ImageRef:
    """One image in the prompt: its file, which image of that file (a PDF page), and the size
    (width, height) the model saw after the processor's resize, when known."""

    attachment: Attachment
    index: int
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PromptInfo:
    """What the engine learned while building the prompt, for rendering the reply."""

    # The prompt ends inside a reasoning block (the template opened `<think>` itself).
    opens_in_reasoning: bool = False
    # Every image in the prompt, in order.
    images: tuple[ImageRef, ...] = ()


@dataclass(frozen=True)
class Delta:
    """One piece of a reply: prompt facts (first), raw generated text, or the final usage."""

    text: str = ""
    prompt: PromptInfo | None = None
    usage: Usage | None = None


class EngineError(Exception):
    """An error whose message is written for the user and shown in the chat."""


class Engine(Protocol):
    name: str
    family: str
    checkpoint: str
    # The media path the engine reads attachments with (the UI reuses it to draw boxes).
    budget: Budget
    media_cache: MediaCache

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        """Yield deltas until the reply ends or `cancel` is set; raise EngineError on failure."""
        ...
