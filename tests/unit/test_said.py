"""The app's own messages in both languages (app/said.py): which a browser gets, and that they
survive what they pass through (an exception, a worker process, the chat's rendering)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from app.engines.base import EngineError, Usage
from app.media import MediaError
from app.render import Reply, format_stats, render_reply
from app.said import CHINESE, ENGLISH, Said, chinese, in_language, joined, language_of_header, say
from app.said import message as message_of

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", CHINESE),
        ("zh", CHINESE),
        ("zh-TW", CHINESE),  # the one Chinese table is Simplified, as the page's labels
        ("en-US,en;q=0.9,zh-CN;q=0.8", ENGLISH),
        ("en;q=0.5, zh-CN;q=0.9", CHINESE),  # the weights, not the order
        ("fr-FR", ENGLISH),
        ("zhx", ENGLISH),
        ("", ENGLISH),
        (None, ENGLISH),
        ("zh-CN;q=abc, en", ENGLISH),  # a weight that is no number counts as none
    ],
)
def test_a_browser_gets_chinese_where_it_prefers_any_chinese(header, language):
    assert language_of_header(header) == language


def test_a_message_is_its_english_and_keeps_its_chinese_through_an_exception_and_a_pickle():
    said = say("photo.jpg: the file is empty (0 bytes)", "photo.jpg：文件是空的（0 字节）")
    assert said == "photo.jpg: the file is empty (0 bytes)"  # logs, the API, tests read this
    assert in_language(said, CHINESE) == "photo.jpg：文件是空的（0 字节）"
    assert in_language(said, ENGLISH) == str(said)
    err = EngineError(message_of(MediaError(said)))
    assert str(err) == said and chinese(err) == said.chinese
    back = pickle.loads(pickle.dumps(said))  # a media worker's error crosses a process
    assert isinstance(back, Said) and back.chinese == said.chinese
    assert chinese("PIL: cannot identify image") == "PIL: cannot identify image"  # not ours


def test_a_reply_renders_the_apps_words_in_the_readers_language():
    usage = Usage(100, 65, 40, first_token_s=0.05, total_s=1.05)
    reply = Reply(
        raw="<think>hm</think>Yes.",
        stats=joined([format_stats(usage), say("stopped", "已停止")]),
        error=say("Generation failed: X", "生成失败：X"),
        finished=True,
    )
    shown = {m["metadata"]["title"] for m in render_reply(reply, CHINESE) if "metadata" in m}
    assert "思考过程" in shown
    assert "⚠️ 生成失败：X" in shown
    stats = next(t for t in shown if "token" in t)
    assert "首个 token 50 毫秒" in stats and stats.endswith("已停止"), stats
    english = {m["metadata"]["title"] for m in render_reply(reply) if "metadata" in m}
    assert "Thinking" in english and any(t.startswith("first token 50 ms") for t in english)
    answer = [m["content"] for m in render_reply(reply, CHINESE) if "metadata" not in m]
    assert answer == ["Yes."]  # the model's words are the model's


ERRORS = {"EngineError", "MediaError", "PanelError", "Refused"}
# Their errors arise only while the app starts (loading the model), printed on the command line
# as one `error:` line for whoever started it: English, as the flags are.
START_UP = {"app/engines/local/loading/checkpoint.py", "app/engines/local/generation/internals.py"}


def test_every_message_raised_for_the_chat_is_written_in_both_languages():
    """An EngineError, MediaError, PanelError or a panel's Refused raised with a bare string
    (a literal or an f-string) would reach a Chinese page in English: each takes a `say(...)`,
    a helper returning one, or an error passed on."""
    bare = []
    for path in sorted(APP.rglob("*.py")):
        if str(path.relative_to(APP.parent)) in START_UP:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ERRORS):
                continue
            if node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr):
                bare.append(f"{path.relative_to(APP.parent)}:{node.lineno}")
    assert bare == []


def test_every_chinese_message_is_chinese():
    """Each `say(english, chinese)` in app/ with literal text has Chinese characters in its
    second half where its first has English words (a copy-pasted English one would not)."""
    untranslated = []
    for path in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "say"):
                continue
            if not isinstance(node.args[0], ast.Constant | ast.JoinedStr):
                continue  # not literal text (a table's words: tests/unit/test_words.py)
            english, zh = (ast.unparse(arg) for arg in node.args[:2])
            if any(c.isalpha() and c.isascii() for c in english) and not any(
                "\u4e00" <= c <= "\u9fff" for c in zh
            ):
                untranslated.append(f"{path.relative_to(APP.parent)}:{node.lineno}")
    assert untranslated == []
