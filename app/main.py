"""The composition root: build every object from the settings, wire them, launch.

Each builder below makes one object from the settings and the objects already made; `build_app`
only wires them together (as transformers' `build_server` does). Nothing is module-level state.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from app.engines.base import Engine
from app.media import Budget, MediaCache
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("app")
GB = 1 << 30


def budget_of(settings: Settings) -> Budget:
    return Budget(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        video_fps=settings.video_fps,
        video_min_frames=settings.video_min_frames,
        video_max_frames=settings.video_max_frames,
        video_max_pixels=settings.video_max_pixels,
        video_total_pixels=settings.video_total_pixels,
        max_pdf_pages=settings.max_pdf_pages,
    )


def build_openai_engine(settings: Settings) -> Engine:
    from app.engines.openai import OpenAIEngine

    return OpenAIEngine(
        settings.api_base or "",
        api_key=settings.api_key,
        model=settings.model,
        family=settings.family,
        budget=budget_of(settings),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
        video_mode="url" if settings.video_as == "url" else "frames",
    )


def build_local_engine(settings: Settings) -> Engine:
    from app.engines.checkpoint import LoadOptions
    from app.engines.local import LocalEngine
    from app.engines.zerogpu import for_zero_gpu

    checkpoint = settings.checkpoint_path
    if settings.tiny_random:
        from app.trial import build_trial_checkpoint

        checkpoint = str(build_trial_checkpoint(settings.tiny_random))
    options = LoadOptions(
        cpu_only=settings.cpu_only,
        flash_attn2=settings.flash_attn2,
        load_in_4bit=settings.load_in_4bit,
        dtype=settings.dtype,
    )
    cache_gb = settings.prefix_cache_gb
    engine = LocalEngine.load(
        checkpoint,
        options,
        budget=budget_of(settings),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        prefix_cache_bytes=None if cache_gb is None else int(cache_gb * GB),
    )
    return for_zero_gpu(engine)


def build_engine(settings: Settings) -> Engine:
    if settings.backend == "openai":
        return build_openai_engine(settings)
    return build_local_engine(settings)


def page_options(settings: Settings, engine: Engine) -> Any:
    from app.ui.layout import PageOptions
    from app.ui.panel import PanelOptions

    return PageOptions(
        title=f"Qwen-VL Chat · {engine.model_name}",
        banner=engine.notice,
        panel=PanelOptions(
            max_new_tokens=settings.max_new_tokens,
            sampling=engine.sampling_defaults,
            supports_thinking=engine.supports_thinking,
            budget=budget_of(settings),
        ),
    )


def build_app(settings: Settings, engine: Engine) -> Any:
    """The gradio Blocks with its queue set up; launching is the caller's."""
    from app.replies import ReplyStreamer, SessionCancels
    from app.turns import Turns
    from app.ui.handlers import ChatHandlers
    from app.ui.layout import ChatPage

    options = page_options(settings, engine)
    cancels = SessionCancels()
    streamer = ReplyStreamer(engine, cancels, Turns())
    demo = ChatPage(ChatHandlers(streamer, cancels, options.panel), options).build()
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


def launch_kwargs(settings: Settings) -> dict:
    """What `demo.launch` gets from the settings: address, login, upload limit; the page's
    content policy."""
    from app.settings import logins
    from app.ui.safety import PAGE_HEAD

    return {
        "server_name": settings.server_name,
        "server_port": settings.server_port,
        "share": settings.share,
        "inbrowser": settings.inbrowser,
        "auth": logins(settings) or None,
        "max_file_size": f"{settings.max_upload_mb}mb",
        "head": PAGE_HEAD,
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(argv)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from app.engines.base import EngineError

    try:
        engine = build_engine(settings)
    except EngineError as err:  # a checkpoint not found, a server not reachable
        print(f"error: {err}", file=sys.stderr)
        return 1
    build_app(settings, engine).launch(**launch_kwargs(settings))
    return 0
