"""The app's own products with weights in blocks of 4 and 8 bits (own_products.cpp, called by
app/cpu_weights/blocks.py where the CPU has AVX-512 VNNI): as close to float32 as ONNX Runtime's
kernel, each row's output the same bits however the rows are split or the threads many, and the
default CPU path multiplies every layer in blocks with it. The families' prefix-cache exactness
on this path: tests/engine/test_prefix_cache.py."""

from __future__ import annotations

import pytest
import torch

from app.cpu_weights.blocks import (
    EIGHT_BITS,
    FOUR_BITS,
    BlockLinear,
    dequantized,
    own_kernel_layers,
    quantize_blocks,
)
from app.engines.local.generation.own_kernels import build_kernels
from app.engines.local.loading.checkpoint import LoadOptions
from testkit.engines import has_block_products, load_engine

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or not has_block_products(),
    reason="the app's block products need a C++ compiler and a CPU with AVX-512 VNNI",
)

# A layer's output error against float32 on Gaussian weights and inputs, as for ONNX Runtime's
# kernel (tests/unit/test_cpu_blocks.py, from the measurement: 4 bits 0.077-0.078, 8 bits
# 0.004-0.007).
BOUNDS = {FOUR_BITS: 0.085, EIGHT_BITS: 0.01}
# Shapes: the model's widths, and ones that are not whole tiles (64 columns) or blocks.
SHAPES = [(2048, 512), (200, 37), (96, 70)]


@pytest.fixture(scope="module")
def kernels():
    choice = build_kernels()
    assert choice.kernels is not None, choice.reason
    assert choice.kernels.block_products_fast()
    return choice.kernels


@pytest.mark.parametrize("fmt", [FOUR_BITS, EIGHT_BITS])
@pytest.mark.parametrize(("width", "out"), SHAPES)
def test_a_layer_is_as_close_to_float32_as_onnx_runtimes_product(kernels, width, out, fmt):
    torch.manual_seed(0)
    weight, bias = torch.randn(out, width), torch.randn(out)
    stored = quantize_blocks(weight, bias, fmt)
    own, onnx = BlockLinear(stored, kernels), BlockLinear(stored)
    assert own.on_own_kernel and not onnx.on_own_kernel
    x = torch.randn(37, width)
    expected = x @ weight.T
    got = own(x)
    error = (got - bias - expected).norm() / expected.norm()
    assert error < BOUNDS[fmt], f"{fmt}: relative error {error:.4f}"
    # Against the stored weights, both kernels' only error is their 8-bit input rows.
    exact = x @ dequantized(stored).T
    own_error = (got - bias - exact).norm() / exact.norm()
    onnx_error = (onnx(x) - bias - exact).norm() / exact.norm()
    assert own_error < 1.1 * onnx_error + 1e-4, (own_error, onnx_error)


@pytest.mark.parametrize("fmt", [FOUR_BITS, EIGHT_BITS])
@pytest.mark.parametrize(("width", "out"), SHAPES)
def test_a_rows_output_is_the_same_bits_however_the_rows_are_split(kernels, width, out, fmt):
    """Rows go four, two and one at a time through the kernel: a row's place among them, their
    count, and the number of threads must not move a bit (the prefix cache rests on it)."""
    torch.manual_seed(1)
    layer = BlockLinear(quantize_blocks(torch.randn(out, width), None, fmt), kernels)
    x = torch.randn(23, width) * 3
    got = layer(x)
    one_by_one = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
    in_parts = torch.cat([layer(x[:3]), layer(x[3:10]), layer(x[10:12]), layer(x[12:])])
    assert torch.equal(one_by_one, got) and torch.equal(in_parts, got)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, got)


def test_the_default_cpu_path_multiplies_every_layer_in_blocks_with_the_apps_kernel(
    tiny_checkpoint,
):
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")), LoadOptions(cpu_only=True))
    blocks = [m for m in engine.model.modules() if isinstance(m, BlockLinear)]
    assert blocks and own_kernel_layers(engine.model) == len(blocks)
    assert all("the app's kernel" in repr(m) for m in blocks)
