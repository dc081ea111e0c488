"""Launch the real app in this process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launched_app(settings: Settings, engine: Any, port: int | None = None) -> Iterator[str]:
    """Yield the URL of the app serving `engine` (on `port`, else a free one); close the server
    afterwards."""
    from app.main import build_app, launch_kwargs

    demo = build_app(settings, engine)
    port = port or free_port()
    # The app's own launch settings (login, upload limit), on a free loopback port.
    kwargs = launch_kwargs(settings) | {
        "server_name": "127.0.0.1",
        "server_port": port,
        "share": False,
        "inbrowser": False,
    }
    demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def streaming_reply(client: Any, text: str, updates: int = 5) -> Any:
    """A long reply to `text` asked through the page's /chat API (a gradio_client job), once it
    has streamed `updates` updates: a reply caught mid-stream, for the tests of Stop."""
    job = client.submit({"text": text, "files": []}, max_new_tokens=4000, api_name="/chat")
    # A bound on a stream that never starts, not a timing: the first updates come within a
    # second here; 30 s leaves a loaded machine far more than ten times that.
    deadline = time.time() + 30
    while time.time() < deadline and len(job.outputs()) < updates:
        time.sleep(0.02)
    assert len(job.outputs()) >= updates, f"fewer than {updates} updates streamed in 30 s"
    return job
