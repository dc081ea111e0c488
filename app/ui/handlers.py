"""The page's and the API's event handlers: plain methods, testable without a server.

Each takes what gradio hands an event (the box's value, the chat history, the panel's values as
keyword arguments, the `gr.Request` of the session) and returns or yields the new values. The
chatbot's value is the one history of a browser session; gradio keeps it per session, so no
session sees another's messages or files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from app.conversation import (
    asked_by_edit,
    asked_by_regenerate,
    asked_by_send,
    box_to_user_messages,
    build_request,
    split_last_turn,
    user_messages_to_box,
    user_turn_around,
    with_draft,
)
from app.engines.base import ChatRequest
from app.render import Reply, render_reply
from app.replies import RequestRunner, SessionCancels
from app.said import in_language, say
from app.said import message as message_of
from app.settings import IPNetwork
from app.ui.panel import PanelError, PanelOptions, request_settings
from app.ui.words import example_in, language_of, word


def busy_box(**changes: Any) -> Any:
    """The box while a reply runs: Stop in place of Send."""
    return gr.MultimodalTextbox(submit_btn=False, stop_btn=word("stop"), **changes)


def idle_box() -> Any:
    """The box while no reply runs: Send, and no Stop."""
    return gr.MultimodalTextbox(submit_btn=word("send"), stop_btn=False)


def session_of(request: gr.Request | None) -> str:
    return (getattr(request, "session_hash", None) if request is not None else None) or "-"


def user_of(request: gr.Request | None, trusted: Sequence[IPNetwork] = ()) -> str | None:
    """Who is asking, for taking turns on the model: the login, else the address the request
    came from, else None (then: the session). Behind a proxy the operator named
    (--trusted-proxies), the address that proxy says it forwarded for; from any other peer that
    header could be made up (one user posing as many takes many turns), and is ignored."""
    if request is None:
        return None
    username = getattr(request, "username", None)
    if username:
        return f"user:{username}"
    host = getattr(getattr(request, "client", None), "host", None)
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "").split(",")[-1].strip()
    if forwarded and host and _is_within(host, trusted):
        host = forwarded
    return f"address:{host}" if host else None


def owner_of(request: gr.Request | None) -> str:
    """Whose model state a request may share (the prefix cache): the login, else the browser
    session (a reload is a new one). Never the address: users behind one proxy share it."""
    username = getattr(request, "username", None) if request is not None else None
    return f"user:{username}" if username else f"session:{session_of(request)}"


def _is_within(host: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class ChatHandlers:
    """What every event of the page and the API does, given the objects it works with."""

    def __init__(
        self,
        requests: RequestRunner,
        cancels: SessionCancels,
        options: PanelOptions,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self.requests = requests
        self.cancels = cancels
        self.options = options
        self.trusted_proxies = tuple(trusted_proxies)

    def _request(
        self, history: list, panel: dict[str, Any], asker: gr.Request | None
    ) -> ChatRequest:
        settings = request_settings(panel, self.options)
        return build_request(
            history, settings.system_prompt, settings.params, settings.budget, owner_of(asker)
        )

    def _stream(self, chat: ChatRequest, asker: gr.Request | None) -> Iterator[Reply]:
        """The reply to `chat`, in the session and the turn of whoever asked."""
        return self.requests(chat, session_of(asker), user_of(asker, self.trusted_proxies))

    def _stream_into(
        self, history: list, panel: dict[str, Any], asker: gr.Request | None
    ) -> Iterator[list]:
        language = language_of(asker)
        try:
            request = self._request(history, panel, asker)
        except PanelError as err:  # a script's setting no request can use: said in the chat
            yield history + render_reply(Reply(error=message_of(err), finished=True), language)
            return
        for reply in self._stream(request, asker):
            if reply.detached:  # its chat is no longer the one shown
                yield gr.skip()
            else:
                yield [] if reply.cleared else history + render_reply(reply, language)

    def respond(
        self,
        box: dict | None,
        history: list | None,
        editing: int | None,
        request: gr.Request,
        **panel: Any,
    ) -> Iterator[tuple[Any, list]]:
        """Send: the box's text and files become the user's turn (in place of the question
        being edited, if one is); the reply streams after it."""
        asked = asked_by_send(box, list(history or []), editing)
        if not asked:
            yield gr.skip(), list(history or [])
            return
        # The box empties only now that its content is safe in the history; Stop replaces Send.
        yield busy_box(value={"text": "", "files": []}), asked
        for shown in self._stream_into(asked, panel, request):
            yield gr.skip(), shown

    def regenerate(
        self, history: list | None, request: gr.Request, **panel: Any
    ) -> Iterator[tuple[list, Any]]:
        """A new answer to the last user turn, in place of the old one."""
        history = asked_by_regenerate(list(history or []))
        if not history:
            yield gr.skip(), gr.skip()
            return
        # Stop shows once the work starts (not while queued), when pressing it can reach it.
        yield history, busy_box()
        for shown in self._stream_into(history, panel, request):
            yield shown, gr.skip()

    def edit(
        self, history: list | None, event: gr.EditData, request: gr.Request, **panel: Any
    ) -> Iterator[tuple[list, Any]]:
        """An earlier question edited: the turns after it go, and it is answered again."""
        history = asked_by_edit(list(history or []), event.index, event.value)
        yield history, busy_box()
        for shown in self._stream_into(history, panel, request):
            yield shown, gr.skip()

    def start_edit(
        self, history: list | None, box: dict | None, asked: bool, event: gr.SelectData
    ) -> tuple[Any, Any, Any]:
        """The Edit of a question with files (gradio's own edit sends none of them: the page's
        script turns its click into this): the question's text and files go into the box,
        before any draft there; Send answers it again in its place."""
        turn = user_turn_around(list(history or []), event.index) if asked else None
        if turn is None:
            return gr.skip(), gr.skip(), gr.skip()
        start, end = turn
        question = user_messages_to_box(list(history or [])[start:end])
        return with_draft(question, box), start, gr.update(visible=True)

    @staticmethod
    def take_example(
        box: dict | None, event: gr.SelectData, request: gr.Request | None = None
    ) -> dict:
        """An example of the empty chat clicked: its question (in the page's language) and file
        in the box, before any draft there (nothing is sent until the person sends it)."""
        example = event.value if isinstance(event.value, dict) else {}
        files = [f["path"] if isinstance(f, dict) else str(f) for f in example.get("files") or []]
        text = example_in(str(example.get("text") or ""), language_of(request))
        return with_draft({"text": text, "files": files}, box)

    @staticmethod
    def example_in_language(box: dict | None, request: gr.Request | None = None) -> Any:
        """An example under the box, put in the box: its question in the page's language."""
        if not box or not box.get("text"):
            return gr.skip()
        return {**box, "text": example_in(str(box["text"]), language_of(request))}

    @staticmethod
    def hold_buttons() -> tuple[Any, Any]:
        """Regenerate and Undo, off while a reply streams."""
        return gr.update(interactive=False), gr.update(interactive=False)

    @staticmethod
    def release_buttons() -> tuple[Any, Any]:
        return gr.update(interactive=True), gr.update(interactive=True)

    @staticmethod
    def end_edit() -> tuple[None, Any]:
        """No question is being edited (sent, cancelled, or the chat changed)."""
        return None, gr.update(visible=False)

    def leave(self, request: gr.Request) -> None:
        """The user opens another chat: a reply still running stops, and stays out of view."""
        self.cancels.cancel(session_of(request), detached=True)

    def undo(self, history: list | None, box: dict | None = None) -> tuple[list, Any]:
        """Remove the last turn; what the user typed and attached comes back into the box,
        before whatever the box holds already (a draft is kept)."""
        before, last_turn = split_last_turn(list(history or []))
        if not last_turn:
            return before, gr.skip()
        return before, with_draft(user_messages_to_box(last_turn), box)

    def stop(self, request: gr.Request) -> Any:
        self.cancels.cancel(session_of(request))
        return idle_box()

    def idle(self) -> Any:
        return idle_box()

    def add_capture(self, capture: Any, box: dict | None) -> tuple[Any, Any]:
        """A photo or clip from the camera joins the box's files (what is typed stays); the
        camera is emptied for the next one."""
        path = capture.get("video") if isinstance(capture, dict) else capture
        path = getattr(path, "path", None) or path
        if not path:
            return gr.skip(), gr.skip()
        box = box or {}
        files = [*(box.get("files") or []), str(path)]
        return {"text": box.get("text") or "", "files": files}, None

    def clear(self, request: gr.Request) -> tuple[list, Any]:
        self.cancels.cancel(session_of(request), cleared=True)
        return [], idle_box()

    def unload(self, request: gr.Request) -> None:
        """A closed tab stops its generation, as Stop does."""
        self.cancels.cancel(session_of(request))

    def ask(
        self,
        text: str = "",
        file_1: str | None = None,
        file_2: str | None = None,
        file_3: str | None = None,
        file_4: str | None = None,
        request: gr.Request | None = None,  # gradio fills it in
        **panel: Any,
    ) -> Iterator[str]:
        """Ask the Qwen vision-language model a question about up to four images, videos or PDFs.

        Args:
            text: the question
            file_1: an image, video or PDF, as base64 data (a data: URL) or an uploaded file;
                never fetched from a web URL
            file_2: another, in the same way
            file_3: another, in the same way
            file_4: another, in the same way
        Returns:
            the model's answer (its reasoning, if any, left out)
        """
        files = [f for f in (file_1, file_2, file_3, file_4) if f]
        yield from self.chat({"text": text, "files": files}, None, request, **panel)

    def chat(
        self,
        message: dict | None = None,
        history: list | None = None,
        request: gr.Request | None = None,  # gradio fills it in
        **panel: Any,
    ) -> Iterator[str]:
        """Ask the Qwen vision-language model about images, videos and PDFs, and get its answer.

        Args:
            message: the question: {"text": "...", "files": [...]} with images, videos or PDFs
                (uploaded files, or base64 data URLs; never fetched from a URL)
            history: earlier turns of the conversation, as chat messages (optional)
        Returns:
            the model's answer (its reasoning, if any, left out)
        """
        language = language_of(request)
        new = box_to_user_messages(message)
        if not new:
            empty = say(
                "The message is empty: send text, files, or both.",
                "消息是空的：请发送文字、文件，或两者都发。",
            )
            raise gr.Error(in_language(empty, language))
        try:
            chat = self._request(list(history or []) + new, panel, request)
        except PanelError as err:
            raise gr.Error(in_language(message_of(err), language), print_exception=False) from err
        answer = ""
        for reply in self._stream(chat, request):
            if reply.error:
                raise gr.Error(in_language(reply.error, language), print_exception=False)
            answer = reply.answer()
            yield answer
        yield answer
