"""The page's event handlers called as plain functions, on a real tiny engine, with no server."""

from __future__ import annotations

import threading

import gradio as gr
import pytest

from app.engines.local import LocalEngine
from app.replies import ReplyStreamer, SessionCancels
from app.ui.handlers import ChatHandlers
from app.ui.panel import FIELD_NAMES, PanelOptions, page_defaults, request_settings


@pytest.fixture(scope="module")
def handlers(tiny_checkpoint):
    engine = LocalEngine.load(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)))
    options = PanelOptions(
        max_new_tokens=64,
        sampling=engine.sampling_defaults,
        supports_thinking=engine.supports_thinking,
        budget=engine.budget,
    )
    cancels = SessionCancels()
    return ChatHandlers(ReplyStreamer(engine, cancels), cancels, options)


def _session(name: str) -> gr.Request:
    return gr.Request(session_hash=name)


def _panel(handlers, **changes):
    return page_defaults(handlers.options) | {"max_new_tokens": 6} | changes


def _texts(history, role):
    return [m["content"] for m in history if m["role"] == role and not m.get("metadata")]


def test_send_moves_the_box_into_the_chat_and_streams_the_reply(handlers, media):
    box = {"text": "What is it?", "files": [str(media / "red.jpg")]}
    updates = list(handlers.respond(box, [], _session("a"), **_panel(handlers)))
    first_box, first_history = updates[0]
    assert first_box.value == {"text": "", "files": []}  # emptied once safe in the history
    assert [m["role"] for m in first_history] == ["user", "user"]
    history = updates[-1][1]
    assert len(_texts(history, "assistant")) == 1
    stats = history[-1]["metadata"]["title"]
    assert "6 tokens" in stats and "red.jpg: " in stats


def test_an_empty_box_sends_nothing(handlers):
    [(_, history)] = list(handlers.respond({"text": "  ", "files": []}, [], _session("b")))
    assert history == []


def test_regenerate_replaces_the_last_answer_and_undo_gives_the_turn_back(handlers, media):
    box = {"text": "Hi", "files": [str(media / "green.png")]}
    *_, (_, history) = handlers.respond(box, [], _session("c"), **_panel(handlers))
    *_, (again, _) = handlers.regenerate(history, _session("c"), **_panel(handlers, seed=3))
    assert len(_texts(again, "assistant")) == 1 and _texts(again, "user") == _texts(history, "user")
    before, restored = handlers.undo(again)
    assert before == [] and restored["text"] == "Hi" and len(restored["files"]) == 1


def test_the_api_takes_a_history_and_refuses_an_empty_message(handlers, media):
    history = [
        {"role": "user", "content": {"path": str(media / "red.jpg")}},
        {"role": "user", "content": "What colour?"},
        {"role": "assistant", "content": "Red."},
    ]
    *_, answer = handlers.chat({"text": "Sure?", "files": []}, history, _session("d"))
    assert isinstance(answer, str) and answer
    with pytest.raises(gr.Error, match="empty"):
        list(handlers.chat({"text": "", "files": []}, None, _session("d")))


def test_stop_from_another_event_ends_the_reply_as_stopped(handlers):
    replies = handlers.respond(
        {"text": "Talk", "files": []}, [], _session("e"), **_panel(handlers, max_new_tokens=60)
    )
    next(replies)  # the box update; the request starts with the next step
    stopper = threading.Timer(0.05, handlers.stop, args=(_session("e"),))
    stopper.start()
    *_, (_, history) = replies
    stopper.join()
    assert history[-1]["metadata"]["title"].endswith("stopped")


def test_the_panel_is_declared_once():
    options = PanelOptions(max_new_tokens=77)
    defaults = page_defaults(options)
    assert set(defaults) == set(FIELD_NAMES)
    settings = request_settings(defaults | {"seed": 5, "max_pixels": 1}, options)
    assert settings.params.max_new_tokens == 77 and settings.params.seed == 5
    assert settings.params.enable_thinking is None  # this model's template takes no switch
    assert settings.budget.max_pixels == options.budget.min_pixels  # kept within bounds
    api = request_settings({}, options)  # nothing given: as the checkpoint says
    assert api.params.temperature is None and api.system_prompt is None
