"""The one module that reaches past transformers' public API into its and Qwen-VL's internals.

The engine encodes images and videos itself, so that only those after the prefix cache's part
are encoded, and hands the outputs to `generate` (`mm_encoder_outputs`); it clears the
multimodal RoPE offset that Qwen-VL keeps on the model between calls (`rope_deltas`); its Stop
and progress hooks sit on the vision blocks and the language layers. None of that is public API
and each has moved between transformers releases, so it is all here, and `check_internals` looks
for every piece when the engine is built: a transformers without them is named at start-up,
not met as an AttributeError in someone's first question. The KV cache's internals are kv.py's
(`DynamicCache`'s layers); `check_internals` covers those too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from app.engines.base import EngineError

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
        *((f"DynamicLayer.{part}", hasattr(probe, part)) for part in layer_parts),
    ]


def _forward_takes(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
