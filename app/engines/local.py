"""transformers in this process: load once, generate on a thread, stream, cancel, forward errors.

One `LocalEngine` is built in `main` and shared by every browser session; a lock keeps one
generation at a time on the model. The generation thread is stopped by a stopping criterion
that reads the request's cancel event, so Stop (or a closed tab) ends it at the next token.
Errors inside `generate` cross the thread boundary as an item on the queue, not as a timeout.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engines.base import (
    ChatRequest,
    Delta,
    EngineError,
    ImageRef,
    PromptInfo,
    Turn,
    Usage,
)
from app.media import Budget, MediaCache, MediaError, VideoClip, load_attachment

log = logging.getLogger(__name__)

_END = object()
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
FAMILIES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
    "qwen3_5": "qwen3_5",
    "qwen3_5_moe": "qwen3_5",
}


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class CheckpointNotFound(EngineError):
    """The checkpoint is neither a local folder, in the hub cache, nor reachable."""


def resolve_checkpoint(name: str) -> str:
    """A local folder for `name` (a folder, or a hub id downloaded or found in the cache).

    Fails fast, in one clear sentence, where there is no network and no local copy: the hub
    client's own retries would otherwise take minutes and end in a traceback.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    import huggingface_hub as hub

    try:
        return hub.snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): try the hub below
        pass
    hint = (
        f"Checkpoint {name!r} is not a local folder, not in the Hugging Face cache, and the hub "
        "cannot be reached. Download it where there is network "
        f"(hf download {name} --local-dir ./model) and start with "
        "-c ./model, or try the app offline with --tiny-random qwen3_vl."
    )
    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise CheckpointNotFound(f"Checkpoint folder {name!r} does not exist.")
    try:
        hub.HfApi().model_info(name, timeout=10)
    except Exception as err:
        if "404" in str(err) or "not found" in str(err).lower():
            raise CheckpointNotFound(f"Checkpoint {name!r} does not exist on the hub.") from err
        raise CheckpointNotFound(hint) from err
    return hub.snapshot_download(name)


def choose_attention(flash_attn2: bool, on_cuda: bool) -> str:
    """flash_attention_2 where asked for and runnable, else sdpa (with a warning when asked)."""
    if not flash_attn2:
        return "sdpa"
    if not on_cuda:
        log.warning("--flash-attn2 needs a CUDA GPU; using sdpa attention on the CPU")
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("--flash-attn2: the flash-attn package is not installed; using sdpa")
        return "sdpa"
    import torch

    if torch.cuda.get_device_capability()[0] < 8:
        log.warning("--flash-attn2: this GPU is older than Ampere; using sdpa")
        return "sdpa"
    return "flash_attention_2"


def _choose_dtype(name: str, on_cuda: bool) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if on_cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class TokenStreamer:
    """A `generate` streamer that hands over text as soon as each token decodes.

    transformers' TextStreamer holds text back to the next space; here a token's text goes out
    at once, except a character split across tokens, held until it is whole. Decoding is
    incremental (a short window of ids, as vLLM's detokenizer does), so the cost per token stays
    flat however long the reply grows. Decoded with special tokens; the caller filters them.
    """

    def __init__(self, tokenizer: Any, on_text: Any, on_token: Any) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.on_token = on_token
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.prompt_seen = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.on_token(len(ids))
        self.ids.extend(ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.on_text(text[len(prefix) :])
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)

    def end(self) -> None:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix):
            self.on_text(text[len(prefix) :])
        self.prefix_offset = self.read_offset = len(self.ids)


class LocalEngine:
    """A transformers model and processor, loaded once, streaming one request at a time."""

    name = "local"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        budget: Budget,
        media_cache: MediaCache,
        max_new_tokens: int = 1024,
        checkpoint: str = "",
    ) -> None:
        self.checkpoint = checkpoint or getattr(model.config, "_name_or_path", "")
        self.model = model
        self.processor = processor
        self.budget = budget
        self.media_cache = media_cache
        self.max_new_tokens = max_new_tokens
        self.family = FAMILIES.get(model.config.model_type, model.config.model_type)
        self._lock = threading.Lock()
        self.generation_defaults = model.generation_config
        control = sorted(set(processor.tokenizer.all_special_tokens) - GROUNDING_TOKENS, key=len)
        self._control_tokens = re.compile("|".join(re.escape(t) for t in reversed(control)))

    @classmethod
    def load(
        cls,
        checkpoint: str,
        *,
        cpu_only: bool = False,
        flash_attn2: bool = False,
        load_in_4bit: bool = False,
        dtype: str = "auto",
        budget: Budget | None = None,
        media_cache: MediaCache | None = None,
        max_new_tokens: int = 1024,
    ) -> LocalEngine:
        path = resolve_checkpoint(checkpoint)  # first: a missing checkpoint fails in a blink
        started = time.perf_counter()
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        imported = time.perf_counter() - started
        on_cuda = torch.cuda.is_available() and not cpu_only
        torch_dtype = _choose_dtype(dtype, on_cuda)
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "attn_implementation": choose_attention(flash_attn2, on_cuda),
        }
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch_dtype,
                bnb_4bit_use_double_quant=True,
            )
        kwargs["device_map"] = "cuda" if on_cuda else "cpu"
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        model.eval()
        log.info(
            "loaded %s in %.1f s, %.1f s of it importing torch and transformers (%s, %s, %s%s)",
            checkpoint,
            time.perf_counter() - started,
            imported,
            kwargs["device_map"],
            str(torch_dtype).removeprefix("torch."),
            kwargs["attn_implementation"],
            ", 4-bit nf4" if load_in_4bit else "",
        )
        return cls(
            model,
            processor,
            budget=budget or Budget(),
            media_cache=media_cache or MediaCache(),
            max_new_tokens=max_new_tokens,
            checkpoint=checkpoint,
        )

    # --- building the prompt -------------------------------------------------------------

    def _messages(
        self, turns: tuple[Turn, ...], budget: Budget
    ) -> tuple[list[dict], list, list[ImageRef], list[VideoClip], list[str]]:
        images: list = []
        refs: list[ImageRef] = []
        videos: list[VideoClip] = []
        video_owners: list[str] = []
        messages: list[dict] = []
        for turn in turns:
            if turn.role == "system":
                messages.append(
                    {"role": "system", "content": [{"type": "text", "text": turn.text}]}
                )
                continue
            parts: list[dict] = []
            for attachment in turn.attachments:
                visuals = load_attachment(
                    attachment.path, budget, self.media_cache, attachment.name
                )
                for index, (kind, value) in enumerate(visuals):
                    parts.append({"type": kind})
                    if kind == "image":
                        images.append(value)
                        refs.append(ImageRef(attachment, index))
                    else:
                        videos.append(value)
                        video_owners.append(attachment.name)
            if turn.text or not parts:
                parts.append({"type": "text", "text": turn.text})
            messages.append({"role": turn.role, "content": parts})
        return messages, images, refs, videos, video_owners

    def build_inputs(
        self, request: ChatRequest
    ) -> tuple[Any, PromptInfo, tuple[tuple[str, int], ...]]:
        """Processor outputs, prompt facts, and the visual tokens each attachment costs."""
        try:
            messages, images, refs, videos, video_owners = self._messages(
                request.turns, request.budget or self.budget
            )
        except MediaError as err:
            raise EngineError(str(err)) from err
        template_kwargs: dict[str, Any] = {}
        if request.params.enable_thinking is not None:
            template_kwargs["enable_thinking"] = request.params.enable_thinking
        prompt = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **template_kwargs
        )
        kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = [clip.frames for clip in videos]
            kwargs["videos_kwargs"] = {
                "do_sample_frames": False,
                # Frames are already scaled into the per-frame budget; the reference cap agrees.
                "cap_pixels_per_frame": True,
                "video_metadata": [clip.metadata() for clip in videos],
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = self.processor(**kwargs)
        merge = getattr(self.processor.image_processor, "merge_size", 2)
        patch = getattr(self.processor.image_processor, "patch_size", 14)
        # Keyed in the order the files were attached, whatever their kind.
        costs = {a.name: 0 for turn in request.turns for a in turn.attachments}
        sizes: list[tuple[int, int]] = []
        if "image_grid_thw" in inputs:
            for ref, (t, h, w) in zip(refs, inputs["image_grid_thw"].tolist(), strict=True):
                name = ref.attachment.name
                costs[name] = costs.get(name, 0) + t * h * w // (merge * merge)
                sizes.append((w * patch, h * patch))
        if "video_grid_thw" in inputs:
            for name, (t, h, w) in zip(
                video_owners, inputs["video_grid_thw"].tolist(), strict=True
            ):
                costs[name] = costs.get(name, 0) + t * h * w // (merge * merge)
        info = PromptInfo(
            opens_in_reasoning=prompt.rstrip().endswith("<think>"),
            images=tuple(
                ImageRef(ref.attachment, ref.index, size)
                for ref, size in zip(refs, sizes, strict=True)
            ),
        )
        return inputs, info, tuple(costs.items())

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

    # --- generating ----------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        inputs, info, costs = self.build_inputs(request)
        yield Delta(prompt=info)
        inputs = inputs.to(self.model.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        items: queue.Queue = queue.Queue()
        counts = {"tokens": 0, "first": None}
        started = time.perf_counter()

        def on_token(count: int) -> None:
            if counts["first"] is None:
                counts["first"] = time.perf_counter() - started
            counts["tokens"] += count

        def on_text(text: str) -> None:
            text = control_tokens.sub("", text)
            if text:
                items.put(text)

        class StopOnCancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],),
                    cancel.is_set(),
                    dtype=torch.bool,
                    device=input_ids.device,
                )

        # Decoded with special tokens, then control tokens removed: grounding tokens stay.
        control_tokens = self._control_tokens
        streamer = TokenStreamer(self.processor.tokenizer, on_text, on_token)
        generate_kwargs = dict(
            **inputs,
            **self._generate_kwargs(request),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopOnCancel()]),
        )
        seed = request.params.seed

        def run() -> None:
            try:
                with self._lock:
                    if cancel.is_set():
                        return
                    if seed is not None:
                        from transformers import set_seed

                        set_seed(seed)
                    with torch.inference_mode():
                        self.model.generate(**generate_kwargs)
            except BaseException as err:  # noqa: BLE001 - every failure must reach the user
                items.put(_Failure(err))
            finally:
                items.put(_END)

        thread = threading.Thread(target=run, name="qwen-generate", daemon=True)
        thread.start()
        finished = False
        try:
            while True:
                # Everything queued since the last yield goes out as one delta: at high token
                # rates the UI then sends fewer, larger updates, and the generation thread
                # loses less time to the server's per-update work (they share the GIL).
                batch = [items.get()]
                while isinstance(batch[-1], str) and not items.empty():
                    batch.append(items.get_nowait())
                text = "".join(item for item in batch if isinstance(item, str))
                if text:
                    yield Delta(text=text)
                if batch[-1] is _END:
                    finished = True
                    break
                if isinstance(batch[-1], _Failure):
                    finished = True
                    raise self._user_error(batch[-1].error) from batch[-1].error
            yield Delta(
                usage=Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=counts["tokens"],
                    visual_tokens=sum(tokens for _, tokens in costs),
                    visual_by_attachment=costs,
                    first_token_s=counts["first"],
                    total_s=time.perf_counter() - started,
                )
            )
        finally:
            if not finished:
                # Closed early (Stop, a closed tab, an error upstream): end generate() at its
                # next token and wait that long for the thread to finish.
                cancel.set()
                thread.join(timeout=5)

    def _user_error(self, error: BaseException) -> EngineError:
        import torch

        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return EngineError(
                "The model ran out of memory on this request. Try fewer or smaller images, a "
                "lower pixel budget in Settings, or restart the app with --load-in-4bit."
            )
        return EngineError(f"Generation failed: {type(error).__name__}: {error}")
