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

The inputs go to oneDNN as unsigned 8-bit with a zero point of 128. Signed 8-bit inputs were as
fast on AMX, but on a CPU without AMX (AMD EPYC, AVX-512 VNNI, as most laptops' CPUs lack AMX
too) oneDNN computes signed-by-signed products with its reference code: 194 ms a token for
that layer against float32's 2.9. Unsigned inputs take its VNNI kernel there: 1.0 ms a token
and 18 ms for 400 (float32: 4.0 and 83), and with AVX2 alone 1.8 and 32 (float32 3.8 and 67).
Lest another CPU meet another slow path, `int8_kernels_available` also times one product
against float32's, and checks a product whose 16-bit partial sums would overflow, before the
path is taken: on a CPU with AVX2 but no VNNI (an AMD EPYC here) oneDNN's unsigned-by-signed
kernel saturates them, and its layers were 26% off float32's. Where it is slow or wrong, the
linear layers that would be int8 go to 8-bit blocks instead (app/cpu_weights/blocks.py,
exact at the extremes); the embedding table stays int8 (a lookup).

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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from app.cpu_weights.blocks import (
    EIGHT_BITS,
    BlockFormat,
    BlockLinear,
    BlockProducts,
    is_block_layer,
    quantize_blocks,
)

log = logging.getLogger(__name__)

# An int8 product slower than this many float32 ones is oneDNN's reference code (50 to 200 times
# float32's time where measured), not a kernel made for this CPU (with VNNI 0.3-1.3 times; a
# bound of 3 once flipped between runs on a CPU where it took 1.8-3.5 times, one whose sums were
# wrong anyway: `_exact_at_the_extremes`).
SLOWEST_INT8 = 10.0
TIMING_ROUNDS = 3  # rounds of timing before int8 is judged slow


@functools.cache
def int8_kernels_available() -> bool:
    """Whether this PyTorch has oneDNN's int8 linear on this CPU (x86 builds do), exact (at the
    extremes too), and fast here (timed against float32's product, up to TIMING_ROUNDS times)."""

    try:
        if not _exact_at_the_extremes():
            log.warning(
                "oneDNN's int8 product is wrong on this CPU (its sums saturate): its int8 layers "
                "go to 8-bit blocks (or float32, where ONNX Runtime is missing)"
            )
            return False
        # Timed again where it looks slow: on a machine busy with other work one round read
        # 8.0 ms against 0.2 where a quiet one reads 0.15 against 0.18, and the path flipped.
        for _ in range(TIMING_ROUNDS):
            int8_ms, float_ms = _product_times()
            if int8_ms <= SLOWEST_INT8 * float_ms:
                break
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    if int8_ms > SLOWEST_INT8 * float_ms:
        log.warning(
            "oneDNN's int8 product takes %.1f ms on this CPU against float32's %.1f ms: "
            "its int8 layers go to 8-bit blocks (or float32, where ONNX Runtime is missing)",
            int8_ms,
            float_ms,
        )
        return False
    return True


def _exact_at_the_extremes() -> bool:
    """Whether the int8 product is exact where its 16-bit partial sums would overflow: on a CPU
    with AVX2 but no VNNI, oneDNN multiplies unsigned by signed bytes in pairs summed in 16 bits
    with saturation (255 x 127 x 2 > 32767), and rows of 64 times weights of 127 over 64 columns
    gave 8,160 instead of 520,192 (layers 26% off float32's)."""
    weight = torch.full((2, 64), 127, dtype=torch.int8)
    packed = _packed(weight, torch.ones(2))
    for value in (1.0, 64.0, 127.0, -127.0):
        rows = torch.full((2, 64), value)
        out = _int8_matmul(_unsigned(rows.clone()), *packed)
        if not bool(out.eq(value * 127 * 64).all().item()):
            return False
    return True


def _product_times() -> tuple[float, float]:
    """(int8, float32) milliseconds of one row times a 1024x2048 layer, the best of five."""
    import time

    weight = torch.randn(1024, 2048)
    packed = _packed(*_quantize_rows(weight))
    row = torch.randn(1, 2048)
    products = (
        lambda: _int8_matmul(_unsigned(row.mul(30).round()), *packed),
        lambda: row @ weight.T,
    )
    best = []
    for product in products:
        # The first calls build oneDNN's primitive and its reorders (the first timed call once
        # took 8 ms against 0.45 after it, on a loaded machine: the path then flipped).
        for _ in range(2):
            product()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        best.append(min(times) * 1000)
    return best[0], best[1]


def _packed(qweight: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(the weight in oneDNN's own layout, packed once, its scales, zero points)."""
    zeros = torch.zeros(qweight.shape[0], dtype=torch.int64)
    return torch.ops.onednn.qlinear_prepack(qweight, None), scale, zeros


# The inputs' zero point: a row quantized to -127..127 goes to oneDNN as 1..255 (module docstring).
INPUT_ZERO = 128


def _unsigned(quantized: Tensor) -> Tensor:
    """Rows already rounded to -127..127 (float, shifted in place), as oneDNN's unsigned 8-bit
    inputs."""

    return quantized.add_(INPUT_ZERO).to(torch.uint8)


def _int8_matmul(rows: Tensor, packed: Tensor, scale: Tensor, zeros: Tensor) -> Tensor:
    """float32 ((rows - INPUT_ZERO) @ W^T) * scale: the 8-bit product summed exactly in int32, then
    scaled."""
    return torch.ops.onednn.qlinear_pointwise(
        rows, 1.0, INPUT_ZERO, packed, scale, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


def _quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 rows, one float32 scale per row): symmetric, the scale maps the row's largest
    magnitude to 127."""

    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    rows = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return rows, scale


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8 (a scale per output row) and x quantized per row."""

    packed: Tensor
    scale: Tensor
    zeros: Tensor
    bias: Tensor | None

    def __init__(self, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.bits_a_weight = 8 + 32 / self.in_features  # and a float32 scale a row
        packed, scale, zeros = _packed(qweight, scale)
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        flat = x.reshape(-1, self.in_features).float()
        # No clamp is needed: |flat| / (max |flat| / 127) rounds to at most 127.
        # abs().amax(): a third of vector_norm(inf)'s time on one row (7 us against 2.5).
        row_scale = flat.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127)
        quantized = _unsigned(torch.div(flat, row_scale).round_())
        y = _int8_matmul(quantized, self.packed, self.scale, self.zeros)
        y = y.mul_(row_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 weights and activations"


class Int8Embedding(nn.Module):
    """An embedding table in int8 with a scale per row, looked up and scaled to float32."""

    qweight: Tensor
    scale: Tensor

    def __init__(self, qweight: Tensor, scale: Tensor, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @property
    def weight(self) -> Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, ids: Tensor) -> Tensor:
        return self.qweight[ids].float() * self.scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}x{self.embedding_dim}, int8 rows"


@dataclass
class _Taken:
    """What an `Int8Shared` holds between its parts' calls: the input it was last given, its
    output, and the parts that have not taken their columns of it yet. A plain object: set
    on the module itself, each of these would go through `nn.Module.__setattr__` (a few
    microseconds, five times a layer at every token)."""

    input: Tensor | None = None
    output: Tensor | None = None
    waiting: set[int] = field(default_factory=set)


class Int8Shared(nn.Module):
    """One int8 linear layer holding the rows of several that read the same input (a
    layer's q, k and v projections; its MLP's gate and up): their input is quantized once
    and their weights read in one matmul. Each `Int8Part` takes its columns of the output;
    the output is kept until every part has taken its own from that same input."""

    def __init__(self, linear: nn.Module, sizes: list[int]) -> None:
        super().__init__()
        self.linear = linear
        self.bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self._taken = _Taken()

    def part(self, x: Tensor, index: int) -> Tensor:
        taken = self._taken
        # `is`, not equality: the input is the very tensor the first part was given. While
        # it is kept here no other tensor can have its identity.
        if x is not taken.input or index not in taken.waiting:
            taken.input, taken.output = x, self.linear(x)
            taken.waiting = set(range(len(self.bounds) - 1))
        taken.waiting.discard(index)
        assert taken.output is not None  # set above, or by the part before this one
        out = taken.output[..., self.bounds[index] : self.bounds[index + 1]]
        if not taken.waiting:
            taken.input = taken.output = None
        return out


class Int8Part(nn.Module):
    """One of the linear layers of an `Int8Shared`: its columns of the shared output."""

    def __init__(self, shared: Int8Shared, index: int) -> None:
        super().__init__()
        # Registered under every part: parameters(), buffers() and modules() count it
        # once; state_dict() names it under each part.
        self.shared = shared
        self.index = index
        self.in_features = shared.linear.in_features
        self.out_features = shared.bounds[index + 1] - shared.bounds[index]

    def forward(self, x: Tensor) -> Tensor:
        return self.shared.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of a shared int8 layer, out={self.out_features}"


# What is kept of a quantized layer (and saved by app/cpu_weights/store.py): its int8 rows,
# their scales, and a linear layer's bias or an embedding's padding index.
# A linear layer that `formats` gives a block format is kept in it instead (4 or 8 bits,
# multiplied by the app's kernel or ONNX Runtime's: app/cpu_weights/blocks.py).
Int8Layer = dict[str, Any]
Keep = Callable[[str, Int8Layer], None]
BlockFormats = Callable[[str], BlockFormat | None]


def quantize(
    model: Any,
    keep: Keep | None = None,
    formats: BlockFormats | None = None,
    products: BlockProducts | None = None,
) -> tuple[int, int]:
    """Replace, in place, every `nn.Linear` and `nn.Embedding` of `model` by its int8 form (a
    linear layer that `formats(name)` gives a block format: in that); (linears, embeddings)
    replaced. A layer's weight is made float32 only while it is quantized; a table shared by
    the input embedding and the output layer (tied weights, as in Qwen3-VL-2B) is quantized once
    for the int8 layers. `keep(name, layer)` is given each layer's quantized form; layers in a
    block format are multiplied by `products` where it runs (blocks.BlockLinear)."""

    kinds = (nn.Linear, nn.Embedding)
    # Names, not modules: a float layer is freed as soon as its int8 form replaces it.
    places = [
        (f"{prefix}.{name}".lstrip("."), parent, name)
        for prefix, parent in model.named_modules()
        for name, child in parent.named_children()
        if type(child) in kinds
    ]
    uses = Counter(id(getattr(parent, name).weight) for _, parent, name in places)
    shared: dict[int, tuple[Tensor, Tensor]] = {}  # a tied weight's int8 rows, made once
    placer = Int8Placer(products)
    counts = [0, 0]
    with torch.no_grad():
        for full_name, parent, name in places:
            child = getattr(parent, name)
            is_linear = type(child) is nn.Linear
            fmt = formats(full_name) if is_linear and formats is not None else None
            if is_linear and fmt is None and not int8_kernels_available():
                fmt = EIGHT_BITS  # oneDNN's int8 is slow or wrong here: 8-bit blocks
            if fmt is not None:
                layer = quantize_blocks(child.weight, child.bias, fmt)
            else:
                layer = _int8_layer(child, shared, uses[id(child.weight)] > 1)
            counts[0 if is_linear else 1] += 1
            if keep is not None:
                keep(full_name, layer)
            placer.put(parent, name, layer)
            del child, layer
        placer.finish()
    return counts[0], counts[1]


def _int8_layer(
    child: nn.Module, shared: dict[int, tuple[Tensor, Tensor]], tied: bool
) -> Int8Layer:
    """A linear layer's or embedding table's int8 form; a `tied` weight's rows are made once
    and kept in `shared` for the other layer that uses them."""

    weight = child.weight
    assert isinstance(weight, Tensor)
    key = id(weight)
    qweight, scale = shared.get(key) or _quantize_rows(weight)
    if tied:
        shared[key] = (qweight, scale)
    layer: Int8Layer = {"qweight": qweight, "scale": scale}
    if type(child) is nn.Linear:
        layer["bias"] = None if child.bias is None else child.bias.detach().float()
    else:
        layer["padding_idx"] = child.padding_idx
    return layer


def int8_module(layer: Int8Layer, products: BlockProducts | None = None) -> nn.Module:
    """The module of a layer kept by `quantize` (a linear one where it has "bias"; in a block
    format where it has packed weights, multiplied by `products` where it runs)."""

    if is_block_layer(layer):
        return BlockLinear(layer, products)
    if "bias" in layer:
        return Int8Linear(layer["qweight"], layer["scale"], layer["bias"])
    return Int8Embedding(layer["qweight"], layer["scale"], layer["padding_idx"])


# Linear layers of one module that are called with the same input, computed as one
# (`Int8Shared`): on 2 cores, Qwen3-VL-2B's 28 layers decode in 78 ms of matmuls instead of 85.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class Int8Placer:
    """Puts int8 layers in place of a model's float ones. Siblings that read one input
    (`SHARED_INPUT`) wait for each other and go in as the parts of one `Int8Shared`. Layers in
    a block format are multiplied by `products` where it runs."""

    def __init__(self, products: BlockProducts | None = None) -> None:
        self._products = products
        self._waiting: dict[
            tuple[int, tuple[str, ...]], tuple[nn.Module, dict[str, Int8Layer]]
        ] = {}

    def put(self, parent: nn.Module, name: str, layer: Int8Layer) -> None:
        group = next((names for names in SHARED_INPUT if name in names), None)
        if group is None or "bias" not in layer:
            setattr(parent, name, int8_module(layer, self._products))
            return
        key = (id(parent), group)
        _, siblings = self._waiting.setdefault(key, (parent, {}))
        siblings[name] = layer
        if len(siblings) == len(group):
            del self._waiting[key]
            _place_shared(parent, [(n, siblings[n]) for n in group], self._products)

    def finish(self) -> None:
        """Siblings whose group is not whole go in alone."""
        for parent, siblings in self._waiting.values():
            for name, layer in siblings.items():
                setattr(parent, name, int8_module(layer, self._products))
        self._waiting.clear()


def _place_shared(
    parent: nn.Module, named: list[tuple[str, Int8Layer]], products: BlockProducts | None
) -> None:
    """Siblings of one input placed as parts of one product, those of one width and kind
    together (the default CPU path keeps q and k in 4 bits, v in 8: q and k are one product,
    v its own); a sibling of a kind of its own goes in alone."""
    together: dict[tuple[int, Any, Any], list[tuple[str, Int8Layer]]] = {}
    for name, layer in named:
        kind = (_shape(layer)[1], layer.get("bits"), layer.get("block"))  # int8 rows: None, None
        together.setdefault(kind, []).append((name, layer))
    for group in together.values():
        if len(group) == 1:
            name, layer = group[0]
            setattr(parent, name, int8_module(layer, products))
            continue
        layers = [layer for _, layer in group]
        sizes = [_shape(x)[0] for x in layers]
        shared = Int8Shared(int8_module(_concatenated(layers, sizes), products), sizes)
        for index, (name, _) in enumerate(group):
            setattr(parent, name, Int8Part(shared, index))


def _shape(layer: Int8Layer) -> tuple[int, int]:
    """(out, in) features of a linear layer kept by `quantize`, int8 or in a block format."""

    if is_block_layer(layer):
        return layer["packed"].shape[0], layer["in_features"]
    out_features, in_features = layer["qweight"].shape
    return out_features, in_features


def _concatenated(layers: list[Int8Layer], sizes: list[int]) -> Int8Layer:
    """Linear layers of one input and one kind as one: their weights' rows, scales and zero
    points stacked (int8 or a block format alike), their biases joined (zeros where one has
    none)."""

    first = layers[0]
    joined = {
        key: torch.cat([layer[key] for layer in layers]) if torch.is_tensor(value) else value
        for key, value in first.items()
        if key != "bias"
    }
    biases = [layer["bias"] for layer in layers]
    joined["bias"] = None
    if any(b is not None for b in biases):
        pairs = zip(sizes, biases, strict=True)
        joined["bias"] = torch.cat([torch.zeros(n) if b is None else b for n, b in pairs])
    return joined


# glibc's M_MMAP_THRESHOLD (malloc.h), and the size from which a buffer gets pages of its own.
_M_MMAP_THRESHOLD = -3
OWN_PAGES_FROM = 4 << 20


def give_large_buffers_their_own_pages() -> None:
    """Buffers of OWN_PAGES_FROM or more in pages of their own, given back when freed. glibc
    otherwise raises that bound each time such a buffer is freed (up to 32 MiB), and later ones
    come from its heap, which keeps every page it ever held: on the CPU path, where ONNX Runtime
    and PyTorch allocate a prompt's activations afresh in every layer, a photo turn and a long
    question took the process from 5.0 GB to 8.9 GB (5.5 GB with a bound of 1 MiB; prompts read
    about a tenth slower, from the fresh pages). Set once the model is built: with it during
    quantizing, the first start took 315 s instead of 103."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, OWN_PAGES_FROM)


def return_freed_memory() -> None:
    """Give the float weights' freed memory back to the system (glibc keeps it otherwise)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def to_cpu_kernels(
    model: Any,
    keep: Keep | None = None,
    formats: BlockFormats | None = None,
    products: BlockProducts | None = None,
) -> Any:
    """`model` (loaded in bfloat16 on the CPU) in int8 where it counts (the layers `formats`
    names in their block formats, multiplied by `products` where it runs), float32 elsewhere."""
    linears, embeddings = quantize(model, keep, formats, products)
    # `.float()` casts parameters and floating buffers; the int8 buffers stay int8.
    model.float()
    return_freed_memory()
    give_large_buffers_their_own_pages()
    log.info(
        "weights: %d linear layers and %d embedding tables in int8%s, the rest float32 "
        "(--dtype float32: exact, slower)",
        linears,
        embeddings,
        " (the language model's linear layers in 4 and 8 bits)" if formats else "",
    )
    return model
