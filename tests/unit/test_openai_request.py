"""What the OpenAI-compatible engine sends: messages, media parts, generation settings."""

import base64
import io

import av
import pytest

from app.engines.base import (
    Attachment,
    ChatRequest,
    GenerationParams,
    Turn,
    family_of_model_name,
)
from app.engines.openai import OpenAIEngine
from app.grounding import model_input_size
from app.media import Budget


def _engine(**kwargs) -> OpenAIEngine:
    # A model name is given, so nothing is asked of the (absent) server.
    return OpenAIEngine("http://127.0.0.1:9", model="qwen", max_new_tokens=512, **kwargs)


def _request(media, *names, **params) -> ChatRequest:
    files = tuple(Attachment(str(media / n), n) for n in names)
    return ChatRequest(
        (
            Turn("system", "Be brief."),
            Turn("user", "What is this?", files),
            Turn("assistant", "A cat."),
        ),
        GenerationParams(**params),
    )


def test_images_go_as_data_urls_within_the_pixel_budget(media):
    engine = _engine(budget=Budget(max_pixels=128 * 128))
    messages, info = engine.build_messages(_request(media, "red.jpg", "green.png"))
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    from PIL import Image

    for part in parts[:2]:
        header, data = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.width * image.height <= 128 * 128
    assert [ref.attachment.name for ref in info.images] == ["red.jpg", "green.png"]


def test_video_as_timestamped_frames_by_default(media):
    messages, _ = _engine().build_messages(_request(media, "clip.mp4"))
    parts = messages[1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    stamps = [p["text"] for p in parts if p["type"] == "text" and p["text"].endswith(" s:")]
    assert len(images) == len(stamps) == 6  # 3 s at 2 fps
    assert stamps[0] == "0.2 s:" or stamps[0] == "0.3 s:"


def test_video_as_a_video_url_part(media):
    messages, _ = _engine(video_mode="url").build_messages(_request(media, "clip.mp4"))
    [video] = [p for p in messages[1]["content"] if p["type"] == "video_url"]
    header, data = video["video_url"]["url"].split(",", 1)
    assert header == "data:video/mp4;base64"
    with av.open(io.BytesIO(base64.b64decode(data))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_generation_settings_map_onto_the_request(media):
    engine = _engine()
    request = _request(
        media,
        max_new_tokens=100,
        temperature=0.2,
        top_p=0.9,
        top_k=5,
        repetition_penalty=1.05,
        seed=7,
        enable_thinking=False,
    )
    payload = engine.build_payload(request, [])
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert payload["max_tokens"] == 100 and payload["temperature"] == 0.2
    assert payload["top_p"] == 0.9 and payload["top_k"] == 5
    assert payload["repetition_penalty"] == 1.05 and payload["seed"] == 7
    assert payload["chat_template_kwargs"] == {"enable_thinking": False}
    bare = engine.build_payload(_request(media), [])
    assert bare["max_tokens"] == 512  # the app's bound
    assert not {"temperature", "top_k", "seed", "chat_template_kwargs"} & set(bare)


def test_reasoning_deltas_become_a_thinking_block():
    from app.engines.openai import ReasoningJoiner
    from app.render import split_reasoning

    joiner = ReasoningJoiner()
    deltas = [
        {"role": "assistant"},
        {"reasoning_content": "Look at "},
        {"reasoning": "the image."},
        {"content": "A cat"},
        {"content": "."},
    ]
    text = "".join(joiner.feed(d) for d in deltas) + joiner.close()
    split = split_reasoning(text)
    assert (split.reasoning, split.answer) == ("Look at the image.", "A cat.")
    unfinished = ReasoningJoiner()
    text = unfinished.feed({"reasoning_content": "hmm"}) + unfinished.close()
    assert split_reasoning(text).reasoning == "hmm"


def test_the_same_image_is_the_same_bytes_in_every_turn(media):
    """Servers with prefix caching (vLLM, SGLang) reuse earlier turns only when the request
    repeats them byte for byte."""
    engine = _engine()
    files = (
        Attachment(str(media / "red.jpg"), "red.jpg"),
        Attachment(str(media / "clip.mp4"), "clip.mp4"),
    )
    first = ChatRequest((Turn("user", "What is this?", files),))
    second = ChatRequest((*first.turns, Turn("assistant", "A red square."), Turn("user", "Sure?")))
    one, _ = engine.build_messages(first)
    two, _ = engine.build_messages(second)
    assert two[: len(one)] == one
    # Even once the decoded media is gone from the cache and read again.
    again = _engine().build_messages(second)[0]
    assert again == two


@pytest.mark.parametrize(
    ("served_name", "family"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
        ("qwen2_5_vl_72b_awq", "qwen2_5_vl"),
        ("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl"),
        ("Qwen/Qwen3-VL-235B-A22B-Thinking", "qwen3_vl"),
        ("/models/Qwen3.5-27B", "qwen3_5"),
    ],
)
def test_the_family_comes_from_the_served_models_name(served_name, family):
    assert _engine_named(served_name).family == family
    assert _engine_named(served_name, family="qwen2_vl").family == "qwen2_vl"  # --family wins


def test_a_name_without_a_family_is_read_as_qwen3_vl():
    assert family_of_model_name("llava-hf/llava-1.5-7b") is None
    assert _engine_named("llava-hf/llava-1.5-7b").family == "qwen3_vl"


def _engine_named(name: str, family: str | None = None) -> OpenAIEngine:
    return OpenAIEngine("http://127.0.0.1:9", model=name, family=family)


def _sent_size(message: dict) -> tuple[int, int]:
    from PIL import Image

    data = message["content"][0]["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data))).size


# llama.cpp's mtmd bounds for Qwen2.5-VL by default: 8 to 4096 tokens of 28 x 28 pixels.
LLAMA_CPP_PIXELS = (8 * 28 * 28, 4096 * 28 * 28)


@pytest.mark.parametrize("max_pixels", [None, 200 * 200])
def test_qwen2_5_vl_boxes_refer_to_the_image_as_sent_which_no_server_resizes(media, max_pixels):
    # Qwen2.5-VL's absolute coordinates are in pixels of the image as the model saw it. The app
    # sends it in Qwen's own blocks (a 300 x 500 image as 308 x 504), which transformers,
    # vLLM and llama.cpp then leave as it is, so the boxes map back whatever the server.
    budget = Budget() if max_pixels is None else Budget(max_pixels=max_pixels)
    engine = OpenAIEngine("http://127.0.0.1:9", model="Qwen/Qwen2.5-VL-7B-Instruct", budget=budget)
    request = ChatRequest((Turn("user", "Where?", (Attachment(str(media / "green.png"), "g"),)),))
    messages, info = engine.build_messages(request)
    sent = _sent_size(messages[-1])
    assert info.images[0].input_size == sent
    assert sent == (308, 504) if max_pixels is None else sent[0] * sent[1] <= max_pixels
    assert sent[0] % 28 == 0 and sent[1] % 28 == 0
    assert model_input_size("qwen2_5_vl", sent) == sent
    assert model_input_size("qwen2_5_vl", sent, *LLAMA_CPP_PIXELS) == sent
    width, height = info.images[0].image.size  # what the boxes are drawn on: as uploaded
    assert height / width == pytest.approx(500 / 300, rel=0.02)
