"""The page's event handlers called as plain functions, with no server, on the scripted engine
(tests/scripted_engine.py: the engine contract without a model, so these run in milliseconds;
what a model does is tested with tiny checkpoints elsewhere)."""

from __future__ import annotations

import threading

import gradio as gr
import pytest

from app.replies import RequestRunner, SessionCancels
from app.ui.handlers import ChatHandlers
from app.ui.panel import FIELD_NAMES, PanelOptions, request_settings
from tests.panel import page_defaults
from tests.scripted_engine import FAIL, ScriptedEngine

SCRIPT = " ".join(f"word{i}" for i in range(200))


@pytest.fixture(scope="module")
def handlers():
    engine = ScriptedEngine(script=SCRIPT, delay_s=0.005)
    options = PanelOptions(
        max_new_tokens=64,
        sampling=engine.sampling_defaults,
        supports_thinking=engine.supports_thinking,
        budget=engine.budget,
    )
    cancels = SessionCancels()
    return ChatHandlers(RequestRunner(engine, cancels), cancels, options)


def _session(name: str) -> gr.Request:
    return gr.Request(session_hash=name)


def _panel(handlers, **changes):
    return page_defaults(handlers.options) | {"max_new_tokens": 6} | changes


def _texts(history, role):
    return [m["content"] for m in history if m["role"] == role and not m.get("metadata")]


def test_send_moves_the_box_into_the_chat_and_streams_the_reply(handlers, media):
    box = {"text": "What is it?", "files": [str(media / "red.jpg")]}
    updates = list(handlers.respond(box, [], None, _session("a"), **_panel(handlers)))
    first_box, first_history = updates[0]
    assert first_box.value == {"text": "", "files": []}  # emptied once safe in the history
    assert [m["role"] for m in first_history] == ["user", "user"]
    history = updates[-1][1]
    assert len(_texts(history, "assistant")) == 1
    stats = history[-1]["metadata"]["title"]
    assert "6 tokens" in stats and "red.jpg: " in stats


def test_an_empty_box_sends_nothing(handlers):
    [(_, history)] = list(handlers.respond({"text": "  ", "files": []}, [], None, _session("b")))
    assert history == []


def test_regenerate_replaces_the_last_answer_and_undo_gives_the_turn_back(handlers, media):
    box = {"text": "Hi", "files": [str(media / "green.png")]}
    *_, (_, history) = handlers.respond(box, [], None, _session("c"), **_panel(handlers))
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
        {"text": "Talk", "files": []},
        [],
        None,
        _session("e"),
        **_panel(handlers, max_new_tokens=60),
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


def test_an_engine_error_is_a_message_in_the_chat_and_the_question_stays(handlers, media):
    box = {"text": f"Please {FAIL} now", "files": [str(media / "red.jpg")]}
    *_, (_, history) = handlers.respond(box, [], None, _session("f"), **_panel(handlers))
    assert [m["role"] for m in history[:2]] == ["user", "user"]  # the photo and the question
    said = " ".join(str((m.get("metadata") or {}).get("title", "")) for m in history)
    assert "asked to fail" in said
    # (Sent after it in this chat, the failed question stays in the turn, as the user typed it.)
    *_, (_, again) = handlers.respond({"text": "Fine now?", "files": []}, [], None, _session("f"))
    assert _texts(again, "assistant")[-1].startswith("word0")  # the next request is answered


def test_a_bad_file_is_named_and_the_turn_kept(handlers, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a picture at all")
    *_, (_, history) = handlers.respond(
        {"text": "What is it?", "files": [str(bad)]}, [], None, _session("g"), **_panel(handlers)
    )
    said = " ".join(str((m.get("metadata") or {}).get("title", "")) for m in history)
    assert "broken.jpg" in said
    assert any(m["role"] == "user" for m in history)


def test_an_example_of_the_empty_chat_fills_the_box_and_keeps_a_draft():
    chosen = {"index": 1, "value": {"text": "Read it", "files": [{"path": "/ex/receipt.png"}]}}
    event = gr.SelectData(None, chosen)
    empty = ChatHandlers.take_example({"text": "", "files": []}, event)
    assert empty == {"text": "Read it", "files": ["/ex/receipt.png"]}
    draft = ChatHandlers.take_example({"text": "mine", "files": ["/up/a.jpg"]}, event)
    assert draft == {"text": "Read it\n\nmine", "files": ["/ex/receipt.png", "/up/a.jpg"]}


def test_an_example_goes_in_the_box_in_the_pages_language():
    from types import SimpleNamespace

    from app.ui.words import CLIP_QUESTION

    chinese = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9"})
    english = SimpleNamespace(headers={"accept-language": "en-US"})
    chosen = {"index": 3, "value": {"text": str(CLIP_QUESTION), "files": ["/ex/ball.mp4"]}}
    event = gr.SelectData(None, chosen)
    assert ChatHandlers.take_example(None, event, chinese)["text"] == CLIP_QUESTION.chinese
    assert ChatHandlers.take_example(None, event, english)["text"] == str(CLIP_QUESTION)
    box = {"text": str(CLIP_QUESTION), "files": ["/ex/ball.mp4"]}
    assert ChatHandlers.example_in_language(box, chinese) == {
        "text": CLIP_QUESTION.chinese,
        "files": ["/ex/ball.mp4"],
    }
    trial = {"text": "What colour is the shape?", "files": []}  # the trial's: English only
    assert ChatHandlers.example_in_language(trial, chinese) == trial
