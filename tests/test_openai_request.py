"""What the OpenAI-compatible engine sends: messages, media parts, generation settings."""

import base64
import io

import av

from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
from app.engines.openai import OpenAIEngine
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
