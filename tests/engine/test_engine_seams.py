"""The local engine's seams: transformers' internals checked when the engine is built, the
sampling keywords as a pure mapping, and `main` passing the flags' budget to the processor."""

from __future__ import annotations

import pytest
import transformers

from app.engines.base import Attachment, ChatRequest, EngineError, GenerationParams, Turn
from app.engines.local.generation.generate_kwargs import generate_kwargs
from app.engines.local.generation.internals import check_internals
from app.engines.local.generation.prompt import build_prompt
from app.grounding import model_input_size
from app.main import build_local_engine
from app.settings import load_settings
from testkit.engines import load_engine
from tests import media_factory as mf


def test_a_transformers_without_an_internal_is_named_when_the_engine_is_built(tiny_checkpoint):
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")))
    check_internals(engine.model)  # the installed transformers has them all
    # As if a release had renamed it: the instance attribute hides the method.
    engine.model.model.get_video_features = None
    with pytest.raises(EngineError) as raised:
        load_engine_over(engine)
    message = str(raised.value)
    assert f"transformers {transformers.__version__}" in message
    assert "get_video_features" in message and "requirements_web_demo.txt" in message


def load_engine_over(engine):
    """A second engine over `engine`'s model (what a start-up would build)."""
    from app.engines.local import LocalEngine

    return LocalEngine(
        engine.loaded,
        runner=engine.runner,
        model_name="again",
        max_prompt_tokens=1024,
        prefix_cache_bytes=0,
    )


def test_unset_sampling_settings_keep_the_checkpoints_defaults():
    assert generate_kwargs(GenerationParams(), 512) == {"max_new_tokens": 512}
    assert generate_kwargs(GenerationParams(max_new_tokens=9000), 512) == {"max_new_tokens": 512}


def test_a_zero_temperature_is_greedy_and_drops_the_sampling_knobs():
    kwargs = generate_kwargs(GenerationParams(temperature=0, top_p=0.5, top_k=3), 64)
    assert kwargs == {
        "max_new_tokens": 64,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }


def test_a_positive_temperature_samples_with_the_given_knobs():
    params = GenerationParams(temperature=0.3, top_p=0.9, top_k=7, repetition_penalty=1.1)
    assert generate_kwargs(params, 64) == {
        "max_new_tokens": 64,
        "do_sample": True,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 7,
        "repetition_penalty": 1.1,
    }


# Both within the trial checkpoint's own bound (64 tokens' worth, 65,536 pixels), which a
# budget never exceeds (app/engines/local/generation/prompt.py `image_size_bounds`).
@pytest.mark.parametrize("max_pixels", [20_000, 60_000])
def test_max_pixels_reaches_the_processor_through_main(max_pixels, tmp_path):
    flags = ["--tiny-random", "qwen3_vl", "--max-pixels", str(max_pixels)]
    engine = build_local_engine(load_settings(flags, environ={}))
    photo = mf.make_image(tmp_path / "big.png", size=(1600, 1200))
    request = ChatRequest((Turn("user", "What?", (Attachment(str(photo), "big.png"),)),))
    prompt = build_prompt(engine.processor, request, engine.budget, engine.media_cache)
    width, height = model_input_size("qwen3_vl", (1600, 1200), engine.budget.min_pixels, max_pixels)
    assert engine.budget.max_pixels == max_pixels
    # Qwen3-VL: a visual token per 32 x 32 pixels (16-pixel patches, merged 2 x 2).
    assert prompt.visual_tokens == width * height // (32 * 32)
