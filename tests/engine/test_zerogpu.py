"""ZeroGPU: only where `spaces` reports it; the wrapped engine still streams and stops."""

import threading

import pytest

from app.engines.base import ChatRequest, GenerationParams, Turn
from app.engines.zerogpu import for_zero_gpu, on_zero_gpu
from testkit.engines import load_engine


def test_nothing_changes_off_zero_gpu(tiny_checkpoint):
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")))
    assert not on_zero_gpu()
    assert for_zero_gpu(engine) is engine


def test_the_wrapped_engine_streams_and_stops(tiny_checkpoint):
    pytest.importorskip("spaces", reason="the spaces package is not installed")
    from app.engines.zerogpu import ZeroGPUEngine

    inner = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)))
    engine = ZeroGPUEngine(inner)
    assert (engine.family, engine.model_name) == (inner.family, inner.model_name)
    request = ChatRequest((Turn("user", "hi"),), GenerationParams(max_new_tokens=12))
    deltas = list(engine.stream(request, threading.Event()))
    assert deltas[-1].usage.completion_tokens == 12
    cancel = threading.Event()
    long = ChatRequest((Turn("user", "hi"),), GenerationParams(max_new_tokens=200))
    seen = 0
    for delta in engine.stream(long, cancel):
        seen += bool(delta.text)
        if seen == 3:
            cancel.set()
    assert seen == 3
    alive = [t for t in threading.enumerate() if t.name == "qwen-generate" and t.is_alive()]
    for thread in alive:
        thread.join(timeout=2)
    assert not any(t.is_alive() for t in alive)
