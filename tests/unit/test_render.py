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
