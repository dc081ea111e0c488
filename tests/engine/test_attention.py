"""The CPU path's attention (app/engines/local/generation/attention.py): keys and values kept
in bfloat16, and a token gets the same numbers whether generated one at a time or read in a
prefill (what the prefix cache's "changes nothing" rests on)."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from app.engines.local.generation import kv
from app.engines.local.generation.attention import (
    bfloat16_kv_attention,
    kv_bytes_per_token,
    stored_kv_dtype,
)
from testkit.engines import load_engine

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the CPU's int8 path (which attends this way) is made for x86 kernels",
)


def _attend(query, key, value, groups):
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True)
    out, _ = bfloat16_kv_attention(module, query, key, value, None, scaling=0.125)
    return out  # (batch, tokens, heads, dim)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_one_new_token_gets_the_numbers_of_its_row_in_a_prefill(heads, kv_heads):
    torch.manual_seed(0)
    tokens, dim = 300, 64
    query = torch.randn(1, heads, tokens, dim)
    key = torch.randn(1, kv_heads, tokens, dim).to(torch.bfloat16)
    value = torch.randn(1, kv_heads, tokens, dim).to(torch.bfloat16)
    prefill = _attend(query, key, value, heads // kv_heads)
    for last in (1, 17, tokens):  # the token at `last - 1`, attending to the keys up to it
        one = _attend(
            query[:, :, last - 1 : last], key[:, :, :last], value[:, :, :last], heads // kv_heads
        )
        assert one.dtype == torch.float32
        assert torch.equal(one, prefill[:, last - 1 : last])
    # And close to float32 attention over the same (rounded) keys.
    expected = F.scaled_dot_product_attention(
        query, key.float(), value.float(), is_causal=True, scale=0.125, enable_gqa=True
    ).transpose(1, 2)
    assert (prefill - expected).norm() / expected.norm() < 0.01


@pytest.mark.parametrize("mask_heads", [1, 8])
def test_one_new_token_with_a_mask_shared_or_per_head(mask_heads):
    torch.manual_seed(0)
    query = torch.randn(1, 8, 1, 64)
    key, value = (torch.randn(1, 2, 40, 64).to(torch.bfloat16) for _ in range(2))
    mask = torch.rand(1, mask_heads, 1, 40) > 0.3
    module = SimpleNamespace(num_key_value_groups=4)
    got, _ = bfloat16_kv_attention(module, query, key, value, mask, scaling=0.125)
    expected = F.scaled_dot_product_attention(
        query, key.float(), value.float(), attn_mask=mask, scale=0.125, enable_gqa=True
    ).transpose(1, 2)
    assert got.shape == expected.shape
    assert (got - expected).norm() / expected.norm() < 0.01


def test_float32_keys_go_to_plain_sdpa_unchanged():
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 5, 16) for _ in range(3))
    got = _attend(query, key, value, 1)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.125)
    assert torch.equal(got, expected.transpose(1, 2))


@pytest.mark.parametrize(
    "family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"]
)
def test_a_reply_read_again_gives_its_keys_bit_for_bit(tiny_checkpoint, family):
    """Prefill a prompt, generate 60 tokens one at a time, then read prompt and tokens in one
    prefill: every attention layer holds the same keys and values, in bfloat16 (with PyTorch's
    flash kernel they drifted apart after some tens of tokens; the app's kernel keeps them)."""
    engine = load_engine(str(tiny_checkpoint(family)))
    model, tokenizer = engine.model, engine.processor.tokenizer
    assert stored_kv_dtype(model) == torch.bfloat16
    assert kv_bytes_per_token(model) == kv.bytes_per_token(model.config, 2)

    def run():
        ids = tokenizer("The quick brown fox jumps over the lazy dog " * 4, return_tensors="pt")
        ids = ids["input_ids"]
        with torch.inference_mode():
            stepped = kv.new_cache(model.config, torch.bfloat16)
            logits = model(input_ids=ids, cache=stepped, use_cache=True).logits
            for _ in range(60):
                token = logits[:, -1:].argmax(-1)
                ids = torch.cat([ids, token], dim=1)
                position = torch.tensor([ids.shape[1] - 1])
                logits = model(input_ids=token, cache=stepped, cache_position=position).logits
            whole = kv.new_cache(model.config, torch.bfloat16)
            model(input_ids=ids, cache=whole, use_cache=True)
        return stepped, whole

    if family == "qwen3_vl_moe" and not _float32_products_exact_per_row():
        pytest.xfail(
            "the MoE experts stay float32 on the CPU path, and this CPU's float32 products give "
            "a row other bits with other rows beside it: an open defect here (the note of "
            "2026-12-08)"
        )
    stepped, whole = engine.runner.submit(run).result()
    attention = [
        (a, b)
        for a, b in zip(stepped.layers, whole.layers, strict=True)
        if isinstance(a, kv.growing_layer_class())
    ]
    assert attention
    for a, b in attention:
        assert a.keys.dtype == torch.bfloat16
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def _float32_products_exact_per_row() -> bool:
    """Whether PyTorch's float32 linear gives each row the same bits alone as among 40 (true of
    the AVX-512 machines this was written on; not of an AMD EPYC with AVX2 alone)."""
    torch.manual_seed(0)
    weight, x = torch.randn(128, 64), torch.randn(40, 64)
    alone = torch.cat([F.linear(x[i : i + 1], weight) for i in range(len(x))])
    return torch.equal(F.linear(x, weight), alone)
