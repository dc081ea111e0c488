"""Saved conversations: the list kept in the browser, and a conversation as a file and back.

The list lives in the user's browser (gradio's BrowserState, local storage): a dict
`{"chats": [{"id", "title", "updated", "messages"}, ...], "current": id}`. The server only
transforms it during an event and never keeps it. Messages are the chatbot's own; their files
are paths in gradio's upload folder, which the server may have cleaned by the time a chat is
opened again: `restorable` turns each missing file into a note saying which file is gone.

A conversation exports as JSON (messages, files inside as base64) and as Markdown (a zip with
the files beside the text); a JSON export imports back as the same conversation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.conversation import file_data, is_display_only, parts_of, text_of
from app.said import CHINESE, ENGLISH, Said, in_language, say

Store = dict[str, Any]
TITLE_CHARS = 60
FORMAT = "qwen-vl-chat/1"
# Characters kept of an imported file's name: file systems refuse names past 255 bytes.
NAME_CHARS = 100
NEW_CHAT = say("New chat", "新对话")  # the title of a chat before its first question
# What the title of an imported chat, and of a chat branched from another, ends with.
IMPORTED = {ENGLISH: " (imported)", CHINESE: "（导入）"}
BRANCHED = {ENGLISH: " (branch)", CHINESE: "（分支）"}
YOU, ASSISTANT = say("You", "你"), say("Assistant", "助手")  # who speaks, in a Markdown export


def empty_store() -> Store:
    return {"chats": [], "current": None}


def find_chat(store: Store, chat_id: str | None) -> dict[str, Any] | None:
    """The chat of `chat_id` in the store, if it holds one."""
    return next((c for c in store.get("chats") or [] if c["id"] == chat_id), None)


def _file_copy(part: Any) -> dict[str, Any] | None:
    data = file_data(part)
    return dict(data) if data is not None else None


def title_of(messages: Sequence[Mapping[str, Any]]) -> str:
    """The first question, shortened: how the chat shows in the list."""
    for message in messages:
        if message.get("role") == "user":
            text = " ".join(t for t in map(text_of, parts_of(message)) if t).strip()
            if text:
                return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
    return NEW_CHAT


def marked_title(title: str, mark: Mapping[str, str], language: str) -> str:
    """The title of a chat made from another (imported, branched): the original's, told apart
    from it in the list by `mark` (once: an import of an import, a branch of a branch too)."""
    if title.endswith(tuple(mark.values())):
        return title
    return title + mark.get(language, mark[ENGLISH])


def save(store: Store, messages: list, renamed: str | None = None) -> Store:
    """The store with the current chat holding `messages` (a new chat if there is none)."""
    store = {"chats": [dict(c) for c in store.get("chats") or []], "current": store.get("current")}
    chat = find_chat(store, store["current"])
    if chat is None:
        if not messages and renamed is None:
            return store  # nothing to keep yet
        chat = {"id": uuid.uuid4().hex, "title": "", "named": False}
        store["chats"].append(chat)
        store["current"] = chat["id"]
    chat["messages"] = list(messages)
    chat["updated"] = time.time()
    if renamed is not None and renamed.strip():
        chat["title"], chat["named"] = renamed.strip(), True
    elif not chat.get("named"):
        chat["title"] = title_of(messages)
    return store


FEEDBACK = ("Like", "Dislike")  # what the chatbot's thumbs give


def _reply_starts(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The index of each reply's first message: the page shows a run of assistant messages
    (the answer, its stats line) as one reply, and keeps one feedback per reply."""
    return [
        i
        for i, m in enumerate(messages)
        if m.get("role") == "assistant" and (i == 0 or messages[i - 1].get("role") != "assistant")
    ]


def _digest(message: Mapping[str, Any]) -> str:
    """What a feedback was given to: a regenerated or edited reply loses it."""
    content = json.dumps(message.get("content"), sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def set_feedback(
    store: Store, messages: Sequence[Mapping[str, Any]], index: int, value: Any
) -> Store:
    """The store with the current chat's feedback on the reply at `index` set (None: taken
    back)."""
    store = {"chats": [dict(c) for c in store.get("chats") or []], "current": store.get("current")}
    chat = find_chat(store, store["current"])
    starts = _reply_starts(messages)
    if chat is None or not starts:
        return store
    start = max((i for i in starts if i <= index), default=starts[0])
    feedback = dict(chat.get("feedback") or {})
    if value in FEEDBACK:
        feedback[str(start)] = {"value": value, "digest": _digest(messages[start])}
    else:
        feedback.pop(str(start), None)
    chat["feedback"] = feedback
    return store


def feedback_values(messages: Sequence[Mapping[str, Any]], feedback: Any) -> list[str | None]:
    """One entry per reply, as the chatbot's `feedback_value` takes them."""
    given = feedback if isinstance(feedback, dict) else {}
    values: list[str | None] = []
    for start in _reply_starts(messages):
        entry = given.get(str(start))
        if not isinstance(entry, dict) or entry.get("digest") != _digest(messages[start]):
            values.append(None)
            continue
        values.append(entry["value"] if entry.get("value") in FEEDBACK else None)
    return values


def current_feedback(store: Store) -> list[str | None]:
    chat = find_chat(store, store.get("current"))
    return feedback_values(chat["messages"], chat.get("feedback")) if chat else []


def start_new(store: Store) -> Store:
    return {"chats": list(store.get("chats") or []), "current": None}


def delete_current(store: Store) -> Store:
    """The store without its current chat; the chat after it in the list is current now (the
    one before it where it was the last; none where it was the only one)."""
    order = [chat_id for _, chat_id in choices(store)]
    current = store.get("current")
    chats = [c for c in store.get("chats") or [] if c["id"] != current]
    if current in order:
        place = order.index(current)
        order.remove(current)
        current = order[min(place, len(order) - 1)] if order else None
    else:
        current = None
    return {"chats": chats, "current": current}


def file_name(title: str, suffix: str) -> str:
    """A file name for a chat titled `title`: its words, no path or odd characters."""
    words = re.sub(r"[^\w\- .,()]+", " ", title, flags=re.UNICODE)
    stem = " ".join(words.split()).strip(" .")[:60].rstrip(" .")
    return f"{stem or 'chat'}{suffix}"


def select(store: Store, chat_id: str | None) -> tuple[Store, list]:
    """The store with `chat_id` current, and that chat's messages as they can be shown now."""
    chat = find_chat(store, chat_id)
    if chat is None:
        return start_new(store), []
    return {"chats": list(store["chats"]), "current": chat["id"]}, restorable(chat["messages"])


def current_messages(store: Store, language: str = ENGLISH) -> list:
    chat = find_chat(store, store.get("current"))
    return restorable(chat["messages"], language) if chat else []


def choices(store: Store, language: str = ENGLISH) -> list[tuple[str, str]]:
    """(title, id) of each chat, the most recently changed first; a chat without a question
    yet is "New chat" in `language`."""
    chats = sorted(store.get("chats") or [], key=lambda c: c.get("updated", 0), reverse=True)
    untitled = in_language(NEW_CHAT, language)
    return [(c["title"] if c["title"] not in ("", NEW_CHAT) else untitled, c["id"]) for c in chats]


def restorable(messages: Sequence[Mapping[str, Any]], language: str = ENGLISH) -> list:
    """`messages` with each file the server no longer has replaced by a note naming it (a
    display-only message: the model never reads it, and the chat still opens), in
    `language`."""
    out: list = []
    for message in messages:
        files = [f for f in map(_file_copy, parts_of(message)) if f]
        gone = [f for f in files if not Path(str(f.get("path", ""))).is_file()]
        if not gone:
            out.append(dict(message))
            continue
        gone_paths = {g.get("path") for g in gone}
        kept = [p for p in parts_of(message) if (_file_copy(p) or {}).get("path") not in gone_paths]
        if any(_file_copy(p) or text_of(p) for p in kept):
            out.append({**message, "content": kept})
        for lost in gone:
            name = lost.get("orig_name") or Path(str(lost.get("path"))).name
            out.append(
                {
                    "role": message.get("role", "user"),
                    "content": "",
                    "metadata": {"title": f"📎 {in_language(_gone(name), language)}"},
                }
            )
    return out


def to_json(
    messages: Sequence[Mapping[str, Any]], title: str, feedback: list[str | None] | None = None
) -> str:
    """The conversation as one JSON document, its files inside (base64); `feedback`: the
    thumbs given, one entry per reply."""
    exported = []
    for message in messages:
        parts = []
        for part in parts_of(message):
            text, file = text_of(part), _file_copy(part)
            if file is not None:
                path = Path(str(file["path"]))
                data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else None
                name = file.get("orig_name") or path.name
                parts.append({"type": "file", "name": name, "data": data})
            elif text is not None:
                parts.append({"type": "text", "text": text})
        entry: dict[str, Any] = {"role": message.get("role"), "content": parts}
        if message.get("metadata"):  # reasoning, stats, notes: shown again, never sent
            entry["metadata"] = dict(message["metadata"])
        exported.append(entry)
    document: dict[str, Any] = {"format": FORMAT, "title": title, "messages": exported}
    if feedback and any(feedback):
        document["feedback"] = list(feedback)
    return json.dumps(document, indent=1)


class NotAnExport(ValueError):
    """JSON, but not a conversation this app exported."""


def from_json(document: str, folder: Path) -> tuple[str, list, list[str | None]]:
    """(title, chatbot messages, feedback per reply) of an exported conversation; files
    written into `folder`."""
    data = json.loads(document)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NotAnExport("not a conversation exported by this app")
    folder.mkdir(parents=True, exist_ok=True)
    messages = []
    for index, message in enumerate(data.get("messages") or []):
        parts: list[dict[str, Any]] = []
        for part in message.get("content") or []:
            if part.get("type") == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif part.get("type") == "file" and part.get("data"):
                name = _short_name(Path(str(part.get("name") or "file")).name or "file")
                path = folder / f"{index}-{name}"
                path.write_bytes(base64.b64decode(part["data"], validate=True))
                mime = mimetypes.guess_type(name)[0]  # an image shows as one, not as a file
                file = {"path": str(path), "orig_name": name, "mime_type": mime}
                parts.append({"type": "file", "file": file})
        if message.get("role") in ("user", "assistant") and (parts or message.get("metadata")):
            entry: dict[str, Any] = {"role": message["role"], "content": parts or ""}
            if isinstance(message.get("metadata"), dict):
                entry["metadata"] = {
                    k: str(v) for k, v in message["metadata"].items() if k in ("title", "status")
                }
            messages.append(entry)
    given = data["feedback"] if isinstance(data.get("feedback"), list) else []
    feedback = [v if v in FEEDBACK else None for v in given][: len(_reply_starts(messages))]
    return str(data.get("title") or title_of(messages)), messages, feedback


def with_feedback(store: Store, feedback: Sequence[str | None]) -> Store:
    """The store with the current chat's replies given `feedback` (one entry per reply)."""
    chat = find_chat(store, store.get("current"))
    if chat is None:
        return store
    messages = chat["messages"]
    for start, value in zip(_reply_starts(messages), feedback, strict=False):
        if value is not None:
            store = set_feedback(store, messages, start, value)
    return store


def _short_name(name: str) -> str:
    """`name` within NAME_CHARS characters, its extension kept (it says what the file is)."""
    if len(name) <= NAME_CHARS:
        return name
    suffix = Path(name).suffix[:16]
    return name[: NAME_CHARS - len(suffix) - 1] + "…" + suffix


def _gone(name: str) -> Said:
    return say(f"{name} is no longer on the server", f"服务器上已没有 {name}")


def to_markdown(
    messages: Sequence[Mapping[str, Any]], title: str, folder: Path, language: str = ENGLISH
) -> Path:
    """The conversation as Markdown in `folder`, who speaks named in `language`: a `.md` file
    where it has no files, else a `.zip` of the text and its files beside it."""
    files: list[tuple[str, str]] = []  # (the file on the server, its name in the zip)
    lines = [f"# {title}", ""]
    speaker = None
    for index, message in enumerate(messages):
        if is_display_only(message) and not any(map(_file_copy, parts_of(message))):
            continue
        # One turn is one block: the page keeps a photo and its question as two messages.
        role = in_language(YOU if message.get("role") == "user" else ASSISTANT, language)
        if role != speaker:
            lines += [""] if speaker is not None else []
            lines.append(f"**{role}:**")
            speaker = role
        for part in parts_of(message):
            text, file = text_of(part), _file_copy(part)
            if file is not None and Path(str(file["path"])).is_file():
                name = f"files/{index}-{Path(str(file.get('orig_name') or file['path'])).name}"
                files.append((str(file["path"]), name))
                kind = (mimetypes.guess_type(name)[0] or "").split("/")[0]
                lines.append(f"![{name}]({name})" if kind == "image" else f"[{name}]({name})")
            elif text:
                lines.append(text)
    markdown = "\n".join([*lines, ""])
    if not files:
        path = folder / file_name(title, ".md")
        path.write_text(markdown, encoding="utf-8")
        return path
    path = folder / file_name(title, ".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for where, name in files:
            archive.write(where, name)
        archive.writestr("conversation.md", markdown)
    return path
