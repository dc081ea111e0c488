"""The page, built area by area (as gradio's own ChatInterface is), then its events wired.

`ChatPage.build()` renders the header, the side panel of saved chats, the chat area (chatbot,
box, Regenerate/Undo/Clear), the footer (examples, the settings panel) and the hidden inputs of
the `/chat` and `/ask` APIs, then sets up every event; the events that run the model all get the
same `panel_inputs`: the settings reach each handler as keyword arguments named after their
fields.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gradio as gr
from gradio.components.chatbot import ExampleMessage

from app.said import in_language
from app.ui.api_inputs import worded_api_inputs
from app.ui.handlers import ChatHandlers
from app.ui.page_code import (
    BRANCH_ASKED_JS,
    CONFIRM_DELETE_JS,
    DOWNLOAD_JS,
    EDIT_ASKED_JS,
    NAME_ATTACHMENTS_JS,
)
from app.ui.panel import FIELD_NAMES, FIELDS, ROWS, PanelOptions, with_panel_parameters
from app.ui.safety import refuse_url_fetches
from app.ui.saved import SavedChats
from app.ui.words import (
    BOXES_QUESTION,
    CHART_QUESTION,
    CLIP_QUESTION,
    RECEIPT_QUESTION,
    language_of,
    word,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
STORAGE_KEY = "qwen-vl-chat-saved-chats"  # the saved chats' key in the browser's storage (below)
SETTINGS_KEY = "qwen-vl-chat-settings"  # the settings panel's, kept like the chats
GENERATE = "generate"  # one concurrency group: every event that runs the model
# Every request of that group goes in at once, to take its turn by user (app/fair_queue.py, which
# also bounds how many wait): a limit here would make the ones past it wait first come, first
# served in gradio's queue, in front of the fair order. A waiting request holds one of gradio's
# worker threads for at most a second at a time, so Stop, Clear and Undo still find one.
GENERATING = MappingProxyType({"concurrency_limit": None, "concurrency_id": GENERATE})
# Events that answer at once, outside the queue, and are no API of the app.
QUIET: Mapping[str, Any] = MappingProxyType({"queue": False, "api_visibility": "private"})
# The saved chats' events a person starts: in the queue, so that a failure's words reach the
# page (gradio shows a warning only from a queued event), but no API of the app.
SAVED_CHATS: Mapping[str, Any] = MappingProxyType(
    {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": 4}
)
# Math only where it cannot be a price: "$15.40 and $3.20" between single dollars became one
# formula. A single $ stays text (currency, shell variables), as on GitHub without `$`-math.
LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
# Files the empty chat's examples show as their icon (a video or PDF shows its question only).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
EXAMPLE_PROMPTS = (
    (CHART_QUESTION, EXAMPLES / "chart.png"),
    (RECEIPT_QUESTION, EXAMPLES / "receipt.png"),
    (BOXES_QUESTION, EXAMPLES / "receipt.png"),
    (CLIP_QUESTION, EXAMPLES / "ball.mp4"),
)


def saved_chats_key(browser_secret: str | None) -> str:
    """The saved chats' key in the browser's storage: one per server key. A store sealed with
    another key cannot be opened, and gradio then starts from an empty one that the next change
    writes back; under one key for all, a single run with another key (a container started
    once without its volume) erased every visitor's saved chats. Each key's own place leaves
    the others untouched. The stores saved before under STORAGE_KEY are copied to it once by
    the page (`migration_script`)."""
    if not browser_secret:
        return STORAGE_KEY
    return f"{STORAGE_KEY}-{hashlib.sha256(browser_secret.encode()).hexdigest()[:12]}"


def migration_script(browser_secret: str | None) -> str:
    """A script for the page's head (it runs before gradio reads the storage): the store saved
    under the one key of earlier versions, copied to this server key's place if that is empty
    (a store of another key is then not opened there, and the original stays as it was)."""
    key = saved_chats_key(browser_secret)
    if key == STORAGE_KEY:
        return ""
    old, new = json.dumps(STORAGE_KEY), json.dumps(key)
    copy = f"const s=localStorage,o=s.getItem({old});if(o!==null&&s.getItem({new})===null)"
    return f"<script>try{{{copy}s.setItem({new},o)}}catch(e){{}}</script>"


@dataclass(frozen=True)
class PageOptions:
    title: str = "Qwen-VL Chat"
    banner: str | None = None
    panel: PanelOptions = field(default_factory=PanelOptions)
    # gradio's own secret for the saved chats' value in the browser's storage (app/ui/sealed.py:
    # it is public; what protects the chats is the server's seal). The same across restarts,
    # so that the browser finds its value again (None: a new one each start).
    browser_secret: str | None = None
    # Seconds gradio keeps an uploaded file, or its copy of one the app made (delete_cache).
    keep_files_s: float = 24 * 3600.0
    # The examples under the box: a question and its file (the trial draws its own).
    examples: tuple[tuple[str, Path], ...] = EXAMPLE_PROMPTS


class ChatPage:
    """The Blocks app for one set of handlers."""

    def __init__(self, handlers: ChatHandlers, saved: SavedChats, options: PageOptions) -> None:
        self.handlers = handlers
        self.saved = saved
        self.options = options
        self.panel_inputs: dict[str, Any] = {}
        self.api_inputs: dict[str, Any] = {}

    def build(self) -> gr.Blocks:
        keep = int(self.options.keep_files_s)
        # Looked at as often as files live, but at least hourly.
        delete_cache = (max(1, min(keep, 3600)), max(1, keep))
        with gr.Blocks(
            title=self.options.title, fill_height=True, delete_cache=delete_cache
        ) as demo:
            self._render_header()
            self._render_sidebar()
            self._render_chatbot_area()
            self._render_footer()
            self._render_api()
            self._setup_question_keeping()
            self._setup_events(demo)
            self._setup_saved_chats(demo)
            self._setup_kept_settings(demo)
            if self.options.banner:
                demo.load(self._banner, None, self.banner, **QUIET)
        for component in (
            self.chatbot,
            self.box,
            self.api_message,
            self.api_history,
            *self.api_files,
        ):
            refuse_url_fetches(component)
        return demo

    # --- areas ----------------------------------------------------------------------------

    def _render_header(self) -> None:
        gr.Markdown(f"## {self.options.title}", elem_id="title")
        if self.options.banner:
            self.banner = gr.HTML(self._banner())

    def _banner(self, request: gr.Request | None = None) -> str:
        """The notices in the asker's language (set again on load: the page is built before
        anyone asks): one line (a phone's first screen must hold the box), the whole text a
        click away."""
        if not self.options.banner:
            return ""
        text = html.escape(in_language(self.options.banner, language_of(request)))
        return f"<details id='banner'><summary>{text}</summary>{text}</details>"

    def _render_sidebar(self) -> None:
        """Saved chats, kept in this browser only: the list, new, rename, delete, export, import."""
        self.store = gr.BrowserState(
            "",
            storage_key=saved_chats_key(self.options.browser_secret),
            secret=self.options.browser_secret,
        )
        with gr.Sidebar(label=word("chats"), open=False, elem_id="chats"):
            self.new_btn = gr.Button(
                word("new_chat"), elem_id="new_chat", size="sm", variant="primary"
            )
            self.chat_list = gr.Radio(choices=[], label=word("saved_here"), elem_id="chat_list")
            self.rename_box = gr.Textbox(
                placeholder=word("rename_placeholder"),
                show_label=False,
                elem_id="rename",
                submit_btn=word("rename"),
            )
            self.delete_btn = gr.Button(word("delete_chat"), elem_id="delete_chat", size="sm")
            with gr.Row():
                self.export_json_btn = gr.Button(
                    word("export_json"), elem_id="export_json", size="sm"
                )
                self.export_md_btn = gr.Button(word("export_md"), elem_id="export_md", size="sm")
            # Never shown: an export downloads at once (DOWNLOAD_JS clicks its link).
            self.export_file = gr.File(label="Download", elem_id="export_file", interactive=False)
            self.delete_confirmed = gr.Checkbox(visible=False)
            self.branch_asked = gr.Checkbox(visible=False)  # set by the page's script (a Branch)
            self.import_btn = gr.UploadButton(
                word("import_json"), file_types=[".json"], elem_id="import_chat", size="sm"
            )

    def _render_chatbot_area(self) -> None:
        self.chatbot = gr.Chatbot(
            label=word("chat"),
            # Its label's badge sat over the top message (and the welcome, on a phone).
            show_label=False,
            elem_id="chatbot",
            placeholder=word("welcome"),  # what the empty chat says: what to do, and how
            # The examples in the empty chat: on the first screen, at 1366x900 and on a phone
            # (under the box, they started below the fold). A click fills the box.
            examples=self._chat_examples() or None,
            height=560,
            latex_delimiters=LATEX,
            sanitize_html=True,
            render_markdown=True,
            editable="user",
        )
        # A question with files is edited in the box (gradio edits text alone in place):
        # where its turn starts while it is, and the note saying so, with a way out.
        self.editing = gr.State(None)
        self.edit_asked = gr.Checkbox(visible=False)  # set by the page's script (start_edit)
        with gr.Row(visible=False, elem_id="editing", equal_height=False) as self.edit_row:
            gr.Markdown(word("editing_note"))
            self.cancel_edit_btn = gr.Button(
                word("cancel_edit"), elem_id="cancel_edit", size="sm", scale=0, min_width=140
            )
        self.box = gr.MultimodalTextbox(
            placeholder=word("box_placeholder"),
            file_count="multiple",
            file_types=["image", "video", ".pdf"],
            sources=["upload"],
            show_label=False,
            elem_id="input",
            submit_btn=word("send"),
            stop_btn=False,
        )
        # Right under the box, in one row even on a phone (seen there: stacked under the
        # examples, they were four screens away from it).
        with gr.Row(equal_height=True):
            self.regenerate_btn = gr.Button(
                word("regenerate"), elem_id="regenerate", size="sm", min_width=80
            )
            self.undo_btn = gr.Button(word("undo"), elem_id="undo", size="sm", min_width=80)
            self.clear_btn = gr.Button(word("clear"), elem_id="clear", size="sm", min_width=80)
        gr.Markdown(word("keys_help"), elem_id="keys")
        self._render_camera()

    def _render_camera(self) -> None:
        # A photo (or a short clip) from the phone's or laptop's camera goes into the box, as
        # an upload would: the same media path reads it when the message is sent.
        with gr.Accordion(word("camera"), open=False, elem_id="camera"), gr.Row():
            self.camera_photo = gr.Image(
                sources=["webcam"],
                type="filepath",
                label=word("take_photo"),
                elem_id="camera_photo",
            )
            # Kept as recorded: gradio mirrors a clip, and drops its sound, with the ffmpeg
            # program, which this app does not need (it reads video with PyAV) and a user's
            # machine may lack; the model ignores sound anyway.
            self.camera_clip = gr.Video(
                sources=["webcam"],
                label=word("record_clip"),
                elem_id="camera_clip",
                include_audio=True,
                webcam_options=gr.WebcamOptions(mirror=False),
            )

    def _present_examples(self) -> list[tuple[str, Path]]:
        """The examples whose file is there (the empty chat's and the footer's)."""
        return [(text, path) for text, path in self.options.examples if path.is_file()]

    def _chat_examples(self) -> list[ExampleMessage]:
        """The examples as the empty chat shows them: the question, its file, and the picture
        itself as the icon where it is one."""
        examples: list[ExampleMessage] = []
        for text, path in self._present_examples():
            example = ExampleMessage(text=text, files=[str(path)], display_text=text)
            if path.suffix.lower() in PICTURE_SUFFIXES:
                example["icon"] = str(path)
            examples.append(example)
        return examples

    def _render_footer(self) -> None:
        examples = self._present_examples()
        if examples:
            gr.Examples(
                examples=[{"text": text, "files": [str(path)]} for text, path in examples],
                inputs=[self.box],
                label=word("examples"),
                examples_per_page=4,
                # The question then put in the page's language (the page shows it so).
                fn=self.handlers.example_in_language,
                outputs=[self.box],
                run_on_click=True,
                cache_examples=False,
                api_visibility="private",
            )
        by_name = {f.name: f for f in FIELDS}
        made = {}
        with gr.Accordion(word("settings"), open=False, elem_id="settings"):
            for row in ROWS:
                with gr.Row():
                    for name in row:
                        made[name] = by_name[name].component(self.options.panel)
        # In the fields' own order: the page's events take them in that order, after their
        # positional inputs (what a script driving the page's endpoints sends).
        self.panel_inputs = {name: made[name] for name in FIELD_NAMES}
        self.settings_store = gr.BrowserState(
            {}, storage_key=SETTINGS_KEY, secret=self.options.browser_secret
        )

    def _render_api(self) -> None:
        """Hidden inputs give `/chat` its typed, upload-checked parameters."""
        with gr.Column(visible=False):
            self.api_message = gr.MultimodalTextbox(file_count="multiple", label="message")
            self.api_history = gr.Chatbot(value=None, label="history")
            worded_api_inputs(self.api_message, self.api_history)
            self.api_inputs = {f.name: f.api_component() for f in FIELDS}
            self.api_reply = gr.Textbox(label="reply")
            self.api_trigger = gr.Button(visible=False)
            self.api_text = gr.Textbox(label="text")
            self.api_files = [gr.File(label=f"file_{i}") for i in range(1, 5)]
            self.api_ask = gr.Button(visible=False)

    # --- events ---------------------------------------------------------------------------

    def _setup_events(self, demo: gr.Blocks) -> None:
        h = self.handlers
        # The page's own events are "undocumented": off the API page, but a script (and the
        # tests) can drive a multi-turn session exactly as the page does.
        page: dict[str, Any] = {
            "api_visibility": "undocumented",
            "inputs_kwargs": self.panel_inputs,
            **GENERATING,
        }
        chat_io = ([self.chatbot], [self.chatbot, self.box])
        self._setup_editing_in_the_box()
        # While a reply streams, Regenerate and Undo wait (before: Regenerate was ignored, Undo
        # took the question back and left the reply; with Esc after, the reply was lost).
        # Clear stops the reply and empties the chat: one clear thing, kept on offer.
        waiting = [self.regenerate_btn, self.undo_btn]
        for trigger in (self.box.submit, self.regenerate_btn.click, self.chatbot.edit):
            trigger(h.hold_buttons, None, waiting, **QUIET)
        send = self.box.submit(
            h.respond,
            [self.box, self.chatbot, self.editing],
            [self.box, self.chatbot],
            api_name="ui_send",
            **page,
        )
        send.then(h.end_edit, None, [self.editing, self.edit_row], **QUIET)
        regenerate = self.regenerate_btn.click(
            h.regenerate, *chat_io, api_name="ui_regenerate", **page
        )
        edit = self.chatbot.edit(h.edit, *chat_io, **page)
        self.generating = (send, regenerate, edit)
        for event in self.generating:  # runs after success, failure or Stop alike
            event.then(h.idle, None, self.box, queue=False, api_visibility="private")
            event.then(h.release_buttons, None, waiting, **QUIET)
        # Stop sets this session's cancel events: the reply ends as usual, partial text and
        # stats kept (no "cancelled" event state in the page).
        self.box.stop(h.stop, None, self.box, **QUIET)
        for capture in (self.camera_photo, self.camera_clip):
            capture.change(h.add_capture, [capture, self.box], [self.box, capture], **QUIET)
        demo.unload(h.unload)
        undo = self.undo_btn.click(
            h.undo,
            [self.chatbot, self.box],
            chat_io[1],
            api_name="ui_undo",
            api_visibility="undocumented",
            queue=False,
        )
        clear = self.clear_btn.click(h.clear, None, chat_io[1], **QUIET)
        bin_ = self.chatbot.clear(h.clear, None, chat_io[1], **QUIET)  # the chatbot's own bin
        self.changing = (*self.generating, undo, clear, bin_)
        for changed in (regenerate, edit, undo, clear, bin_):  # an edit in the box is over
            changed.then(h.end_edit, None, [self.editing, self.edit_row], **QUIET)
        self._setup_api()

    def _setup_editing_in_the_box(self) -> None:
        """Edit on a question with files puts it in the box (the page's script clicks the
        question for it: gradio's select); Cancel, or Send, ends that. The note hides as Send
        is pressed (set up before the reply's own listener, it runs first)."""
        h = self.handlers
        self.chatbot.select(
            h.start_edit,
            [self.chatbot, self.box, self.edit_asked],
            [self.box, self.editing, self.edit_row],
            js=EDIT_ASKED_JS,
            **QUIET,
        )
        self.cancel_edit_btn.click(h.end_edit, None, [self.editing, self.edit_row], **QUIET)
        self.chatbot.example_select(h.take_example, [self.box], [self.box], **QUIET)
        self.box.change(None, [self.box], None, js=NAME_ATTACHMENTS_JS, **QUIET)
        self.box.submit(lambda: gr.update(visible=False), None, [self.edit_row], **QUIET)

    def _setup_api(self) -> None:
        """/chat for scripts (a message and its history), /ask for agents (MCP)."""
        h = self.handlers
        chat = with_panel_parameters(h.chat)
        # gradio's MCP server makes each public endpoint a tool, but states no schema it can
        # check for a list of files (a box's files, a history's): agents get /ask, a question
        # and up to four files each in a plain file input, and /chat stays for scripts.
        chat._mcp_type = "not a tool"  # type: ignore[attr-defined]
        api: dict[str, Any] = {"inputs_kwargs": self.api_inputs, **GENERATING}
        self.api_trigger.click(
            chat, [self.api_message, self.api_history], [self.api_reply], api_name="chat", **api
        )
        self.api_ask.click(
            with_panel_parameters(h.ask),
            [self.api_text, *self.api_files],
            [self.api_reply],
            api_name="ask",
            **api,
        )

    def _setup_kept_settings(self, demo: gr.Blocks) -> None:
        """The settings persist in the browser, as the chats do: each change is kept, and a
        new page starts with them (checked as any input is: it is the browser's to change)."""
        widgets = list(self.panel_inputs.values())

        def keep(*values: Any) -> dict[str, Any]:
            return dict(zip(FIELD_NAMES, values, strict=True))

        def restore(saved: Any) -> tuple[Any, ...]:
            return tuple(f.restored(saved, self.options.panel) for f in FIELDS)

        demo.load(restore, [self.settings_store], widgets, **QUIET)
        for widget in widgets:
            widget.change(keep, widgets, [self.settings_store], **QUIET)

    def _setup_question_keeping(self) -> None:
        """The question is kept in the browser's list before its reply. The page runs the
        listeners of one trigger one after another, in the order they were set up (a queued
        one to its end): these come first, so that each reads the chat before the reply
        changes it and is done before the reply begins."""
        s, store, chatbot = self.saved, self.store, self.chatbot
        kept: dict[str, Any] = {"outputs": [store, self.chat_list], **QUIET}
        self.box.submit(s.keep_sent, [self.box, chatbot, self.editing, store], **kept)
        self.regenerate_btn.click(s.keep_regenerated, [chatbot, store], **kept)
        chatbot.edit(s.keep_edited, [chatbot, store], **kept)

    def _setup_saved_chats(self, demo: gr.Blocks) -> None:
        """Every change of the chat is kept in the browser's list; the list's own events."""
        s, store, chat_list, chatbot = self.saved, self.store, self.chat_list, self.chatbot
        demo.load(s.restore, [store], [store, chat_list, chatbot], **QUIET)
        for event in self.changing:
            event.then(s.persist, [chatbot, store], [store, chat_list], **QUIET)
        # Opening another chat first stops a reply still running in this one.
        leave = self.handlers.leave
        self.new_btn.click(leave, None, None, **QUIET).then(
            s.new_chat, [store], [store, chat_list, chatbot], **SAVED_CHATS
        )
        chat_list.input(leave, None, None, **QUIET).then(
            s.open, [chat_list, store], [store, chatbot], **SAVED_CHATS
        )
        self.delete_btn.click(
            self._delete,
            [self.delete_confirmed, store],
            [store, chat_list, chatbot],
            js=CONFIRM_DELETE_JS,
            **SAVED_CHATS,
        )
        self.rename_box.submit(
            s.rename,
            [self.rename_box, chatbot, store],
            [store, chat_list, self.rename_box],
            **SAVED_CHATS,
        )
        for button, export in (
            (self.export_json_btn, s.export_json),
            (self.export_md_btn, s.export_markdown),
        ):
            button.click(export, [chatbot, store], [self.export_file], **SAVED_CHATS).then(
                None, None, None, js=DOWNLOAD_JS, **QUIET
            )
        self.chatbot.like(s.feedback, [chatbot, store], [store], **SAVED_CHATS)
        self.chatbot.select(
            self._branch,
            [chatbot, store, self.box, self.branch_asked],
            [store, chat_list, chatbot, self.box, self.editing, self.edit_row],
            js=BRANCH_ASKED_JS,
            **SAVED_CHATS,
        )
        self.import_btn.upload(leave, None, None, **QUIET).then(
            s.import_json, [self.import_btn, store], [store, chat_list, chatbot], **SAVED_CHATS
        )

    def _branch(
        self,
        history: list | None,
        sealed: Any,
        box: dict | None,
        asked: bool,
        event: gr.SelectData,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Continue in a new chat from the message clicked, where its Branch button asked (a
        click on a message to select its text does nothing): a reply still running here stops,
        an edit in the box ends."""
        if not asked:
            return tuple(gr.skip() for _ in range(6))
        self.handlers.leave(request)
        branched = self.saved.branch(history, sealed, box, event.index, request)
        return (*branched, *self.handlers.end_edit())

    def _delete(self, confirmed: bool, sealed: Any, request: gr.Request) -> Any:
        """Delete the chat open once the person said so (CONFIRM_DELETE_JS asked): a reply
        still running in it stops; the next chat opens."""
        if not confirmed:
            return gr.skip(), gr.skip(), gr.skip()
        self.handlers.leave(request)
        return self.saved.delete(sealed, request)
