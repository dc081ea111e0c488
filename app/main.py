"""The composition root: build every object from the settings, wire them, launch.

Each builder below makes one object from the settings and the objects already made; `build_app`
only wires them together (as transformers' `build_server` does). Nothing is module-level state.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.engines.base import Engine
from app.media import CPU_MAX_PIXELS, Budget, MediaCache
from app.said import Said, joined, say
from app.settings import Settings, SettingsError, load_settings

log = logging.getLogger("app")
# Files one upload request may carry at their largest (the box takes several at once).
UPLOAD_FILES = 8


def budget_of(settings: Settings, on_cpu: bool = False) -> Budget:
    """The media budget of the settings; where they leave the image budget to the app, the
    one measured for CPUs when the model runs on one."""
    given = dict(settings.budget_values)
    automatic = CPU_MAX_PIXELS if on_cpu else Budget().max_pixels
    automatic = max(automatic, int(given.get("min_pixels", 0)))
    return replace(Budget(max_pixels=automatic), **given)


def build_decoder(settings: Settings) -> Any:
    """The worker processes that decode attached files, each within --decode-timeout-s."""
    from app.media.worker import DecodePool

    return DecodePool(timeout_s=settings.decode_timeout_s)


def build_openai_engine(settings: Settings) -> Engine:
    from app.engines.openai import OpenAIEngine
    from app.engines.remote_stream import Deadlines

    deadlines = Deadlines(
        first_token_s=settings.remote.server_first_token_s,
        silence_s=settings.remote.server_silence_s,
        total_s=settings.remote.server_reply_s,
    )
    return OpenAIEngine(
        settings.remote.api_base or "",
        api_key=settings.remote.api_key,
        model=settings.remote.model,
        family=settings.remote.family,
        budget=budget_of(settings),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
        video_mode="url" if settings.remote.video_as == "url" else "frames",
        deadlines=deadlines,
        max_concurrent=settings.remote.max_concurrent,
        decoder=build_decoder(settings),
    )


def build_local_engine(settings: Settings) -> Engine:
    from app.engines.local.build import build_local_engine as build
    from app.engines.local.loading.memory import GB
    from app.engines.zerogpu import for_zero_gpu

    options = load_options(settings)
    if options.weights_store is not None:
        # The store's folder before its format 3 (named int8, it held 4-bit weights too): its
        # files are never read again, and they are gigabytes.
        shutil.rmtree(options.weights_store.parent / "int8", ignore_errors=True)
    cache_gb = settings.local.prefix_cache_gb
    engine = build(
        local_checkpoint(settings),
        options,
        budget_for=functools.partial(budget_of, settings),
        max_prompt_tokens=settings.local.max_prompt_tokens,
        prefix_cache_bytes=None if cache_gb is None else int(cache_gb * GB),
        media_cache=MediaCache(),
        max_new_tokens=settings.max_new_tokens,
        decoder=build_decoder(settings),
        max_batch=settings.local.max_batch,
    )
    return for_zero_gpu(engine)


def local_checkpoint(settings: Settings) -> str:
    """The checkpoint to load: the one named, the seeing model, or a random one built now."""
    if settings.local.trial:
        from app.seeing.checkpoint import unpacked

        return str(unpacked())
    if settings.local.tiny_random:
        from app.trial import build_trial_checkpoint

        return str(build_trial_checkpoint(settings.local.tiny_random))
    return settings.local.checkpoint_path


def load_options(settings: Settings) -> Any:
    from app.engines.local.loading.checkpoint import LoadOptions
    from app.weights import AUTO

    local = settings.local
    made_at_start = bool(local.tiny_random or local.trial)
    return LoadOptions(
        cpu_only=local.cpu_only,
        flash_attn2=local.flash_attn2,
        load_in_4bit=local.load_in_4bit,
        # The seeing model is tiny: float32 costs nothing, and its answers are the trained ones.
        dtype="float32" if local.trial and local.dtype == AUTO else local.dtype,
        # A trial checkpoint is made afresh at each start: nothing to keep for the next.
        weights_store=None if made_at_start else user_cache_folder() / "weights",
    )


def build_engine(settings: Settings) -> Engine:
    if settings.backend == "openai":
        return build_openai_engine(settings)
    return build_local_engine(settings)


def page_options(settings: Settings, engine: Engine, secret: str) -> Any:
    from app.ui.layout import PageOptions
    from app.ui.panel import PanelOptions
    from app.ui.sealed import browser_layer_secret

    notes = [engine.notice, cpu_weights_note(engine), cpu_budget_note(settings, engine)]
    examples = {}
    if settings.local.trial:  # questions the seeing model knows, about pictures drawn now
        from app.files import Folder
        from app.seeing.pictures import draw_examples

        examples["examples"] = tuple(draw_examples(Folder.new("qwen-chat-trial-").path))
    return PageOptions(
        **examples,
        title=f"Qwen-VL Chat · {engine.model_name}",
        banner=joined([note for note in notes if note], " ") or None,
        browser_secret=browser_layer_secret(secret),
        keep_files_s=settings.web.keep_files_hours * 3600,
        panel=PanelOptions(
            max_new_tokens=settings.max_new_tokens,
            sampling=engine.sampling_defaults,
            supports_thinking=engine.supports_thinking,
            budget=engine.budget,
        ),
    )


def cpu_weights_note(engine: Engine) -> Said | None:
    """On the CPU: which path computes (app/cpu_weights/int8.py), and how to take the
    other."""
    if not engine.runs_on_cpu:
        return None
    from app.weights import WeightsKind

    if engine.weights == WeightsKind.INT4:
        return say(
            "Running on the CPU with the language model in 4-bit weights, 8-bit where they "
            "matter most (the vision encoder in int8): the fast path, measured closer to float32 "
            "than llama.cpp's usual Q4_K_M models; start with --dtype int8 for closer answers "
            "still, or --dtype float32 for the exact, slower path.",
            "在 CPU 上运行，语言模型使用 4 位权重，最关键的层使用 8 位（视觉编码器为 int8）："
            "这是快速路径，经测量比 llama.cpp 常用的 Q4_K_M 模型更接近 float32；"
            "要更接近的回答请以 --dtype int8 启动，"
            "要精确但较慢的路径请以 --dtype float32 启动。",
        )
    if engine.weights == WeightsKind.INT8:
        return say(
            "Running on the CPU with int8 weights, the fast path (answers differ a little from "
            "float32's); start with --dtype float32 for the exact, slower one.",
            "在 CPU 上以 int8 权重运行，这是快速路径（回答与 float32 略有不同）；"
            "要用精确但较慢的路径，请以 --dtype float32 启动。",
        )
    from app.cpu_weights.blocks import block_kernels_available
    from app.cpu_weights.int8 import int8_kernels_available

    fast_path = int8_kernels_available() or block_kernels_available()
    if engine.weights == WeightsKind.FLOAT32 and fast_path:
        return say(
            "Running on the CPU in float32, the exact path; the default (without --dtype) is "
            "4-bit and int8 weights, several times as fast.",
            "在 CPU 上以 float32 运行，这是精确路径；默认（不加 --dtype）使用 4 位和 int8 权重，"
            "速度快数倍。",
        )
    return None


def cpu_budget_note(settings: Settings, engine: Engine) -> Said | None:
    """Where the app lowered the image budget for the CPU: say so, and how to raise it."""
    given = dict(settings.budget_values)
    if "max_pixels" in given or engine.budget.max_pixels != CPU_MAX_PIXELS:
        return None
    usual = Budget().max_pixels
    cpu, usual_mp = f"{CPU_MAX_PIXELS / 1e6:.1f}", f"{usual / 1e6:.1f}"
    return say(
        f"Running on the CPU: images are read at up to {cpu} megapixels (the usual is "
        f"{usual_mp}), so that a photo's first answer comes in about half a minute rather than "
        "one and a half. Raise it in Settings (Max pixels per image), or start with "
        f"--max-pixels {usual}.",
        f"在 CPU 上运行：图片最多按 {cpu} 百万像素读取（通常为 {usual_mp}），"
        "这样一张照片的首个回答约半分钟就到，而不是一分半钟。"
        f"可在设置中调高（每张图片的最大像素数），或以 --max-pixels {usual} 启动。",
    )


def user_cache_folder() -> Path:
    """The app's folder in the user's cache (~/.cache/qwen-vl-chat)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen-vl-chat"


def state_secret(settings: Settings) -> str:
    """The server's key for the saved chats in browsers (it never leaves the server): kept in a
    file of the user's cache (made on first start), so chats survive a restart; a new one each
    start (chats then lost on restart) where that folder cannot be written."""
    import secrets

    if settings.web.state_secret:
        return settings.web.state_secret
    folder = user_cache_folder()
    path = folder / "browser-state-secret"
    try:
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()
    except OSError as err:
        log.warning("saved chats will not survive a restart: %s", err)
        return _secret_of_this_run()


@functools.cache
def _secret_of_this_run() -> str:
    """One key for the whole run where none can be kept: the page and its head script (the
    saved chats' storage key, app/ui/layout.py) ask for it apart, and must get the same."""
    import secrets

    return secrets.token_urlsafe(24)


def build_app(settings: Settings, engine: Engine) -> Any:
    """The gradio Blocks with its queue set up; launching is the caller's."""
    from gradio.utils import get_upload_folder as gradio_upload_folder

    from app.fair_queue import FairQueue
    from app.files import Folder
    from app.previews import Previews
    from app.replies import RequestRunner, SessionCancels
    from app.settings import trusted_networks
    from app.ui.handlers import ChatHandlers
    from app.ui.layout import ChatPage
    from app.ui.saved import SavedChats
    from app.ui.sealed import StoreSeal

    secret = state_secret(settings)
    options = page_options(settings, engine, secret)
    keep_s = options.keep_files_s
    cancels = SessionCancels()
    turns = FairQueue(capacity=engine.max_concurrent, max_in_line=settings.web.queue_size)
    previews = Previews(gradio_upload_folder(), keep_s)
    requests = RequestRunner(engine, cancels, turns, Folder.new("qwen-chat-", keep_s), previews)
    handlers = ChatHandlers(requests, cancels, options.panel, trusted_networks(settings))
    saved = SavedChats(StoreSeal(secret), Folder.new("qwen-chat-saved-", keep_s))
    demo = ChatPage(handlers, saved, options).build()
    demo.queue(max_size=gradio_queue_bound(settings.web.queue_size), default_concurrency_limit=1)
    return demo


def gradio_queue_bound(fair_line: int) -> int:
    """The bound of gradio's own queue, a backstop behind the fair queue's line.

    gradio's queue holds the events not yet started: each question passes through it on its way
    to the fair queue, which answers a flood in words, and the page's short events wait in it.
    At a bound equal to the fair line a burst of questions on a busy machine met gradio's bare
    "Queue is full" before the fair queue's worded answer; twice the line lets a line's worth of
    questions in transit and as many page events wait."""
    return 2 * fair_line


def launch_kwargs(settings: Settings) -> dict:
    """What `demo.launch` gets from the settings: address, login, upload and request limits;
    the page's content policy."""
    from starlette.middleware import Middleware

    from app.file_ranges import FileRanges
    from app.http_limits import RequestLimits
    from app.login_gate import LoginGate
    from app.login_throttle import LoginThrottle
    from app.session_owners import SessionOwners
    from app.settings import logins, trusted_networks
    from app.ui.layout import migration_script
    from app.ui.page_code import CSS, PAGE_JS
    from app.ui.safety import PAGE_HEAD
    from app.ui.sealed import browser_layer_secret
    from app.ui.words import page_i18n
    from app.upload_space import UploadSpace

    limits = Middleware(
        RequestLimits,
        max_bytes=settings.web.max_request_mb << 20,
        # One upload may carry several files, each within gradio's own max_file_size.
        upload_max_bytes=(settings.web.max_upload_mb << 20) * UPLOAD_FILES + (1 << 20),
        timeout_s=settings.web.body_timeout_s,
    )
    space = Middleware(
        UploadSpace,
        min_free_bytes=settings.web.min_free_disk_mb << 20,
        body_timeout_s=settings.web.body_timeout_s,
    )
    return {
        "server_name": settings.web.server_name,
        "server_port": settings.web.server_port,
        "share": settings.web.share,
        "inbrowser": settings.web.inbrowser,
        "auth": logins(settings) or None,
        "max_file_size": f"{settings.web.max_upload_mb}mb",
        "head": PAGE_HEAD + migration_script(browser_layer_secret(state_secret(settings))),
        "css": CSS,
        "js": PAGE_JS,
        "i18n": page_i18n(),
        # Without gradio's own "Settings" link: the page has one Settings, the app's.
        "footer_links": ["api", "gradio"],
        "mcp_server": settings.web.mcp,
        # Outermost first: a login's wrong passwords are slowed before its body is read again;
        # an upload's partial file is removed once the limits have cut it off.
        "app_kwargs": {
            "middleware": [
                Middleware(LoginThrottle),
                Middleware(LoginGate),
                space,
                limits,
                Middleware(SessionOwners, trusted_proxies=trusted_networks(settings)),
                Middleware(FileRanges),
            ]
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line for every request
    # SIGTERM (docker stop, systemd) ends the app as Ctrl+C does: exit handlers run, so the
    # trial's checkpoint and the app's temporary folders go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _serve(argv)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)  # Ctrl+C, even mid-load: one line
        # Out now, exit handlers run (the trial's folder goes): the interpreter's own teardown
        # around a model still loading on its thread once ended in an abort (SIGABRT).
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        os._exit(130)


def _serve(argv: Sequence[str] | None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from app.engines.base import EngineError

    if settings.local.gpus is not None:  # before torch is imported, which reads it once
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.local.gpus.strip()
    if settings.backend != "openai":
        from app.cpu_weights.threads import quiet_openmp

        quiet_openmp()  # also before torch is imported
    try:
        engine = build_engine(settings)
    except EngineError as err:  # a checkpoint not found, a server not reachable
        print(f"error: {err}", file=sys.stderr)
        return 1
    demo = build_app(settings, engine)
    # gradio's own start-up lines name its own API (`share=True` in `launch()`); these name
    # the app's flags.
    demo.launch(**launch_kwargs(settings), quiet=True, prevent_thread_lock=True)
    print(f"Qwen-VL Chat is at {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"and, for a few days, at {demo.share_url}", flush=True)
    elif not settings.web.share:
        print("(--share for a public link; Ctrl+C to stop)", flush=True)
    demo.block_thread()
    return 0
