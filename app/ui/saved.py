"""The saved-chats panel's events: the list kept in the browser, new, open, rename, delete,
export and import. Plain methods over the store (app/chats.py), testable without a server.

The browser holds the store sealed (app/ui/sealed.py): each event opens what the browser sent
and seals what goes back, so a store the server did not make is never read.
"""

from __future__ import annotations

import binascii
import functools
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from app import chats
from app.conversation import (
    asked_by_edit,
    asked_by_regenerate,
    asked_by_send,
    branched_at,
    user_messages_to_box,
    with_draft,
)
from app.files import Folder, is_disk_full
from app.render import interrupted_note
from app.said import Said, chinese, in_language, message, say
from app.ui.sealed import StoreSeal
from app.ui.words import language_of

log = logging.getLogger(__name__)
# An import larger than this is refused unread (a JSON export carries its files as base64).
MAX_IMPORT_BYTES = 100 << 20
DISK_FULL = say(
    "The server's disk is full, so the file could not be written; nothing was kept and "
    "nothing was changed. Try again later.",
    "服务器磁盘已满，无法写入文件；没有留下任何文件，也没有做任何改动。请稍后再试。",
)
Event = TypeVar("Event", bound=Callable[..., Any])


class Refused(Exception):
    """An action of the panel that cannot be done, with the words to show for it."""


def worded(action: Said, outputs: int) -> Callable[[Event], Event]:
    """An event of the panel whose failure is said in words (a warning naming the action and
    what to do, in the asker's language) and leaves the page as it was, instead of gradio's
    bare "Error" badge on each of its `outputs` (a raised gr.Error of an event outside the
    queue reached the page so)."""

    def wrap(event: Event) -> Event:
        @functools.wraps(event)
        def worded_event(*args: Any, **kwargs: Any) -> Any:
            try:
                return event(*args, **kwargs)
            except Refused as err:
                said = message(err)
            except Exception as err:  # the page must stay usable whatever went wrong
                log.exception("%s failed", action)
                said = say(
                    f"{action} did not work ({err}); the page is as it was: try again.",
                    f"{action.chinese}没有成功（{err}）；页面保持原样：请再试一次。",
                )
            asker = kwargs.get("request") or next(
                (a for a in args if isinstance(a, gr.Request)), None
            )
            gr.Warning(in_language(said, language_of(asker)))
            return gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))

        return worded_event  # type: ignore[return-value]

    return wrap


def _list(store: chats.Store, request: gr.Request | None) -> Any:
    choices = chats.choices(store, language_of(request))
    return gr.Radio(choices=choices, value=store.get("current"))


def _chat(store: chats.Store, request: gr.Request | None) -> Any:
    """The chat area showing the store's current chat, its thumbs as given."""
    # An update, not a component: gradio checks its files as output like any other value.
    messages = chats.current_messages(store, language_of(request))
    return gr.update(value=messages, feedback_value=chats.current_feedback(store))


def login_of(request: gr.Request | None) -> str | None:
    """The login of the request's user, where the app has logins."""
    return getattr(request, "username", None) or None


class SavedChats:
    """Events of the saved-chats panel; files made for download or import go in `folder`.

    Each takes the sealed store the browser holds and returns it sealed again."""

    def __init__(self, seal: StoreSeal, folder: Folder | None = None) -> None:
        self.seal = seal
        self.folder = folder or Folder.new("qwen-chat-saved-")

    def _open(self, sealed: Any, request: gr.Request | None, warn: bool = False) -> chats.Store:
        store = self.seal.open(sealed, login_of(request))
        if store is None:
            if warn and sealed:
                unopened = say(
                    "The chats saved in this browser could not be opened (saved for another "
                    "login, or changed outside this app). They are left as they are; the chats "
                    "of this visit will not be saved in this browser.",
                    "无法打开此浏览器中保存的对话（为另一个登录保存，或在本应用之外被改动）。"
                    "它们保持原样；本次访问的对话不会保存在此浏览器中。",
                )
                gr.Warning(in_language(unopened, language_of(request)))
            return chats.empty_store()
        return store

    def _sealed(self, store: chats.Store, request: gr.Request | None, held: Any) -> str:
        """`store` sealed for the browser; where the browser `held` a store this server cannot
        open (another login's), that one, untouched: nothing a person saved is written over."""
        if held and self.seal.open(held, login_of(request)) is None:
            return str(held)
        return self.seal.seal(store, login_of(request))

    def restore(self, sealed: Any, request: gr.Request) -> tuple[str, Any, list]:
        """On page load: the chat last open, and the list."""
        store = self._open(sealed, request, warn=True)
        return self._sealed(store, request, sealed), _list(store, request), _chat(store, request)

    def persist(self, history: list | None, sealed: Any, request: gr.Request) -> tuple[str, Any]:
        """After every change of the chat: keep it in the browser's list."""
        store = chats.save(self._open(sealed, request), list(history or []))
        return self._sealed(store, request, sealed), _list(store, request)

    # The question in flight, kept before its reply with a note that stands for the reply (the
    # reply's end writes the chat again): a restart mid-reply loses at most the partial answer.
    # Each runs beside the event that asks, with the same inputs.

    def keep_sent(
        self,
        box: dict | None,
        history: list | None,
        editing: int | None,
        sealed: Any,
        request: gr.Request,
    ) -> tuple[Any, Any]:
        asked = asked_by_send(box, list(history or []), editing)
        return self._keep_asked(asked, sealed, request)

    def keep_regenerated(
        self, history: list | None, sealed: Any, request: gr.Request
    ) -> tuple[Any, Any]:
        return self._keep_asked(asked_by_regenerate(list(history or [])), sealed, request)

    def keep_edited(
        self, history: list | None, sealed: Any, event: gr.EditData, request: gr.Request
    ) -> tuple[Any, Any]:
        asked = asked_by_edit(list(history or []), event.index, event.value)
        return self._keep_asked(asked, sealed, request)

    def _keep_asked(self, asked: list, sealed: Any, request: gr.Request) -> tuple[Any, Any]:
        if not asked:
            return gr.skip(), gr.skip()
        pending = [*asked, interrupted_note(language_of(request))]
        store = chats.save(self._open(sealed, request), pending)
        return self._sealed(store, request, sealed), _list(store, request)

    @worded(say("Starting a new chat", "开始新对话"), 3)
    def new_chat(self, sealed: Any, request: gr.Request) -> tuple[str, Any, list]:
        store = chats.start_new(self._open(sealed, request))
        return self._sealed(store, request, sealed), _list(store, request), _chat(store, request)

    @worded(say("Opening that chat", "打开那个对话"), 2)
    def open(self, chat_id: str | None, sealed: Any, request: gr.Request) -> tuple[str, Any]:
        store, _ = chats.select(self._open(sealed, request), chat_id)
        return self._sealed(store, request, sealed), _chat(store, request)

    @worded(say("Renaming the chat", "重命名对话"), 3)
    def rename(
        self, name: str, history: list | None, sealed: Any, request: gr.Request
    ) -> tuple[str, Any, str]:
        store = chats.save(self._open(sealed, request), list(history or []), renamed=name)
        return self._sealed(store, request, sealed), _list(store, request), ""

    @worded(say("Deleting the chat", "删除对话"), 3)
    def delete(self, sealed: Any, request: gr.Request) -> tuple[str, Any, list]:
        store = chats.delete_current(self._open(sealed, request))
        return self._sealed(store, request, sealed), _list(store, request), _chat(store, request)

    @worded(say("Continuing in a new chat", "在新对话中继续"), 4)
    def branch(
        self, history: list | None, sealed: Any, box: dict | None, index: Any, request: gr.Request
    ) -> tuple[str, Any, Any, Any]:
        """A new chat from message `index` of the chat shown (app/conversation.py
        `branched_at`), beside it in the list and open; the original stays as it is. A question
        branched from goes into the box, before any draft there; the replies kept keep their
        thumbs."""
        history = list(history or [])
        branched = branched_at(history, index)
        if branched is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        kept, question = branched
        opened = self._open(sealed, request)  # opened once: the chat shown, then the new one
        chat = chats.find_chat(opened, opened.get("current")) or {}
        title = chats.marked_title(self._title(chat, history), chats.BRANCHED, language_of(request))
        store = chats.save(chats.start_new(opened), kept, title)
        store = chats.with_feedback(store, chats.feedback_values(kept, chat.get("feedback")))
        shown = with_draft(user_messages_to_box(question), box) if question else gr.skip()
        return (
            self._sealed(store, request, sealed),
            _list(store, request),
            _chat(store, request),
            shown,
        )

    def _own_folder(self) -> Path:
        """A folder of its own for one export: files are named after their chat's title, and
        two people's "New chat" must not be one file."""
        folder = self.folder.fresh() / uuid.uuid4().hex
        folder.mkdir()
        return folder

    @worded(say("Keeping your feedback", "保存你的反馈"), 1)
    def feedback(
        self, like: gr.LikeData, history: list | None, sealed: Any, request: gr.Request
    ) -> str:
        """A thumb given (or taken back) on a reply: kept with the chat in the browser."""
        value = (
            {True: "Like", False: "Dislike"}.get(like.liked)
            if isinstance(like.liked, bool)
            else None
        )
        index = like.index[0] if isinstance(like.index, list | tuple) else int(like.index)
        store = chats.set_feedback(self._open(sealed, request), list(history or []), index, value)
        return self._sealed(store, request, sealed)

    def _current(self, sealed: Any, request: gr.Request | None) -> dict[str, Any]:
        """The chat open in the browser's store (empty where none is)."""
        store = self._open(sealed, request)
        return chats.find_chat(store, store.get("current")) or {}

    def _title(self, chat: dict[str, Any], history: list) -> str:
        return str(chat["title"]) if chat else chats.title_of(history)

    @worded(say("Exporting the chat as JSON", "把对话导出为 JSON"), 1)
    def export_json(self, history: list | None, sealed: Any, request: gr.Request) -> Any:
        history = list(history or [])
        chat = self._current(sealed, request)  # opened once: its title and its thumbs
        title = self._title(chat, history)
        feedback = chats.feedback_values(history, chat.get("feedback"))

        def write(folder: Path) -> Path:
            path = folder / chats.file_name(title, ".json")
            path.write_text(chats.to_json(history, title, feedback))
            return path

        return self._export(write)

    @worded(say("Exporting the chat as Markdown", "把对话导出为 Markdown"), 1)
    def export_markdown(self, history: list | None, sealed: Any, request: gr.Request) -> Any:
        history = list(history or [])
        title = self._title(self._current(sealed, request), history)

        def write(folder: Path) -> Path:
            return chats.to_markdown(history, title, folder, language_of(request))

        return self._export(write)

    def _export(self, write: Callable[[Path], Path]) -> Any:
        """The file `write` makes in a folder of its own, for download; where it fails, the
        folder goes with what was written (a full disk kept no empty file)."""
        folder: Path | None = None
        try:
            folder = self._own_folder()
            return gr.File(value=str(write(folder)))
        except BaseException as err:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if is_disk_full(err):
                raise Refused(DISK_FULL) from err
            raise

    @worded(say("Importing the file", "导入文件"), 3)
    def import_json(self, upload: Any, sealed: Any, request: gr.Request) -> tuple[str, Any, list]:
        """A conversation exported as JSON, as a new chat; a failed import leaves no file."""
        path = Path(getattr(upload, "name", None) or str(upload))
        folder = self.folder.fresh() / uuid.uuid4().hex
        try:
            if path.stat().st_size > MAX_IMPORT_BYTES:
                most = MAX_IMPORT_BYTES >> 20
                raise Refused(_not_an_export(path, say(f"over {most} MB", f"超过 {most} MB")))
            title, messages, feedback = chats.from_json(path.read_text(encoding="utf-8"), folder)
        except RecursionError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise Refused(_not_an_export(path, say("nested too deeply", "嵌套太深"))) from err
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            shutil.rmtree(folder, ignore_errors=True)
            if is_disk_full(err):
                raise Refused(DISK_FULL) from err
            raise Refused(_not_an_export(path, _why_not(err))) from err
        # Beside the original in the list, told apart (once: an import of an import too).
        imported = chats.marked_title(title, chats.IMPORTED, language_of(request))
        store = chats.save(chats.start_new(self._open(sealed, request)), messages, imported)
        store = chats.with_feedback(store, feedback)
        return self._sealed(store, request, sealed), _list(store, request), _chat(store, request)


def _why_not(err: Exception) -> Said:
    """What is wrong with a file that is no export, in words (not a parser's own)."""
    if isinstance(err, UnicodeDecodeError):
        return say("it is not a text file", "它不是文本文件")
    if isinstance(err, json.JSONDecodeError):
        return say(
            f"it is not JSON: line {err.lineno}, column {err.colno}",
            f"它不是 JSON：第 {err.lineno} 行第 {err.colno} 列",
        )
    if isinstance(err, binascii.Error):
        return say("a file inside it is damaged", "其中的一个文件已损坏")
    if isinstance(err, chats.NotAnExport):
        return say("it holds no conversation saved by Export JSON", "其中没有“导出 JSON”保存的对话")
    if isinstance(err, OSError):
        return say(f"it cannot be read: {err.strerror}", f"无法读取：{err.strerror}")
    return say("its contents are not laid out as an export's", "其内容的结构不是导出文件的结构")


def _not_an_export(path: Path, why: str) -> Said:
    return say(
        f"{path.name}: not a conversation exported by this app ({why}). Import takes a file "
        "made by Export JSON; nothing was changed.",
        f"{path.name}：不是本应用导出的对话（{chinese(why)}）。导入只接受“导出 JSON”生成的文件；"
        "什么都没有改动。",
    )
