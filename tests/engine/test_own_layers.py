"""The CPU path's decoder layers (app/engines/local/generation/own_layers.py) and the norms and
rotary embedding they call (own_norms.cpp): transformers' arithmetic, each row on its own."""

from __future__ import annotations

import platform

import pytest
import torch

from app.engines.local.generation.own_kernels import build_kernels
from app.engines.local.generation.own_layers import can_be_lean, use_own_layers
from app.engines.local.loading.checkpoint import LoadOptions
from testkit.engines import has_cpp_compiler, load_engine

pytestmark = [
    pytest.mark.skipif(
        not has_cpp_compiler(),
        reason="the kernels are built with a C++ compiler (without one: transformers' layers)",
    ),
    pytest.mark.skipif(
        torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"),
        reason="the CPU's quantized paths (which use these layers) are made for x86 kernels",
    ),
]

# Every family's tiny checkpoint: which take the app's layers.
LEAN_FAMILIES = {
    "qwen2_vl": True,
    "qwen2_5_vl": True,
    "qwen3_vl": True,
    "qwen3_vl_moe": True,
    "qwen3_5": False,  # gated attention and linear-attention layers: transformers' forward
}


@pytest.fixture(scope="module")
def kernels():
    choice = build_kernels()
    assert choice.kernels is not None, choice.reason
    return choice.kernels


@pytest.mark.parametrize("width", [2048, 130, 48])
def test_rms_norm_is_transformers_norm_and_exact_per_row(kernels, width):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm

    torch.manual_seed(0)
    norm = Qwen3VLTextRMSNorm(width, eps=1e-6)
    norm.weight.data = torch.randn(width)
    x = torch.randn(3, 7, width) * 3
    with torch.no_grad():
        expected = norm(x)
    got = kernels.rms_norm(x, norm.weight.data, 1e-6)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    alone = [
        kernels.rms_norm(x[:, i : i + 1].contiguous(), norm.weight.data, 1e-6) for i in range(7)
    ]
    assert torch.equal(torch.cat(alone, dim=1), got)


@pytest.mark.parametrize(
    "batch, tokens, heads, dim", [(1, 9, 16, 128), (4, 1, 8, 128), (2, 5, 3, 64)]
)
@pytest.mark.parametrize("normed", [True, False])
def test_norm_rope_is_transformers_and_exact_per_row(kernels, batch, tokens, heads, dim, normed):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        Qwen3VLTextRMSNorm,
        apply_rotary_pos_emb,
    )

    torch.manual_seed(1)
    norm = Qwen3VLTextRMSNorm(dim, eps=1e-6)
    norm.weight.data = torch.randn(dim)
    x = torch.randn(batch, tokens, heads, dim)
    cos, sin = torch.randn(batch, tokens, dim), torch.randn(batch, tokens, dim)
    weight = norm.weight.data if normed else None
    with torch.no_grad():
        heads_first = (norm(x) if normed else x).transpose(1, 2)
        expected, _ = apply_rotary_pos_emb(heads_first, heads_first, cos, sin)
    got = kernels.norm_rope(x, weight, 1e-6, cos, sin)
    assert got.shape == (batch, heads, tokens, dim)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    alone = [
        kernels.norm_rope(
            x[:, i : i + 1].contiguous(),
            weight,
            1e-6,
            cos[:, i : i + 1].contiguous(),
            sin[:, i : i + 1].contiguous(),
        )
        for i in range(tokens)
    ]
    assert torch.equal(torch.cat(alone, dim=2), got)


@pytest.mark.parametrize("family", list(LEAN_FAMILIES))
def test_the_default_cpu_path_takes_the_app_layers_where_it_knows_them(tiny_checkpoint, family):
    engine = load_engine(str(tiny_checkpoint(family)))
    layers = [m for m in engine.model.modules() if "forward" in m.__dict__]
    assert bool(layers) == LEAN_FAMILIES[family]
    assert all(can_be_lean(layer) for layer in layers)


@pytest.mark.parametrize("family", [f for f, lean in LEAN_FAMILIES.items() if lean])
def test_the_app_layers_give_transformers_logits(tiny_checkpoint, kernels, family):
    """The same prompt through transformers' layers and the app's, in the float32 model
    (whose products are exact: the quantized paths round each input row to 8 bits, where a
    last-bit difference can move a rounding); the logits agree to float32 rounding."""
    engine = load_engine(str(tiny_checkpoint(family)), LoadOptions(cpu_only=True, dtype="float32"))
    model = engine.model
    assert not any("forward" in m.__dict__ for m in model.modules())  # the exact path's own
    ids = engine.processor.tokenizer("A red square and a blue circle, " * 6, return_tensors="pt")

    def logits():
        with torch.inference_mode():
            return model(input_ids=ids["input_ids"]).logits

    plain = engine.runner.submit(logits).result()
    assert use_own_layers(model, kernels) == model.config.get_text_config().num_hidden_layers
    lean = engine.runner.submit(logits).result()
    assert (lean - plain).abs().max() <= 1e-5 * plain.abs().max()


@pytest.mark.parametrize("tokens", [1, 9])
def test_a_layer_alone_equals_transformers_and_only_float32_layers_take_it(kernels, tokens):
    """One Qwen3-VL decoder layer with random float32 weights, no cache, through the app's
    forward and transformers': the same output to float32 rounding. A bfloat16 layer is not
    given the app's forward (the kernels read float32)."""
    from transformers import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer

    torch.manual_seed(2)
    config = Qwen3VLTextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    layer = Qwen3VLTextDecoderLayer(config, 0).eval()
    for parameter in layer.parameters():
        parameter.data = torch.randn_like(parameter) * 0.2
    x = torch.randn(1, tokens, 64)
    cos, sin = torch.randn(1, tokens, 16), torch.randn(1, tokens, 16)
    with torch.no_grad():
        expected = layer(x, position_embeddings=(cos, sin))
        assert use_own_layers(layer, kernels) == 1
        got = layer(x, position_embeddings=(cos, sin))
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert not can_be_lean(Qwen3VLTextDecoderLayer(config, 0).to(torch.bfloat16))
