"""The prefix cache: follow-ups read only what is new, and answer exactly as a full recompute.

Each case runs the same conversation on two engines over the same checkpoint, one with the
cache and one without, greedy, and compares the replies token for token (as text of the same
ids). Checkpoints are tiny, with weights spread wide enough that greedy replies vary. On a CPU
the engines load as users get them there, the language model in 4-bit weights and the vision
encoder in int8 (app/cpu_weights/blocks.py, int8.py): the cache must change nothing on
that path too.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
from app.engines.local import LocalEngine
from app.engines.local.generation.attention import kv_bytes_per_token
from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder, build_tiny_checkpoint
from testkit.engines import load_engine

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "real-instruct"]
GREEDY = GenerationParams(max_new_tokens=10, temperature=0, enable_thinking=False)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """engines(family) -> (with the cache, without), loaded once per family."""
    built: dict[str, tuple[LocalEngine, LocalEngine]] = {}

    def get(family: str) -> tuple[LocalEngine, LocalEngine]:
        if family not in built:
            folder = tmp_path_factory.mktemp(family)
            if family.startswith("real-"):
                source = REAL_CONFIGS / f"Qwen3-VL-2B-{family.removeprefix('real-').title()}"
                path = build_from_config_folder(source, folder)
            else:
                path = build_tiny_checkpoint(folder, family, init_range=0.5)
            built[family] = (
                load_engine(str(path)),
                load_engine(str(path), prefix_cache_bytes=0),
            )
            cpu = not torch.cuda.is_available()
            assert not cpu or built[family][0].weights == built[family][1].weights == "int4"
        return built[family]

    return get


def _attach(media, *names: str) -> tuple[Attachment, ...]:
    return tuple(Attachment(str(media / name), name) for name in names)


def _generation_prompt_tokens(engine: LocalEngine, **template_kwargs) -> int:
    """Tokens the chat template adds to open the answer (`<|im_start|>assistant\n`...)."""
    render = engine.processor.apply_chat_template
    turn = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    with_opening = render(turn, add_generation_prompt=True, tokenize=False, **template_kwargs)
    without = render(turn, add_generation_prompt=False, tokenize=False, **template_kwargs)
    tokenizer = engine.processor.tokenizer
    return len(tokenizer(with_opening)["input_ids"]) - len(tokenizer(without)["input_ids"])


def _ask(engine: LocalEngine, turns: list[Turn], params: GenerationParams = GREEDY):
    deltas = list(engine.stream(ChatRequest(tuple(turns), params), threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].usage


def _converse(cached: LocalEngine, plain: LocalEngine, steps, params=GREEDY) -> list:
    """Run `steps` (text, attachments) as one conversation on both engines; return the cached
    engine's usage per turn, after checking every reply is the same on both."""
    turns: list[Turn] = []
    usages = []
    for text, files in steps:
        turns.append(Turn("user", text, files))
        reply, usage = _ask(cached, turns, params)
        expected, _ = _ask(plain, turns, params)
        assert reply == expected, f"turn {len(usages) + 1} differs with the cache"
        usages.append(usage)
        turns.append(Turn("assistant", reply))
    return usages


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_then_text_follow_ups(engines, family, media):
    cached, plain = engines(family)
    steps = [("What is this?", _attach(media, "red.jpg")), ("And the colour?", ()), ("Sure?", ())]
    first, second, third = _converse(cached, plain, steps)
    assert first.cached_tokens == 0
    # The first prompt, photo included, comes from the cache (and of the reply, as much as
    # its text, tokenised again, gives the same ids); then the second turn's. A template may
    # render the answer's turn apart from its generation prompt: up to there.
    opening = _generation_prompt_tokens(cached, enable_thinking=False)
    assert second.cached_tokens >= first.prompt_tokens - opening
    assert third.cached_tokens >= second.prompt_tokens - opening


@pytest.mark.parametrize("family", FAMILIES)
def test_a_video_then_a_new_image(engines, family, media):
    cached, plain = engines(family)
    steps = [
        ("What happens?", _attach(media, "clip.mp4")),
        ("And here?", _attach(media, "green.png")),
    ]
    first, second = _converse(cached, plain, steps)
    # The video is not read again; the new image is.
    assert second.cached_tokens >= first.prompt_tokens - _generation_prompt_tokens(
        cached, enable_thinking=False
    )
    assert second.prompt_tokens - second.cached_tokens >= second.visual_tokens - first.visual_tokens


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_regenerate_reads_only_the_last_token(engines, family, media):
    cached, plain = engines(family)
    turns = [Turn("user", "Describe", _attach(media, "green.png"))]
    first, _ = _ask(cached, turns)
    again, usage = _ask(cached, turns)
    assert first == again == _ask(plain, turns)[0]
    assert usage.cached_tokens == usage.prompt_tokens - 1


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_undo_then_another_question(engines, family, media):
    cached, plain = engines(family)
    image = _attach(media, "red.jpg")
    first, _ = _ask(cached, [Turn("user", "What is it?", image)])
    history = [Turn("user", "What is it?", image), Turn("assistant", first)]
    _, asked = _ask(cached, [*history, Turn("user", "How big is it?")])
    # Undo, and a different question instead: the turns before it come from the cache.
    other = [*history, Turn("user", "Which colour is it?")]
    reply, usage = _ask(cached, other)
    assert reply == _ask(plain, other)[0]
    assert usage.cached_tokens >= asked.visual_tokens


@pytest.mark.parametrize("family", ["real-thinking", "qwen3_5"])
def test_a_thinking_template_that_drops_the_reasoning(engines, family, media, caplog):
    """The template opened <think> in the first prompt; the next prompt holds the answer alone,
    so it leaves the cached sequence inside the cached reply: reuse up to there."""
    cached, plain = engines(family)
    thinking = GenerationParams(max_new_tokens=10, temperature=0, enable_thinking=True)
    turns = [Turn("user", "What is it?", _attach(media, "red.jpg"))]
    _, first = _ask(cached, turns, thinking)
    turns += [Turn("assistant", "A red square."), Turn("user", "Sure?")]  # reasoning dropped
    with caplog.at_level(logging.INFO, logger="app.engines.local"):
        again, second = _ask(cached, turns, thinking)
    assert again == _ask(plain, turns, thinking)[0]
    # Everything up to the answer's turn, and no more: its reasoning is no longer there.
    opening = _generation_prompt_tokens(cached, enable_thinking=True)
    assert first.prompt_tokens - opening <= second.cached_tokens <= first.prompt_tokens
    assert "leaves a cached sequence" in caplog.text or "reused" in caplog.text


def test_two_conversations_interleaved_keep_their_own_entries(engines, media):
    cached, plain = engines("qwen3_vl")
    a = [Turn("user", "First photo?", _attach(media, "red.jpg"))]
    b = [Turn("user", "Second photo?", _attach(media, "green.png"))]
    for conversation in (a, b):
        reply, _ = _ask(cached, conversation)
        conversation += [Turn("assistant", reply), Turn("user", "More?")]
    for conversation in (a, b):
        reply, usage = _ask(cached, conversation)
        assert reply == _ask(plain, conversation)[0]
        assert usage.cached_tokens > usage.visual_tokens  # each found its own photo


def test_a_tiny_budget_evicts_and_answers_stay_right(engines, tiny_checkpoint, media):
    _, plain = engines("qwen3_vl")
    path = plain.model.name_or_path  # the checkpoint it was loaded from
    one_entry = 120 * kv_bytes_per_token(plain.model)  # room for one of these
    small = load_engine(path, prefix_cache_bytes=one_entry)
    for name in ("red.jpg", "green.png", "red.jpg"):
        turns = [Turn("user", "Look", _attach(media, name))]
        reply, _ = _ask(small, turns)
        assert reply == _ask(plain, turns)[0]
        assert small.prefix_cache.nbytes <= one_entry
        assert len(small.prefix_cache) <= 1


def test_the_cache_costs_what_the_models_keys_and_values_cost(engines, media):
    cached, _ = engines("qwen3_vl")
    cached.prefix_cache.clear()
    _ask(cached, [Turn("user", "Look", _attach(media, "red.jpg"))])
    [entry] = cached.prefix_cache._entries.values()
    assert entry.nbytes == len(entry.ids) * kv_bytes_per_token(cached.model)


def test_out_of_memory_drops_the_cache_and_retries_once(engines, media):
    cached, plain = engines("qwen3_vl")
    turns = [Turn("user", "Look", _attach(media, "green.png"))]
    _ask(cached, turns)
    assert len(cached.prefix_cache) >= 1
    failures = iter([torch.OutOfMemoryError("CUDA out of memory (injected)")])

    def out_of_memory_once(*_args, **_kwargs):
        error = next(failures, None)
        if error is not None:
            raise error

    layer = cached.model.model.language_model.layers[0]
    handle = layer.register_forward_pre_hook(out_of_memory_once)
    try:
        turns += [Turn("assistant", "ok"), Turn("user", "Again?")]
        reply, usage = _ask(cached, turns)
    finally:
        handle.remove()
    assert reply == _ask(plain, turns)[0]
    assert usage.cached_tokens == 0  # read afresh, without the dropped cache
