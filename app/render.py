"""Shape a raw reply for display: reasoning apart from the answer, and the stats line.

Pure functions and a small streaming state machine; no gradio, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engines.base import Usage

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@dataclass
class ReasoningSplit:
    reasoning: str
    answer: str
    # True while the reply is still inside the reasoning block.
    thinking: bool


def split_reasoning(text: str, opens_in_reasoning: bool = False) -> ReasoningSplit:
    """Split generated `text` into reasoning and answer.

    `opens_in_reasoning` says the prompt itself ended with `<think>` (the chat template opened
    it), so the text starts inside the block and only `</think>` is generated. A reply that never
    opens a block is all answer. A tag cut in half at the end of a streamed chunk is held back
    (not shown) until the next chunk tells what it is.
    """
    body = text
    if not opens_in_reasoning:
        stripped = body.lstrip()
        if stripped.startswith(OPEN_TAG):
            body = stripped[len(OPEN_TAG) :]
        elif OPEN_TAG.startswith(stripped) and stripped:
            return ReasoningSplit("", "", thinking=False)  # maybe the start of "<think>"
        else:
            return ReasoningSplit("", text, thinking=False)
    if CLOSE_TAG in body:
        reasoning, answer = body.split(CLOSE_TAG, 1)
        return ReasoningSplit(reasoning.strip(), answer.lstrip("\n"), thinking=False)
    for cut in range(len(CLOSE_TAG) - 1, 0, -1):
        if body.endswith(CLOSE_TAG[:cut]):
            body = body[:-cut]
            break
    return ReasoningSplit(body.strip(), "", thinking=True)


def format_stats(usage: Usage) -> str:
    """One short line: time to first token, tokens, speed, visual tokens."""
    parts = []
    if usage.first_token_s is not None:
        parts.append(f"first token {usage.first_token_s * 1000:.0f} ms")
    parts.append(f"{usage.completion_tokens} tokens")
    gen_time = usage.total_s - (usage.first_token_s or 0.0)
    if usage.completion_tokens > 1 and gen_time > 0:
        parts.append(f"{(usage.completion_tokens - 1) / gen_time:.1f} tok/s")
    if usage.visual_tokens is None:
        parts.append(f"{usage.prompt_tokens} prompt tokens")
        return " · ".join(parts)
    visual = f"{usage.visual_tokens} visual tokens in {usage.prompt_tokens} prompt tokens"
    if usage.visual_by_attachment:
        visual += " (" + ", ".join(f"{n}: {t}" for n, t in usage.visual_by_attachment) + ")"
    parts.append(visual)
    return " · ".join(parts)
