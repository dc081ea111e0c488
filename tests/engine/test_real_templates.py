"""The released Qwen3-VL-2B tokenizer, chat templates and processors (assets/realcfg), on
tiny-width models: what a photo costs, and the Thinking template's prompt."""

from __future__ import annotations

import pytest
from PIL import Image

from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
from app.engines.local.generation.prompt import build_prompt
from app.media import Budget
from testkit.checkpoints import REAL_CONFIGS
from testkit.engines import load_engine


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    return {
        name: load_engine(str(tiny_checkpoint(name)), prefix_cache_bytes=0)
        for name in ("real-instruct", "real-thinking")
    }


# office.jpg of the sample media (1440 x 1920, 972 visual tokens at the default budget), a
# phone photo, a panorama, a small screenshot, an icon, a strip.
SIZES = [(1440, 1920), (3024, 4032), (4000, 1000), (640, 480), (100, 100), (7000, 300)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_a_photo_costs_what_the_real_processor_makes_of_it(engines, tmp_path, size):
    from transformers import AutoProcessor

    engine = engines["real-instruct"]
    path = tmp_path / "photo.png"
    Image.effect_noise(size, 40).convert("RGB").save(path)
    request = ChatRequest((Turn("user", "What is it?", (Attachment(str(path), "photo.png"),)),))
    budget = Budget()
    prompt = build_prompt(engine.processor, request, budget, engine.media_cache)
    # The released processor alone, on the original photo, at the app's default budget (its
    # own lower bound kept).
    real = AutoProcessor.from_pretrained(REAL_CONFIGS / "Qwen3-VL-2B-Instruct").image_processor
    bounds = {"shortest_edge": 65536, "longest_edge": budget.max_pixels}
    grid = real(images=[Image.open(path).convert("RGB")], size=bounds, return_tensors="pt")
    expected = int(grid["image_grid_thw"][0].prod()) // 4
    assert prompt.visual_tokens == expected
    if size == (1440, 1920):
        assert expected == 972


def test_the_thinking_template_opens_the_reasoning_and_instruct_does_not(engines, media):
    request = ChatRequest(
        (
            Turn("system", "Be brief."),
            Turn("user", "Hi", (Attachment(str(media / "red.jpg"), "r"),)),
        ),
        GenerationParams(enable_thinking=False),  # neither template takes the switch
    )
    for name, opens in (("real-instruct", False), ("real-thinking", True)):
        engine = engines[name]
        assert not engine.supports_thinking
        prompt = build_prompt(engine.processor, request, engine.budget, engine.media_cache)
        text = engine.processor.tokenizer.decode(prompt.ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
        assert prompt.info.opens_in_reasoning is opens
        assert text.endswith("<|im_start|>assistant\n<think>\n" if opens else "assistant\n")
