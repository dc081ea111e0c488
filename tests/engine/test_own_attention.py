"""The app's own attention kernel (app/engines/local/generation/own_attention.cpp): built where
a compiler is, every row of a prompt equal bit for bit to the same token attended alone, and
no further from float32 attention than PyTorch's bfloat16 kernel."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from app.engines.local.generation.attention import bfloat16_kv_attention
from app.engines.local.generation.own_kernels import build_kernels
from testkit.engines import expected_cpu_attention, has_cpp_compiler

pytestmark = pytest.mark.skipif(
    not has_cpp_compiler(),
    reason="the kernel is built with a C++ compiler (without one the CPU path uses PyTorch's)",
)

# (query heads, key-value heads, head width): Qwen3-VL-2B's (16, 8, 128), Qwen2-VL-2B's (12, 2,
# 128: six heads a group, tasks of two rows), other grouped-query shapes, and a width the
# AVX512-BF16 path does not take (48: the portable path).
SHAPES = [(16, 8, 128), (12, 2, 128), (8, 2, 64), (4, 4, 32), (6, 2, 48)]


@pytest.fixture(scope="module")
def kernel():
    choice = build_kernels()
    assert choice.kernels is not None, choice.reason
    return choice.kernels


def _inputs(heads, kv_heads, dim, tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(heads, tokens, dim, generator=generator).to(torch.bfloat16)
    key = torch.randn(kv_heads, tokens, dim, generator=generator).to(torch.bfloat16)
    value = torch.randn(kv_heads, tokens, dim, generator=generator).to(torch.bfloat16)
    return query, key, value


def test_the_kernel_builds_and_says_which_path_it_takes(kernel):
    assert build_kernels().reason == expected_cpu_attention()
    assert kernel.fast_for(128) == ("AVX512-BF16" in expected_cpu_attention())
    assert not kernel.fast_for(48)


@pytest.mark.parametrize("heads, kv_heads, dim", SHAPES)
def test_every_row_of_a_prompt_equals_the_same_token_attended_alone(kernel, heads, kv_heads, dim):
    tokens = 150
    query, key, value = _inputs(heads, kv_heads, dim, tokens)
    prompt = kernel.attend(query, key, value, dim**-0.5)  # (tokens, heads, dim)
    for row in range(tokens):
        alone = kernel.attend(
            query[:, row : row + 1].contiguous(), key[:, : row + 1], value[:, : row + 1], dim**-0.5
        )
        assert torch.equal(alone[0], prompt[row]), row
    # A prompt read after 100 cached tokens: its rows as in the whole prompt's reading.
    rest = kernel.attend(query[:, 100:].contiguous(), key, value, dim**-0.5)
    assert torch.equal(rest, prompt[100:])


@pytest.mark.parametrize("heads, kv_heads, dim", SHAPES)
@pytest.mark.parametrize("tokens", [1, 17, 400])
def test_as_close_to_float32_attention_as_pytorchs_bfloat16_kernel(
    kernel, heads, kv_heads, dim, tokens
):
    """The values are weighed by bfloat16 weights, as PyTorch's kernel weighs them (the
    portable path in float32): no further from float32 attention than PyTorch's."""
    query, key, value = _inputs(heads, kv_heads, dim, tokens, seed=tokens)
    got = kernel.attend(query, key, value, dim**-0.5)

    def attention(q, k, v):
        out = F.scaled_dot_product_attention(
            q[None], k[None], v[None], is_causal=True, scale=dim**-0.5, enable_gqa=True
        )
        return out[0].transpose(0, 1).float()

    expected = attention(query.float(), key.float(), value.float())
    pytorchs = attention(query, key, value)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    error = (got - expected).norm() / expected.norm()
    assert error <= 1.25 * (pytorchs - expected).norm() / expected.norm() + 1e-6
    assert error < 3e-3


def test_reads_keys_from_a_view_of_a_larger_cache_buffer(kernel):
    query, key, value = _inputs(8, 2, 64, 40)
    buffer_k = torch.zeros(2, 256, 64, dtype=torch.bfloat16)
    buffer_v = torch.zeros(2, 256, 64, dtype=torch.bfloat16)
    buffer_k[:, :40], buffer_v[:, :40] = key, value
    one = query[:, -1:].contiguous()
    assert torch.equal(
        kernel.attend(one, buffer_k[:, :40], buffer_v[:, :40], 0.125),
        kernel.attend(one, key, value, 0.125),
    )


def test_the_attention_function_uses_the_kernel_for_causal_reads_only(kernel):
    """Through the function the models call: a prompt (no mask), a prompt after a cached part
    (the causal mask with its offset) and one new token go to the kernel; another mask goes to
    PyTorch's attention."""
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=4, is_causal=True)
    query = torch.randn(1, 8, 30, 64)
    key, value = (torch.randn(1, 2, 30, 64).to(torch.bfloat16) for _ in range(2))

    def through(q, mask, **extra):
        out, _ = bfloat16_kv_attention(module, q, key, value, mask, scaling=0.125, **extra)
        return out

    direct = kernel.attend(query[0].to(torch.bfloat16), key[0], value[0], 0.125)[None]
    assert torch.equal(through(query, None, kernel=kernel), direct)
    causal = torch.ones(30, 30, dtype=torch.bool).tril()[20:][None, None]
    assert torch.equal(through(query[:, :, 20:], causal, kernel=kernel), direct[:, 20:])
    assert torch.equal(through(query[:, :, -1:], None, kernel=kernel), direct[:, -1:])
    other = torch.rand(1, 1, 1, 30) > 0.3
    assert torch.equal(
        through(query[:, :, -1:], other, kernel=kernel), through(query[:, :, -1:], other)
    )


def test_a_lock_left_by_a_stopped_build_is_removed_and_a_live_one_kept(tmp_path):
    import fcntl
    import os

    from app.engines.local.generation.own_kernels import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    lock.write_text("")
    now = lock.stat().st_mtime
    clear_stale_lock(tmp_path, now + 30)  # young: a build may be under way
    assert lock.exists()
    old = now - STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    with lock.open("rb") as held:  # old, but a build holds it (PyTorch 2.14's FileLock)
        fcntl.flock(held, fcntl.LOCK_EX)
        clear_stale_lock(tmp_path, now)
        assert lock.exists()
    clear_stale_lock(tmp_path, now)  # old and held by none: left by a stopped start
    assert not lock.exists()
    clear_stale_lock(tmp_path, now)  # and no lock at all is fine


def test_a_mask_found_causal_is_remembered_by_identity_only():
    """One forward's layers share one mask, checked once; another mask of the same shape is
    checked afresh (a padded or windowed one must not pass for causal)."""
    from app.engines.local.generation.attention import CausalMasks

    masks = CausalMasks()
    query, key = (1, 8, 20, 64), (1, 2, 30, 64)
    causal = (torch.arange(30) <= torch.arange(10, 30).unsqueeze(1))[None, None]
    assert masks.causal(causal, query, key) and masks.causal(causal, query, key)
    other = causal.clone()
    other[..., 0] = False  # the first key hidden from every row
    assert not masks.causal(other, query, key)
    assert masks.causal(causal.clone(), query, key)
    assert not masks.causal(causal, (1, 8, 20, 64), (1, 2, 31, 64))  # the same mask, other keys
    assert masks.causal(None, (1, 8, 1, 64), key)  # one new token, no mask
    assert not masks.causal(None, query, key)  # a prompt after cached keys comes with its mask
