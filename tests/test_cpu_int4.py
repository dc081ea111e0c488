"""The language model's 4-bit layers on the CPU (app/engines/local/cpu_int4.py): ONNX Runtime's
kernel is there, a layer is close to float32, and a row's output never depends on the other rows
of the call (the prefix cache's exactness rests on it). The families run on this path by
default: tests/test_cpu_int8.py and tests/test_prefix_cache.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.engines.local.cpu_int4 import BLOCK, int4_kernels_available, int4_module, quantize_blocks
from app.engines.local.cpu_int8 import quantize

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the 4-bit path is the CPU's")

EVERY_LAYER = lambda name: True  # noqa: E731 - a `four_bit` that names every linear layer


def test_onnx_runtimes_4_bit_kernel_is_there_and_right():
    assert int4_kernels_available()


@pytest.mark.parametrize(("width", "out"), [(2048, 512), (160, 96), (64, 128)])
def test_a_4_bit_layer_is_close_to_float32_and_exact_however_the_rows_are_split(width, out):
    torch.manual_seed(0)
    weight, bias = torch.randn(out, width), torch.randn(out)
    layer = int4_module(quantize_blocks(weight, bias))
    x = torch.randn(37, width)
    expected = x @ weight.T + bias
    got = layer(x)
    error = (got - expected).norm() / expected.norm()
    assert error < 0.12, f"relative error {error:.4f}"  # 4 bits: 8 levels each side of zero
    # One row at a time (decoding), odd and even parts (a prompt read after a cached part),
    # all at once: the same bits. (An odd row count once ran its last row in another kernel.)
    one_by_one = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
    in_parts = torch.cat([layer(x[:11]), layer(x[11:30]), layer(x[30:])])
    assert torch.equal(one_by_one, got) and torch.equal(in_parts, got)


def test_the_weights_are_stored_as_mat_mul_n_bits_reads_them():
    weight = torch.zeros(2, BLOCK + 4)
    weight[0, :4] = torch.tensor([7.0, -7.0, 1.0, -8.0 / 7])
    weight[1, BLOCK] = 3.0  # in the second block, padded with zeros to BLOCK
    layer = quantize_blocks(weight, None)
    assert layer["packed"].shape == (2, 2, BLOCK // 2) and layer["scales"].shape == (2, 2)
    # 7 -> 15 and -7 -> 1 in one byte (the first in the low half); 1 -> 9, -1.14 -> 7.
    assert layer["packed"][0, 0, :2].tolist() == [15 | (1 << 4), 9 | (7 << 4)]
    assert layer["scales"][0, 0] == 1 and layer["scales"][1, 1] == pytest.approx(3 / 7)
    rows = torch.eye(BLOCK + 4)
    assert torch.allclose(int4_module(layer)(rows).T[0, :4], torch.tensor([7.0, -7, 1, -1]))


def test_projections_of_one_input_share_one_4_bit_product():
    torch.manual_seed(0)
    attention = nn.Module()
    attention.q_proj = nn.Linear(64, 64)
    attention.k_proj = nn.Linear(64, 32, bias=False)
    attention.v_proj = nn.Linear(64, 32, bias=False)
    children = attention.named_children()
    alone = {n: int4_module(quantize_blocks(m.weight, m.bias)) for n, m in children}
    assert quantize(attention, four_bit=EVERY_LAYER) == (3, 0)
    assert type(attention.k_proj).__name__ == "Int8Part"
    assert type(attention.k_proj.shared.linear).__name__ == "Int4Linear"
    x = torch.randn(5, 64)
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(attention, name)(x), alone[name](x))


def test_a_tied_output_layer_goes_4_bit_and_its_embedding_stays_int8():
    embed = nn.Embedding(300, 64)
    head = nn.Linear(64, 300, bias=False)
    head.weight = embed.weight  # tied, as Qwen3-VL-2B's
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert quantize(model, four_bit=lambda name: name == "head") == (1, 1)
    assert type(model["embed"]).__name__ == "Int8Embedding"
    assert type(model["head"]).__name__ == "Int4Linear"
    x = torch.randn(3, 64)
    expected = x @ embed.weight.T
    assert (model["head"](x) - expected).norm() / expected.norm() < 0.12
