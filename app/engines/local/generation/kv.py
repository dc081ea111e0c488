"""Operations on a transformers KV cache that the prefix cache needs: size, cut, copy, marks.

Attention layers (`DynamicLayer`) hold keys and values per token and can be cut to any shorter
length. Linear-attention layers (Qwen3.5's gated delta net) hold one recurrent state for the
whole sequence, which cannot be cut back: for them the engine keeps *marks*, copies of those
layers' states taken at chosen lengths, and a cut is only possible to a marked length.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

# {length: {layer index: a copy of that linear-attention layer at that length}}
Marks = dict[int, dict[int, Any]]
# An attention layer's keys and values are held in buffers this many tokens larger at a time.
ROOM_TOKENS = 256


def new_cache(config: Any, dtype: Any = None) -> Any:
    """An empty cache for a model of `config`, its attention layers `GrowingLayer`s that keep
    their keys and values in `dtype` (None: as the model computes them)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    growing = _growing_layer_storing(dtype)
    cache = DynamicCache(config=config)
    cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = growing  # a config without its layers: made lazily
    return cache


@functools.cache
def growing_layer_class() -> type:
    """`GrowingLayer`, defined once transformers is imported (not at module import)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """transformers' `DynamicLayer`, its keys and values views of buffers with room for
        up to ROOM_TOKENS more: a new token is copied into place. `DynamicLayer` concatenates,
        copying every layer's keys and values at each token: with 415 tokens of Qwen3-VL-2B
        that was 31 ms of a 136 ms decode step on 2 cores. Anything that sets `keys` to a
        tensor of its own (a cut, a copy) simply gets a new buffer at the next update.
        With `stored_dtype` set, keys and values are kept in it (the CPU path's bfloat16:
        attention.py)."""

        stored_dtype: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if self.stored_dtype is not None:
                key_states = key_states.to(self.stored_dtype)
                value_states = value_states.to(self.stored_dtype)
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys, self._key_room = _appended(
                self.keys, key_states, self.__dict__.get("_key_room")
            )
            self.values, self._value_room = _appended(
                self.values, value_states, self.__dict__.get("_value_room")
            )
            return self.keys, self.values

    return GrowingLayer


@functools.cache
def _growing_layer_storing(dtype: Any) -> type:
    """`GrowingLayer` keeping its keys and values in `dtype` (None: as they come)."""
    base = growing_layer_class()
    return type(base.__name__, (base,), {"stored_dtype": dtype})


def _appended(held: Any, new: Any, room: Any) -> tuple[Any, Any]:
    """(`held` + `new` along the tokens, the buffer it is a view of): written into `room`
    where `held` is its start and it has space; else into a new, larger buffer."""
    count = held.shape[-2] if held.dim() == 4 else 0
    total = count + new.shape[-2]
    fits = (
        room is not None
        and room.shape[-2] >= total
        and room.shape[:-2] == new.shape[:-2]
        and room.shape[-1] == new.shape[-1]
        and room.dtype == new.dtype
        and room.device == new.device
        # `held` is the start of `room` (not a tensor someone put in its place); `_base`
        # cannot say so: views made in inference mode have none.
        and (count == 0 or (held.data_ptr() == room.data_ptr() and held.stride() == room.stride()))
    )
    if not fits:
        size = -(-total // ROOM_TOKENS) * ROOM_TOKENS
        fresh = new.new_empty((*new.shape[:-2], size, new.shape[-1]))
        if count:
            fresh[..., :count, :] = held
        room = fresh
    room[..., count:total, :] = new
    return room[..., :total, :], room


def _is_attention(layer: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return type(layer) is DynamicLayer or isinstance(layer, growing_layer_class())


def is_cuttable(cache: Any) -> bool:
    """True when every layer keeps per-token states (a cut to any length is exact)."""
    return all(_is_attention(layer) for layer in cache.layers)


def length(cache: Any) -> int:
    """Tokens whose state the cache holds."""
    for layer in cache.layers:
        if _is_attention(layer) and layer.is_initialized and layer.keys is not None:
            return int(layer.keys.shape[-2])
    return 0


def compact(cache: Any) -> None:
    """Let go of the room the attention layers kept to grow (a copy of what they hold)."""
    for layer in cache.layers:
        for name, room_name in (("keys", "_key_room"), ("values", "_value_room")):
            room, held = layer.__dict__.pop(room_name, None), getattr(layer, name, None)
            if room is not None and held is not None and held.shape != room.shape:
                setattr(layer, name, held.clone())


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
    storages: set[int] = set()  # a view and its buffer (a GrowingLayer's keys, room) share one
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                total += storage.nbytes()
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
