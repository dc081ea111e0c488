"""The prompt bound: a conversation the model would read past `max_prompt_tokens` is refused
with a message, its text before any media is read, and again with its media counted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.engines.base import EngineError, Turn
from app.engines.local.generation.prompt import Prompt, too_long_with_media
from app.said import say

# Text is counted against the bound in pieces of this many characters.
TEXT_PIECE_CHARS = 1 << 16


class PromptBound:
    """At most `max_tokens` tokens in one prompt, counted with `tokenizer`."""

    def __init__(self, max_tokens: int, tokenizer: Any) -> None:
        self.max_tokens = max_tokens
        self._tokenizer = tokenizer

    def check_text(self, turns: Sequence[Turn]) -> None:
        """Refuse a conversation whose text alone is over the bound. The text is tokenized a
        piece at a time and counting stops once past the bound: a 30 MB message costs what a
        prompt at the bound costs, not 30 MB of tokens."""
        text = "\n".join(turn.text for turn in turns)
        limit = self.max_tokens
        if len(text.encode()) <= limit:  # no token is shorter than a byte
            return
        tokens = 0
        for start in range(0, len(text), TEXT_PIECE_CHARS):
            piece = text[start : start + TEXT_PIECE_CHARS]
            tokens += len(self._tokenizer(piece, add_special_tokens=False)["input_ids"])
            if tokens > limit:
                raise EngineError(
                    say(
                        f"This conversation's text is over {limit:,} tokens, more than this app "
                        f"reads in one prompt ({limit:,} tokens, --max-prompt-tokens). Shorten "
                        "the message or start a new chat.",
                        f"这段对话的文字超过 {limit:,} 个 token，超过了本应用一次能读取的上限"
                        f"（{limit:,} 个 token，--max-prompt-tokens）。请缩短消息或开始新对话。",
                    )
                )

    def check_prompt(self, prompt: Prompt) -> None:
        """Refuse a prompt that, with its images and videos, is over the bound."""
        if len(prompt.ids) > self.max_tokens:
            raise EngineError(too_long_with_media(len(prompt.ids), self.max_tokens))
