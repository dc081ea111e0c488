"""Token ids to text as soon as each token decodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TokenStreamer:
    """A reply's tokens, handed over as text as soon as each token decodes.

    transformers' TextStreamer holds text back to the next space; here a token's text goes out
    at once, except a character split across tokens, held until it is whole. Decoding is
    incremental (a short window of ids, as vLLM's detokenizer does), so the cost per token stays
    flat however long the reply grows. Decoded with special tokens; the caller filters them.
    """

    def __init__(
        self, tokenizer: Any, on_text: Callable[[str], None], on_token: Callable[[int], None]
    ) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.on_token = on_token
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def put_token(self, token: int) -> None:
        self.on_token(1)
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._hand_over(text[len(prefix) :])
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)

    def end(self) -> None:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix):
            self._hand_over(text[len(prefix) :])
        self.prefix_offset = self.read_offset = len(self.ids)

    def _hand_over(self, text: str) -> None:
        """`text` without the replacement character: bytes that never became a character
        (a model's stray byte token, the reply cut mid-character) show as nothing, not "�"."""
        text = text.replace("\ufffd", "")
        if text:
            self.on_text(text)
