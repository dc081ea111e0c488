from app.conversation import (
    asked_by_send,
    box_to_user_messages,
    branched_at,
    build_request,
    history_to_turns,
    split_last_turn,
    user_messages_to_box,
    user_turn_around,
)
from app.engines.base import Attachment, GenerationParams, Turn


def _file(path):
    return {"type": "file", "file": {"path": path, "orig_name": path.rsplit("/", 1)[-1]}}


def _text(text):
    return {"type": "text", "text": text}


HISTORY = [
    {"role": "user", "content": [_file("/up/a.jpg")]},
    {"role": "user", "content": [_file("/up/b.mp4")]},
    {"role": "user", "content": [_text("What is this?")]},
    {"role": "assistant", "content": [_text("why")], "metadata": {"title": "Thinking"}},
    {"role": "assistant", "content": [_text("A **cat**.\n<br>")]},
    {"role": "assistant", "content": [_text("")], "metadata": {"title": "12 tokens"}},
    {"role": "assistant", "content": [{"type": "component", "component": "image", "value": {}}]},
    {"role": "user", "content": [_text("And its colour?")]},
]


def test_history_becomes_turns_with_attachments_in_order():
    turns = history_to_turns(HISTORY)
    assert turns == [
        Turn(
            "user",
            "What is this?",
            (Attachment("/up/a.jpg", "a.jpg"), Attachment("/up/b.mp4", "b.mp4")),
        ),
        Turn("assistant", "A **cat**.\n<br>"),  # exactly as generated, markup untouched
        Turn("user", "And its colour?"),
    ]


def test_a_question_that_failed_is_left_out_once_another_follows():
    """A file that cannot be read failed its question; the next question is a turn of its
    own, not one with that file (it failed every question after it). Only a reply that is an
    error and no answer counts: a partial answer, or a reply stopped before its first token,
    stay as they were."""
    error = {"role": "assistant", "content": "", "metadata": {"title": "⚠️ notes.jpg: no image"}}
    failed = [{"role": "user", "content": [_file("/up/notes.jpg")]}, error]
    assert history_to_turns([*failed, {"role": "user", "content": "And now?"}]) == [
        Turn("user", "And now?")
    ]
    # Regenerate asks the failed question again: it is the last turn, and is kept.
    assert history_to_turns(failed) == [
        Turn("user", "", (Attachment("/up/notes.jpg", "notes.jpg"),))
    ]
    partial = [*failed[:1], {"role": "assistant", "content": "It is"}, error]
    after = {"role": "user", "content": "Go on"}
    assert [t.role for t in history_to_turns([*partial, after])] == ["user", "assistant", "user"]
    stopped = [*failed[:1], {"role": "assistant", "content": "", "metadata": {"title": "stopped"}}]
    assert len(history_to_turns([*stopped, after])) == 1  # one user turn: the two questions


def test_reasoning_stats_and_images_are_never_sent_back():
    texts = [t.text for t in history_to_turns(HISTORY)]
    assert "why" not in texts and "12 tokens" not in texts


def test_system_prompt_comes_first():
    request = build_request(HISTORY, "Be brief.", GenerationParams(max_new_tokens=5))
    assert request.turns[0] == Turn("system", "Be brief.")
    assert request.params.max_new_tokens == 5
    assert build_request(HISTORY, "  ", GenerationParams()).turns[0].role == "user"


def test_box_value_to_messages_and_back():
    box = {
        "text": "  two files  ",
        "files": ["/up/a.jpg", {"path": "/up/c.png", "orig_name": "c.png"}],
    }
    messages = box_to_user_messages(box)
    assert [m["content"] for m in messages] == [
        {"path": "/up/a.jpg", "orig_name": "a.jpg"},
        {"path": "/up/c.png", "orig_name": "c.png"},
        "two files",
    ]
    assert user_messages_to_box(messages) == {
        "text": "two files",
        "files": ["/up/a.jpg", "/up/c.png"],
    }
    assert box_to_user_messages({"text": "", "files": []}) == []


def test_split_last_turn():
    before, last = split_last_turn(HISTORY)
    assert last == HISTORY[-1:] and before == HISTORY[:-1]
    before, last = split_last_turn(HISTORY[:-1])
    assert last == HISTORY[:3] and before == []
    assert split_last_turn([]) == ([], [])


def test_undo_keeps_a_draft_after_the_question_it_takes_back():
    from app.conversation import with_draft

    undone = {"text": "How many chairs?", "files": ["/tmp/office.jpg"]}
    assert with_draft(undone, None) == undone
    assert with_draft(undone, {"text": "  ", "files": []}) == undone
    draft = {"text": "And the lamps?", "files": ["/tmp/lamp.png"]}
    assert with_draft(undone, draft) == {
        "text": "How many chairs?\n\nAnd the lamps?",
        "files": ["/tmp/office.jpg", "/tmp/lamp.png"],
    }


def test_a_question_with_files_is_edited_in_the_box_in_its_place():
    photo = {"role": "user", "content": {"path": "/up/a.jpg", "orig_name": "a.jpg"}}
    history = [
        photo,
        {"role": "user", "content": "How many chairs?"},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": "And tables?"},
        {"role": "assistant", "content": "One."},
    ]
    # Either message of the photo's turn gives the turn; a turn of text alone is edited in place.
    assert user_turn_around(history, 1) == user_turn_around(history, [0]) == (0, 2)
    assert user_turn_around(history, 3) is None and user_turn_around(history, 2) is None
    assert user_turn_around(history, 9) is None
    assert user_messages_to_box(history[0:2]) == {
        "text": "How many chairs?",
        "files": ["/up/a.jpg"],
    }
    box = {"text": "How many desks?", "files": ["/up/a.jpg"]}
    assert [m["content"] for m in asked_by_send(box, history, editing=0)] == [
        {"path": "/up/a.jpg", "orig_name": "a.jpg"},
        "How many desks?",
    ]
    assert asked_by_send(box, history)[: len(history)] == history  # not editing: appended


def test_a_branch_from_a_reply_keeps_all_up_to_it_and_from_a_question_the_turns_before():
    # From any of the first reply's messages: the first turn whole (its thinking, stats, drawing).
    for index in (3, 4, 6):
        assert branched_at(HISTORY, index) == (HISTORY[:7], [])
    # From any message of a question with files: the turns before, and the whole question.
    assert branched_at(HISTORY, 1) == ([], HISTORY[:3])
    assert branched_at(HISTORY, 7) == (HISTORY[:7], HISTORY[7:])
    assert branched_at(HISTORY, [7, None]) == (HISTORY[:7], HISTORY[7:])  # gradio's pair
    assert branched_at(HISTORY, 8) is None
    assert branched_at(HISTORY, -1) is None
