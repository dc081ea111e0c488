"""The app's own messages in the chat (errors, progress, stats), in English and Simplified Chinese.

A message is written once where it arises, both languages side by side: `say(english, chinese)`.
It is a `str` (its English), so logs, the `/chat` API, exceptions and tests read it as before;
`in_language(text, language)` gives the Chinese to a reader whose browser asks for it. Text
that is not a `Said` (a library's error, a file name) reads the same in both. Pure; no gradio.
"""

from __future__ import annotations

ENGLISH = "en"
CHINESE = "zh-CN"


class Said(str):
    """An app message: the string itself is its English; `chinese` is its Simplified Chinese."""

    chinese: str

    def __new__(cls, english: str, chinese: str) -> Said:
        said = super().__new__(cls, english)
        said.chinese = chinese
        return said

    def __reduce__(self) -> tuple[type[Said], tuple[str, str]]:
        # Sent between processes (a media worker's error) with both languages.
        return Said, (str(self), self.chinese)


def say(english: str, chinese: str) -> Said:
    return Said(english, chinese)


def message(err: BaseException) -> str:
    """An exception's message, still bilingual where it was raised with a `Said`."""
    if len(err.args) == 1 and isinstance(err.args[0], Said):
        return err.args[0]
    return str(err)


def chinese(text: object) -> str:
    """`text` for a Chinese reader: a `Said`'s (or an exception raised with one) Chinese, any
    other text as it is."""
    if isinstance(text, BaseException):
        text = message(text)
    return text.chinese if isinstance(text, Said) else str(text)


def in_language(text: object, language: str) -> str:
    """`text` for a reader of `language` (ENGLISH or CHINESE)."""
    return chinese(text) if language == CHINESE else str(text)


def joined(parts: list[str], separator: str = " · ") -> Said:
    """Messages joined into one, each language with its own parts."""
    return Said(separator.join(parts), separator.join(chinese(part) for part in parts))


def language_of_header(accept_language: str | None) -> str:
    """The language of the app's messages for a browser's `Accept-Language` header: CHINESE
    where its most preferred language is any Chinese (the only Chinese table is Simplified,
    as the page's labels), else ENGLISH."""
    best, best_q = "", -1.0
    for item in (accept_language or "").split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > best_q:  # the first of equal weights wins, as browsers order them
            best, best_q = tag.lower(), q
    return CHINESE if best == "zh" or best.startswith("zh-") else ENGLISH
