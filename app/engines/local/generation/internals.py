"""The one module that reaches past transformers' public API into its and Qwen-VL's internals.

The engine encodes images and videos itself, so that only those after the prefix cache's part
are encoded, and hands the outputs to `generate` (`mm_encoder_outputs`); it clears the
multimodal RoPE offset that Qwen-VL keeps on the model between calls (`rope_deltas`); its Stop
and progress hooks sit on the vision blocks and the language layers. None of that is public API
and each has moved between transformers releases, so it is all here, and `check_internals` looks
for every piece when the engine is built: a transformers without them is named at start-up,
not met as an AttributeError in someone's first question. The KV cache's internals are kv.py's
(`DynamicCache`'s layers); `check_internals` covers those too.

Decoding several replies in one batch (batch.py) also lives on internals: each reply keeps its
own cache and its own multimodal RoPE offset, so a batched step gives the model every reply's
positions itself (`decode_positions`), one cache whose layers hand each row its own keys and
values, or stack the rows' linear-attention states for the step (`rows_cache`), and, for that
step only, an attention that reads each row against its own keys (`rows_attention`). The
sampling settings are turned into transformers' own logits processors (`sampling_plan`; top-p
and suppressed tokens in lean forms that give the same scores, warpers.py), so a reply sampled
here sees exactly what `generate` applied.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.engines.base import EngineError
from app.engines.local.generation.warpers import lean_processors

# How each kind of attachment is encoded: its grid and pixel inputs, and the model's method.
ENCODERS = {
    "image": ("image_grid_thw", "pixel_values", "get_image_features"),
    "video": ("video_grid_thw", "pixel_values_videos", "get_video_features"),
}
# The processor's outputs that only the vision encoder reads (the engine runs it itself).
PIXEL_INPUTS = tuple(pixels for _, pixels, _ in ENCODERS.values())
# Token-aligned inputs, cut with the ids when a prompt is read only up to a point.
TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


# Where every family names its vision encoder's layers (`named_modules`).
VISION_ENCODER = "model.visual."


def outside_vision_encoder(layer_name: str) -> bool:
    """Whether a layer, by its name in the model, is not part of the vision encoder."""
    return not layer_name.startswith(VISION_ENCODER)


# The language model's output layer, and the projections whose error costs the most per weight
# (attention's values and output, the MLP's last product), by their names in every family.
OUTPUT_LAYER = "lm_head"
SENSITIVE_PROJECTIONS = ("v_proj", "o_proj", "down_proj")
_LANGUAGE_LAYER = re.compile(r"\.language_model\.layers\.(\d+)\.")


def language_layer_index(layer_name: str) -> int | None:
    """Which decoder layer of the language model a layer is in, by its name; None outside."""
    found = _LANGUAGE_LAYER.search(layer_name)
    return int(found.group(1)) if found and outside_vision_encoder(layer_name) else None


class ModelInternals:
    """The internal parts of one Qwen-VL model that the engine uses, found once."""

    def __init__(self, model: Any) -> None:
        check_internals(model)
        self.model = model
        inner = model.model
        visual = getattr(inner, "visual", None)
        self.vision_blocks: list[Any] = list(getattr(visual, "blocks", []))
        self.language_layers: list[Any] = list(inner.language_model.layers)
        # The vision encoder's own device: on a model spread over GPUs, the first one's.
        self.vision_device = next((visual or model).parameters()).device
        self._text_config = inner.language_model.config

    def rope_offset(self) -> int:
        """The multimodal RoPE offset of the prompt just read (one per reply: batched replies
        each keep their own)."""
        offset = self.model.model.rope_deltas
        return 0 if offset is None else int(offset.reshape(-1)[0])

    def decode_positions(self, lengths: list[int], offsets: list[int]) -> Any:
        """Each row's next token's position ids, (4, rows, 1): its text position (the tokens
        its cache holds), then the same moved by its RoPE offset for time, height and width,
        as `generate` steps them after a prompt that ends in text."""
        import torch

        text = torch.tensor(lengths, dtype=torch.long).view(1, -1, 1)
        moved = text + torch.tensor(offsets, dtype=torch.long).view(1, -1, 1)
        return torch.cat([text, moved.expand(3, -1, -1)]).to(self.model.device)

    def rows_cache(self, caches: list[Any]) -> Any:
        """One cache for a batched step whose layer i hands row r's keys and values to and
        from `caches[r]`'s layer i (each reply's own cache grows by its own token)."""
        from transformers import DynamicCache

        combined = DynamicCache(config=self._text_config)
        linear = _linear_attention_layer_kind()
        combined.layers = [
            _rows_of_layers([cache.layers[index] for cache in caches], linear)
            for index in range(len(caches[0].layers))
        ]
        return combined

    @contextmanager
    def rows_attention(self) -> Iterator[None]:
        """For one batched step, the language model attends each row to its own keys and values
        (what `rows_cache` hands it), through the model's own attention for one row."""
        config = self._text_config
        own = config._attn_implementation_internal
        config._attn_implementation_internal = _register_rows_attention(own)
        try:
            yield
        finally:
            config._attn_implementation_internal = own

    def sampling_plan(self, generate_kwargs: dict[str, Any], prompt_tokens: int) -> SamplingPlan:
        """What `generate` would do with `generate_kwargs` after the checkpoint's generation
        config: its logits processors (suppressed tokens, sequence bias, repetition penalty,
        temperature, top-k, top-p), whether it samples, its end tokens and reply length."""
        config, _ = self.model._prepare_generation_config(None, **generate_kwargs)
        processors = lean_processors(
            self.model._get_logits_processor(
                config,
                input_ids_seq_length=prompt_tokens,
                device=self.model.device,
                model_kwargs={},
            )
        )
        eos = config.eos_token_id
        ends = frozenset([] if eos is None else [eos] if isinstance(eos, int) else eos)
        return SamplingPlan(processors, bool(config.do_sample), ends, int(config.max_new_tokens))

    def encode(self, kind: str, pixels: Any, grid: Any) -> Any:
        """The vision encoder's outputs for `pixels` of `kind` ("image" or "video")."""
        encode: Callable[..., Any] = getattr(self.model.model, ENCODERS[kind][2])
        device = self.vision_device
        return encode(pixels.to(device), grid.to(device), return_dict=True)

    def model_inputs(self, inputs: dict[str, Any], stop_at: int | None = None) -> dict[str, Any]:
        """The processor's `inputs` for `generate`, without the pixels (encoded apart), cut at
        token `stop_at` when given."""
        kept: dict[str, Any] = {}
        for name, value in inputs.items():
            if name in PIXEL_INPUTS:
                continue
            if stop_at is not None and name in TOKEN_INPUTS:
                value = value[:, :stop_at]
            kept[name] = value.to(self.model.device)
        # Qwen-VL keeps the multimodal RoPE offset of the last request on the model; computed
        # afresh from this whole prompt (a stale one misplaces every token after a cache hit).
        self.model.model.rope_deltas = None
        return kept

    @staticmethod
    def encoded(features: dict[str, Any] | None) -> dict[str, Any]:
        """`generate`'s keyword for media already encoded (none when there are none)."""
        return {"mm_encoder_outputs": features} if features else {}


@dataclass(frozen=True)
class SamplingPlan:
    processors: Any  # transformers' LogitsProcessorList
    do_sample: bool
    end_tokens: frozenset[int]
    max_new_tokens: int


class RowsKV:
    """Each row's keys (or values) in a batched step: rows of different lengths, not padded."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows


@functools.cache
def _rows_layer_class() -> type:
    """RowsLayer, defined once transformers is imported (not at module import)."""
    from transformers.cache_utils import DynamicLayer

    class RowsLayer(DynamicLayer):
        """Layer i of several replies' caches, as one layer of a batched step's cache."""

        def __init__(self, rows: list[Any]) -> None:
            super().__init__()
            self.rows = rows
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            keys, values = [], []
            for index, row in enumerate(self.rows):
                key, value = row.update(
                    key_states[index : index + 1], value_states[index : index + 1], *args, **kwargs
                )
                keys.append(key)
                values.append(value)
            return RowsKV(keys), RowsKV(values)

        def get_seq_length(self) -> int:
            return max(row.get_seq_length() for row in self.rows)

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

    return RowsLayer


@functools.cache
def _linear_attention_layer_kind() -> type | None:
    """transformers' linear-attention cache layers' class (None in a transformers without
    them: it has no such layers to stack)."""
    from transformers import cache_utils

    return getattr(cache_utils, "LinearAttentionCacheLayerMixin", None)


def _rows_of_layers(layers: list[Any], linear: type | None) -> Any:
    """Layer i of several replies' caches as one layer of a batched step's cache: keys and
    values handed row by row, or, where they are of the `linear` kind, linear-attention
    states stacked for the step."""
    if linear is not None and isinstance(layers[0], linear):
        return _rows_linear_layer_class()(layers)
    return _rows_layer_class()(layers)


@functools.cache
def _rows_linear_layer_class() -> type:
    """RowsLinearLayer, defined once transformers is imported (not at module import)."""
    import torch
    from transformers.cache_utils import LinearAttentionLayer

    class RowsLinearLayer(LinearAttentionLayer):
        """Layer i of several replies' caches where it is a linear-attention layer (Qwen3.5's
        gated delta net): each reply's convolution and recurrent states stacked as the rows
        of one state for the step (a decode step updates them in place, row by row alike),
        and copied back into each reply's own layer once the layer has stepped them (its
        recurrent state's update is the layer's last use of its cache)."""

        def __init__(self, rows: list[Any]) -> None:
            first = rows[0]
            super().__init__(number_of_states=first.number_of_states)
            self.rows = rows
            self.device, self.dtype = first.device, first.dtype
            for state in range(first.number_of_states):
                self._stack(state)

        def _stack(self, state: int) -> None:
            rows, first = self.rows, self.rows[0]
            if first.is_conv_states_initialized[state]:
                self.conv_states[state] = torch.cat([row.conv_states[state] for row in rows])
                self.is_conv_states_initialized[state] = True
            if first.is_recurrent_states_initialized[state]:
                held = [row.recurrent_states[state] for row in rows]
                self.recurrent_states[state] = torch.cat(held)
                self.is_recurrent_states_initialized[state] = True
            self.has_previous_state[state] = all(row.has_previous_state[state] for row in rows)
            self.conv_kernel_size[state] = first.conv_kernel_size[state]

        def update_recurrent_state(self, recurrent_states: Any, state_idx: int = 0, **kwargs: Any):
            out = super().update_recurrent_state(recurrent_states, state_idx, **kwargs)
            conv: Any = self.conv_states[state_idx]
            for index, row in enumerate(self.rows):
                row.conv_states[state_idx].copy_(conv[index : index + 1])
                row.recurrent_states[state_idx].copy_(out[index : index + 1])
            return out

        def increase_count(self, state_idx: int) -> None:
            for row in self.rows:
                row.increase_count(state_idx)

        def get_seq_length(self) -> int:
            return max(int(row.get_seq_length()) for row in self.rows)

    return RowsLinearLayer


def _register_rows_attention(own: str | None) -> str:
    """The name of an attention that reads each row of a `RowsKV` step through `own` (the
    model's attention), registered with transformers' public interfaces on first use."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"rows_of_{own}"  # one per attention the model had
    if name in ALL_ATTENTION_FUNCTIONS:
        return name

    def rows_attention(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any):
        import torch
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        attend = ALL_ATTENTION_FUNCTIONS.get(own or "", sdpa_attention_forward)
        outputs = []
        for index, (row_key, row_value) in enumerate(zip(key.rows, value.rows, strict=True)):
            row_kwargs = {
                name: _row_of(item, index, len(key.rows)) for name, item in kwargs.items()
            }
            row = query[index : index + 1]
            outputs.append(attend(module, row, row_key, row_value, None, **row_kwargs)[0])
        return torch.cat(outputs), None

    AttentionInterface.register(name, rows_attention)
    # A one-token query per row attends to all of its row's keys: no mask is read.
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def _row_of(item: Any, index: int, rows: int) -> Any:
    """Row `index` of a per-row keyword (position ids), anything else as it is."""
    import torch

    if isinstance(item, torch.Tensor) and item.dim() and item.shape[0] == rows > 1:
        return item[index : index + 1]
    return item


def check_internals(model: Any) -> None:
    """Raise an EngineError naming the transformers version and what it lacks, if any part this
    module and kv.py rely on is missing."""
    missing = [what for what, present in _needed(model) if not present]
    if missing:
        import transformers

        raise EngineError(
            f"transformers {transformers.__version__} lacks what this app's local engine uses of "
            f"{type(model).__name__}: {', '.join(missing)}. Install the version in "
            "requirements_web_demo.txt (pip install -r requirements_web_demo.txt)."
        )


def _needed(model: Any) -> list[tuple[str, bool]]:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    inner = getattr(model, "model", None)
    layer_parts = ("keys", "values", "is_initialized", "lazy_initialization", "update")
    probe = DynamicLayer()
    return [
        *(
            (f"model.{name}()", callable(getattr(inner, name, None)))
            for *_, name in ENCODERS.values()
        ),
        ("model.rope_deltas", hasattr(inner, "rope_deltas")),
        ("model.language_model.layers", hasattr(getattr(inner, "language_model", None), "layers")),
        ("generate(mm_encoder_outputs=)", _forward_takes(model, "mm_encoder_outputs")),
        ("DynamicCache(config=).layers", "config" in inspect.signature(DynamicCache).parameters),
        ("generate's _prepare_generation_config", hasattr(model, "_prepare_generation_config")),
        ("generate's _get_logits_processor", hasattr(model, "_get_logits_processor")),
        (
            "config._attn_implementation_internal",
            hasattr(getattr(model, "config", None), "_attn_implementation_internal"),
        ),
        *((f"DynamicLayer.{part}", hasattr(probe, part)) for part in layer_parts),
        *_needed_for_linear_attention(model),
    ]


def _needed_for_linear_attention(model: Any) -> list[tuple[str, bool]]:
    """What a batched step's stacked states use of a linear-attention layer (Qwen3.5)."""
    from transformers import cache_utils

    text_config = getattr(model.config, "text_config", model.config)
    if "linear_attention" not in (getattr(text_config, "layer_types", None) or ()):
        return []
    layer = getattr(cache_utils, "LinearAttentionLayer", None)
    parts = ("conv_states", "recurrent_states", "has_previous_state", "conv_kernel_size")
    probe = layer() if layer is not None else None
    return [
        ("cache_utils.LinearAttentionLayer", layer is not None),
        *((f"LinearAttentionLayer.{part}", hasattr(probe, part)) for part in parts),
    ]


def _forward_takes(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
