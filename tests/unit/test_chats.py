"""Saved chats: the store kept in the browser, missing files, export and import."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from app import chats


def _text(text: str) -> list:
    return [{"type": "text", "text": text}]


def _conversation(media, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((media / "red.jpg").read_bytes())
    file = {"type": "file", "file": {"path": str(photo), "orig_name": "photo.jpg"}}
    return [
        {"role": "user", "content": [file]},
        {"role": "user", "content": _text("What colour is this square, exactly?")},
        {"role": "assistant", "content": _text("Red."), "metadata": {"title": "Thinking"}},
        {"role": "assistant", "content": _text("It is **red**.")},
        {"role": "assistant", "content": _text(""), "metadata": {"title": "12 tokens"}},
    ]


def test_chats_are_titled_listed_newest_first_renamed_and_deleted(media, tmp_path):
    store = chats.save(chats.empty_store(), [])
    assert store["chats"] == []  # nothing kept until there is something to keep
    first = chats.save(store, _conversation(media, tmp_path))
    assert chats.choices(first) == [("What colour is this square, exactly?", first["current"])]
    second = chats.save(chats.start_new(first), [{"role": "user", "content": "Hello"}])
    assert [title for title, _ in chats.choices(second)] == ["Hello", first["chats"][0]["title"]]
    renamed = chats.save(second, [{"role": "user", "content": "Hello"}], renamed="Greetings")
    later = chats.save(
        renamed, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    )
    assert chats.choices(later)[0][0] == "Greetings"  # a name given stays
    reopened, messages = chats.select(later, first["current"])
    assert reopened["current"] == first["current"] and len(messages) == 5
    remaining = chats.delete_current(reopened)
    assert [title for title, _ in chats.choices(remaining)] == ["Greetings"]
    assert remaining["current"] == later["current"]  # the next chat opens
    assert chats.delete_current(remaining) == {"chats": [], "current": None}


def test_a_chat_is_exported_under_its_title():
    assert chats.file_name("Describe it", ".json") == "Describe it.json"
    assert chats.file_name("../../etc/passwd", ".json") == "etc passwd.json"
    assert chats.file_name("收据 总额?", ".zip") == "收据 总额.zip"
    assert chats.file_name("***", ".json") == "chat.json"


def test_a_file_gone_from_the_server_becomes_a_note_and_the_chat_still_opens(media, tmp_path):
    messages = _conversation(media, tmp_path)
    (tmp_path / "photo.jpg").unlink()
    shown = chats.restorable(messages)
    notes = [m["metadata"]["title"] for m in shown if m.get("metadata")]
    assert "📎 photo.jpg is no longer on the server" in notes
    parts = [p for m in shown if isinstance(m["content"], list) for p in m["content"]]
    assert not [p for p in parts if isinstance(p, dict) and p.get("type") == "file"]
    from app.conversation import history_to_turns

    [question, answer] = history_to_turns(shown)  # the model reads the text only
    assert question.attachments == () and answer.text == "It is **red**."


def test_json_export_then_import_gives_the_same_conversation(media, tmp_path):
    messages = _conversation(media, tmp_path)
    document = chats.to_json(messages, "My chat")
    title, imported, _ = chats.from_json(document, tmp_path / "imported")
    assert title == "My chat"
    assert json.loads(chats.to_json(imported, title)) == json.loads(document)
    [file] = [p["file"] for m in imported for p in m["content"] if p.get("type") == "file"]
    assert Path(file["path"]).read_bytes() == (media / "red.jpg").read_bytes()
    assert file["orig_name"] == "photo.jpg"


def test_markdown_export_is_a_zip_with_the_files_beside_the_text(media, tmp_path):
    path = chats.to_markdown(_conversation(media, tmp_path), "My chat", tmp_path)
    assert path.name == "My chat.zip"
    with zipfile.ZipFile(path) as archive:
        text = archive.read("conversation.md").decode()
        assert "![files/0-photo.jpg](files/0-photo.jpg)" in text
        assert archive.read("files/0-photo.jpg") == (media / "red.jpg").read_bytes()
    assert text.startswith("# My chat") and "It is **red**." in text and "12 tokens" not in text
    # The photo and its question are one turn: one block, as on the page.
    assert text.count("**You:**") == 1 and text.count("**Assistant:**") == 1
    assert (
        text.index("files/0-photo.jpg") < text.index("What colour") < text.index("**Assistant:**")
    )


def test_a_thumb_belongs_to_its_reply_and_goes_when_the_reply_changes():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": "", "metadata": {"title": "3 tokens"}},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure"},
    ]
    store = chats.save(chats.empty_store(), history)
    store = chats.set_feedback(store, history, 2, "Like")  # the stats line: the same reply
    store = chats.set_feedback(store, history, 4, "Dislike")
    assert chats.current_feedback(store) == ["Like", "Dislike"]
    regenerated = [*history[:4], {"role": "assistant", "content": "Another answer"}]
    store = chats.save(store, regenerated)
    assert chats.current_feedback(store) == ["Like", None]
    store = chats.set_feedback(store, regenerated, 1, None)  # taken back
    assert chats.current_feedback(store) == [None, None]


def test_a_text_only_chat_exports_as_a_markdown_file(tmp_path):
    # Before: a .zip holding one file, for a chat with no files at all.
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello **there**."},
    ]
    path = chats.to_markdown(history, "Greetings", tmp_path)
    assert path.name == "Greetings.md"
    text = path.read_text()
    assert text.startswith("# Greetings") and "Hello **there**." in text


def test_a_chat_made_from_another_is_told_apart_once():
    assert chats.marked_title("Cats", chats.BRANCHED, "en") == "Cats (branch)"
    assert chats.marked_title("Cats (branch)", chats.BRANCHED, "en") == "Cats (branch)"
    assert chats.marked_title("Cats", chats.BRANCHED, "zh-CN") == "Cats（分支）"
    assert chats.marked_title("Cats", chats.IMPORTED, "en") == "Cats (imported)"
