"""The fast CPU path: linear layers and the embedding table in int8, computed in int8 on the CPU.

Decoding on a CPU is bound by the bytes of weights read per token; int8 weights read a quarter
of fp32's. Chosen by measurement on 2 cores (AVX-512 + AMX), per 2048x6144 layer, the weights
cycled through 24 layers so that they come from memory as in a real model:

| | one token | a 400-token prefill |
| --- | --- | --- |
| float32 (MKL) | 1.75 ms | 30.2 ms |
| oneDNN's int8 matmul, weights prepacked once (`qlinear_pointwise`), here | 0.56 ms | 2.7 ms |
| `torch._int_mm` (repacks the weight at every call) | 1.02 ms | 4.0 ms |
| PyTorch's dynamic int8 `Linear` (fbgemm) | 0.56 ms | 10.3 ms |
| weight-only int8 (`_weight_int8pack_mm`, bfloat16 activations) | 0.86 ms | 59.9 ms |

PyTorch's dynamic int8 linear quantizes the activations with one scale for the whole call: a
prompt read in two chunks then gives other numbers than the same prompt read at once, and the
prefix cache would change answers. Here each row (token) gets its own scale and the int8
product is summed exactly in int32, so a token's output depends only on that token: the cache
changes nothing.

The model is loaded in bfloat16 and quantized one layer at a time, so no float32 copy of the
whole model exists; what is neither a linear layer nor the embedding table (norms,
convolutions, fused MoE experts) is then made float32, which every CPU computes fast.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

INT8 = "int8"


def int8_kernels_available() -> bool:
    """Whether this PyTorch has oneDNN's int8 linear on this CPU (x86 builds do)."""
    import torch

    try:
        rows = torch.ones((2, 8), dtype=torch.int8)
        out = _int8_matmul(torch, rows, *_packed(torch, rows, torch.ones(2)))
        return bool(out.eq(8).all().item())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _packed(torch: Any, qweight: Any, scale: Any) -> tuple[Any, Any, Any]:
    """(the weight in oneDNN's own layout, packed once, its scales, zero points)."""
    zeros = torch.zeros(qweight.shape[0], dtype=torch.int64)
    return torch.ops.onednn.qlinear_prepack(qweight, None), scale, zeros


def _int8_matmul(torch: Any, rows: Any, packed: Any, scale: Any, zeros: Any) -> Any:
    """float32 (rows @ W^T) * scale: the int8 product summed exactly in int32, then scaled."""
    return torch.ops.onednn.qlinear_pointwise(
        rows, 1.0, 0, packed, scale, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


def _quantize_rows(weight: Any) -> tuple[Any, Any]:
    """(int8 rows, one float32 scale per row): symmetric, the scale maps the row's largest
    magnitude to 127."""
    import torch

    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    rows = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return rows, scale


@functools.cache
def _int8_module_classes() -> tuple[type, type]:
    """(Int8Linear, Int8Embedding), defined once torch is imported (not at module import)."""
    import torch
    from torch import nn

    class Int8Linear(nn.Module):
        """y = x W^T + b with W in int8 (a scale per output row) and x quantized per row."""

        def __init__(self, qweight: Any, scale: Any, bias: Any | None) -> None:
            super().__init__()
            self.out_features, self.in_features = qweight.shape
            packed, scale, zeros = _packed(torch, qweight, scale)
            self.register_buffer("packed", packed)
            self.register_buffer("scale", scale)
            self.register_buffer("zeros", zeros)
            self.register_buffer("bias", bias)

        def forward(self, x: Any) -> Any:
            shape, dtype = x.shape, x.dtype
            flat = x.reshape(-1, self.in_features).float()
            # No clamp is needed: |flat| / (max |flat| / 127) rounds to at most 127.
            row_max = torch.linalg.vector_norm(flat, ord=float("inf"), dim=1, keepdim=True)
            row_scale = row_max.clamp_(min=1e-12).div_(127)
            quantized = torch.div(flat, row_scale).round_().to(torch.int8)
            y = _int8_matmul(torch, quantized, self.packed, self.scale, self.zeros)
            y = y.mul_(row_scale)
            if self.bias is not None:
                y = y.add_(self.bias)
            return y.reshape(*shape[:-1], self.out_features).to(dtype)

        def extra_repr(self) -> str:
            return f"in={self.in_features}, out={self.out_features}, int8 weights and activations"

    class Int8Embedding(nn.Module):
        """An embedding table in int8 with a scale per row, looked up and scaled to float32."""

        qweight: Any
        scale: Any

        def __init__(self, qweight: Any, scale: Any, padding_idx: int | None) -> None:
            super().__init__()
            self.num_embeddings, self.embedding_dim = qweight.shape
            self.padding_idx = padding_idx
            self.register_buffer("qweight", qweight)
            self.register_buffer("scale", scale)

        @property
        def weight(self) -> Any:
            return self.qweight.float() * self.scale[:, None]

        def forward(self, ids: Any) -> Any:
            return self.qweight[ids].float() * self.scale[ids].unsqueeze(-1)

        def extra_repr(self) -> str:
            return f"{self.num_embeddings}x{self.embedding_dim}, int8 rows"

    return Int8Linear, Int8Embedding


# What is kept of a quantized layer (and saved by app/engines/int8_store.py): its int8 rows,
# their scales, and a linear layer's bias or an embedding's padding index.
Int8Layer = dict[str, Any]
Keep = Callable[[str, Int8Layer], None]


def quantize(model: Any, keep: Keep | None = None) -> tuple[int, int]:
    """Replace, in place, every `nn.Linear` and `nn.Embedding` of `model` by its int8 form;
    (linears, embeddings) replaced. A layer's weight is made float32 only while it is
    quantized; a table shared by the input embedding and the output layer (tied weights, as in
    Qwen3-VL-2B) is quantized once. `keep(name, layer)` is given each layer's int8 form."""
    import torch
    from torch import nn

    kinds = (nn.Linear, nn.Embedding)
    # Names, not modules: a float layer is freed as soon as its int8 form replaces it.
    places = [
        (f"{prefix}.{name}".lstrip("."), parent, name)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) in kinds
    ]
    uses = Counter(id(getattr(parent, name).weight) for _, parent, name in places)
    shared: dict[int, tuple[Any, Any]] = {}  # a tied weight's int8 rows, made once
    counts = [0, 0]
    with torch.no_grad():
        for full_name, parent, name in places:
            child = getattr(parent, name)
            key = id(child.weight)
            qweight, scale = shared.get(key) or _quantize_rows(child.weight)
            if uses[key] > 1:
                shared[key] = (qweight, scale)
            layer: Int8Layer = {"qweight": qweight, "scale": scale}
            if type(child) is nn.Linear:
                layer["bias"] = None if child.bias is None else child.bias.detach().float()
                counts[0] += 1
            else:
                layer["padding_idx"] = child.padding_idx
                counts[1] += 1
            if keep is not None:
                keep(full_name, layer)
            setattr(parent, name, int8_module(layer))
            del child, qweight, layer
    return counts[0], counts[1]


def int8_module(layer: Int8Layer) -> Any:
    """The int8 module of a layer kept by `quantize` (a linear one where it has "bias")."""
    int8_linear, int8_embedding = _int8_module_classes()
    if "bias" in layer:
        return int8_linear(layer["qweight"], layer["scale"], layer["bias"])
    return int8_embedding(layer["qweight"], layer["scale"], layer["padding_idx"])


def return_freed_memory() -> None:
    """Give the float weights' freed memory back to the system (glibc keeps it otherwise)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def to_cpu_int8(model: Any, keep: Keep | None = None) -> Any:
    """`model` (loaded in bfloat16 on the CPU) in int8 where it counts, float32 elsewhere."""
    linears, embeddings = quantize(model, keep)
    # `.float()` casts parameters and floating buffers; the int8 buffers stay int8.
    model.float()
    return_freed_memory()
    log.info(
        "weights: %d linear layers and %d embedding tables in int8, the rest float32 "
        "(--dtype float32: exact, slower)",
        linears,
        embeddings,
    )
    return model
