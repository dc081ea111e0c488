import pytest

from app.engines.base import Usage
from app.render import format_stats, split_reasoning

REPLY = "<think>\nLet me look at the picture.\n</think>\n\nA red square."


def test_plain_reply_is_all_answer():
    split = split_reasoning("Just an answer.")
    assert (split.reasoning, split.answer, split.thinking) == ("", "Just an answer.", False)


def test_reply_with_both_tags():
    split = split_reasoning(REPLY)
    assert split.reasoning == "Let me look at the picture."
    assert split.answer == "A red square."
    assert not split.thinking


def test_opening_tag_from_the_chat_template():
    split = split_reasoning("Thinking hard.\n</think>\n\nDone.", opens_in_reasoning=True)
    assert (split.reasoning, split.answer) == ("Thinking hard.", "Done.")


def test_unclosed_reasoning_is_still_thinking():
    split = split_reasoning("<think>still going")
    assert split.thinking and split.reasoning == "still going" and split.answer == ""


@pytest.mark.parametrize("opens", [False, True])
def test_streaming_across_every_chunk_boundary_never_leaks_a_tag(opens):
    text = REPLY if not opens else REPLY.removeprefix("<think>")
    for cut in range(len(text) + 1):
        split = split_reasoning(text[:cut], opens_in_reasoning=opens)
        # What is shown is always a prefix of the final text: no tag, or half a tag, leaks.
        assert "A red square.".startswith(split.answer)
        assert "Let me look at the picture.".startswith(split.reasoning)
        opened = opens or cut >= len("<think>")
        assert split.thinking == (opened and cut < text.index("</think>") + len("</think>"))


def test_stats_line():
    line = format_stats(Usage(100, 65, 40, first_token_s=0.05, total_s=1.05))
    assert (
        line == "first token 50 ms · 65 tokens · 64.0 tok/s · 40 visual tokens in 100 prompt tokens"
    )


def test_the_context_meter_counts_the_conversation_against_the_engines_bound():
    line = format_stats(Usage(1200, 34, 40, first_token_s=0.05, total_s=1.05, context_tokens=32768))
    assert line.endswith("context 1,234 of 32,768 tokens")
    assert "上下文 1,234/32,768 个 token" in line.chinese
    remote = format_stats(
        Usage(100, 20, None, first_token_s=None, total_s=1.0, context_tokens=8192)
    )
    assert remote.endswith("100 prompt tokens · context 120 of 8,192 tokens")
    unknown = format_stats(Usage(100, 20, None, first_token_s=None, total_s=1.0))
    assert "context" not in unknown


def test_the_context_meter_warns_before_a_question_would_not_fit():
    roomy = format_stats(Usage(700, 99, None, first_token_s=None, total_s=1.0, context_tokens=1000))
    assert "may not fit" not in roomy
    full = format_stats(Usage(700, 100, None, first_token_s=None, total_s=1.0, context_tokens=1000))
    assert full.endswith(
        "context 800 of 1,000 tokens · the next question may not fit: start a new chat (Alt+N)"
    )
    assert "下一个问题可能放不下" in full.chinese
