"""The language model's linear layers in 4-bit on the CPU, multiplied by ONNX Runtime's kernel.

Decoding on a CPU reads every weight once a token, so its speed is the weights' bytes. The
int8 path (app/engines/local/cpu_int8.py) reads 1.7 GB a token for Qwen3-VL-2B's language
model; llama.cpp's Q4_K_M reads about half. Of the 4-bit CPU kernels within reach of a wheel,
ONNX Runtime's `MatMulNBits` (com.microsoft domain; its MLAS kernels quantize each input row to
8 bits per block and multiply with the CPU's integer dot products: AVX-512 VNNI, AVX2, NEON)
is the one that runs at memory speed. Measured on 2 cores (AMD EPYC, AVX-512 VNNI), the 28
layers' shapes, weights cycled from memory:

| kernel | one row | 400 rows (a prefill) |
| --- | --- | --- |
| oneDNN int8 (cpu_int8) | 60 ms | 1.6 s |
| PyTorch `_weight_int4pack_mm_for_cpu`, groups of 128 | 39 ms | 6.6 s |
| ONNX Runtime `MatMulNBits`, 4-bit, blocks of 32 / 64 / 128 | 36 / 30 / 28 ms | 4.2 / 3.9 / 2.9 s |

Blocks of 128 weights share a float32 scale (0.53 bytes a weight); each row of the input is
quantized on its own, so a token's output does not depend on the other rows of the call: a
prompt read in parts gives the same bits as read at once, which the prefix cache rests on.

Threads: ONNX Runtime keeps its own pool (one, for every layer, as many threads as PyTorch's),
told not to spin between calls. PyTorch's OpenMP threads must not spin either, or the two pools
fight for the cores between the layers (200 ms a token instead of 62): `OMP_WAIT_POLICY=passive`
is set by the app's entry point, before PyTorch is imported (`quiet_openmp`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

INT4 = "int4"
# Weights that share one scale. 128: the fastest (table above), and the usual group size of
# 4-bit checkpoints (GPTQ, AWQ).
BLOCK = 128

# What is kept of a 4-bit layer (and saved by int8_store): its packed weights, scales, bias.
Int4Layer = dict[str, Any]


def quiet_openmp() -> None:
    """Let PyTorch's OpenMP threads sleep between parallel regions (module docstring). Only
    takes effect before PyTorch is imported; a value the user set is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


@functools.cache
def _runtime() -> Any:
    """onnxruntime, its one thread pool made (once a process, before any session)."""
    import onnxruntime
    import torch

    onnxruntime.set_default_logger_severity(3)
    onnxruntime.set_global_thread_pool_sizes(torch.get_num_threads(), 1)
    return onnxruntime


@functools.cache
def int4_kernels_available() -> bool:
    """Whether ONNX Runtime is installed and its 4-bit product gives the right numbers here."""
    import torch

    try:
        _runtime()
    except ImportError:
        return False
    # Whole numbers -7..7 with a 7 in every block: stored exactly, so the product is exact.
    weight = torch.arange(-7.0, 8.0).repeat(3, 11)[:, :160]
    rows = torch.ones(2, 160)
    try:
        got = int4_module(quantize_blocks(weight, None))(rows)
    except Exception as err:  # noqa: BLE001 - any failure of the runtime: the int8 path instead
        log.warning("ONNX Runtime's 4-bit product failed here (%s)", err)
        return False
    return bool(torch.allclose(got, rows @ weight.T, atol=1e-3))


def quantize_blocks(weight: Any, bias: Any | None) -> Int4Layer:
    """A linear layer's weight [out, in] in 4 bits: each run of BLOCK weights of a row gets a
    float32 scale mapping its largest magnitude to 7, values -7..7 stored plus 8 (two a byte,
    the first in the low half), as `MatMulNBits` reads them with its default zero point of 8.
    A row whose length is not a multiple of BLOCK is padded with zeros."""
    import torch

    out_features, in_features = weight.shape
    blocks = -(-in_features // BLOCK)
    padded = torch.zeros(out_features, blocks * BLOCK)
    padded[:, :in_features] = weight.detach().float()
    grouped = padded.view(out_features, blocks, BLOCK)
    scales = grouped.abs().amax(dim=2).div_(7).clamp_(min=1e-12)
    levels = torch.round(grouped / scales[..., None]).clamp_(-8, 7).add_(8).to(torch.uint8)
    packed = levels[..., 0::2] | (levels[..., 1::2] << 4)
    bias = None if bias is None else bias.detach().float()
    return {"packed": packed, "scales": scales, "bias": bias, "in_features": in_features}


def _session(packed: Any, scales: Any, in_features: int) -> Any:
    """An ONNX Runtime session of one `MatMulNBits` node holding the layer's weights."""
    from onnx import TensorProto, helper, numpy_helper

    runtime = _runtime()
    out_features = packed.shape[0]
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=in_features,
        N=out_features,
        bits=4,
        block_size=BLOCK,
        accuracy_level=4,  # int8 products of the quantized input rows (the fast kernels)
    )
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", out_features])],
        initializer=[
            numpy_helper.from_array(packed.numpy(), "B"),
            numpy_helper.from_array(scales.reshape(-1).numpy(), "scales"),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = runtime.SessionOptions()
    options.use_per_session_threads = False
    # No arena: each session's would keep its largest output (a long prompt's: 2,000 tokens x
    # 12,288 columns is 100 MB) for good, in every layer (10 GB at the peak where measured).
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return runtime.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )


@functools.cache
def _int4_linear_class() -> type:
    """Int4Linear, defined once torch is imported (not at module import)."""
    import torch
    from torch import nn

    class Int4Linear(nn.Module):
        """y = x W^T + b with W in 4 bits (a scale per BLOCK weights of a row)."""

        def __init__(self, layer: Int4Layer) -> None:
            super().__init__()
            self.in_features = layer["in_features"]
            self.out_features = layer["packed"].shape[0]
            self.register_buffer("bias", layer["bias"])
            # The weights live only in the session (repacked for its kernel there): kept here
            # too, they would take their memory twice. The int8 store saves them as made.
            self._session = _session(layer["packed"], layer["scales"], self.in_features)

        def forward(self, x: Any) -> Any:
            shape, dtype = x.shape, x.dtype
            flat = x.reshape(-1, self.in_features).float()
            rows = flat.shape[0]
            if rows % 2:
                # With blocks of 64 or more, MLAS computes rows in pairs and an odd last row
                # alone, in another kernel whose sums differ in the last bits: a decoded token
                # (one row) would not equal the same token read in a prompt. Padded to pairs,
                # every row is computed alike (one row: 2 ms more in 28 layers).
                flat = torch.cat([flat, flat[-1:]])
            y = self._product(flat)[:rows]
            bias: Any = self.bias
            if bias is not None:
                y = y.add_(bias)
            return y.reshape(*shape[:-1], self.out_features).to(dtype)

        def _product(self, rows: Any) -> Any:
            inputs = {"A": rows.contiguous().numpy()}
            return torch.from_numpy(self._session.run(None, inputs)[0])

        def extra_repr(self) -> str:
            return f"in={self.in_features}, out={self.out_features}, 4-bit weights (ONNX Runtime)"

    return Int4Linear


def int4_module(layer: Int4Layer) -> Any:
    return _int4_linear_class()(layer)


def is_int4(layer: dict[str, Any]) -> bool:
    return "packed" in layer
