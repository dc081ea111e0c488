"""Where the weights go: one card, several, none that fits (a pure function), and the engine
loaded with transformers' device map on the CPU (the spread path, without GPUs)."""

from __future__ import annotations

import threading

import pytest

from app.engines.base import ChatRequest, EngineError, GenerationParams, Turn
from app.engines.local.loading.checkpoint import LoadOptions
from app.engines.local.loading.placement import GB, describe, place
from app.settings import SettingsError, load_settings
from testkit.engines import expected_cpu_path, load_engine


def test_a_model_that_fits_one_card_stays_on_it():
    assert place(10 * GB, [24 * GB]).device_map == "cuda:0"
    assert place(10 * GB, [24 * GB, 24 * GB]).device_map == "cuda:0"  # no copies between cards
    assert place(10 * GB, []).device_map == "cpu"


def test_a_model_too_big_for_one_card_is_spread_over_those_there_are():
    # Qwen3-VL-32B in bf16 (about 66 GB) on two 48 GB cards, then on four 24 GB cards.
    two = place(66 * GB, [48 * GB, 48 * GB])
    assert two.spread and two.where == "2 of 2 GPUs"
    assert two.max_memory == {0: int(0.85 * 48 * GB), 1: int(0.85 * 48 * GB)}
    four = place(66 * GB, [24 * GB] * 4)
    assert four.spread and four.where == "4 of 4 GPUs" and len(four.max_memory) == 4
    # Each card's bound leaves room for the work: the bounds add up to less than it has free.
    assert sum(four.max_memory.values()) < 4 * 24 * GB


def test_a_model_that_fits_nowhere_is_refused_in_one_line():
    with pytest.raises(EngineError) as refused:
        place(66 * GB, [24 * GB, 24 * GB], four_bit_need=18 * GB)
    message = str(refused.value)
    assert "\n" not in message
    assert "66.0 GB" in message and "24.0, 24.0 GB free on 2 GPUs" in message
    assert "--load-in-4bit (about 18.0 GB)" in message
    with pytest.raises(EngineError, match=r"the 24\.0 GB free on this GPU"):
        place(30 * GB, [24 * GB])


def test_how_a_model_was_placed_reads_in_a_few_words():
    device_map = {
        "model.visual": 0,
        "model.language_model.embed_tokens": 0,
        **{f"model.language_model.layers.{i}": 0 if i < 14 else 1 for i in range(28)},
        "model.language_model.norm": 1,
        "lm_head": 1,
    }
    assert describe(device_map) == (
        "cuda:0: the vision encoder, the embeddings, layers 0-13; "
        "cuda:1: layers 14-27, model.language_model.norm, the output layer"
    )


def test_the_gpus_flag_takes_numbers_only():
    assert load_settings(["--gpus", "0,1"], environ={}).local.gpus == "0,1"
    with pytest.raises(SettingsError, match="--gpus takes GPU numbers"):
        load_settings(["--gpus", "first"], environ={})


def test_the_engine_works_loaded_with_a_device_map_on_the_cpu(tiny_checkpoint, caplog):
    """The spread path's code on the CPU: transformers' device map, the vision encoder's own
    device, the prefix cache and Stop during generation."""
    options = LoadOptions(cpu_only=True, device_map="auto")
    with caplog.at_level("INFO", logger="app.engines.local.loading.checkpoint"):
        engine = load_engine(str(tiny_checkpoint("qwen3_vl")), options)
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    # placed by transformers' device map
    said = f"(auto, int4 (the CPU's default), {expected_cpu_path(2)}"
    assert said in loaded[0]
    assert any(r.getMessage().startswith("placed ") for r in caplog.records)
    params = GenerationParams(max_new_tokens=6, temperature=0)
    first = ChatRequest((Turn("user", "Hello there"),), params, owner="me")
    deltas = list(engine.stream(first, threading.Event()))
    answer = "".join(d.text for d in deltas)
    follow = ChatRequest(
        (*first.turns, Turn("assistant", answer), Turn("user", "And?")), params, owner="me"
    )
    usage = [d.usage for d in engine.stream(follow, threading.Event()) if d.usage][-1]
    assert usage.cached_tokens and usage.cached_tokens > 0
    stopped = threading.Event()
    stopped.set()
    assert not "".join(d.text for d in engine.stream(first, stopped))
