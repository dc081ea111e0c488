"""Render a reply for display: reasoning apart from the answer, drawings, errors, the stats line.

A `Reply` is what a request has produced so far; `render_reply` turns it into chatbot messages.
Everything but the answer's own text is marked display-only (a `metadata` title, or a file), so
it is never sent back to the model; the app's own words are in the reader's language
(app/said.py). Pure functions; no gradio, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from app.conversation import ERROR_MARK
from app.engines.base import Progress, PromptInfo, Usage
from app.said import ENGLISH, Said, in_language, joined, say

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


def format_stats(usage: Usage) -> Said:
    """One short line: time to first token, tokens, speed, visual tokens, cached tokens, and
    the context meter."""
    parts: list[str] = []
    if usage.first_token_s is not None:
        ms = f"{usage.first_token_s * 1000:.0f}"
        parts.append(say(f"first token {ms} ms", f"首个 token {ms} 毫秒"))
    n = usage.completion_tokens
    parts.append(say(f"{n} tokens", f"{n} 个 token"))
    gen_time = usage.total_s - (usage.first_token_s or 0.0)
    if usage.completion_tokens > 1 and gen_time > 0:
        parts.append(f"{(usage.completion_tokens - 1) / gen_time:.1f} tok/s")
    parts.append(format_prompt(usage))
    # A remote server's usage has no cached tokens: format_cached gives None there.
    notes = (format_cached(usage), format_context(usage))
    return joined(parts + [note for note in notes if note is not None])


def format_prompt(usage: Usage) -> Said:
    """`40 visual tokens in 100 prompt tokens (photo.jpg: 40)`, or the prompt's tokens alone
    where the engine cannot tell its visual ones."""
    prompt = usage.prompt_tokens
    if usage.visual_tokens is None:
        return say(f"{prompt} prompt tokens", f"提示词 {prompt} 个 token")
    by_file = ""
    if usage.visual_by_attachment:
        by_file = " (" + ", ".join(f"{n}: {t}" for n, t in usage.visual_by_attachment) + ")"
    seen = usage.visual_tokens
    return say(
        f"{seen} visual tokens in {prompt} prompt tokens{by_file}",
        f"提示词 {prompt} 个 token，其中视觉 {seen} 个{by_file}",
    )


# From this share of the context on, the stats line warns that the next question may not fit.
CONTEXT_WARNING_SHARE = 0.8


def format_context(usage: Usage) -> Said | None:
    """`context 1,234 of 32,768 tokens`: what the conversation now holds (this prompt and this
    reply, which the next question carries) against the longest prompt the engine reads; past
    CONTEXT_WARNING_SHARE, a warning that the next question may not fit."""
    if not usage.context_tokens:
        return None
    used, most = usage.prompt_tokens + usage.completion_tokens, usage.context_tokens
    meter = say(f"context {used:,} of {most:,} tokens", f"上下文 {used:,}/{most:,} 个 token")
    if used < CONTEXT_WARNING_SHARE * most:
        return meter
    warning = say(
        "the next question may not fit: start a new chat (Alt+N)",
        "下一个问题可能放不下：请开始新对话（Alt+N）",
    )
    return joined([meter, warning])


def format_cached(usage: Usage) -> Said | None:
    """`1009 of 1027 prompt tokens cached`, where the engine has a prefix cache."""
    if usage.cached_tokens is None:
        return None
    cached, prompt = usage.cached_tokens, usage.prompt_tokens
    return say(
        f"{cached} of {prompt} prompt tokens cached",
        f"已缓存 {cached}/{prompt} 个提示词 token",
    )


def format_progress(progress: Progress, elapsed_s: float, now: float) -> Said:
    """The waiting bubble: `Reading office.jpg · 972 visual tokens · 12 s`, then, where earlier
    requests measured the speed, `about 30 s left`. `elapsed_s` counts from the request's start,
    `now` is `time.perf_counter()`."""
    parts = [progress.stage, seconds(elapsed_s)]
    if progress.estimate_s is not None and progress.started is not None:
        left = progress.estimate_s - (now - progress.started)
        if left >= 1:
            parts.append(say(f"about {left:.0f} s left", f"约剩 {left:.0f} 秒"))
        else:
            parts.append(say("almost done", "即将完成"))
    return joined(parts)


def seconds(elapsed_s: float) -> Said:
    return say(f"{elapsed_s:.0f} s", f"{elapsed_s:.0f} 秒")


STOPPED = say("stopped", "已停止")
THINKING = say("Thinking", "思考过程")
# Saved with a question before its reply (app/ui/saved.py): what a restart mid-reply leaves.
INTERRUPTED = say(
    "Interrupted: the app stopped before this reply was finished. Press Regenerate to ask again.",
    "已中断：应用在回答完成前停止了。按“重新生成”再问一次。",
)


@dataclass
class Reply:
    """A reply being streamed: the raw text, and what the display shows of it."""

    raw: str = ""
    prompt: PromptInfo = field(default_factory=PromptInfo)
    waiting: str | None = None  # what is happening before the first token
    usage: Usage | None = None
    stats: str | None = None
    error: str | None = None
    finished: bool = False
    annotated: str | None = None  # an image with the reply's boxes drawn on it
    cleared: bool = False  # the user cleared the chat while this reply was streaming
    detached: bool = False  # the user opened another chat while this reply was streaming

    def answer(self) -> str:
        return split_reasoning(self.raw, self.prompt.opens_in_reasoning).answer


def _note(title: str, status: str | None = None) -> dict:
    """A display-only message: a title (seen without opening anything) and no content."""
    metadata = {"title": title} | ({"status": status} if status else {})
    return {"role": "assistant", "content": "", "metadata": metadata}


def interrupted_note(language: str = ENGLISH) -> dict:
    """The note that stands for a reply the app did not finish (an error's, so that the
    question is asked again by Regenerate and left out once another follows)."""
    return _note(f"{ERROR_MARK} {in_language(INTERRUPTED, language)}")


def render_reply(reply: Reply, language: str = ENGLISH) -> list[dict]:
    """The chatbot messages that show `reply`: thinking, answer, drawing, error, stats; the
    app's own words in `language` (the model's are the model's)."""
    words = partial(in_language, language=language)
    split = split_reasoning(reply.raw, reply.prompt.opens_in_reasoning)
    out: list[dict] = []
    if reply.waiting and not reply.raw and not reply.finished:
        out.append(_note(f"⏳ {words(reply.waiting)}", "pending"))
    if split.reasoning or split.thinking:
        status = "pending" if split.thinking and not reply.finished else "done"
        out.append(
            {
                "role": "assistant",
                "content": split.reasoning,
                "metadata": {"title": words(THINKING), "status": status},
            }
        )
    if split.answer:
        out.append({"role": "assistant", "content": split.answer})
    if reply.annotated:
        out.append({"role": "assistant", "content": {"path": reply.annotated}})
    if reply.error:
        out.append(_note(f"{ERROR_MARK} {words(reply.error)}"))
    if reply.stats:
        out.append(_note(words(reply.stats), "done"))
    return out
