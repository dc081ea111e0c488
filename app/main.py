"""Build every object from the settings and start the app."""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Sequence

from app.media import Budget
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("app")

TRIAL_BANNER = (
    "Offline trial: this is a tiny model with random weights made on the spot. "
    "Its answers are meaningless; everything else works as with a real checkpoint."
)


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


def build_engine(settings: Settings):
    from app.media import MediaCache

    if settings.backend == "openai":
        from app.engines.openai import OpenAIEngine

        return OpenAIEngine(
            settings.api_base or "",
            api_key=settings.api_key,
            model=settings.model,
            budget=budget_of(settings),
            media_cache=MediaCache(),
            max_new_tokens=settings.max_new_tokens,
            video_mode="url" if settings.video_as == "url" else "frames",
        )
    from app.engines.local import LocalEngine

    checkpoint = settings.checkpoint_path
    if settings.tiny_random:
        from app.testing.tiny import build_tiny_checkpoint

        folder = tempfile.mkdtemp(prefix=f"tiny-{settings.tiny_random}-")
        checkpoint = str(build_tiny_checkpoint(folder, settings.tiny_random))
        log.info(
            "offline trial: built a tiny random %s checkpoint in %s", settings.tiny_random, folder
        )
    return LocalEngine.load(
        checkpoint,
        cpu_only=settings.cpu_only,
        flash_attn2=settings.flash_attn2,
        load_in_4bit=settings.load_in_4bit,
        dtype=settings.dtype,
        budget=budget_of(settings),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
    )


def ui_options(settings: Settings, engine) -> object:
    from app.testing.tiny import is_tiny_checkpoint
    from app.ui import UiOptions

    config = getattr(engine, "generation_defaults", None)
    template = getattr(getattr(engine, "processor", None), "chat_template", None) or ""
    name = getattr(engine, "checkpoint", "") or settings.checkpoint_path
    if settings.tiny_random:
        name = f"tiny random {settings.tiny_random}"
    return UiOptions(
        title=f"Qwen-VL Chat · {name}",
        banner=TRIAL_BANNER if settings.is_offline_trial or is_tiny_checkpoint(name) else None,
        max_new_tokens=settings.max_new_tokens,
        default_temperature=getattr(config, "temperature", None),
        default_top_p=getattr(config, "top_p", None),
        default_top_k=getattr(config, "top_k", None),
        default_repetition_penalty=getattr(config, "repetition_penalty", None),
        thinking_toggle="enable_thinking" in str(template),
    )


def build_app(settings: Settings, engine):
    """The gradio Blocks with its queue set up; launching is the caller's."""
    from app.ui import build_demo
    from app.zerogpu import run_on_zero_gpu

    if settings.backend == "local":
        run_on_zero_gpu(engine)
    demo = build_demo(engine, ui_options(settings, engine))
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


def launch_kwargs(settings: Settings) -> dict:
    """What `demo.launch` gets from the settings: address, login, upload limit."""
    from app.settings import logins

    return {
        "server_name": settings.server_name,
        "server_port": settings.server_port,
        "share": settings.share,
        "inbrowser": settings.inbrowser,
        "auth": logins(settings) or None,
        "max_file_size": f"{settings.max_upload_mb}mb",
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
    demo = build_app(settings, engine)
    demo.launch(**launch_kwargs(settings))
    return 0
