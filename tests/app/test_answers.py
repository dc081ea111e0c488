"""Replies worth looking at, through the launched app: boxes drawn, reasoning apart, settings
reaching `generate`. Tiny checkpoints scripted (by their generation config) to answer with a
known text run the real generation stack."""

from __future__ import annotations

import functools
import io

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app.media import MediaCache
from app.settings import load_settings
from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder, build_tiny_checkpoint
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests.panel import panel

BOXES = 'Here:\n```json\n[{"bbox_2d": [250, 250, 750, 750], "label": "square"}]\n```'
THOUGHT = "I should look closely.\n</think>\n\nA green picture."
PANEL = panel(max_new_tokens=64, enable_thinking=True)
RELEASED = {"real-thinking": "Qwen3-VL-2B-Thinking", "real-instruct": "Qwen3-VL-2B-Instruct"}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """scripted(family, reply) -> (url, engine) of an app whose model always says `reply`."""
    contexts = []

    def launch(family: str, reply: str):
        folder = tmp_path_factory.mktemp(family)
        if family in RELEASED:  # tiny widths, a released tokenizer and template
            source = REAL_CONFIGS / RELEASED[family]
            path = build_from_config_folder(source, folder, scripted_reply=reply)
        else:
            path = build_tiny_checkpoint(folder, family, scripted_reply=reply)
        settings = load_settings(["--max-new-tokens", "256"], environ={})
        engine = load_engine(str(path), media_cache=MediaCache(), max_new_tokens=256)
        context = launched_app(settings, engine)
        contexts.append(context)
        return context.__enter__(), engine

    yield launch
    for context in contexts:
        context.__exit__(None, None, None)


def _files(history, role="assistant"):
    return [
        part["file"]
        for m in history
        if m["role"] == role
        for part in m["content"]
        if part.get("type") == "file"
    ]


def test_boxes_in_a_reply_come_back_drawn_on_the_image(scripted, media):
    url, _ = scripted("qwen3_vl", BOXES)
    client = Client(url, verbose=False, download_files=False)
    source = media / "green.png"  # 300 x 500, green with a blue rectangle at the top left
    _, history = client.predict(
        {"text": "Where is the square?", "files": [handle_file(str(source))]},
        [],
        *PANEL,
        api_name="/ui_send",
    )
    answer = next(m for m in history if m["role"] == "assistant" and not m.get("metadata"))
    assert answer["content"][0]["text"] == BOXES  # the model's text is shown as generated
    drawn_files = _files(history)
    assert len(drawn_files) == 1
    drawn = Image.open(io.BytesIO(httpx.get(drawn_files[0]["url"], timeout=10).content))
    drawn = drawn.convert("RGB")
    assert drawn.size == (300, 500)
    # 0-1000 relative: the box spans x 75..225, y 125..375 of the 300 x 500 image.
    red = (230, 25, 75)
    for x, y in [(76, 250), (224, 250), (150, 126), (150, 374)]:
        assert all(abs(a - b) < 40 for a, b in zip(drawn.getpixel((x, y)), red, strict=True))
    assert drawn.getpixel((180, 300)) == (0, 128, 0)  # the inside is still green
    # The drawing is for the user only: it is not sent back to the model in the next turn.
    _, history = client.predict(
        {"text": "Thanks", "files": []}, history, *PANEL, api_name="/ui_send"
    )
    assert len(_files(history)) == 2  # one more drawing for the repeated boxes, nothing else


@pytest.mark.parametrize("family", ["qwen3_5", "real-thinking"])
def test_reasoning_is_shown_apart_and_excluded_from_the_api_reply(scripted, family):
    url, engine = scripted(family, THOUGHT)
    # The thinking switch shows for a template that takes it (Qwen3.5's), not for Qwen3-VL
    # Thinking's, which always thinks.
    config = httpx.get(f"{url}config", timeout=5).json()
    [switch] = [c for c in config["components"] if c["props"].get("elem_id") == "enable_thinking"]
    assert switch["props"]["visible"] is (family == "qwen3_5")
    client = Client(url, verbose=False, download_files=False)
    _, history = client.predict(
        {"text": "What is it?", "files": []}, [], *PANEL, api_name="/ui_send"
    )
    thinking = [m for m in history if (m.get("metadata") or {}).get("title") == "Thinking"]
    assert thinking and thinking[0]["content"][0]["text"] == "I should look closely."
    assert thinking[0]["metadata"]["status"] == "done"
    answers = [m for m in history if m["role"] == "assistant" and not m.get("metadata")]
    assert [a["content"][0]["text"] for a in answers] == ["A green picture."]
    assert client.predict({"text": "And?", "files": []}, api_name="/chat") == "A green picture."

    # In the next turn the model gets the answer back, without the reasoning.
    seen = []
    original = engine.processor.apply_chat_template

    @functools.wraps(original)
    def record(messages, *args, **kwargs):
        rendered = original(messages, *args, **kwargs)
        seen.append((messages, rendered))
        return rendered

    engine.processor.apply_chat_template = record
    try:
        client.predict({"text": "Sure?", "files": []}, history, *PANEL, api_name="/ui_send")
    finally:
        engine.processor.apply_chat_template = original
    messages, rendered = seen[-1]
    sent = [part["text"] for m in messages for part in m["content"] if part["type"] == "text"]
    assert sent == ["What is it?", "A green picture.", "Sure?"]
    assert "look closely" not in rendered and rendered.count("A green picture.") == 1


def test_settings_reach_generate(scripted):
    """The page's and the API's settings become the generation config each reply is sampled
    with (the one `generate` would make of them), and the system prompt leads the prompt."""
    url, engine = scripted("qwen3_vl", "ok")
    settings: list[dict] = []
    prompts: list[dict] = []
    model = engine.model
    originals = model._prepare_generation_config, model.generate

    def record(into, original):
        @functools.wraps(original)
        def recorded(*args, **kwargs):
            into.append(kwargs)
            return original(*args, **kwargs)

        return recorded

    model._prepare_generation_config = record(settings, originals[0])
    model.generate = record(prompts, originals[1])
    try:
        client = Client(url, verbose=False, download_files=False)
        values = panel(
            system_prompt="Answer tersely.",
            max_new_tokens=7,
            temperature=0.3,
            top_p=0.5,
            top_k=9,
            repetition_penalty=1.2,
            seed=42,
            enable_thinking=True,
        )
        client.predict({"text": "Hi", "files": []}, [], *values, api_name="/ui_send")
        client.predict({"text": "Hi", "files": []}, temperature=0, top_k=3, api_name="/chat")
    finally:
        model._prepare_generation_config, model.generate = originals
    # The prompt's reading (`generate` for one token's logits) asks for its own settings.
    page, api = [kwargs for kwargs in settings if "output_logits" not in kwargs]
    assert page["max_new_tokens"] == 7 and page["do_sample"] is True
    assert page["temperature"] == 0.3 and page["top_p"] == 0.5 and page["top_k"] == 9
    assert page["repetition_penalty"] == 1.2
    prompt = engine.processor.tokenizer.decode(prompts[0]["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nAnswer tersely.<|im_end|>")
    assert api["do_sample"] is False  # temperature 0 means greedy
    assert api["max_new_tokens"] == 256  # the server's bound when the request sets none


def test_the_same_seed_gives_the_same_sampled_reply(tiny_checkpoint):
    settings = load_settings(["--max-new-tokens", "64"], environ={})
    engine = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)))
    with launched_app(settings, engine) as url:
        client = Client(url, verbose=False)

        def ask(seed):
            return client.predict(
                {"text": "Say something", "files": []},
                temperature=1.0,
                max_new_tokens=24,
                seed=seed,
                api_name="/chat",
            )

        assert ask(7) == ask(7)
        assert ask(7) != ask(8)


def test_a_reply_never_shows_protocol_tokens_or_broken_characters(scripted):
    # Before: the trial showed "<|im_start|>" (its tokenizer adds it without the special flag)
    # and the released tokenizer's added "<|fim_prefix|>" and "<tool_call>" came through.
    url, _ = scripted("real-instruct", "Café <|fim_prefix|>au<tool_call> lait <|im_start|>naïve.")
    reply = Client(url, verbose=False).predict(
        {"text": "Say it", "files": []}, max_new_tokens=64, api_name="/chat"
    )
    assert reply.strip() == "Café au lait naïve."
    assert "\ufffd" not in reply


def test_a_character_split_across_tokens_shows_whole_and_a_stray_byte_not_at_all():
    from transformers import AutoTokenizer

    from app.engines.local.generation.streamer import TokenStreamer

    tokenizer = AutoTokenizer.from_pretrained(REAL_CONFIGS / "Qwen3-VL-2B-Instruct")
    byte = tokenizer.convert_tokens_to_ids  # byte-level BPE: 0xC3 is "Ã", 0xA9 is "©"
    shown: list[str] = []
    streamer = TokenStreamer(tokenizer, shown.append, lambda count: None)
    stray, e_acute = [byte("Ã")], [byte("Ã"), byte("©")]
    for ids in (stray, tokenizer.encode(" café"), e_acute[:1], e_acute[1:], stray):
        for token in ids:
            streamer.put_token(token)
    streamer.end()
    assert "".join(shown) == " caféé" and all("\ufffd" not in s for s in shown)
