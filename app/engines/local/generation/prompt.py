"""The local engine's prompt: chat turns and their media -> processor inputs, and what they cost.

`build_prompt` reads every attachment within the request's budget, renders the chat template,
runs the processor, and records where each image and video sits in the token ids (its span) and
what content it stands for (its key): the prefix cache matches prompts by ids and keys, and
encodes only the media after the cached part.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.engines.base import ChatRequest, EngineError, ImageRef, PromptInfo, Turn
from app.media import Attached, Budget, MediaCache, MediaError, VideoClip, read_attachment
from app.said import Said, message, say

if TYPE_CHECKING:
    from app.media.cache import Decode, Visual


@dataclass(frozen=True)
class MediaSpan:
    """One image or video in the prompt: token positions [start, end) and its content key."""

    kind: str  # "image" or "video"
    start: int
    end: int
    key: str
    index: int  # among the prompt's images (or videos), in order
    name: str  # the attachment it comes from


@dataclass(frozen=True)
class Prompt:
    """A request made ready for the model."""

    inputs: Any  # the processor's BatchFeature
    ids: tuple[int, ...]
    media: tuple[MediaSpan, ...]
    info: PromptInfo
    costs: tuple[tuple[str, int], ...]  # visual tokens per attachment, in attachment order

    @property
    def visual_tokens(self) -> int:
        return sum(tokens for _, tokens in self.costs)


@dataclass
class _Parts:
    """The chat messages and media of a request, collected in prompt order."""

    messages: list[dict]
    images: list[Any]
    image_refs: list[ImageRef]
    image_keys: list[str]
    image_owners: list[str]
    videos: list[VideoClip]
    video_owners: list[str]
    video_keys: list[str]


def takes_thinking_switch(processor: Any) -> bool:
    """The chat template takes `enable_thinking` (Qwen3.5's do; Qwen3-VL's do not)."""
    return "enable_thinking" in str(processor.chat_template or "")


@dataclass(frozen=True)
class VisualBound:
    """The prompt bound, applied to the media as they are read, before the processor runs:
    `factor` pixels a side make one visual token, `temporal` frames one video token."""

    max_tokens: int
    factor: int
    temporal: int

    @classmethod
    def of(cls, processor: Any, max_tokens: int) -> VisualBound:
        images = processor.image_processor
        video = getattr(processor, "video_processor", None)
        factor = getattr(images, "patch_size", 14) * getattr(images, "merge_size", 2)
        return cls(max_tokens, factor, int(getattr(video, "temporal_patch_size", 2) or 2))

    def tokens(self, visual: Visual) -> int:
        """About what the processor will make of `visual` (a lower bound: it rounds up)."""
        if isinstance(visual, VideoClip):
            frames, height, width = visual.frames.shape[:3]
            return math.ceil(frames / self.temporal) * max(1, height * width // self.factor**2)
        return max(1, visual.width * visual.height // self.factor**2)

    def check(self, tokens: int) -> None:
        if tokens > self.max_tokens:
            raise EngineError(too_long_with_media(tokens, self.max_tokens, or_more=True))


def too_long_with_media(tokens: int, limit: int, or_more: bool = False) -> Said:
    """A prompt of `tokens` tokens (or more) with its media, over the bound of `limit`."""
    size = f"{tokens:,} tokens" + (" or more" if or_more else "")
    size_zh = f"{tokens:,} 个 token" + ("或更多" if or_more else "")
    return say(
        f"With its images and videos this prompt is {size}, more than this app reads in one "
        f"prompt ({limit:,} tokens, --max-prompt-tokens). Lower the pixel budget or video frames "
        "in Settings, attach fewer files, or start a new chat.",
        f"连同图片和视频，这条提示词有 {size_zh}，"
        f"超过了本应用一次能读取的上限（{limit:,} 个 token，--max-prompt-tokens）。"
        "请在设置中调低像素预算或视频帧数、少附几个文件，或开始新对话。",
    )


def read_attachments(
    turns: Sequence[Turn],
    budget: Budget,
    media_cache: MediaCache,
    decode: Decode | None,
    bound: VisualBound | None,
) -> dict[tuple[str, str], Attached]:
    """Every distinct attachment of the conversation read once (a file attached a thousand
    times is read once), its visual tokens counted against `bound` as they come: a prompt
    over the bound is refused before the rest is read and before the processor runs."""
    read: dict[tuple[str, str], Attached] = {}
    tokens = 0
    for attachment in (a for turn in turns for a in turn.attachments):
        key = (attachment.path, attachment.name)
        if key not in read:
            read[key] = read_attachment(
                attachment.path, budget, media_cache, attachment.name, decode
            )
        if bound is not None:
            tokens += sum(bound.tokens(visual) for visual in read[key].visuals)
            bound.check(tokens)
    return read


def _collect(
    turns: Sequence[Turn],
    budget: Budget,
    media_cache: MediaCache,
    decode: Decode | None = None,
    bound: VisualBound | None = None,
) -> _Parts:
    read = read_attachments(turns, budget, media_cache, decode, bound)
    parts = _Parts([], [], [], [], [], [], [], [])
    for turn in turns:
        if turn.role == "system":
            parts.messages.append(
                {"role": "system", "content": [{"type": "text", "text": turn.text}]}
            )
            continue
        content: list[dict] = []
        for attachment in turn.attachments:
            attached = read[(attachment.path, attachment.name)]
            for index, visual in enumerate(attached.visuals):
                key = f"{attached.key}#{index}"
                if isinstance(visual, VideoClip):
                    content.append({"type": "video"})
                    parts.videos.append(visual)
                    parts.video_owners.append(attachment.name)
                    parts.video_keys.append(key)
                else:
                    content.append({"type": "image"})
                    parts.images.append(visual)
                    parts.image_refs.append(ImageRef(attachment, index, visual))
                    parts.image_keys.append(key)
                    parts.image_owners.append(attachment.name)
        if turn.text or not content:
            content.append({"type": "text", "text": turn.text})
        parts.messages.append({"role": turn.role, "content": content})
    return parts


def image_size_bounds(processor: Any, budget: Budget) -> dict[str, int]:
    """The pixel bounds the processor resizes images within: the request's budget, kept inside
    the checkpoint's own bounds. Given to the processor, its own rounding to whole patches
    stays within the budget, and an image costs what the processor alone would make of it."""
    own = getattr(processor.image_processor, "size", None) or {}
    low = max(budget.min_pixels, int(own.get("shortest_edge") or 0))
    high = min(budget.max_pixels, int(own.get("longest_edge") or budget.max_pixels))
    return {"shortest_edge": min(low, high), "longest_edge": high}


def _processor_inputs(
    processor: Any, parts: _Parts, template_kwargs: dict[str, Any], budget: Budget
) -> Any:
    prompt = processor.apply_chat_template(
        parts.messages, add_generation_prompt=True, tokenize=False, **template_kwargs
    )
    kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
    if parts.images:
        kwargs["images"] = parts.images
        kwargs["images_kwargs"] = {"size": image_size_bounds(processor, budget)}
    if parts.videos:
        kwargs["videos"] = [clip.frames for clip in parts.videos]
        kwargs["videos_kwargs"] = {
            "do_sample_frames": False,
            # Frames are already scaled into the per-frame budget; the reference cap agrees.
            "cap_pixels_per_frame": True,
            "video_metadata": [clip.metadata() for clip in parts.videos],
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = processor(**kwargs)
    return prompt, inputs


def _spans(
    ids: list[int], token_id: int, kind: str, counts: list[int], keys: list[str], names: list[str]
) -> list[MediaSpan]:
    """Where each image (or video) sits: its placeholder tokens, in order, `counts[i]` each."""
    positions = [i for i, token in enumerate(ids) if token == token_id]
    spans, taken = [], 0
    for index, (count, key, name) in enumerate(zip(counts, keys, names, strict=True)):
        mine = positions[taken : taken + count]
        taken += count
        spans.append(MediaSpan(kind, mine[0], mine[-1] + 1, key, index, name))
    return spans


def build_prompt(
    processor: Any,
    request: ChatRequest,
    budget: Budget,
    media_cache: MediaCache,
    decode: Decode | None = None,
    max_tokens: int | None = None,
) -> Prompt:
    """Processor inputs, media spans and keys, prompt facts, and each attachment's cost; the
    media decoded by `decode` (default: here), refused past `max_tokens` while being read."""
    bound = VisualBound.of(processor, max_tokens) if max_tokens else None
    try:
        parts = _collect(request.turns, budget, media_cache, decode, bound)
    except MediaError as err:
        raise EngineError(message(err)) from err
    template_kwargs: dict[str, Any] = {}
    # Only to a template that takes it (transformers reads any other as a processor option).
    if request.params.enable_thinking is not None and takes_thinking_switch(processor):
        template_kwargs["enable_thinking"] = request.params.enable_thinking
    text, inputs = _processor_inputs(processor, parts, template_kwargs, budget)
    merge = getattr(processor.image_processor, "merge_size", 2)
    patch = getattr(processor.image_processor, "patch_size", 14)
    image_tokens = [t * h * w // merge**2 for t, h, w in _grids(inputs, "image_grid_thw")]
    video_tokens = [t * h * w // merge**2 for t, h, w in _grids(inputs, "video_grid_thw")]
    ids = inputs["input_ids"][0].tolist()
    token_id = processor.tokenizer.convert_tokens_to_ids
    image_id, video_id = token_id(processor.image_token), token_id(processor.video_token)
    media = _spans(ids, image_id, "image", image_tokens, parts.image_keys, parts.image_owners)
    media += _spans(ids, video_id, "video", video_tokens, parts.video_keys, parts.video_owners)
    # Keyed in the order the files were attached, whatever their kind.
    costs = {a.name: 0 for turn in request.turns for a in turn.attachments}
    for ref, tokens in zip(parts.image_refs, image_tokens, strict=True):
        costs[ref.attachment.name] += tokens
    for name, tokens in zip(parts.video_owners, video_tokens, strict=True):
        costs[name] += tokens
    sizes = [(w * patch, h * patch) for _, h, w in _grids(inputs, "image_grid_thw")]
    info = PromptInfo(
        opens_in_reasoning=text.rstrip().endswith("<think>"),
        images=tuple(
            ImageRef(ref.attachment, ref.index, ref.image, size)
            for ref, size in zip(parts.image_refs, sizes, strict=True)
        ),
    )
    media.sort(key=lambda span: span.start)
    return Prompt(inputs, tuple(ids), tuple(media), info, tuple(costs.items()))


def _grids(inputs: Any, name: str) -> list[tuple[int, int, int]]:
    return [tuple(row) for row in inputs[name].tolist()] if name in inputs else []
