"""The CPU path's attention: keys and values kept in bfloat16, the query cast to meet them.

On the CPU's quantized paths (app/cpu_weights/) the attention layers keep their keys and values
in bfloat16 instead of float32 (kv.py's `GrowingLayer` stores them so), and attend through
`bfloat16_kv_attention`, registered with transformers' public `AttentionInterface`:

- through the app's own kernel (own_attention.cpp) wherever it was built and the mask is the
  causal one (a prompt, a prompt after a cached part, one new token): every row computed by the
  same instructions however many rows a call reads, so a token's keys, values and logits are
  bit for bit the same whether it was read in a prefill or generated one at a time, at any
  length (tests/engine/test_attention.py checks 60 generated tokens; PyTorch's flash kernel
  drifted before that); its softmax stays float32;
- else through PyTorch's: the one-token case reads each key-value head's group of query heads
  as rows of one query (with `enable_gqa` bfloat16 took 0.84 ms a layer at 440 tokens, this
  0.18, float32's 0.29); prefills go to transformers' own SDPA attention. With float32 keys
  PyTorch's attention gave a one-token query other numbers than the same row of a prefill
  (keys 0.11 apart after 6 tokens), so bfloat16 keys are kept on that path too.

Keeping keys in bfloat16 halves their memory: 112 KB a token instead of 224 (28 layers, 8
key-value heads of 128), so the prefix cache and the prompt bound hold twice the tokens. Any
model whose keys are float32, such as the vision encoder's, which keeps no cache, goes to
transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engines.local.generation.own_kernels import OwnKernels

# The name the CPU path's models are given as their `attn_implementation`.
BFLOAT16_KV = "sdpa_bfloat16_kv"


def bfloat16_kv_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    kernel: OwnKernels | None = None,
    masks: CausalMasks | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' SDPA attention with `query` cast to the keys' dtype, and the output cast
    back; through the app's `kernel` where one was built and the mask is the causal one, else
    PyTorch's, a single new token's heads read per key-value head (module docstring). `masks`
    remembers the last mask found causal (one forward's layers share it)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.dtype == query.dtype:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    cast = query.to(key.dtype)
    causal = masks.causal if masks is not None else _causal
    if kernel is not None and not dropout and causal(attention_mask, cast.shape, key.shape):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = kernel.attend(cast[0].contiguous(), _rows(key[0]), _rows(value[0]), scale)
        return out.unsqueeze(0).to(query.dtype), None
    if cast.shape[2] != 1:
        out, _ = sdpa_attention_forward(
            module, cast, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return out.to(query.dtype), None
    return _one_token(cast, key, value, attention_mask, scaling).to(query.dtype), None


def _one_token(query: Any, key: Any, value: Any, mask: Any, scaling: float | None) -> Any:
    """One new token's attention, (batch, 1, heads, dim): the heads that share a key-value head
    read as the rows of one query to it (`enable_gqa` is four times slower in bfloat16)."""
    import torch

    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    rows = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    if mask is not None and mask.shape[1] != 1:  # a mask per head: grouped as the heads are
        mask = mask.reshape(batch, kv_heads, heads // kv_heads, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        rows, key, value, attn_mask=mask, scale=scaling
    )
    # transformers' attention functions return (batch, tokens, heads, dim).
    return out.reshape(batch, heads, 1, dim).transpose(1, 2)


def _causal(mask: Any, query_shape: Any, key_shape: Any) -> bool:
    """Whether one sequence's rows attend causally to its keys (row i of n to the first
    keys - n + i + 1): what the app's kernel computes. Prompts and one new token are read so;
    any other mask goes to PyTorch's attention."""
    batch, _, rows, _ = query_shape
    keys = key_shape[2]
    if batch != 1 or key_shape[0] != 1 or rows > keys:
        return False
    if mask is None:  # transformers leaves out a mask that is plain causal
        return rows in (1, keys)
    import torch

    if mask.dtype != torch.bool or mask.shape[-2:] != (rows, keys):
        return False
    seen = torch.arange(keys) <= torch.arange(keys - rows, keys).unsqueeze(1)
    return bool((mask == seen).all())


class CausalMasks:
    """The last mask found causal, kept: the layers of one forward share one mask, so it is
    checked once, not once a layer (a 2,153-token prompt's took 4-8 ms a layer to check). The
    mask itself is held, so it is the same mask only while it is the same object."""

    def __init__(self) -> None:
        self._last: tuple[Any, tuple[int, ...], tuple[int, ...]] | None = None

    def causal(self, mask: Any, query_shape: Any, key_shape: Any) -> bool:
        shapes = (tuple(query_shape), tuple(key_shape))
        last = self._last
        if mask is not None and last is not None and last[0] is mask and last[1:] == shapes:
            return True
        found = _causal(mask, query_shape, key_shape)
        self._last = (mask, *shapes) if found and mask is not None else None
        return found


def _rows(tensor: Any) -> Any:
    """(heads, tokens, dim) with each token's row contiguous, as the kernel reads it (a view
    of a cache's larger buffer already is)."""
    if tensor.stride(-1) == 1 and tensor.stride(-2) == tensor.shape[-1]:
        return tensor
    return tensor.contiguous()


def use_bfloat16_kv(model: Any, kernel: OwnKernels | None = None) -> None:
    """Make `model` attend through `bfloat16_kv_attention` (its caches then store bfloat16),
    with the app's `kernel` where one was built, its masks made as for SDPA (without,
    transformers makes none for a name it does not know: a prompt read after a cached part
    then attended to the wrong keys)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(
        BFLOAT16_KV, functools.partial(bfloat16_kv_attention, kernel=kernel, masks=CausalMasks())
    )
    AttentionMaskInterface.register(BFLOAT16_KV, sdpa_mask)
    model.set_attn_implementation(BFLOAT16_KV)


def stored_kv_dtype(model: Any) -> Any:
    """The dtype `model`'s caches keep keys and values in where it is not the one the model
    computes them in (bfloat16 on the CPU path); None otherwise."""
    import torch

    if getattr(model.config, "_attn_implementation", None) == BFLOAT16_KV:
        return torch.bfloat16
    return None


def kv_bytes_per_token(model: Any) -> int:
    """What one token's keys and values cost in `model`'s caches."""
    from app.engines.local.generation import kv

    size = (stored_kv_dtype(model) or model.dtype).itemsize
    return kv.bytes_per_token(model.config, int(size))
