"""Hostile input, round three: what one browser or login could learn or take from the others.

Through the launched app's public surfaces (REST as any script could send it, gradio_client):
a forged saved-chats store, the saved chats' key, the prefix cache across logins, settings no
page could send, request bodies too large or too slow, and a login with MCP."""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from app.main import state_secret
from app.media import MediaCache
from app.settings import load_settings
from app.ui.sealed import StoreSeal
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests.hostile.test_hostile import PeakRss
from tests.panel import api_data, panel

ROOT = Path(__file__).resolve().parents[2]
LOGINS = {"alice": "a-secret", "bob": "b-secret", "carol": "c-secret"}


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return load_engine(str(tiny_checkpoint("qwen3_vl")), media_cache=MediaCache())


@pytest.fixture(scope="module")
def app_url(engine):
    settings = load_settings(["--max-new-tokens", "8", "--max-request-mb", "2"], environ={})
    with launched_app(settings, engine) as url:
        yield url


@pytest.fixture(scope="module")
def login_url(engine):
    auth = ",".join(f"{user}:{password}" for user, password in LOGINS.items())
    settings = load_settings(["--max-new-tokens", "8", "--auth", auth], environ={})
    with launched_app(settings, engine) as url:
        yield url


def run_event(url: str, api_name: str, data: list, cookies: httpx.Cookies | None = None) -> dict:
    """One of the page's own events (those off the API page too), as a script can call it."""
    config = httpx.get(f"{url}config", cookies=cookies, timeout=10).json()
    [index] = [i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name]
    # A session of its own, as each browser has: a session belongs to whoever first used it.
    body = {"data": data, "fn_index": index, "session_hash": uuid.uuid4().hex}
    response = httpx.post(f"{url}gradio_api/run/predict", json=body, cookies=cookies, timeout=30)
    return {"status": response.status_code, **response.json()}


def _shown(restored: dict) -> list:
    """The messages a restore puts in the chat area (an update that also sets its thumbs)."""
    chat = restored["data"][2]
    return chat["value"] if isinstance(chat, dict) else chat


def logged_in(url: str, user: str) -> httpx.Cookies:
    response = httpx.post(f"{url}login", data={"username": user, "password": LOGINS[user]})
    assert response.status_code == 200, response.text
    return response.cookies


def _store_naming(path: Path, meta: bool = False) -> dict:
    file = {"path": str(path), "orig_name": path.name}
    if meta:  # gradio then checks the path as an input's file; the probe sent none
        file["meta"] = {"_type": "gradio.FileData"}
    part = {"type": "file", "file": file}
    chat = {
        "id": "x",
        "title": "t",
        "updated": 1,
        "messages": [{"role": "user", "content": [part]}],
    }
    return {"chats": [chat], "current": "x"}


def test_a_forged_saved_chats_store_reads_no_server_file(app_url):
    secret_file = ROOT / "pyproject.toml"  # a file under the app's working directory
    forged = _store_naming(secret_file)
    for value in (forged, json.dumps(forged), "gAAAAABforged-token"):
        out = run_event(app_url, "restore", [value])
        # Before: the chat opened with the file, copied into gradio's cache and served.
        assert "/gradio_api/file=" not in json.dumps(out), out
        assert _shown(out) == []  # an empty chat, and a new, empty list
    # The one way into a store the server seals is the chat itself, whose files gradio checks.
    history = _store_naming(secret_file, meta=True)["chats"][0]["messages"]
    out = run_event(app_url, "persist", [history, ""])
    assert out["status"] != 200 and "data" not in out


def test_the_saved_chats_key_never_reaches_the_page(app_url):
    page = httpx.get(f"{app_url}config", timeout=10).text
    key = state_secret(load_settings([], environ={}))
    assert key not in page
    sealed = run_event(app_url, "restore", [""])["data"][0]
    assert StoreSeal(key).open(sealed, None) == {"chats": [], "current": None}
    # What the page is given (gradio's browser-side secret) opens nothing.
    # (One for the chats' store and one for the settings', the same.)
    [shown] = {
        c["props"]["secret"]
        for c in json.loads(page)["components"]
        if "secret" in c.get("props", {})
    }
    assert StoreSeal(shown).open(sealed, None) is None


def test_a_store_sealed_for_one_login_does_not_open_for_another(login_url):
    alice, bob = logged_in(login_url, "alice"), logged_in(login_url, "bob")
    history = [{"role": "user", "content": [{"type": "text", "text": "Alice's own question"}]}]
    sealed = run_event(login_url, "persist", [history, ""], alice)["data"][0]
    mine = run_event(login_url, "restore", [sealed], alice)
    assert _shown(mine)[0]["content"][0]["text"] == "Alice's own question"
    theirs = run_event(login_url, "restore", [sealed], bob)
    assert _shown(theirs) == [] and "Alice" not in json.dumps(theirs["data"][1])


def test_a_store_another_login_cannot_open_is_never_written_over(login_url):
    # Before, Bob's first change wrote a fresh empty store over Alice's in the same browser.
    alice, bob = logged_in(login_url, "alice"), logged_in(login_url, "bob")
    history = [{"role": "user", "content": [{"type": "text", "text": "Alice's own question"}]}]
    sealed = run_event(login_url, "persist", [history, ""], alice)["data"][0]
    bobs = [{"role": "user", "content": [{"type": "text", "text": "Bob's question"}]}]
    kept = run_event(login_url, "persist", [bobs, sealed], bob)["data"][0]
    assert kept == sealed
    mine = run_event(login_url, "restore", [kept], alice)
    assert _shown(mine)[0]["content"][0]["text"] == "Alice's own question"


def _cached_tokens(history: list) -> int:
    titles = [(m.get("metadata") or {}).get("title") or "" for m in history]
    stats = [t for t in titles if "prompt tokens cached" in t][-1]  # the last reply's
    return int(re.search(r"(\d+) of \d+ prompt tokens cached", stats).group(1))


def test_one_login_learns_nothing_of_anothers_prompts_from_the_cache(login_url):
    def send(user: str, text: str, history: list | None = None) -> list:
        client = Client(login_url, auth=(user, LOGINS[user]), verbose=False, download_files=False)
        values = panel(max_new_tokens=2, temperature=0)
        box = {"text": text, "files": []}
        return client.predict(box, history or [], *values, api_name="/ui_send")[1]

    secret = "My secret name is Zorblax Quintero, remember it."
    first = send("alice", secret)
    # A right guess and a wrong one read alike (before: 41 cached tokens against 24-27).
    right = _cached_tokens(send("bob", "My secret name is Zorblax"))
    wrong = _cached_tokens(send("carol", "My secret name is Qwerty"))
    assert right == wrong
    # Alice's own follow-up still starts from her cached turn.
    assert _cached_tokens(send("alice", "What is it?", first)) > len(secret) // 4


def test_settings_no_page_could_send_are_clamped_or_refused_with_words(
    tiny_checkpoint, tmp_path, caplog
):
    from tests import media_factory as mf

    # The released Qwen3-VL processor's own bounds (up to 16 MP), as in the probe.
    real = load_engine(str(tiny_checkpoint("real-instruct")), media_cache=MediaCache())
    photo = mf.make_image(tmp_path / "photo.jpg", size=(3000, 2000))
    settings = load_settings(["--max-new-tokens", "4"], environ={})

    def prompt_tokens(url: str, **fields) -> int:
        """The prompt's length, from the request's log line."""
        caplog.clear()
        with caplog.at_level("INFO", logger="app.replies"):
            box = {"text": "Look", "files": [handle_file(str(photo))]}
            Client(url, verbose=False).predict(box, max_new_tokens=2, api_name="/chat", **fields)
        [line] = [r.getMessage() for r in caplog.records if "tokens_in=" in r.getMessage()]
        return int(re.search(r"tokens_in=(\d+)", line).group(1))

    with launched_app(settings, real) as app_url:
        at_the_budget = prompt_tokens(app_url, max_pixels=1003520)
        # Before: 1e12 pixels read the photo at the processor's 16 MP, past the server's budget.
        assert prompt_tokens(app_url, max_pixels=1e12) == at_the_budget
        for bad in ("NaN", "Infinity"):
            body = json.dumps({"data": api_data({"text": "hi", "files": []}, top_p=bad)})
            body = body.replace(f'"{bad}"', bad)  # as a script's JSON encoder writes them
            started = httpx.post(
                f"{app_url}gradio_api/call/chat",
                content=body,
                headers={"content-type": "application/json"},
                timeout=10,
            )
            events = httpx.get(f"{app_url}gradio_api/call/chat/{started.json()['event_id']}").text
            assert "Top-p" in events and "is not a finite number" in events, events


def test_a_huge_message_is_refused_before_the_tokenizer(engine):
    settings = load_settings(["--max-new-tokens", "8"], environ={})
    with launched_app(settings, engine) as url, PeakRss() as memory:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match=r"over 4,096 tokens, more than this app reads"):
            client.predict({"text": "word " * 4_000_000, "files": []}, api_name="/chat")  # 20 MB
    assert memory.growth < 1500 << 20  # before: +6.3 GB for 30 MB; the message itself is 20 MB


def test_a_thousand_copies_of_an_image_are_refused_before_the_processor(app_url, tmp_path):
    from tests import media_factory as mf

    photo = mf.make_image(tmp_path / "photo.jpg", size=(640, 480))
    client = Client(app_url, verbose=False, download_files=False)
    uploaded = client.predict(
        {"text": "Look", "files": [handle_file(str(photo))]},
        [],
        *panel(max_new_tokens=2),
        api_name="/ui_send",
    )[1]
    image_message = uploaded[0]
    history = [image_message] * 1000
    with (
        PeakRss() as memory,
        pytest.raises(Exception, match=r"images and videos this prompt is [\d,]+ tokens or more"),
    ):
        client.predict({"text": "and?", "files": []}, history, api_name="/chat")
    assert memory.growth < 500 << 20  # before: +3.4 GB, the processor run on all of them


def test_request_bodies_too_large_or_too_slow_are_refused_with_words(engine):
    settings = load_settings(
        ["--max-new-tokens", "8", "--max-request-mb", "1", "--body-timeout-s", "1"], environ={}
    )
    with launched_app(settings, engine) as url:
        big = {"data": ["x" * (3 << 20)], "fn_index": 0, "session_hash": "probe"}
        response = httpx.post(f"{url}gradio_api/run/predict", json=big, timeout=10)
        assert response.status_code == 413 and "larger than this app takes" in response.text
        host, port = url.split("//")[1].rstrip("/").split(":")
        slow = socket.create_connection((host, int(port)))
        slow.sendall(
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        slow.settimeout(15)
        answer = b""
        while chunk := slow.recv(4096):  # until the server closes the connection
            answer += chunk
        answer = answer.decode(errors="replace")
        assert " 408 " in answer.splitlines()[0] and "did not arrive within 1 s" in answer
        slow.close()


def test_one_address_cannot_hold_more_than_its_share_of_slow_bodies(engine):
    # Many slow bodies from one address: those past the bound are refused at once (before:
    # 9,990 of them stopped the server answering anyone), and the app still answers. The body
    # timeout is long here, so that none of the first ones ends while the last ones arrive.
    settings = load_settings(["--max-new-tokens", "8", "--body-timeout-s", "120"], environ={})
    with launched_app(settings, engine) as url:
        host, port = url.split("//")[1].rstrip("/").split(":")
        held = []
        for _ in range(40):
            conn = socket.create_connection((host, int(port)))
            conn.sendall(
                b"POST /gradio_api/run/predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n"
            )
            held.append(conn)
        refused, waiting = 0, list(held)
        deadline = time.monotonic() + 30  # those past the bound answer at once; a bound only
        while refused < 40 - 32 and time.monotonic() < deadline:
            answered, _, _ = select.select(waiting, [], [], 1.0)
            for conn in answered:
                refused += b" 429 " in conn.recv(4096)
                waiting.remove(conn)
        assert refused >= 40 - 32
        assert httpx.get(f"{url}config", timeout=10).status_code == 200
        for conn in held:
            conn.close()


def test_mcp_with_a_login_is_refused_at_start_in_one_line():
    started = subprocess.run(
        [sys.executable, "web_demo_mm.py", "--mcp", "--auth", "a:b", "--tiny-random", "qwen3_vl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert started.stderr.startswith("error: --mcp cannot be used with a login")
    assert len(started.stderr.strip().splitlines()) == 1


def test_uploads_are_removed_after_their_time(engine, tmp_path):
    from tests import media_factory as mf

    settings = load_settings(["--max-new-tokens", "4", "--keep-files-hours", "0.0005"], environ={})
    with launched_app(settings, engine) as url:  # files kept 1.8 s, looked at each second
        photo = mf.make_image(tmp_path / "photo.jpg", size=(64, 48))
        client = Client(url, verbose=False, download_files=False)
        box = {"text": "Look", "files": [handle_file(str(photo))]}
        history = client.predict(box, [], *panel(max_new_tokens=2), api_name="/ui_send")[1]
        path = Path(history[0]["content"][0]["file"]["path"])
        assert path.is_file()
        deadline = time.monotonic() + 30
        while path.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not path.is_file()  # before: kept for good


WRONG_SHAPES = {
    "a string for the message": ("hello", None, "message must be"),
    "a number for the message": (5, None, "message must be"),
    "a number for the text": ({"text": 5, "files": []}, None, r"\(text: "),
    "a string for the files": ({"text": "hi", "files": "x.png"}, None, r"\(files: "),
    "numbers for files": ({"text": "hi", "files": [1, 2]}, None, r"\(files\.0"),
    "a string for the history": ({"text": "hi"}, "x", "history must be"),
    "numbers in the history": ({"text": "hi"}, [1, 2], r"history must be .*\(0: "),
    "a number for a role": ({"text": "hi"}, [{"role": 5, "content": "x"}], r"\(0\.role"),
    "a message without content": ({"text": "hi"}, [{"role": "user"}], r"\(0\.content"),
    "a number for content": ({"text": "hi"}, [{"role": "user", "content": 5}], r"0\.content"),
    "pairs for the history": ({"text": "hi"}, [["a", "b"]], r"history must be"),
}


def test_chat_with_wrongly_shaped_values_says_what_was_expected(app_url):
    # Before: each of these failed inside gradio's checks, and a script saw "error: null" (the
    # upstream app "has not enabled verbose error reporting").
    client = Client(app_url, verbose=False)
    for name, (message, history, said) in WRONG_SHAPES.items():
        with pytest.raises(Exception, match=said) as refused:
            client.predict(message, history, api_name="/chat")
        assert "verbose error reporting" not in str(refused.value), name
    assert isinstance(client.predict({"text": "hi", "files": []}, api_name="/chat"), str)


def test_a_huge_history_is_refused_before_the_work(app_url):
    client = Client(app_url, verbose=False)
    hello = {"text": "hi", "files": []}

    def history(n: int) -> list[dict]:
        return [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(n)]

    # Plain-text contents, as any chat API takes them, are a history too.
    assert isinstance(client.predict(hello, history(4), api_name="/chat"), str)
    with pytest.raises(Exception, match=r"history has 5,000 messages; .* at most 4,096"):
        client.predict(hello, history(5000), api_name="/chat")
    # Before: a 50,000-turn history cost +280 MB of checks before the prompt's bound refused
    # it; now the body is refused as its objects are counted, before gradio parses it.
    with PeakRss() as memory, pytest.raises(Exception, match="413"):
        client.predict(hello, history(50_000), api_name="/chat")
    assert memory.growth < 100 << 20  # this process is the client too: most of it is theirs


def test_a_files_range_answer_carries_no_request_header_and_several_ranges_are_served_whole(
    app_url,
):
    uploaded = httpx.post(
        f"{app_url}gradio_api/upload", files={"files": ("digits.txt", b"0123456789" * 100)}
    ).json()[0]
    where = f"{app_url}gradio_api/file={uploaded}"
    sent = {"Set-Cookie": "session=stolen", "X-Probe": "echo?"}
    piece = httpx.get(where, headers={"Range": "bytes=0-9", **sent})
    assert piece.status_code == 206 and piece.content == b"0123456789"
    # Before: every request header came back, the client's Set-Cookie among them.
    assert "set-cookie" not in piece.headers and "x-probe" not in piece.headers
    assert piece.headers["content-range"] == "bytes 0-9/1000"
    several = httpx.get(where, headers={"Range": "bytes=0-9,20-29"})
    assert several.status_code == 200 and several.content == b"0123456789" * 100  # before: 500


def test_without_a_login_the_page_tells_nothing_of_the_api_or_the_model(login_url, engine):
    # Before: the login page embedded every endpoint's description and the code to call it
    # (while /gradio_api/info said 401), and /manifest.json named the model.
    page = httpx.get(login_url, timeout=10)
    assert page.status_code == 200 and "window.gradio_api_info = {};" in page.text
    assert "api_name" not in page.text and "/chat" not in page.text
    assert httpx.get(f"{login_url}manifest.json", timeout=10).status_code == 401
    with httpx.Client(timeout=10) as alice:
        alice.post(f"{login_url}login", data={"username": "alice", "password": LOGINS["alice"]})
        assert '"api_name"' in alice.get(login_url).text  # the page, whole, once logged in
        assert engine.model_name in alice.get(f"{login_url}manifest.json").text


def _sessions_events(url: str, session: str, client: httpx.Client) -> dict[str, int]:
    """The status of each event a script could send into `session`."""
    return {
        "cancel": client.post(
            f"{url}gradio_api/cancel",
            json={"session_hash": session, "fn_index": 0, "event_id": "x"},
        ).status_code,
        "join": client.post(
            f"{url}gradio_api/queue/join",
            json={"session_hash": session, "fn_index": 0, "data": [], "trigger_id": None},
        ).status_code,
        "data": client.get(
            f"{url}gradio_api/queue/data", params={"session_hash": session}
        ).status_code,
        "heartbeat": client.get(f"{url}gradio_api/heartbeat/{session}").status_code,
    }


def _streaming(job):
    """`job`, once its reply has begun to stream (its session is in use)."""
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def test_a_sessions_events_are_refused_to_anyone_but_its_owner():
    # Before: a known session hash let another login (or, without logins, any address) cancel
    # the session's reply, read its stream and post events into it.
    from tests.scripted_engine import ScriptedEngine

    slow = ScriptedEngine(script="word " * 100, delay_s=0.05)
    auth = ",".join(f"{user}:{password}" for user, password in LOGINS.items())
    with launched_app(load_settings(["--auth", auth], environ={}), slow) as url:
        alice = Client(url, auth=("alice", LOGINS["alice"]), verbose=False)
        job = _streaming(alice.submit({"text": "hi", "files": []}, api_name="/chat"))
        with httpx.Client(timeout=10) as bob:
            bob.post(f"{url}login", data={"username": "bob", "password": LOGINS["bob"]})
            refused = _sessions_events(url, alice.session_hash, bob)
            assert set(refused.values()) == {403}, refused
            said = bob.get(f"{url}gradio_api/heartbeat/{alice.session_hash}").json()["detail"]
            assert "belongs to another login or address" in said
        assert job.result().startswith("word word")  # alice's reply went on to its end
    with launched_app(load_settings([], environ={}), slow) as url:
        mine = Client(url, verbose=False)
        job = _streaming(mine.submit({"text": "hi", "files": []}, api_name="/chat"))
        elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")  # another address
        with httpx.Client(transport=elsewhere, timeout=10) as stranger:
            refused = _sessions_events(url, mine.session_hash, stranger)
            assert set(refused.values()) == {403}, refused
        assert job.result().startswith("word word")
