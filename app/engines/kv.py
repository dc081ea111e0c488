"""Operations on a transformers KV cache that the prefix cache needs: size, cut, copy, marks.

Attention layers (`DynamicLayer`) hold keys and values per token and can be cut to any shorter
length. Linear-attention layers (Qwen3.5's gated delta net) hold one recurrent state for the
whole sequence, which cannot be cut back: for them the engine keeps *marks*, copies of those
layers' states taken at chosen lengths, and a cut is only possible to a marked length.
"""

from __future__ import annotations

import copy
from typing import Any

# {length: {layer index: a copy of that linear-attention layer at that length}}
Marks = dict[int, dict[int, Any]]


def _is_attention(layer: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return type(layer) is DynamicLayer


def is_cuttable(cache: Any) -> bool:
    """True when every layer keeps per-token states (a cut to any length is exact)."""
    return all(_is_attention(layer) for layer in cache.layers)


def length(cache: Any) -> int:
    """Tokens whose state the cache holds."""
    for layer in cache.layers:
        if _is_attention(layer) and layer.is_initialized and layer.keys is not None:
            return int(layer.keys.shape[-2])
    return 0


def mark(cache: Any) -> dict[int, Any]:
    """Copies of the linear-attention layers' states as they are now (small: fixed-size)."""
    return {
        index: copy.deepcopy(layer)
        for index, layer in enumerate(cache.layers)
        if not _is_attention(layer)
    }


def cut(cache: Any, tokens: int, marks: Marks) -> None:
    """Cut `cache` back, in place, to its first `tokens` tokens (`tokens` must be cuttable)."""
    if tokens == length(cache):
        return
    states = marks.get(tokens, {}) if not is_cuttable(cache) else {}
    for index, layer in enumerate(cache.layers):
        if _is_attention(layer):
            if layer.is_initialized and layer.keys is not None:
                # A copy, not a view: a view would keep the whole old tensor alive.
                layer.keys = layer.keys[..., :tokens, :].clone()
                layer.values = layer.values[..., :tokens, :].clone()
        else:
            cache.layers[index] = copy.deepcopy(states[index])


def copy_prefix(cache: Any, tokens: int, marks: Marks) -> Any:
    """A new cache holding the first `tokens` tokens of `cache`; `cache` is left as it was."""
    clone = copy.copy(cache)
    clone.layers = []
    states = marks.get(tokens, {}) if not is_cuttable(cache) else {}
    for index, layer in enumerate(cache.layers):
        if _is_attention(layer):
            fresh = copy.copy(layer)
            if layer.is_initialized and layer.keys is not None:
                fresh.keys = layer.keys[..., :tokens, :].clone()
                fresh.values = layer.values[..., :tokens, :].clone()
            clone.layers.append(fresh)
        elif tokens == length(cache):
            clone.layers.append(copy.deepcopy(layer))
        else:
            clone.layers.append(copy.deepcopy(states[index]))
    return clone


def can_cut_to(cache: Any, tokens: int, marks: Marks) -> bool:
    return tokens == length(cache) or is_cuttable(cache) or tokens in marks


def nbytes(value: Any) -> int:
    """Bytes of every tensor held by a cache, a layer, or a mark (counted once each)."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return total


def bytes_per_token(config: Any, dtype_size: int) -> int:
    """KV bytes one token costs in the attention layers: what the cache's memory is held to."""
    text = getattr(config, "text_config", config)
    layers = text.num_hidden_layers
    types = getattr(text, "layer_types", None)
    if types:
        layers = sum(1 for kind in types if kind == "full_attention")
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * layers * heads * head_dim * dtype_size
