"""The contract every engine keeps.

A `ChatRequest` (turns with attachments, generation parameters) goes in; an iterator of `Delta`
comes out. Cancellation is a `threading.Event` the caller sets; the engine must stop generating
at its next token. Errors a user should read are `EngineError`s with a message for people.

An engine also declares what the UI needs to know of it (as simonw/llm's models declare
`can_stream` and `attachment_types`): its model's name and family, the sampling defaults of its
checkpoint, whether its chat template takes `enable_thinking`, what its weights are and whether
it computes on this machine's CPU. Callers read these attributes; they never probe for others.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from app.media import Attached, Budget
    from app.weights import WeightsKind

# The families whose grounding coordinates and prompt layout the app knows; MoE variants
# behave as their dense family.
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
_MODEL_TYPES = {"qwen3_vl_moe": "qwen3_vl", "qwen3_5_moe": "qwen3_5"}
# Served model names as vLLM and SGLang report them ("Qwen/Qwen2.5-VL-7B-Instruct"), most
# specific first.
_NAME_PATTERNS = (
    (re.compile(r"qwen2[._-]?5[._-]?vl"), "qwen2_5_vl"),
    (re.compile(r"qwen2[._-]?vl"), "qwen2_vl"),
    (re.compile(r"qwen3[._-]?vl"), "qwen3_vl"),
    (re.compile(r"qwen3[._-]?5"), "qwen3_5"),
)


def family_of_model_type(model_type: str) -> str:
    """The family of a transformers `model_type` (qwen3_vl_moe -> qwen3_vl)."""
    return _MODEL_TYPES.get(model_type, model_type)


def family_of_model_name(name: str) -> str | None:
    """The family a served model's name says, or None when it names none of them."""
    lowered = name.lower()
    return next((family for pattern, family in _NAME_PATTERNS if pattern.search(lowered)), None)


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
class SamplingDefaults:
    """The checkpoint's own sampling settings, where it has them (None: not known)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class ChatRequest:
    turns: tuple[Turn, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    # Pixel and frame budget for this request's media; None: the engine's own.
    budget: Budget | None = None
    # Whose requests may share model state with this one (the prefix cache): the login, else
    # the browser session. One user's prompts never change what another's cost or return.
    owner: str = ""
    # Whose turn the request takes, on the file decoders and on the model: the login, else the
    # address (set by app/replies.py's RequestRunner); "" where no one else asks.
    asker: str = ""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int | None  # None where the engine cannot tell (a remote server)
    first_token_s: float | None
    total_s: float
    # Visual tokens per attached file, by name, in prompt order.
    visual_by_attachment: tuple[tuple[str, int], ...] = ()
    # Prompt tokens whose model state came from the prefix cache (None: no cache).
    cached_tokens: int | None = None
    # The longest prompt the engine reads (its bound, or the served model's context), where
    # known: the conversation so far is measured against it (the stats line's context meter).
    context_tokens: int | None = None


@dataclass(frozen=True)
class ImageRef:
    """One image in the prompt: its file, which image of that file (a PDF page), the image as
    the request read it, and the size (width, height) the model saw after the processor's
    resize, where known."""

    attachment: Attachment
    index: int
    image: Image.Image | None = None
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PromptInfo:
    """What the engine learned while building the prompt, for rendering the reply."""

    # The prompt ends inside a reasoning block (the template opened `<think>` itself).
    opens_in_reasoning: bool = False
    # Every image in the prompt, in order.
    images: tuple[ImageRef, ...] = ()


# Before the first token, the caller hears about the request at least this often (the page
# shows the time passing; gradio gets a point at which to drop a request whose user has gone).
PROGRESS_TICK_S = 1.0


@dataclass(frozen=True)
class Progress:
    """Work before the first token: what is being done, how far (0-1), when it began
    (`time.perf_counter()`), and how long it should take in all, where known."""

    stage: str
    fraction: float | None = None
    started: float | None = None
    estimate_s: float | None = None


@dataclass(frozen=True)
class Delta:
    """One piece of a reply: prompt facts (first), progress before the first token, raw
    generated text, or the final usage. An empty one says the engine is waiting: the caller
    gets a point at which to drop a request whose user has gone (gradio ends a request
    only between two of its updates)."""

    text: str = ""
    prompt: PromptInfo | None = None
    progress: Progress | None = None
    usage: Usage | None = None


class EngineError(Exception):
    """An error whose message is written for the user and shown in the chat."""


class Engine(Protocol):
    """What every engine is and does; the UI reads nothing else of it."""

    name: str  # "local", "openai"
    model_name: str  # the model's own name, for the page title (never a server path)
    family: str  # one of FAMILIES: how its boxes are scaled
    sampling_defaults: SamplingDefaults
    supports_thinking: bool  # the chat template takes `enable_thinking`
    notice: str | None  # a line the page shows about this model (the offline trial's banner)
    budget: Budget  # the media budget requests get unless they ask for another
    runs_on_cpu: bool  # the model computes on this machine's CPU
    max_concurrent: int  # requests it serves at once (more wait their turn: app/fair_queue.py)
    # What the weights are where this app computes (app/weights.py); None where a server
    # computes them.
    weights: WeightsKind | None

    def read_media(self, request: ChatRequest, cancel: threading.Event) -> dict[str, Attached]:
        """Decode every attachment of `request` into the engine's media cache, and refuse (an
        EngineError) a request whose text or media are over the engine's bounds. Called
        before the request takes its turn on the model, so that reading one user's files
        never holds the model for another; `stream` then finds them read. Returns what each
        file became, by its path (the page's previews are made of it). Raises DecodeStopped
        (app.media.worker) when `cancel` is set while a file is read."""
        ...

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        """Yield deltas until the reply ends or `cancel` is set; raise EngineError on failure."""
        ...
