"""ONNX Runtime's block quantizer against the app's own (app/cpu_weights/blocks.py).

ONNX Runtime ships a quantizer for `MatMulNBits` (`onnxruntime.quantization.
matmul_nbits_quantizer`, which needs the `onnx_ir` package and works on ONNX graphs; its C++
kernels `quantize_matmul_4bits` / `quantize_matmul_8bits` take arrays). It maps each block's
range onto the levels (min-max, asymmetric); the app searches each block's scale for the least
squared error, as llama.cpp's `make_qkx2_quants` does. This prints, for a layer of Qwen3-VL-2B's
MLP shape (6144 x 2048) with Gaussian and heavy-tailed weights, each quantizer's relative RMS
error of the weights, its time, and whether the kernel reads ONNX Runtime's packing as it reads
the app's (the product's distance from the dequantized weights' product, the same for both).

    python -m benchmarks.block_quantizer      # ~10 s

Not in CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from app.cpu_weights.blocks import (
    EIGHT_BITS,
    FOUR_BITS,
    BlockFormat,
    BlockLinear,
    dequantized,
    quantize_blocks,
)

OUT_FEATURES, IN_FEATURES = 6144, 2048


def runtime_quantized(weight: torch.Tensor, fmt: BlockFormat) -> tuple[dict[str, Any], float]:
    """`weight` [out, in] by ONNX Runtime's kernel, as a layer dict of blocks.py, and seconds."""
    from onnxruntime.capi import _pybind_state as ort

    quantizer: Callable[..., None] = (
        ort.quantize_matmul_4bits if fmt.bits == 4 else ort.quantize_matmul_8bits
    )
    out_features, in_features = weight.shape
    blocks = -(-in_features // fmt.block)
    per_byte = 8 // fmt.bits
    packed = np.zeros((out_features, blocks, fmt.block // per_byte), dtype="uint8")
    zeros = np.zeros((out_features, -(-blocks // per_byte)), dtype="uint8")
    scales = np.zeros((out_features, blocks), dtype="float32")
    transposed = np.ascontiguousarray(weight.T.numpy())  # [in, out], as a MatMul's B
    started = time.perf_counter()
    quantizer(packed, transposed, scales, zeros, fmt.block, out_features, in_features, False)
    seconds = time.perf_counter() - started
    layer = {
        "packed": torch.from_numpy(packed),
        "scales": torch.from_numpy(scales),
        "zero_points": torch.from_numpy(zeros),
        "bits": fmt.bits,
        "block": fmt.block,
        "bias": None,
        "in_features": in_features,
    }
    return layer, seconds


def relative_error(layer: dict[str, Any], weight: torch.Tensor) -> float:
    return float((dequantized(layer) - weight).norm() / weight.norm())


def product_distance(layer: dict[str, Any], rows: torch.Tensor) -> float:
    """How far the kernel's product is from the dequantized weights' (its input rows are
    quantized to 8 bits, so not 0): equal for two packings the kernel reads alike."""
    exact = rows @ dequantized(layer).T
    return float((BlockLinear(layer)(rows) - exact).norm() / exact.norm())


def main() -> None:
    torch.manual_seed(0)
    shape = (OUT_FEATURES, IN_FEATURES)
    weights = {
        "Gaussian": torch.randn(shape) * 0.02,
        "heavy-tailed (Student t, 3)": torch.distributions.StudentT(3.0).sample(shape) * 0.02,
    }
    rows = torch.randn(4, IN_FEATURES)
    columns = ("weights", "format", "ONNX Runtime's error", "the app's error", "time ORT / app")
    print("| " + " | ".join((*columns, "product ORT / app")) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, weight in weights.items():
        for fmt in (FOUR_BITS, EIGHT_BITS):
            theirs, their_s = runtime_quantized(weight, fmt)
            started = time.perf_counter()
            ours = quantize_blocks(weight, None, fmt)
            our_s = time.perf_counter() - started
            print(
                f"| {name} | {fmt.bits} bits, blocks of {fmt.block} "
                f"| {relative_error(theirs, weight):.4f} | {relative_error(ours, weight):.4f} "
                f"| {their_s:.2f} / {our_s:.2f} s "
                f"| {product_distance(theirs, rows):.2e} / {product_distance(ours, rows):.2e} |"
            )


if __name__ == "__main__":
    main()
