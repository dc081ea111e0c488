"""Logins, limits, path and URL attempts, the queue bound, many users, out-of-memory."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import ClassVar

import httpx
import pytest
import torch
from gradio_client import Client, handle_file

from app.media import MediaCache
from app.settings import load_settings
from testkit.engines import load_engine
from testkit.launch import launched_app
from tests.panel import api_data, panel

PANEL = panel()
META = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def long_engine(tiny_checkpoint):
    return load_engine(
        str(tiny_checkpoint("qwen3_vl", suppress_eos=True)),
        media_cache=MediaCache(),
        max_new_tokens=4000,
    )


@pytest.fixture(scope="module")
def app_url(long_engine):
    settings = load_settings(["--max-new-tokens", "4000", "--max-upload-mb", "1"], environ={})
    with launched_app(settings, long_engine) as url:
        yield url


def call(url: str, api_name: str, data: list) -> tuple[str, object]:
    """A raw REST call, as any script could send it: (last event, its data)."""
    started = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=10)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    body = httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=30).text
    events = [line for line in body.splitlines() if line.startswith(("event:", "data:"))]
    kind = events[-2].split(":", 1)[1].strip()
    return kind, json.loads(events[-1].split(":", 1)[1])


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request a loopback server gets: there must be none."""

    hits: ClassVar[list[str]] = []

    def do_GET(self):
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret")

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_login_protects_the_ui_and_the_api(long_engine, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# one login a line\nbob:hunter2\n")
    settings = load_settings(
        ["--auth", "alice:secret", "--auth-file", str(users), "--max-new-tokens", "8"], environ={}
    )
    with launched_app(settings, long_engine) as url:
        assert httpx.get(f"{url}config", timeout=5).status_code in (401, 403)
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            Client(url, verbose=False).predict({"text": "hi", "files": []}, api_name="/chat")
        with pytest.raises(Exception):  # noqa: B017
            Client(url, auth=("alice", "wrong"), verbose=False)
        for user in (("alice", "secret"), ("bob", "hunter2")):
            reply = Client(url, auth=user, verbose=False).predict(
                {"text": "hi", "files": []}, max_new_tokens=4, api_name="/chat"
            )
            assert isinstance(reply, str)


def test_wrong_passwords_are_slowed_with_words(long_engine):
    # Before: 300 wrong passwords at 190-730 a second, no slow-down.
    settings = load_settings(["--auth", "alice:secret", "--max-new-tokens", "8"], environ={})
    with launched_app(settings, long_engine) as url:

        def login(password: str) -> httpx.Response:
            form = {"username": "alice", "password": password}
            return httpx.post(f"{url}login", data=form, timeout=10)

        free = [login(f"guess {i}").status_code for i in range(3)]
        assert all(status >= 400 and status != 429 for status in free), free
        slowed = login("secret")  # even the right one, inside the wait
        assert slowed.status_code == 429 and "try again in 1 s" in slowed.text
        assert slowed.headers["retry-after"] == "1"
        time.sleep(1.2)
        assert login("secret").status_code == 200  # after the wait; it clears the count
        assert login("guess again").status_code not in (200, 429)


def test_uploads_over_the_limit_are_refused(app_url, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(2_000_000))
    with pytest.raises(Exception, match=r"(?i)file.*(large|size|exceed)"):
        Client(app_url, verbose=False).predict(
            {"text": "?", "files": [handle_file(str(big))]}, api_name="/chat"
        )


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/tmp/gradio/../../etc/passwd", "../../../../etc/hostname"]
)
def test_no_server_path_can_be_read_through_the_api(app_url, path):
    message = {"text": "read it", "files": [{"path": path, "meta": META}]}
    kind, data = call(app_url, "chat", api_data(message, max_new_tokens=4))
    assert kind == "error" and "root:" not in json.dumps(data)
    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": path, "meta": META}}]}
    ]
    kind, data = call(app_url, "ui_send", [{"text": "and?", "files": []}, history, *PANEL])
    assert kind == "error" and "/gradio_api/file=" not in json.dumps(data)


def test_no_url_is_ever_fetched(app_url, recorder):
    url = f"{recorder}/photo.jpg"
    message = {"text": "look", "files": [{"path": url, "url": url, "meta": META}]}
    kind, data = call(app_url, "chat", api_data(message, max_new_tokens=4))
    assert kind == "error" and "does not fetch URLs" in json.dumps(data)
    history = [
        {
            "role": "user",
            "content": [{"type": "file", "file": {"path": url, "url": url, "meta": META}}],
        }
    ]
    kind, _ = call(app_url, "ui_send", [{"text": "and?", "files": []}, history, *PANEL])
    assert kind == "error"
    # A URL in the text is only text.
    reply = Client(app_url, verbose=False).predict(
        {"text": f"What is at {url} ?", "files": []}, max_new_tokens=4, api_name="/chat"
    )
    assert isinstance(reply, str)
    assert Recorder.hits == []


def test_eight_clients_at_once_get_their_own_complete_replies(app_url):
    results: dict[int, object] = {}

    def chat(i: int) -> None:
        try:
            client = Client(app_url, verbose=False, download_files=False)
            values = panel(max_new_tokens=24)
            _, history = client.predict(
                {"text": f"I am client {i}", "files": []}, [], *values, api_name="/ui_send"
            )
            results[i] = history
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            results[i] = err

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(8))
    for i, history in results.items():
        assert not isinstance(history, Exception), history
        users = [m["content"][0]["text"] for m in history if m["role"] == "user"]
        assert users == [f"I am client {i}"]  # no mixing of histories
        stats = [(m.get("metadata") or {}).get("title", "") for m in history]
        assert any(t.split(" · ")[1] == "24 tokens" for t in stats if " · " in t)


def test_a_flood_beyond_a_users_share_of_the_line_is_told_to_retry(long_engine):
    # `--queue-size` requests may be in line at once, half of them one user's; past that they
    # are told at once, in words. Long answers keep the first ones busy while the flood
    # arrives, so no place frees up whatever the machine's speed.
    queue_size = 4
    settings = load_settings(
        ["--max-new-tokens", "4000", "--queue-size", str(queue_size), "--auth", "a:a,b:b,c:c"],
        environ={},
    )
    with launched_app(settings, long_engine) as url:
        clients = {name: Client(url, auth=(name, name), verbose=False) for name in "abc"}

        def ask(name: str, text: str):
            box = {"text": text, "files": []}
            return clients[name].submit(box, max_new_tokens=4000, api_name="/chat")

        jobs = [ask("a", f"flood {i}") for i in range(5)]
        deadline = time.monotonic() + 60
        while sum(job.done() for job in jobs) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = [str(job.exception()) for job in jobs if job.done()]
        assert len(refused) == 3, refused
        assert all("already have 2 questions waiting" in e for e in refused), refused
        # Two of b's fill the line; c is told the app is full.
        jobs += [ask("b", "b1"), ask("b", "b2")]
        time.sleep(1)
        with pytest.raises(Exception, match="already has 4 questions waiting"):
            clients["c"].predict({"text": "c1", "files": []}, api_name="/chat")
        for job in jobs:
            job.cancel()
        # Once the flood has passed, the app serves as before.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                after = clients["c"].predict(
                    {"text": "after", "files": []}, max_new_tokens=4, api_name="/chat"
                )
                break
            except Exception:  # noqa: BLE001 - the stopped ones may still be leaving the line
                time.sleep(0.5)
        assert isinstance(after, str)


def test_out_of_memory_gives_advice_frees_the_cache_and_the_app_goes_on(app_url, long_engine):
    client = Client(app_url, verbose=False)

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = long_engine.model.model.language_model.register_forward_pre_hook(out_of_memory)
    try:
        started = time.perf_counter()
        with pytest.raises(Exception, match=r"out of memory.*pixel budget.*--load-in-4bit"):
            client.predict({"text": "big", "files": []}, api_name="/chat")
        # A bound under the official demo's 20 s timeout, not a timing (well under 1 s here).
        assert time.perf_counter() - started < 15
    finally:
        handle.remove()
    assert isinstance(
        client.predict({"text": "small", "files": []}, max_new_tokens=4, api_name="/chat"), str
    )
