"""The /chat API's two inputs, a message and a history, whose wrong shapes are said in words.

gradio checks an event's values against each input's data model before the app sees them. A
value of the wrong shape (a string for the message, numbers in the history, a message without
content) failed there, and a script saw only "The upstream Gradio app has raised an exception"
with `error: null`. Here the two inputs' models raise `gr.Error` with what was expected and
what was wrong; a history's plain-text contents are taken as text parts, and a history of more
messages than any prompt could hold is refused uncounted.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gradio as gr
import pydantic
from gradio.components.chatbot import ChatbotDataMessages
from gradio.components.multimodal_textbox import MultimodalData

MESSAGE_SHAPE = (
    'The message must be {"text": "...", "files": [...]}: the text a string, the files uploaded '
    "files or data: URLs"
)
HISTORY_SHAPE = (
    'The history must be a list of chat messages, each {"role": "user" or "assistant", '
    '"content": text, or a list of {"type": "text", "text": ...} and {"type": "file", '
    '"file": ...}}'
)
# More messages than any conversation a model could take in (a 50,000-message history cost
# +280 MB of checks and conversions before the prompt's bound refused it): refused uncounted.
MOST_HISTORY_MESSAGES = 4096


def _first_problem(err: pydantic.ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "the value"
    return f"{where}: {first.get('msg', 'not valid')}"


class _Worded:
    """A data model whose failed check is a `gr.Error` naming the shape expected."""

    shape: ClassVar[str]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, *args, **kwargs)  # type: ignore[misc]
        except pydantic.ValidationError as err:
            said = f"{cls.shape} ({_first_problem(err)})."
            raise gr.Error(said, print_exception=False) from err


class MessageData(_Worded, MultimodalData):
    shape: ClassVar[str] = MESSAGE_SHAPE
    model_config = pydantic.ConfigDict(title="MultimodalData")


class HistoryData(_Worded, ChatbotDataMessages):
    shape: ClassVar[str] = HISTORY_SHAPE
    model_config = pydantic.ConfigDict(title="ChatbotDataMessages")

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, list) and len(obj) > MOST_HISTORY_MESSAGES:
            raise gr.Error(
                f"The history has {len(obj):,} messages; this app takes at most "
                f"{MOST_HISTORY_MESSAGES:,}. Send the recent turns only.",
                print_exception=False,
            )
        return super().model_validate(with_text_parts(obj), *args, **kwargs)


def with_text_parts(history: Any) -> Any:
    """`history` with each message's plain-text content as one text part, the shape gradio's
    chat model takes (a script writes {"role": "user", "content": "Hi"}, as for any chat API)."""
    if not isinstance(history, list):
        return history
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]}
        if isinstance(m, dict) and isinstance(m.get("content"), str)
        else m
        for m in history
    ]


def worded_api_inputs(message: gr.MultimodalTextbox, history: gr.Chatbot) -> None:
    """The /chat inputs `message` and `history` check their values with the models above. (Set
    on the two components, not by subclassing them: gradio writes a stub file beside the
    module of every component class it sees defined.)"""
    message.data_model = MessageData
    history.data_model = HistoryData
