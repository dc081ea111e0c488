"""Shared pieces of the benchmarks: tiny checkpoints made on the spot, bare baselines."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def tiny(family: str = "qwen3_vl", suppress_eos: bool = True) -> Path:
    from testkit.checkpoints import build_tiny_checkpoint

    return build_tiny_checkpoint(
        tempfile.mkdtemp(prefix="bench-"), family, suppress_eos=suppress_eos
    )


def bare_stream(model: Any, processor: Any, inputs: Any, max_new_tokens: int) -> dict[str, float]:
    """Bare `model.generate` with a `TextIteratorStreamer`: when each text chunk arrived."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    started = time.perf_counter()
    thread = threading.Thread(
        target=model.generate,
        kwargs=dict(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, do_sample=False),
    )
    thread.start()
    first = last = None
    for _ in streamer:
        now = time.perf_counter()
        first = first if first is not None else now
        last = now
    thread.join()
    return {"first": first - started, "last": last - started}


def prompt_inputs(
    processor: Any, text: str, image: Any = None, longest_edge: int | None = None
) -> Any:
    """Bare processor inputs for one user turn; `longest_edge` bounds the image's pixels."""
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
    if image is not None:
        kwargs["images"] = [image]
    if longest_edge is not None:
        own = processor.image_processor.size
        kwargs["images_kwargs"] = {
            "size": {"shortest_edge": own["shortest_edge"], "longest_edge": longest_edge}
        }
    return processor(**kwargs)


@contextmanager
def app_process(
    *args: str, poll_s: float = 0.1, ready_s: float = 120
) -> Iterator[tuple[str, Path]]:
    """`python web_demo_mm.py ARGS` in its own process, as users run it; yields (URL, its log).

    A separate process keeps the measuring client's own work off the server's GIL, as it is
    when a browser or a script on another machine is the client.
    """
    import httpx

    from testkit.launch import free_port

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", QWEN_DEMO_SERVER_PORT=str(port))
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "web_demo_mm.py", *args], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + ready_s
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(poll_s)
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not start:\n{Path(log.name).read_text()[-2000:]}")
        yield url, Path(log.name)
    finally:
        process.terminate()
        process.wait(timeout=20)
        os.unlink(log.name)
