"""The language model's linear layers in 4 and 8 bits on the CPU, by the app's own kernel or
ONNX Runtime's.

Decoding on a CPU reads every weight once a token, so its speed is the weights' bytes. The
int8 path (app/cpu_weights/int8.py) reads 1.7 GB a token for Qwen3-VL-2B's language
model; llama.cpp's Q4_K_M reads about half. Of the 4-bit CPU kernels within reach of a wheel,
ONNX Runtime's `MatMulNBits` (com.microsoft domain; its MLAS kernels quantize each input row to
8 bits per block and multiply with the CPU's integer dot products: AVX-512 VNNI, AVX2, NEON)
is the one that runs at memory speed. Measured on 2 cores (AMD EPYC, AVX-512 VNNI), the 28
layers' shapes, weights cycled from memory:

| kernel | one row | 400 rows (a prefill) |
| --- | --- | --- |
| oneDNN int8 (int8.py) | 60 ms | 1.6 s |
| PyTorch `_weight_int4pack_mm_for_cpu`, groups of 128 | 39 ms | 6.6 s |
| ONNX Runtime `MatMulNBits`, 4-bit, blocks of 32 / 64 / 128 | 36 / 30 / 28 ms | 4.2 / 3.9 / 2.9 s |

The formats (`BlockFormat`) were chosen for fidelity first, measured with llama.cpp's own KL
measure beside its formats (benchmarks/fidelity.py): 4 bits in blocks of 32, each block with a
float32 scale searched for the least squared error and an integer zero point (5.1 bits a
weight), and 8 bits in blocks of 128 where an error costs the most (checkpoint.block_plan). The
old format (blocks of 128 scaled by their largest value, 4.25 bits) was 2.7x Q4_K_M's
divergence; these are 0.74x (with the output layer in 4 bits, its likeliest tokens computed
again from int8 rows: output.py). Each row of the input is quantized on its own, so a token's
output does not depend on the other rows of the call: a prompt read in parts gives the same bits
as read at once, which the prefix cache rests on.

Where the app's kernels are built and the CPU has AVX-512 VNNI, the same weights are multiplied
by the app's own kernel instead (own_products.cpp, through `BlockProducts`): MatMulNBits spends
more time unpacking a block of 32 four-bit weights than reading it, and unpacks it again for
every row. Measured in Qwen3-VL-2B's 28 layers, in one process, interleaved: a decode step 7%
faster with one reply, 11% with four, a 400-token prompt 6-11% (docs/cpu.md, "The app's
products").

Threads: ONNX Runtime keeps its own pool (one, for every layer, as many threads as PyTorch's),
told not to spin between calls. PyTorch's OpenMP threads must not spin either, or the two pools
fight for the cores between the layers (200 ms a token instead of 62): `OMP_WAIT_POLICY=passive`
is set by the app's entry point, before PyTorch is imported (`quiet_openmp`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockFormat:
    """How one linear layer's weights are kept for `MatMulNBits`: `bits` a weight (4 or 8),
    each run of `block` weights of a row with its own float32 scale and integer zero point
    (level = round(w / scale) + zero, w ~ (level - zero) * scale)."""

    bits: int
    block: int = 32

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    def bits_a_weight(self) -> float:
        """What a weight costs to read: itself, its block's scale (32 bits) and zero point."""
        return self.bits + (32 + self.bits) / self.block


# Chosen by measurement (docs/cpu.md, "What each CPU path costs in fidelity"): blocks of 32 with a
# zero point and a searched scale bring a Gaussian layer's error from 0.117 (blocks of 128, the
# largest value mapped to 7) to 0.077; 8 bits in blocks of 128 give 0.006 at 8.3 bits a weight, for
# the layers where an error costs the most (checkpoint.block_plan).
FOUR_BITS = BlockFormat(4, 32)
EIGHT_BITS = BlockFormat(8, 128)

# What is kept of a layer in a block format (and saved by store.py): its packed levels, scales,
# zero points, bias and format.
BlockLayer = dict[str, Any]


class BlockProducts(Protocol):
    """A kernel that multiplies rows by weights in blocks (the app's own:
    app/engines/local/generation/own_kernels.py); where it runs here, `BlockLinear` computes
    with it instead of ONNX Runtime."""

    def block_products_fast(self) -> bool: ...

    def repack_blocks(
        self, levels: Tensor, scales: Tensor, zeros: Tensor, bits: int, block: int
    ) -> Tensor: ...

    def block_product(self, x: Tensor, packed: Tensor, bits: int, block: int) -> Tensor: ...


@functools.cache
def _runtime() -> Any:
    """onnxruntime, its one thread pool made (once a process, before any session)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    onnxruntime.set_global_thread_pool_sizes(torch.get_num_threads(), 1)
    return onnxruntime


@functools.cache
def block_kernels_available() -> bool:
    """Whether ONNX Runtime is installed and its 4- and 8-bit products give the right numbers
    here."""

    try:
        _runtime()
    except ImportError:
        return False
    # Any weights (odd block counts too: 5 blocks of 32), and the largest levels times the
    # largest inputs (where sums of byte products can overflow 16 bits on some CPUs): the
    # kernel must give the product of the weights as stored, its 8-bit input rows exact here.
    cases = (
        (torch.linspace(-1, 1, 3 * 160).reshape(3, 160).pow(3), torch.ones(2, 160)),
        (torch.ones(3, 256), torch.full((2, 256), 100.0)),
        (torch.ones(3, 256), torch.full((2, 256), -100.0)),
    )
    for fmt in (FOUR_BITS, EIGHT_BITS):
        for weight, rows in cases:
            layer = quantize_blocks(weight, None, fmt)
            try:
                got = BlockLinear(layer)(rows)
            except Exception as err:  # noqa: BLE001 - any failure of the runtime: the int8 path
                log.warning("ONNX Runtime's %d-bit product failed here (%s)", fmt.bits, err)
                return False
            if not torch.allclose(got, rows @ dequantized(layer).T, rtol=1e-4, atol=1e-3):
                return False
    return True


def dequantized(layer: BlockLayer) -> Tensor:
    """The float32 weights [out, in] a layer in a block format stands for."""

    levels = _unpacked(layer["packed"], layer["bits"])
    zeros = _unpacked(layer["zero_points"], layer["bits"])
    blocks = levels.shape[1]
    weight = (levels.float() - zeros[:, :blocks, None].float()) * layer["scales"][..., None]
    return weight.flatten(1)[:, : layer["in_features"]]


def _two_a_byte(values: Tensor) -> Tensor:
    """4-bit values (in bytes) packed two a byte along the last axis, the first in the low half,
    as `MatMulNBits` reads its levels and zero points."""
    return values[..., 0::2] | (values[..., 1::2] << 4)


def _unpacked(packed: Tensor, bits: int) -> Tensor:
    """`_two_a_byte` undone (8-bit values are kept a byte each)."""

    if bits == 8:
        return packed
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


# The scales tried for each block, as a multiple of the step that maps its range (smallest value
# or zero, to largest value or zero) onto the levels exactly; each is then refitted by least
# squares to the levels it gave. As llama.cpp's `make_qkx2_quants` does, with fewer tries: 9
# gave a Gaussian layer's error 0.0769, 21 gave 0.0768, none (the range alone) 0.081.
SCALE_TRIES = tuple(1 + step / 60 for step in range(-4, 5))
ROWS_AT_ONCE = 256  # a part of a layer searched at once: its temporaries stay in the cache


def quantize_blocks(
    weight: Tensor, bias: Tensor | None, fmt: BlockFormat = FOUR_BITS
) -> BlockLayer:
    """A linear layer's weight [out, in] in `fmt`, as `MatMulNBits` reads it: levels packed
    (4 bits: two a byte, the first in the low half), a float32 scale and an integer zero point a
    block, each block's scale the one of `SCALE_TRIES` with the least squared error. A row whose
    length is not a multiple of the block is padded with zeros."""

    out_features, in_features = weight.shape
    blocks = -(-in_features // fmt.block)
    scales = torch.empty(out_features, blocks)
    zeros = torch.empty(out_features, blocks, dtype=torch.uint8)
    levels = torch.empty(out_features, blocks, fmt.block, dtype=torch.uint8)
    for first in range(0, out_features, ROWS_AT_ONCE):
        part = slice(first, first + ROWS_AT_ONCE)
        grouped = torch.zeros(weight[part].shape[0], blocks * fmt.block)
        grouped[:, :in_features] = weight[part].detach().float()
        grouped = grouped.view(-1, blocks, fmt.block)
        scale, zero = _best_scales(grouped, fmt.levels)
        scales[part], zeros[part] = scale, zero.to(torch.uint8)
        levels[part] = _levels(grouped, scale, zero, fmt.levels).to(torch.uint8)
    packed = _two_a_byte(levels) if fmt.bits == 4 else levels
    bias = None if bias is None else bias.detach().float()
    return {
        "packed": packed,
        "scales": scales,
        "zero_points": _packed_zero_points(zeros, fmt),
        "bits": fmt.bits,
        "block": fmt.block,
        "bias": bias,
        "in_features": in_features,
    }


def _levels(grouped: Tensor, scale: Tensor, zero: Tensor, top: int) -> Tensor:
    """Each weight's level (0..top, float) in its block's scale and zero point."""

    return torch.div(grouped, scale[..., None]).round_().add_(zero[..., None]).clamp_(0, top)


def _best_scales(grouped: Tensor, top: int) -> tuple[Tensor, Tensor]:
    """(scale, zero point) a block of `grouped` [rows, blocks, block]: of the scales tried, the
    one whose levels, with the scale refitted to them, leave the least squared error."""

    low = grouped.amin(-1).clamp_(max=0)
    span = (grouped.amax(-1).clamp_(min=0) - low).clamp_(min=1e-12)
    squares = grouped.square().sum(-1)
    best_error = torch.full_like(squares, float("inf"))
    best_scale, best_zero = torch.ones_like(squares), torch.zeros_like(squares)
    for factor in SCALE_TRIES:
        scale = span / (top * factor)
        zero = torch.round(-low / scale).clamp_(0, top)
        centred = _levels(grouped, scale, zero, top).sub_(zero[..., None])
        dot = (grouped * centred).sum(-1)
        norm = centred.square().sum(-1).clamp_(min=1e-12)
        error = squares - dot.square() / norm  # the least squared error over scales, closed form
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, (dot / norm).clamp_(min=1e-12), best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def _packed_zero_points(zeros: Tensor, fmt: BlockFormat) -> Tensor:
    """Zero points as `MatMulNBits` reads them: 4 bits, two a byte a row (a row of an odd
    count padded), or a byte each."""

    if fmt.bits == 8:
        return zeros
    if zeros.shape[1] % 2:
        zeros = torch.cat([zeros, torch.zeros_like(zeros[:, :1])], dim=1)
    return _two_a_byte(zeros)


def _session(layer: BlockLayer) -> Any:
    """An ONNX Runtime session of one `MatMulNBits` node holding the layer's weights."""
    from onnx import TensorProto, helper, numpy_helper

    runtime = _runtime()
    in_features, out_features = layer["in_features"], layer["packed"].shape[0]
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales", "zero_points"],
        ["Y"],
        domain="com.microsoft",
        K=in_features,
        N=out_features,
        bits=layer["bits"],
        block_size=layer["block"],
        accuracy_level=4,  # int8 products of the quantized input rows (the fast kernels)
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", out_features])],
        initializer=[
            numpy_helper.from_array(layer["packed"].numpy(), "B"),
            numpy_helper.from_array(layer["scales"].reshape(-1).numpy(), "scales"),
            numpy_helper.from_array(layer["zero_points"].reshape(-1).numpy(), "zero_points"),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = runtime.SessionOptions()
    options.use_per_session_threads = False
    # No arena: each session's would keep its largest output (a long prompt's: 2,000 tokens x
    # 12,288 columns is 100 MB) for good, in every layer (10 GB at the peak where measured).
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = runtime.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    # ONNX Runtime's Python session keeps the model's bytes for as long as it lives (its own
    # comment: "This is bad as we're holding the memory indefinitely"), only to build the
    # session again should its providers change, which the app never asks: a second copy of
    # every layer's weights beside the kernel's packed one, 1.4 GB of Qwen3-VL-2B's 4.8 GB
    # after loading. Let go of it (where a later version names it otherwise, nothing changes).
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    return session


class OnnxProduct:
    """Rows times a layer's block weights by ONNX Runtime's `MatMulNBits`."""

    kernel = "ONNX Runtime"

    def __init__(self, layer: BlockLayer) -> None:
        self._session = _session(layer)

    def __call__(self, rows: Tensor) -> Tensor:
        # numpy in and out, no torch operation between: a decode step makes 141 of these
        # calls, and each torch operation there costs tens of microseconds (own_layers.py).
        import numpy

        flat = rows.numpy()
        count = flat.shape[0]
        if count % 2:
            # With blocks of 64 or more, MLAS computes rows in pairs and an odd last row
            # alone, in another kernel whose sums differ in the last bits: a decoded token
            # (one row) would not equal the same token read in a prompt. Padded to pairs,
            # every row is computed alike (one row: 2 ms more in 28 layers).
            flat = numpy.concatenate([flat, flat[-1:]])
        product = self._session.run(None, {"A": numpy.ascontiguousarray(flat)})[0]
        return torch.from_numpy(product[:count])


class OwnProduct:
    """Rows times a layer's block weights by the app's own kernel, the weights repacked for
    it."""

    kernel = "the app's kernel"

    def __init__(self, layer: BlockLayer, products: BlockProducts) -> None:
        bits, blocks = layer["bits"], layer["scales"].shape[1]
        levels = _unpacked(layer["packed"], bits)
        levels = levels.reshape(levels.shape[0], -1).contiguous()
        zeros = _unpacked(layer["zero_points"], bits)[:, :blocks].contiguous()
        self._packed = products.repack_blocks(levels, layer["scales"], zeros, bits, layer["block"])
        self._products, self._bits, self._block = products, bits, layer["block"]
        self._out = layer["packed"].shape[0]

    def __call__(self, rows: Tensor) -> Tensor:
        y = self._products.block_product(rows, self._packed, self._bits, self._block)
        return y if y.shape[1] == self._out else y[:, : self._out]


class BlockLinear(nn.Module):
    """y = x W^T + b with W in a block format (4 or 8 bits, a scale and zero point a
    block), multiplied by `products` where it runs here, else by ONNX Runtime."""

    def __init__(self, layer: BlockLayer, products: BlockProducts | None = None) -> None:
        super().__init__()
        self.in_features = layer["in_features"]
        self.out_features = layer["packed"].shape[0]
        self.register_buffer("bias", layer["bias"])
        # The weights live only in the product (repacked for its kernel there): kept here
        # too, they would take their memory twice. The store saves them as made.
        self.bits = layer["bits"]
        self.bits_a_weight = BlockFormat(layer["bits"], layer["block"]).bits_a_weight()
        self._product: OwnProduct | OnnxProduct
        if products is not None and products.block_products_fast():
            self._product = OwnProduct(layer, products)
        else:
            self._product = OnnxProduct(layer)

    @property
    def on_own_kernel(self) -> bool:
        return isinstance(self._product, OwnProduct)

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        y = self._product(x.reshape(-1, self.in_features).float())
        bias: Any = self.bias
        if bias is not None:
            y = y.add_(bias)
        return y.view(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, "
            f"{self.bits}-bit weights ({self._product.kernel})"
        )


def own_kernel_layers(model: nn.Module) -> int:
    """How many of `model`'s layers in a block format the app's own kernel multiplies."""
    return sum(isinstance(m, BlockLinear) and m.on_own_kernel for m in model.modules())


def is_block_layer(layer: dict[str, Any]) -> bool:
    return "packed" in layer
