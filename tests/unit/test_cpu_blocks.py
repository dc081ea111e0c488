"""The language model's block formats on the CPU (app/cpu_weights/blocks.py): ONNX Runtime's
kernel is there, a layer in 4 or 8 bits is as close to float32 as measured, the weights are
stored as the kernel reads them, a row's output never depends on the other rows of the call
(the prefix cache's exactness rests on it), and which layers get 8 bits. The families run on
this path by default: tests/engine/test_cpu_int8.py and tests/engine/test_prefix_cache.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cpu_weights.blocks import (
    EIGHT_BITS,
    FOUR_BITS,
    BlockFormat,
    BlockLinear,
    block_kernels_available,
    dequantized,
    quantize_blocks,
)
from app.cpu_weights.int8 import quantize
from app.engines.local.loading.checkpoint import block_plan

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the 4-bit path is the CPU's")


def test_onnx_runtimes_4_and_8_bit_kernels_are_there_and_right():
    assert block_kernels_available()


# A layer's output error against float32 on Gaussian weights and inputs, from the measurement:
# 4 bits in blocks of 32 with a zero point and a searched scale 0.077-0.078 (the format before,
# blocks of 128 scaled by their largest value: 0.117, which fails this); 8 bits 0.004-0.007 (the
# kernel's 8-bit input rows add to the weights' 0.0045).
BOUNDS = {FOUR_BITS: 0.085, EIGHT_BITS: 0.01}


@pytest.mark.parametrize("fmt", [FOUR_BITS, EIGHT_BITS])
@pytest.mark.parametrize(("width", "out"), [(2048, 512), (160, 96), (64, 128)])
def test_a_layer_is_as_close_to_float32_as_measured_and_exact_however_the_rows_are_split(
    width, out, fmt
):
    torch.manual_seed(0)
    weight, bias = torch.randn(out, width), torch.randn(out)
    layer = BlockLinear(quantize_blocks(weight, bias, fmt))
    x = torch.randn(37, width)
    expected = x @ weight.T
    got = layer(x)
    error = (got - bias - expected).norm() / expected.norm()
    assert error < BOUNDS[fmt], f"{fmt}: relative error {error:.4f}"
    # One row at a time (decoding), odd and even parts (a prompt read after a cached part),
    # all at once: the same bits. (An odd row count once ran its last row in another kernel.)
    one_by_one = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
    in_parts = torch.cat([layer(x[:11]), layer(x[11:30]), layer(x[30:])])
    assert torch.equal(one_by_one, got) and torch.equal(in_parts, got)


def test_the_searched_scale_beats_the_range_alone():
    torch.manual_seed(1)
    weight = torch.randn(256, 1024)
    searched = (dequantized(quantize_blocks(weight, None)) - weight).norm() / weight.norm()
    # The range alone: the step that maps each block's smallest to largest value onto 0..15.
    grouped = weight.view(256, -1, 32)
    low = grouped.amin(-1, keepdim=True).clamp(max=0)
    step = (grouped.amax(-1, keepdim=True).clamp(min=0) - low) / 15
    zero = torch.round(-low / step)
    ranged = ((torch.round(grouped / step) + zero).clamp(0, 15) - zero) * step
    plain = (ranged.view_as(weight) - weight).norm() / weight.norm()
    assert searched < plain - 0.002, (searched, plain)


@pytest.mark.parametrize("fmt", [FOUR_BITS, EIGHT_BITS, BlockFormat(4, 64)])
def test_the_weights_are_stored_as_mat_mul_n_bits_reads_them(fmt):
    # Five blocks and a part of one (odd counts: the zero points' last byte half empty).
    torch.manual_seed(2)
    weight = torch.randn(3, 5 * fmt.block + 7)
    layer = quantize_blocks(weight, None, fmt)
    blocks = 6
    assert layer["scales"].shape == (3, blocks)
    assert layer["packed"].shape == (3, blocks, fmt.block * fmt.bits // 8)
    assert layer["zero_points"].shape == (3, blocks if fmt.bits == 8 else (blocks + 1) // 2)
    stored = dequantized(layer)
    assert (stored - weight).norm() / weight.norm() < (0.1 if fmt.bits == 4 else 0.01)
    # The kernel computes with exactly those weights (rows of ones: exact in its 8-bit input).
    rows = torch.ones(2, weight.shape[1])
    assert torch.allclose(BlockLinear(layer)(rows), rows @ stored.T, rtol=1e-4, atol=1e-4)


def test_projections_of_one_format_share_one_product_and_one_of_another_goes_alone():
    torch.manual_seed(0)
    attention = nn.Module()
    attention.q_proj = nn.Linear(64, 64)
    attention.k_proj = nn.Linear(64, 32, bias=False)
    attention.v_proj = nn.Linear(64, 32, bias=False)
    mlp = nn.Module()
    mlp.gate_proj = nn.Linear(64, 96, bias=False)
    mlp.up_proj = nn.Linear(64, 96, bias=False)
    model = nn.ModuleDict({"self_attn": attention, "mlp": mlp})
    # As the default plan: q and k in 4 bits, v in 8 (q and k one product, v alone); the MLP's
    # two in two formats (each alone).
    formats = {"self_attn.v_proj": EIGHT_BITS, "mlp.gate_proj": EIGHT_BITS}  # the rest 4 bits
    named = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    alone = {
        n: BlockLinear(quantize_blocks(m.weight, m.bias, formats.get(n, FOUR_BITS)))
        for n, m in named.items()
    }
    assert quantize(model, formats=lambda name: formats.get(name, FOUR_BITS)) == (5, 0)
    assert type(attention.q_proj).__name__ == type(attention.k_proj).__name__ == "Int8Part"
    assert attention.q_proj.shared is attention.k_proj.shared
    assert attention.k_proj.shared.bounds == [0, 64, 96]  # q's 64 columns, then k's 32
    assert type(attention.k_proj.shared.linear).__name__ == "BlockLinear"
    assert type(attention.v_proj).__name__ == "BlockLinear" and attention.v_proj.bits == 8
    assert type(mlp.gate_proj).__name__ == type(mlp.up_proj).__name__ == "BlockLinear"
    assert (mlp.gate_proj.bits, mlp.up_proj.bits) == (8, 4)
    x = torch.randn(5, 64)
    for name in named:
        placed = model.get_submodule(name)
        assert torch.equal(placed(x), alone[name](x)), name


def test_a_tied_output_layer_goes_8_bit_and_its_embedding_stays_int8():
    embed = nn.Embedding(300, 64)
    head = nn.Linear(64, 300, bias=False)
    head.weight = embed.weight  # tied, as Qwen3-VL-2B's
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert quantize(model, formats=lambda n: EIGHT_BITS if n == "head" else None) == (1, 1)
    assert type(model["embed"]).__name__ == "Int8Embedding"
    assert type(model["head"]).__name__ == "BlockLinear" and model["head"].bits == 8
    x = torch.randn(3, 64)
    expected = x @ embed.weight.T
    assert (model["head"](x) - expected).norm() / expected.norm() < BOUNDS[EIGHT_BITS]


def test_the_projections_into_the_residual_stream_get_8_bits_and_a_tied_output_layer_4():
    layer = "model.language_model.layers.{}.{}"
    for index in (0, 13, 27):
        for name in ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"):
            assert block_plan(layer.format(index, name)) == EIGHT_BITS
        for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert block_plan(layer.format(index, name)) == FOUR_BITS
    # Tied to the embedding, its likeliest tokens are computed again from int8 rows
    # (app/cpu_weights/output.py); an output layer of its own keeps 8 bits.
    assert block_plan("lm_head", tied_output=True) == FOUR_BITS
    assert block_plan("lm_head", tied_output=False) == EIGHT_BITS
    assert block_plan("model.visual.blocks.0.mlp.linear_fc1") is None  # int8
    assert block_plan("model.visual.merger.linear_fc2") is None


# Run in a process of its own, large buffers given their own pages (as the app does once loaded,
# app/cpu_weights/int8.py), so that freed memory leaves the resident set and the count is the
# sessions' own: the resident memory each layer's session adds, over its weights' bytes.
_SESSION_MEMORY = """
import ctypes, gc, sys
ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB
import torch
from app.cpu_weights.blocks import BlockLinear, quantize_blocks
def resident():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS"))
layer = quantize_blocks(torch.randn(12288, 2048), None)
weights = sum(v.numel() * v.element_size() for v in layer.values() if torch.is_tensor(v))
BlockLinear(layer)
before = resident()
kept = [BlockLinear({k: v.clone() if torch.is_tensor(v) else v for k, v in layer.items()})
        for _ in range(8)]
print((resident() - before) / 8 / weights)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_layers_session_holds_its_weights_about_once():
    # The kernel's packed copy and little more: 1.4 times the weights' bytes where measured.
    # ONNX Runtime's Python session also kept the model's bytes (2.4 times, and 1.4 GB more
    # for Qwen3-VL-2B) until blocks.py let go of them.
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", _SESSION_MEMORY],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,  # about 10 s; ten times that and more on a loaded machine
        check=True,
    )
    held = float(run.stdout.strip().splitlines()[-1])
    assert held < 2.0, f"each session holds {held:.2f} times its weights' bytes"
