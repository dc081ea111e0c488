"""The app in front of a real OpenAI-compatible server: `transformers serve` on loopback.

With QWEN_TEST_LLAMA_CPP set to a llama.cpp source tree with `build/bin/llama-server` (made by
`bash scripts/llama_cpp.sh build`), the general cases run against llama-server instead, on the
same kind of tiny checkpoint converted by llama.cpp's own converter (`scripts/llama_cpp.sh
test` does all of it; not in CI, which has no llama.cpp build)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from app.engines.openai import OpenAIEngine
from app.settings import load_settings
from testkit.launch import free_port, launched_app, streaming_reply
from testkit.servers import convert_to_gguf, llama_server_command, wait_until_ready
from tests.panel import panel

PANEL = panel()


class Server:
    """`transformers serve` on a loopback port, with a tiny checkpoint preloaded."""

    name = "transformers serve"

    def __init__(self, checkpoint: Path, port: int, log: Path) -> None:
        self.checkpoint, self.port, self.log = checkpoint, port, log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        serve = shutil.which("transformers") or "transformers"
        command = [serve, "serve", str(self.checkpoint), "--host", "127.0.0.1"]
        return [*command, "--port", str(self.port), "--device", "cpu"]

    def ready_url(self) -> str:
        return f"{self.url}/models"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(),
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
            start_new_session=True,
        )
        wait_until_ready(self.process, self.ready_url(), self.name, 120, self.log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class LlamaServer(Server):
    """llama.cpp's `llama-server` on a loopback port, serving `checkpoint` converted to GGUF
    (with its vision part as the `--mmproj` file), under the checkpoint's path as its name."""

    name = "llama-server"

    def __init__(self, llama_cpp: Path, checkpoint: Path, port: int, log: Path) -> None:
        super().__init__(checkpoint, port, log)
        self.llama_cpp = llama_cpp
        gguf = {
            part: checkpoint.with_name(f"{checkpoint.name}-{part}.gguf")
            for part in ("model", "mmproj")
        }
        self.model = convert_to_gguf(llama_cpp, checkpoint, gguf["model"], mmproj=False)
        self.mmproj = convert_to_gguf(llama_cpp, checkpoint, gguf["mmproj"], mmproj=True)

    def command(self) -> list[str]:
        command = llama_server_command(self.llama_cpp, self.model, self.mmproj, self.port)
        return [*command, "--alias", str(self.checkpoint), "-c", "16384"]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def _server(tmp_path_factory) -> Server:
    """The server the general cases run against: llama-server where QWEN_TEST_LLAMA_CPP says
    where llama.cpp is, else `transformers serve`."""
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder, build_tiny_checkpoint

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    folder = tmp_path_factory.mktemp("served")
    llama_cpp = os.environ.get("QWEN_TEST_LLAMA_CPP")
    if llama_cpp:
        # llama.cpp's converter knows the released tokenizer, not the tiny one.
        source = REAL_CONFIGS / "Qwen3-VL-2B-Instruct"
        checkpoint = build_from_config_folder(source, folder, width=256, suppress_eos=True)
        return LlamaServer(Path(llama_cpp), checkpoint, free_port(), log)
    _require_serve()
    # Wider than the other tests' tiny models: ~300 tokens/s, so that a 4000-token reply takes
    # the server about 13 s, and a server that really stopped shows by answering at once.
    checkpoint = build_tiny_checkpoint(folder, "qwen3_vl", width=512, suppress_eos=True)
    return Server(checkpoint, free_port(), log)


def _require_serve() -> None:
    import importlib.util

    # The `transformers` command exists without the serving extra, and then fails at start.
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai")) or (
        shutil.which("transformers") is None
        and not Path(sys.executable).with_name("transformers").exists()
    ):
        pytest.skip("`transformers serve` is not installed: pip install 'transformers[serving]'")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = _server(tmp_path_factory)
    server.start()
    settings = load_settings(
        ["--backend", "openai", "--api-base", server.url, "--max-new-tokens", "4000"], environ={}
    )
    engine = OpenAIEngine(server.url, max_new_tokens=4000)
    try:
        with launched_app(settings, engine) as url:
            yield url, server, engine
    finally:
        server.stop()


def test_the_served_model_is_found_by_name(served):
    _, server, engine = served
    assert engine.model == str(server.checkpoint)


def test_text(served):
    url, _, _ = served
    job = Client(url, verbose=False).submit(
        {"text": "Hello", "files": []}, max_new_tokens=12, api_name="/chat"
    )
    partials = list(job)
    assert len(partials) >= 2 and job.result()


def test_an_image_and_two_images(served, media):
    url, _, _ = served
    client = Client(url, verbose=False)
    one = client.predict(
        {"text": "Describe", "files": [handle_file(str(media / "red.jpg"))]},
        max_new_tokens=8,
        api_name="/chat",
    )
    two = client.predict(
        {
            "text": "Compare",
            "files": [handle_file(str(media / "red.jpg")), handle_file(str(media / "green.png"))],
        },
        max_new_tokens=8,
        api_name="/chat",
    )
    assert one and two


def test_a_video_as_frames(served, media):
    url, _, _ = served
    client = Client(url, verbose=False, download_files=False)
    _, history = client.predict(
        {"text": "What happens?", "files": [handle_file(str(media / "clip.mp4"))]},
        [],
        *PANEL,
        api_name="/ui_send",
    )
    stats = [
        m["metadata"]["title"]
        for m in history
        if "prompt tokens" in (m.get("metadata") or {}).get("title", "")
    ]
    # Eight timestamped frames of 3 s of video: far more prompt tokens than the words alone.
    prompt_tokens = int(stats[0].split(" prompt tokens")[0].rsplit(" ", 1)[-1])
    assert prompt_tokens > 100


def test_stop_closes_the_stream_and_the_server_stops_generating(served):
    url, _, _ = served
    client = Client(url, verbose=False)
    job = streaming_reply(client, "Go on and on")
    job.cancel()
    # The 4000 tokens would keep this server busy for ~13 s; one that stopped answers at once.
    time.sleep(0.3)
    started = time.perf_counter()
    reply = client.predict({"text": "Short", "files": []}, max_new_tokens=4, api_name="/chat")
    # A reply, not an error (four sampled tokens of a random model may all be special ones,
    # which decode to nothing: it happened once in ten runs).
    assert isinstance(reply, str)
    # Not a timing: a server still generating would answer after ~13 s; one that stopped does
    # in about half a second here, and 10 s leaves a loaded machine ten times that and more.
    assert time.perf_counter() - started < 10


def test_server_down_gives_a_clear_message_and_regenerate_works_once_it_is_back(served):
    url, server, _ = served
    client = Client(url, verbose=False, download_files=False)
    server.stop()
    try:
        started = time.perf_counter()
        _, history = client.predict({"text": "Hi", "files": []}, [], *PANEL, api_name="/ui_send")
        # A refused connection is known at once (well under a second): the bound is only
        # there to tell it from a wait for a timeout (the official demo's was 20 s).
        assert time.perf_counter() - started < 15
        titles = [(m.get("metadata") or {}).get("title", "") for m in history]
        assert any("Cannot reach the model server" in t for t in titles)
        assert history[0]["content"][0]["text"] == "Hi"  # the user's turn is kept
    finally:
        server.start()
    history, _ = client.predict(history, *PANEL, api_name="/ui_regenerate")
    answers = [m for m in history if m["role"] == "assistant" and not m.get("metadata")]
    assert len(answers) == 1 and answers[0]["content"][0]["text"]


def test_http_errors_show_the_servers_own_message(served):
    import threading

    from app.engines.base import ChatRequest, EngineError, GenerationParams, Turn

    _, _, engine = served
    # A request the page cannot make (its settings stay within the panel's bounds), so the
    # server refuses it; its own words are the engine's message.
    request = ChatRequest((Turn("user", "Hi"),), GenerationParams(max_new_tokens=-5))
    with pytest.raises(EngineError, match=r"The model server (answered 4\d\d|reported): .*-5"):
        list(engine.stream(request, threading.Event()))


# Absolute pixels of the server's input (a 300 x 500 image is read as 308 x 504): the quarter to
# three quarters of each side.
ABSOLUTE_BOX = 'Here:\n```json\n[{"bbox_2d": [77, 126, 231, 378], "label": "square"}]\n```'


@pytest.fixture(scope="module")
def served_qwen2_5_vl(tmp_path_factory):
    """An app in front of a served Qwen2.5-VL (by its name) that answers with a box."""
    import json

    from testkit.checkpoints import build_tiny_checkpoint

    _require_serve()
    checkpoint = build_tiny_checkpoint(
        tmp_path_factory.mktemp("served") / "qwen2_5_vl-boxes",
        "qwen2_5_vl",
        scripted_reply=ABSOLUTE_BOX,
    )
    # The real Qwen2.5-VL processor's pixel bounds (the tiny one's are far smaller).
    config_path = checkpoint / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    config_path.write_text(json.dumps(config))
    server = Server(checkpoint, free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    server.start()
    settings = load_settings(["--backend", "openai", "--api-base", server.url], environ={})
    engine = OpenAIEngine(server.url)
    try:
        with launched_app(settings, engine) as url:
            yield url, engine
    finally:
        server.stop()


def test_a_qwen2_5_vl_box_from_the_server_lands_on_the_right_pixels(served_qwen2_5_vl, media):
    import io

    from PIL import Image

    url, engine = served_qwen2_5_vl
    assert engine.family == "qwen2_5_vl"  # read from the served model's name
    client = Client(url, verbose=False, download_files=False)
    _, history = client.predict(
        {"text": "Where is the square?", "files": [handle_file(str(media / "green.png"))]},
        [],
        *panel(max_new_tokens=200, temperature=0),
        api_name="/ui_send",
    )
    answer = next(m for m in history if m["role"] == "assistant" and not m.get("metadata"))
    assert answer["content"][0]["text"] == ABSOLUTE_BOX
    [drawn_file] = [
        part["file"]
        for m in history
        if m["role"] == "assistant"
        for part in m["content"]
        if part.get("type") == "file"
    ]
    drawn = Image.open(io.BytesIO(httpx.get(drawn_file["url"], timeout=10).content)).convert("RGB")
    assert drawn.size == (300, 500)
    # The box spans x 75..225, y 125..375 of the 300 x 500 image (read as 0-1000, it would
    # have been drawn at x 23..69, y 63..189).
    red = (230, 25, 75)
    for x, y in [(76, 250), (224, 250), (150, 126), (150, 374)]:
        assert all(abs(a - b) < 40 for a, b in zip(drawn.getpixel((x, y)), red, strict=True))
    assert drawn.getpixel((180, 300)) == (0, 128, 0)  # the inside is still green
