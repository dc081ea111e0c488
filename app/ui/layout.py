"""The page, built area by area (as gradio's own ChatInterface is), then its events wired.

`ChatPage.build()` renders the header, the chat area, the footer (buttons and the settings
panel) and the hidden inputs of the `/chat` API, then sets up every event with the same
`panel_inputs`: the settings reach each handler as keyword arguments named after their fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.handlers import ChatHandlers
from app.ui.panel import FIELD_NAMES, FIELDS, ROWS, PanelOptions, with_panel_parameters
from app.ui.safety import refuse_url_fetches

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
GENERATE = "generate"  # one concurrency group: every event that runs the model
# Requests of that group let in at once: they take turns on the model by user (app/turns.py);
# more wait in gradio's queue. Fewer than gradio's 40 worker threads, so that Stop, Clear and
# Undo always find one.
IN_ROTATION = 16
LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
EXAMPLE_PROMPTS = [
    ("Which quarter sold the most, and how much?", "chart.png"),
    ("Read the receipt: what is the total and what was bought?", "receipt.png"),
    ("Outline every item on the receipt with a box.", "receipt.png"),
    ("What happens in this clip, and when?", "ball.mp4"),
]


@dataclass(frozen=True)
class PageOptions:
    title: str = "Qwen-VL Chat"
    banner: str | None = None
    panel: PanelOptions = field(default_factory=PanelOptions)


class ChatPage:
    """The Blocks app for one set of handlers."""

    def __init__(self, handlers: ChatHandlers, options: PageOptions) -> None:
        self.handlers = handlers
        self.options = options
        self.panel_inputs: dict[str, Any] = {}
        self.api_inputs: dict[str, Any] = {}

    def build(self) -> gr.Blocks:
        with gr.Blocks(title=self.options.title, fill_height=True) as demo:
            self._render_header()
            self._render_chatbot_area()
            self._render_footer()
            self._render_api()
            self._setup_events(demo)
        for component in (self.chatbot, self.box, self.api_message, self.api_history):
            refuse_url_fetches(component)
        return demo

    # --- areas ----------------------------------------------------------------------------

    def _render_header(self) -> None:
        gr.Markdown(f"## {self.options.title}")
        if self.options.banner:
            gr.Markdown(f"**{self.options.banner}**", elem_id="banner")

    def _render_chatbot_area(self) -> None:
        self.chatbot = gr.Chatbot(
            label="Chat",
            elem_id="chatbot",
            height=560,
            latex_delimiters=LATEX,
            sanitize_html=True,
            render_markdown=True,
        )
        self.box = gr.MultimodalTextbox(
            placeholder="Ask about your images and videos (drop, paste or upload several)",
            file_count="multiple",
            file_types=["image", "video", ".pdf"],
            sources=["upload"],
            show_label=False,
            elem_id="input",
            submit_btn="Send",
            stop_btn=False,
        )
        if EXAMPLES.is_dir():
            gr.Examples(
                examples=[
                    {"text": text, "files": [str(EXAMPLES / name)]}
                    for text, name in EXAMPLE_PROMPTS
                ],
                inputs=[self.box],
                label="Examples (click one to fill the box)",
                examples_per_page=4,
            )

    def _render_footer(self) -> None:
        with gr.Row():
            self.regenerate_btn = gr.Button("Regenerate", elem_id="regenerate", size="sm")
            self.undo_btn = gr.Button("Undo last turn", elem_id="undo", size="sm")
            self.clear_btn = gr.Button("Clear", elem_id="clear", size="sm")
        by_name = {f.name: f for f in FIELDS}
        made = {}
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            for row in ROWS:
                with gr.Row():
                    for name in row:
                        made[name] = by_name[name].component(self.options.panel)
        # In the fields' own order: the page's events take them in that order, after their
        # positional inputs (what a script driving the page's endpoints sends).
        self.panel_inputs = {name: made[name] for name in FIELD_NAMES}

    def _render_api(self) -> None:
        """Hidden inputs give `/chat` its typed, upload-checked parameters."""
        with gr.Column(visible=False):
            self.api_message = gr.MultimodalTextbox(file_count="multiple", label="message")
            self.api_history = gr.Chatbot(value=None, label="history")
            self.api_inputs = {f.name: f.api_component() for f in FIELDS}
            self.api_reply = gr.Textbox(label="reply")
            self.api_trigger = gr.Button(visible=False)

    # --- events ---------------------------------------------------------------------------

    def _setup_events(self, demo: gr.Blocks) -> None:
        h = self.handlers
        generate: dict[str, Any] = {"concurrency_limit": IN_ROTATION, "concurrency_id": GENERATE}
        # The page's own events are "undocumented": off the API page, but a script (and the
        # tests) can drive a multi-turn session exactly as the page does.
        page: dict[str, Any] = {
            "api_visibility": "undocumented",
            "inputs_kwargs": self.panel_inputs,
        }
        send = self.box.submit(
            h.respond,
            [self.box, self.chatbot],
            [self.box, self.chatbot],
            api_name="ui_send",
            **page,
            **generate,
        )
        regenerate = self.regenerate_btn.click(
            h.regenerate,
            [self.chatbot],
            [self.chatbot, self.box],
            api_name="ui_regenerate",
            **page,
            **generate,
        )
        for event in (send, regenerate):  # runs after success, failure or Stop alike
            event.then(h.idle, None, self.box, queue=False, api_visibility="private")
        # Stop sets this session's cancel events: the reply ends as usual, partial text and
        # stats kept (no "cancelled" event state in the page).
        self.box.stop(h.stop, None, self.box, api_visibility="private", queue=False)
        demo.unload(h.unload)
        self.undo_btn.click(
            h.undo,
            [self.chatbot],
            [self.chatbot, self.box],
            api_name="ui_undo",
            api_visibility="undocumented",
            queue=False,
        )
        self.clear_btn.click(
            h.clear, None, [self.chatbot, self.box], api_visibility="private", queue=False
        )
        self.api_trigger.click(
            with_panel_parameters(h.chat),
            [self.api_message, self.api_history],
            [self.api_reply],
            inputs_kwargs=self.api_inputs,
            api_name="chat",
            **generate,
        )
