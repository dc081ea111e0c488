"""The local engine's prompt: video timing as Qwen3-VL reads it, images before the text."""

import re

from app.engines.base import Attachment, ChatRequest, Turn
from app.engines.local.generation.prompt import build_prompt
from app.media import open_video
from testkit.engines import load_engine
from tests import media_factory as mf


def test_qwen3_vl_prompt_carries_the_sampled_frames_timestamps(tiny_checkpoint, tmp_path):
    engine = load_engine(str(tiny_checkpoint("qwen3_vl")))
    video = mf.make_video(tmp_path / "v.mp4", seconds=4, fps=10)
    request = ChatRequest((Turn("user", "When?", (Attachment(str(video), "v.mp4"),)),))
    built = build_prompt(engine.processor, request, engine.budget, engine.media_cache)
    prompt = engine.processor.tokenizer.decode(built.ids)
    costs = built.costs
    shown = [float(t) for t in re.findall(r"<([\d.]+) seconds>", prompt)]
    # Qwen3-VL merges frames in pairs and stamps each pair with its mean time.
    times = open_video(video, engine.budget).timestamps
    expected = [(a + b) / 2 for a, b in zip(times[::2], times[1::2], strict=True)]
    assert len(shown) == len(expected) == 4
    assert all(abs(s - e) <= 0.06 for s, e in zip(shown, expected, strict=True))
    assert costs[0][0] == "v.mp4" and costs[0][1] > 0


def test_attachments_come_before_the_text_in_their_turn(tiny_checkpoint, media):
    engine = load_engine(str(tiny_checkpoint("qwen2_5_vl")))
    files = (
        Attachment(str(media / "red.jpg"), "red.jpg"),
        Attachment(str(media / "doc.pdf"), "doc.pdf"),
    )
    request = ChatRequest((Turn("user", "Compare", files),))
    built = build_prompt(engine.processor, request, engine.budget, engine.media_cache)
    prompt = engine.processor.tokenizer.decode(built.ids)
    info, costs = built.info, built.costs
    assert prompt.index("<|vision_end|>") < prompt.index("Compare")
    assert prompt.count("<|vision_start|>") == 4  # one photo, three PDF pages
    assert [ref.attachment.name for ref in info.images] == [
        "red.jpg",
        "doc.pdf",
        "doc.pdf",
        "doc.pdf",
    ]
    assert [name for name, _ in costs] == ["red.jpg", "doc.pdf"]
