"""Launch the real app in this process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import socket
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
