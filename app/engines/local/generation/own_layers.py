"""The CPU path's decoder layers: transformers' arithmetic, in fewer calls between the products.

Why: of a one-token decode step of Qwen3-VL-2B on 2 cores (86 ms; docs/cpu.md), the weight
products take 59 ms and the rest 27, most of it about fifty small PyTorch operations a layer:
four norms of 6-9 operations each (6 ms a step), the rotary embedding's dozen (1.6 ms), module
calls and reshapes. Each is cheap warm (10 us for a norm) and five times that in the model,
where every product has just streamed tens of megabytes of weights through the caches.

What: on the layers whose arithmetic the app knows (`LEAN_ATTENTION`: Qwen3-VL's, dense and
MoE, whose queries and keys are normed per head before the rotary embedding; Qwen2-VL's and
Qwen2.5-VL's, which are not), the layer object's `forward` becomes `lean_forward`: the same
steps, each norm one call of the app's kernel (own_norms.cpp), each of the queries' and keys'
norm-and-rotary one call, the projections called without `nn.Module`'s wrapping, the MLP's SiLU
and product in place.
Attention goes through the model's attention function as transformers calls it, so the
cache, the batch's rows and the masks are untouched; hooks on the layer (Stop, progress:
watch.py) still run. Prompts and decoding both go through it, and the kernels compute each row
alone, so a token read in a prompt and the same token generated keep the same bits. Every other
layer (Qwen3.5's, whose attention gates its output and whose other layers are linear attention,
and all of them where the kernels could not be built) keeps transformers' forward.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engines.local.generation.own_kernels import OwnKernels

# The attention and norm classes whose arithmetic `lean_forward` repeats: q, k and v
# projections, per-head q and k norms where the attention has them, then transformers'
# `apply_rotary_pos_emb` with cos and sin (batch, tokens, dim), the model's attention function,
# the o projection; RMSNorm as weight * (x * rsqrt(mean(x^2) + eps)), all in float32.
LEAN_ATTENTION = frozenset(
    {"Qwen3VLTextAttention", "Qwen3VLMoeTextAttention", "Qwen2VLAttention", "Qwen2_5_VLAttention"}
)
LEAN_NORMS = frozenset(
    {"Qwen3VLTextRMSNorm", "Qwen3VLMoeTextRMSNorm", "Qwen2VLRMSNorm", "Qwen2_5_VLRMSNorm"}
)
# The MLPs done in place here (gate, up, down, SiLU); any other (MoE blocks) is called as is.
LEAN_MLPS = frozenset({"Qwen3VLTextMLP", "Qwen3VLMoeTextMLP", "Qwen2MLP"})


def use_own_layers(model: Any, kernels: OwnKernels) -> int:
    """Give each decoder layer of `model` that `can_be_lean` the app's `lean_forward`, on that
    layer object alone; the number of layers given it."""
    count = 0
    for module in model.modules():
        if can_be_lean(module):
            module.forward = types.MethodType(_bound_forward(kernels), module)
            count += 1
    return count


def can_be_lean(layer: Any) -> bool:
    """Whether `layer` is a decoder layer whose arithmetic `lean_forward` repeats (and whose
    `forward` accelerate has not wrapped: its hooks move weights and inputs between devices)."""
    if hasattr(layer, "_hf_hook"):
        return False
    attention = getattr(layer, "self_attn", None)
    norms: list[Any] = [
        getattr(layer, name, None) for name in ("input_layernorm", "post_attention_layernorm")
    ]
    if attention is None or type(attention).__name__ not in LEAN_ATTENTION:
        return False
    norms += [getattr(attention, name) for name in ("q_norm", "k_norm") if hasattr(attention, name)]
    return all(
        type(norm).__name__ in LEAN_NORMS and norm.weight.dtype == _float32() for norm in norms
    )


def _bound_forward(kernels: OwnKernels) -> Any:
    def forward(layer: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        if args:  # transformers' text models pass all but the input by name; others: its own
            return type(layer).forward(layer, hidden_states, *args, **kwargs)
        return lean_forward(kernels, layer, hidden_states, **kwargs)

    return forward


def lean_forward(
    kernels: OwnKernels,
    layer: Any,
    hidden_states: Any,
    *,
    attention_mask: Any = None,
    position_ids: Any = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[Any, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """transformers' decoder layer forward of these families, its norms and rotary embedding by
    the app's kernels; transformers' own where the input is not float32 or has no rotary
    embedding. Keywords as transformers' text models pass them."""
    if hidden_states.dtype != _float32() or position_embeddings is None:
        return type(layer).forward(
            layer,
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    attended = _attention(
        kernels,
        layer.self_attn,
        _norm(kernels, layer.input_layernorm, hidden_states),
        position_embeddings,
        attention_mask,
        cache,
        {**kwargs, **_passed_on(layer.self_attn, position_ids)},
    )
    hidden_states = hidden_states + attended
    normed = _norm(kernels, layer.post_attention_layernorm, hidden_states)
    return hidden_states + _mlp(layer.mlp, normed)


def _passed_on(attention: Any, position_ids: Any) -> dict[str, Any]:
    """What transformers' attention of this family passes to the attention function besides
    the kwargs it was given: Qwen2-VL's and Qwen2.5-VL's their sliding window and positions."""
    if not hasattr(attention, "sliding_window"):
        return {}
    return {"sliding_window": attention.sliding_window, "position_ids": position_ids}


def _norm(kernels: OwnKernels, norm: Any, x: Any) -> Any:
    """`norm` of `x` (any leading shape) by the app's kernel."""
    return kernels.rms_norm(x.contiguous(), norm.weight, norm.variance_epsilon)


def _attention(
    kernels: OwnKernels,
    attention: Any,
    x: Any,
    position_embeddings: tuple[Any, Any],
    mask: Any,
    cache: Any,
    kwargs: dict[str, Any],
) -> Any:
    """The attention block: projections, norms and rotary, the cache, attention, o."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    shape = (*x.shape[:-1], -1, attention.head_dim)
    cos, sin = (part.contiguous() for part in position_embeddings)
    q_norm, k_norm = (getattr(attention, name, None) for name in ("q_norm", "k_norm"))
    query = _rotated(kernels, q_norm, attention.q_proj.forward(x), shape, cos, sin)
    key = _rotated(kernels, k_norm, attention.k_proj.forward(x), shape, cos, sin)
    value = attention.v_proj.forward(x).view(shape).transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, attention.layer_idx, kwargs=kwargs)
    # transformers' own default where the implementation is not a registered one ("eager").
    eager: Any = getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager)
    out, _ = attend(
        attention, query, key, value, mask, dropout=0.0, scaling=attention.scaling, **kwargs
    )
    return attention.o_proj.forward(out.reshape(*x.shape[:-1], -1))


def _rotated(
    kernels: OwnKernels, norm: Any, projected: Any, shape: tuple[int, ...], cos: Any, sin: Any
) -> Any:
    """A projection's heads normed (where `norm` is one) and turned: (batch, heads, tokens,
    dim)."""
    heads = projected.view(shape)
    if heads.stride(-1) != 1 or heads.stride(-2) != heads.shape[-1]:
        heads = heads.contiguous()
    if norm is None:
        return kernels.norm_rope(heads, None, 0.0, cos, sin)
    return kernels.norm_rope(heads, norm.weight, norm.variance_epsilon, cos, sin)


def _mlp(mlp: Any, x: Any) -> Any:
    """`mlp(x)`; a SiLU MLP of gate, up and down without `nn.Module`'s wrapping."""
    import torch.nn.functional as F

    if type(mlp).__name__ not in LEAN_MLPS or mlp.config.hidden_act != "silu":
        return mlp(x)
    gate = mlp.gate_proj.forward(x)
    up = mlp.up_proj.forward(x)
    return mlp.down_proj.forward(F.silu(gate).mul_(up))


def _float32() -> Any:
    import torch

    return torch.float32
