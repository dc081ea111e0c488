"""The CPU path's attention: keys and values kept in bfloat16, the query cast to meet them.

On the CPU's quantized paths (app/cpu_weights/) the attention layers keep their keys and values
in bfloat16 instead of float32 (kv.py's `GrowingLayer` stores them so), and attend through
`bfloat16_kv_attention`, registered with transformers' public `AttentionInterface`. Measured on
Qwen3-VL-2B's shapes (2 cores, AMD EPYC with AVX-512 bf16):

- exact: a token's keys, values and logits are bit for bit the same whether it was read in a
  prefill or generated one at a time (checked after 6 decoded tokens, prompts of about 300 and
  1,400 tokens; tests/engine/test_attention.py). With float32 keys PyTorch's attention gives a
  one-token query other numbers than the same row of a prefill (keys differed by up to 0.11
  after 6 tokens, logits by 0.1), so a reply reused from the prefix cache did not quite match
  the same conversation read afresh;
- half the memory: 112 KB a token instead of 224 (28 layers, 8 key-value heads of 128), so the
  prefix cache and the prompt bound hold twice the tokens in the same memory;
- faster decoding where the context is long: one token's attention over 2,000 cached tokens
  took 0.77 ms a layer instead of 1.37 (the whole decode step 115 ms instead of 126); about the
  same at 400 (attention is then a small part of a step).

The one-token case reads each key-value head's group of query heads as rows of one query
(PyTorch's bfloat16 attention with `enable_gqa` took 0.84 ms a layer at 440 tokens, this 0.18,
float32's 0.29). Everything else (prefills, and any model whose keys are float32, such as the
vision encoder's, which keeps no cache) goes to transformers' own SDPA attention unchanged.
"""

from __future__ import annotations

from typing import Any

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
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' SDPA attention with `query` cast to the keys' dtype, and the output cast
    back; a single new token's heads are read per key-value head (module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.dtype == query.dtype:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    cast = query.to(key.dtype)
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


def use_bfloat16_kv(model: Any) -> None:
    """Make `model` attend through `bfloat16_kv_attention` (its caches then store bfloat16),
    its masks made as for SDPA (without, transformers makes none for a name it does not know:
    a prompt read after a cached part then attended to the wrong keys)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BFLOAT16_KV, bfloat16_kv_attention)
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
