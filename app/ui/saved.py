"""The saved-chats panel's events: the list kept in the browser, new, open, rename, delete,
export and import. Plain methods over the store (app/chats.py), testable without a server."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from app import chats


def _list(store: chats.Store) -> Any:
    return gr.Radio(choices=chats.choices(store), value=store.get("current"))


class SavedChats:
    """Events of the saved-chats panel; files made for download or import go in `folder`."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="qwen-chat-saved-"))

    def restore(self, store: chats.Store | None) -> tuple[chats.Store, Any, list]:
        """On page load: the chat last open, and the list."""
        store = store or chats.empty_store()
        return store, _list(store), chats.current_messages(store)

    def persist(self, history: list | None, store: chats.Store | None) -> tuple[chats.Store, Any]:
        """After every change of the chat: keep it in the browser's list."""
        store = chats.save(store or chats.empty_store(), list(history or []))
        return store, _list(store)

    def new_chat(self, store: chats.Store | None) -> tuple[chats.Store, Any, list]:
        store = chats.start_new(store or chats.empty_store())
        return store, _list(store), []

    def open(self, chat_id: str | None, store: chats.Store | None) -> tuple[chats.Store, list]:
        store, messages = chats.select(store or chats.empty_store(), chat_id)
        return store, messages

    def rename(
        self, name: str, history: list | None, store: chats.Store | None
    ) -> tuple[chats.Store, Any, str]:
        store = chats.save(store or chats.empty_store(), list(history or []), renamed=name)
        return store, _list(store), ""

    def delete(self, store: chats.Store | None) -> tuple[chats.Store, Any, list]:
        store = chats.delete_current(store or chats.empty_store())
        return store, _list(store), []

    def _title(self, store: chats.Store | None, history: list) -> str:
        store = store or chats.empty_store()
        chat = chats.find_chat(store, store.get("current"))
        return chat["title"] if chat else chats.title_of(history)

    def export_json(self, history: list | None, store: chats.Store | None) -> Any:
        history = list(history or [])
        path = self.folder / f"conversation-{uuid.uuid4().hex[:8]}.json"
        path.write_text(chats.to_json(history, self._title(store, history)))
        return gr.File(value=str(path), visible=True)

    def export_markdown(self, history: list | None, store: chats.Store | None) -> Any:
        history = list(history or [])
        path = self.folder / f"conversation-{uuid.uuid4().hex[:8]}.zip"
        title = self._title(store, history)
        return gr.File(value=str(chats.to_markdown_zip(history, title, path)), visible=True)

    def import_json(self, upload: Any, store: chats.Store | None) -> tuple[chats.Store, Any, list]:
        """A conversation exported as JSON, as a new chat."""
        path = Path(getattr(upload, "name", None) or str(upload))
        try:
            title, messages = chats.from_json(
                path.read_text(encoding="utf-8"), self.folder / uuid.uuid4().hex
            )
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            raise gr.Error(f"{path.name}: not a conversation exported by this app ({err})") from err
        store = chats.save(chats.start_new(store or chats.empty_store()), messages, title)
        return store, _list(store), chats.current_messages(store)
