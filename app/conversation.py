"""Chat history (Gradio messages) to an engine request, and a turn's display messages.

The chatbot's value is the single history. Display-only messages are marked and skipped when
the request is built: reasoning and stats blocks carry `metadata` (a title), annotated images
are assistant file/component messages. The assistant's text goes back to the model exactly as
it was generated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn

if TYPE_CHECKING:
    from app.media import Budget

Message = Mapping[str, Any]
ERROR_MARK = "⚠️"  # how the title of an error's note in the chat starts (app/render.py)


def file_data(part: Any) -> Mapping[str, Any] | None:
    """The file (a FileData dict) a chatbot content part holds, if it is a mapping that holds
    one: a normalized `{"type": "file", "file": {...}}` part, or a FileData dict itself."""
    if not isinstance(part, Mapping):
        return None
    if part.get("type") == "file" and isinstance(part.get("file"), Mapping):
        return part["file"]
    if part.get("type") in ("text", "component") or not part.get("path"):
        return None
    return part


def _attachment_of(part: Any) -> Attachment | None:
    """The attachment in a chatbot content part (normalized dict, FileData dict, or path)."""
    if isinstance(part, str):
        return None
    if isinstance(part, Mapping):
        data = file_data(part)
        if data is None or not data.get("path"):
            return None
        where = str(data["path"])
        return Attachment(path=where, name=str(data.get("orig_name") or Path(where).name))
    path = getattr(part, "path", None)
    if path:
        return Attachment(path=str(path), name=str(getattr(part, "orig_name", None) or path))
    return None


def text_of(part: Any) -> str | None:
    """The text of a chatbot content part, or None when it holds none (a file, a component)."""
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping) and part.get("type") == "text":
        return str(part.get("text", ""))
    return None


def parts_of(message: Message) -> list[Any]:
    """A message's content as a list of parts (a plain string or file is one part)."""
    content = message.get("content")
    return content if isinstance(content, list) else [content]


def is_display_only(message: Message) -> bool:
    """Reasoning, stats and annotated images: shown to the user, never sent to the model."""
    metadata = message.get("metadata") or {}
    if metadata.get("title"):
        return True
    if message.get("role") != "assistant":
        return False
    return all(text_of(p) is None for p in parts_of(message))


def _failed(reply: Sequence[Message]) -> bool:
    """A reply that is an error's note and no answer."""
    said = [str((m.get("metadata") or {}).get("title") or "") for m in reply]
    return all(map(is_display_only, reply)) and any(t.startswith(ERROR_MARK) for t in said)


def without_failed_questions(history: Sequence[Message]) -> list[Message]:
    """The history without each question that failed (its reply an error's note, no answer)
    where a later question follows: that one is a turn of its own, not one with the failed
    one's files (a file that cannot be read failed every question after it)."""
    runs = [list(run) for _, run in groupby(history, key=lambda m: m.get("role"))]
    kept: list[Message] = []
    for index, run in enumerate(runs):
        reply = runs[index + 1] if index + 1 < len(runs) else []
        later = index + 2 < len(runs)
        if run[0].get("role") == "user" and later and _failed(reply):
            continue  # its reply, all display-only, is never sent either
        kept.extend(run)
    return kept


def history_to_turns(history: Sequence[Message]) -> list[Turn]:
    """Consecutive messages of one role merge into one turn, as the model saw them; a question
    that failed, and its error, are left out once another follows."""
    turns: list[Turn] = []
    for message in without_failed_questions(history):
        role = message.get("role")
        if role not in ("user", "assistant") or is_display_only(message):
            continue
        parts = parts_of(message)
        texts = [t for t in (text_of(p) for p in parts) if t]
        files = tuple(a for a in (_attachment_of(p) for p in parts) if a)
        text = "\n".join(texts)
        if turns and turns[-1].role == role:
            last = turns[-1]
            text = "\n".join(t for t in (last.text, text) if t)
            turns[-1] = Turn(role, text, last.attachments + files)
        else:
            turns.append(Turn(role, text, files))
    return turns


def build_request(
    history: Sequence[Message],
    system_prompt: str | None,
    params: GenerationParams,
    budget: Budget | None = None,
    owner: str = "",
) -> ChatRequest:
    turns = history_to_turns(history)
    if system_prompt and system_prompt.strip():
        turns.insert(0, Turn("system", system_prompt.strip()))
    return ChatRequest(turns=tuple(turns), params=params, budget=budget, owner=owner)


def box_to_user_messages(box: Mapping[str, Any] | None) -> list[dict]:
    """A multimodal box value ({"text", "files"}) as chatbot messages: one per file, then text."""
    if not box:
        return []
    messages: list[dict] = []
    for item in box.get("files") or []:
        attachment = (
            _attachment_of(item) if not isinstance(item, str) else Attachment(item, Path(item).name)
        )
        if attachment:
            messages.append(
                {
                    "role": "user",
                    "content": {"path": attachment.path, "orig_name": attachment.name},
                }
            )
    text = (box.get("text") or "").strip()
    if text:
        messages.append({"role": "user", "content": text})
    return messages


def last_user_turn_start(history: Sequence[Message]) -> int | None:
    """Index of the first message of the last user turn, or None when there is none."""
    index = None
    for i in range(len(history) - 1, -1, -1):
        if history[i].get("role") == "user":
            index = i
        elif index is not None:
            break
    return index


def split_last_turn(history: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """(history before the last user turn, the last user turn's own messages)."""
    start = last_user_turn_start(history)
    if start is None:
        return list(history), []
    end = start
    while end < len(history) and history[end].get("role") == "user":
        end += 1
    return list(history[:start]), list(history[start:end])


def with_draft(undone: dict, draft: Mapping[str, Any] | None) -> dict:
    """The box after Undo: the question taken back, and what was typed or attached since (a
    draft is never written over): the question's text first, then the draft's."""
    typed = str((draft or {}).get("text") or "")
    attached = list((draft or {}).get("files") or [])
    if not typed.strip() and not attached:
        return undone
    text = "\n\n".join(t for t in (undone["text"], typed) if t.strip())
    return {"text": text, "files": [*undone["files"], *attached]}


def user_messages_to_box(messages: Sequence[Message]) -> dict:
    """The multimodal box value that re-sends `messages` (Undo gives back what was typed)."""
    turn = history_to_turns(messages)
    if not turn:
        return {"text": "", "files": []}
    return {"text": turn[0].text, "files": [a.path for a in turn[0].attachments]}


# What each event that asks the model puts in the chat before the reply: the history the reply
# follows. One place for the handlers that answer and for saving the question before its reply.


def asked_by_send(
    box: Mapping[str, Any] | None, history: Sequence[Message], editing: int | None = None
) -> list[Message]:
    """The history with the box's text and files as the new question; [] where the box is empty.
    While an earlier question is edited in the box (`editing`: where its turn starts), the box
    takes its place and the turns after it go."""
    new = box_to_user_messages(box)
    kept = list(history)[:editing] if editing is not None else list(history)
    return [*kept, *new] if new else []


def _message_at(history: Sequence[Message], index: Any) -> int | None:
    """The position gradio's event `index` names (a number, or a [row, column] pair), where it
    is one of `history`'s messages."""
    at = index[0] if isinstance(index, list | tuple) else index
    return at if isinstance(at, int) and 0 <= at < len(history) else None


def _run_around(history: Sequence[Message], at: int) -> tuple[int, int]:
    """(start, end) of the messages of one speaker around message `at`: a question's turn, or
    a reply with its thinking, stats and drawing."""
    role = history[at].get("role")
    start, end = at, at + 1
    while start > 0 and history[start - 1].get("role") == role:
        start -= 1
    while end < len(history) and history[end].get("role") == role:
        end += 1
    return start, end


def user_turn_around(history: Sequence[Message], index: Any) -> tuple[int, int] | None:
    """(start, end) of the user turn holding message `index`, where that turn has files (those
    are edited in the box; a turn of text alone, in place); None otherwise."""
    at = _message_at(history, index)
    if at is None or history[at].get("role") != "user":
        return None
    start, end = _run_around(history, at)
    turn = history[start:end]
    has_files = any(_attachment_of(part) for message in turn for part in parts_of(message))
    return (start, end) if has_files else None


def branched_at(
    history: Sequence[Message], index: Any
) -> tuple[list[Message], list[Message]] | None:
    """What a new chat branched from message `index` starts with: (the messages it holds, the
    question to put in the box). From a reply: every message up to the end of that reply, and
    no question. From a question: the turns before it, and the question itself (its text and
    files), to change or send as it is. None where `index` is no message."""
    at = _message_at(history, index)
    if at is None:
        return None
    start, end = _run_around(history, at)
    if history[at].get("role") == "user":
        return list(history[:start]), list(history[start:end])
    return list(history[:end]), []


def asked_by_regenerate(history: Sequence[Message]) -> list[Message]:
    """The history up to the last question, whose answer is asked again; [] where none is."""
    before, last_turn = split_last_turn(history)
    return before + last_turn if last_turn else []


def asked_by_edit(history: Sequence[Message], index: Any, value: Any) -> list[Message]:
    """The history up to the edited question (message `index`), holding `value` now; the turns
    after it go."""
    at = index[0] if isinstance(index, list | tuple) else index
    return [*list(history)[:at], {"role": "user", "content": value}]
