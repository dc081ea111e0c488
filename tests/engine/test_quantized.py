"""4-bit (bitsandbytes nf4) on the CPU, on tiny models whose linear sizes are multiples of 64."""

import threading

import pytest

from app.engines.base import ChatRequest, GenerationParams, Turn
from app.engines.local.loading.checkpoint import LoadOptions
from testkit.engines import load_engine


def _footprint(model) -> int:
    return model.get_memory_footprint()


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_four_bit_load_and_generate_on_the_cpu(tiny_checkpoint, family):
    path = str(tiny_checkpoint(family))
    quantized = load_engine(path, LoadOptions(cpu_only=True, load_in_4bit=True))
    names = {type(m).__name__ for m in quantized.model.modules()}
    assert "Linear4bit" in names
    request = ChatRequest(
        (Turn("user", "hello"),), GenerationParams(max_new_tokens=6, enable_thinking=False)
    )
    deltas = list(quantized.stream(request, threading.Event()))
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens >= 1
    full = load_engine(path, LoadOptions(cpu_only=True, dtype="float32"))
    assert _footprint(quantized.model) < _footprint(full.model)
