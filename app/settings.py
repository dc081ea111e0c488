"""One typed Settings object; command-line flags and environment variables map onto it.

Every flag can also be set by an environment variable named ``QWEN_DEMO_<FLAG>`` (for Docker and
Hugging Face Spaces), e.g. ``QWEN_DEMO_CHECKPOINT_PATH`` or ``QWEN_DEMO_LOAD_IN_4BIT=1``. A flag
given on the command line wins over the environment. Validation happens here, before anything
heavy is imported or loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from app.engines.base import FAMILIES
from app.media import Budget
from app.media.limits import flag_of, knobs
from app.trial import TRIAL_FAMILIES
from app.weights import AUTO, DTYPE_CHOICES

DEFAULT_CHECKPOINT = "Qwen/Qwen3-VL-2B-Instruct"
ENV_PREFIX = "QWEN_DEMO_"
# Names other hosts already set: Hugging Face Spaces and Docker setups set gradio's own. They
# count only where the QWEN_DEMO_ name is not set.
ENV_ALIASES = {"server_name": "GRADIO_SERVER_NAME", "server_port": "GRADIO_SERVER_PORT"}
# Fields whose default is None but whose environment value is a number.
_ENV_KINDS: dict[str, type] = {
    "max_prompt_tokens": int,
    "prefix_cache_gb": float,
    "max_batch": int,
}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_SWITCH = {"action": "store_true", "default": None}
# A flag: its names and argparse options. Each sets the field of its name in its group.
Flag = tuple[tuple[str, ...], dict[str, Any]]


@dataclass(frozen=True)
class LocalModelSettings:
    """The model this process runs (--backend local): which, where, in what weights, and the
    bounds of its prompts, its batch and its prefix cache."""

    checkpoint_path: str = DEFAULT_CHECKPOINT
    cpu_only: bool = False
    gpus: str | None = None  # CUDA indices, comma-separated (None: every visible one)
    flash_attn2: bool = False
    load_in_4bit: bool = False
    dtype: str = AUTO  # app/weights.py resolves it
    trial: bool = False
    tiny_random: str | None = None
    # None: from the model's context and the free memory (app/engines/local/loading/memory.py);
    # a prefix cache of 0 GB is off.
    max_prompt_tokens: int | None = None
    max_batch: int | None = None
    prefix_cache_gb: float | None = None


LOCAL_FLAGS: tuple[Flag, ...] = (
    (
        ("-c", "--checkpoint-path"),
        {"help": f"hub id or local folder (default {DEFAULT_CHECKPOINT})"},
    ),
    (("--cpu-only",), _SWITCH | {"help": "run on the CPU even with a GPU"}),
    (
        ("--gpus",),
        {
            "metavar": "0,1,...",
            "help": "the GPUs to use (default: every visible one, as CUDA_VISIBLE_DEVICES "
            "says); a model too big for one is spread over them",
        },
    ),
    (
        ("--flash-attn2",),
        _SWITCH
        | {
            "help": "use flash-attention 2 (sdpa, with a warning, where flash-attn is missing or "
            "the GPU is older than Ampere)"
        },
    ),
    (("--load-in-4bit",), _SWITCH | {"help": "bitsandbytes nf4 weights (CUDA, or the CPU)"}),
    (
        ("--dtype",),
        {
            "choices": list(DTYPE_CHOICES),
            "help": "weights' dtype (auto: the fast path on a CPU, int4 where ONNX Runtime "
            "runs, else int8; bfloat16 on a GPU. int4: the language model's linear layers "
            "in 4 bits, the vision encoder's in int8; int8: all in int8; float32: the exact "
            "CPU path)",
        },
    ),
    (
        ("--trial",),
        _SWITCH
        | {
            "help": "offline trial: a tiny Qwen3-VL trained on drawn pictures (colours, shapes, "
            "dots, corners, a clip, a PDF) that answers questions about such pictures",
        },
    ),
    (
        ("--tiny-random",),
        {
            "metavar": "FAMILY",
            "choices": list(TRIAL_FAMILIES),
            "help": "offline trial: build a tiny random checkpoint of FAMILY and serve it",
        },
    ),
    (
        ("--max-prompt-tokens",),
        {
            "type": int,
            "help": "longest prompt read, in tokens (default: the model's context, or less "
            "where the free memory cannot hold it)",
        },
    ),
    (
        ("--max-batch",),
        {
            "type": int,
            "help": "replies the local model decodes together, one batch a token (default 4 on "
            "a CPU, 16 on a GPU); more wait their turn, user by user",
        },
    ),
    (
        ("--prefix-cache-gb",),
        {
            "type": float,
            "help": "memory for the model state of earlier turns, reused by follow-ups "
            "(default: a quarter of the free memory, at most 8; 0 turns it off)",
        },
    ),
)


@dataclass(frozen=True)
class RemoteServerSettings:
    """An OpenAI-compatible server that computes instead (--backend openai): where, which
    model, how video goes to it, how many requests at once and how long each may take."""

    api_base: str | None = None
    api_key: str | None = None
    model: str | None = None
    video_as: str = "frames"
    family: str | None = None
    max_concurrent: int = 32
    server_first_token_s: float = 300.0
    server_silence_s: float = 60.0
    server_reply_s: float = 1800.0


REMOTE_FLAGS: tuple[Flag, ...] = (
    (("--api-base",), {"help": "the server's URL for --backend openai, e.g. http://h:8000/v1"}),
    (("--api-key",), {"help": "bearer key for the server (or QWEN_DEMO_API_KEY)"}),
    (("--model",), {"help": "the served model's name (default: the first one in /v1/models)"}),
    (
        ("--video-as",),
        {
            "choices": ["frames", "url"],
            "help": "send video to the server as sampled frames (default) or as a video_url part",
        },
    ),
    (
        ("--family",),
        {
            "choices": list(FAMILIES),
            "help": "the served model's family for --backend openai (default: read from its "
            "name); says how its boxes are scaled",
        },
    ),
    (
        ("--max-concurrent",),
        {
            "type": int,
            "help": "requests sent to the --backend openai server at once (default 32); more "
            "wait their turn, user by user",
        },
    ),
    (
        ("--server-first-token-s",),
        {
            "type": float,
            "help": "seconds the server may take to its first token (default 300)",
        },
    ),
    (
        ("--server-silence-s",),
        {
            "type": float,
            "help": "seconds the server may go without a token once it has sent one; keep-alive "
            "comments do not count (default 60)",
        },
    ),
    (
        ("--server-reply-s",),
        {"type": float, "help": "seconds one reply from the server may take (default 1800)"},
    ),
)


@dataclass(frozen=True)
class WebServerSettings:
    """The page and its HTTP server: address, logins, the queue, and the limits that keep one
    user from taking the server from the others."""

    share: bool = False
    inbrowser: bool = False
    server_port: int = 7860
    server_name: str = "127.0.0.1"
    queue_size: int = 64
    auth: str | None = None
    auth_file: str | None = None
    mcp: bool = False
    state_secret: str | None = None  # the key of chats saved in browsers (default: a file)
    max_upload_mb: int = 200
    keep_files_hours: float = 24.0
    trusted_proxies: str | None = None  # proxies whose X-Forwarded-For is believed
    max_request_mb: int = 32
    body_timeout_s: float = 120.0
    min_free_disk_mb: int = 256


WEB_FLAGS: tuple[Flag, ...] = (
    (("--share",), _SWITCH | {"help": "create a public gradio.live link"}),
    (("--inbrowser",), _SWITCH | {"help": "open the app in a browser"}),
    (("--server-port",), {"type": int, "help": "port (default 7860)"}),
    (("--server-name",), {"help": "address to listen on (default 127.0.0.1; 0.0.0.0 for all)"}),
    (
        ("--queue-size",),
        {
            "type": int,
            "help": "requests that may be in line at once, waiting or answered, half of them "
            "from one user at most; more are told to retry (default 64)",
        },
    ),
    (
        ("--auth",),
        {
            "metavar": "USER:PASSWORD",
            "help": "protect the UI and the API with a login (several: comma-separated)",
        },
    ),
    (("--auth-file",), {"help": "a file of USER:PASSWORD lines, one login each"}),
    (("--mcp",), _SWITCH | {"help": "also serve the chat as an MCP tool (for agents)"}),
    (
        ("--state-secret",),
        {
            "help": "key encrypting the chats saved in browsers (default: kept in "
            "~/.cache/qwen-vl-chat; give one when that folder is not kept, as in some containers)"
        },
    ),
    (
        ("--max-upload-mb",),
        {"type": int, "help": "largest file a user may upload, in MB (default 200)"},
    ),
    (
        ("--keep-files-hours",),
        {
            "type": float,
            "help": "hours uploaded and generated files are kept on the server (default 24)",
        },
    ),
    (
        ("--trusted-proxies",),
        {
            "metavar": "ADDRESSES",
            "help": "comma-separated addresses or networks of proxies whose X-Forwarded-For "
            "header names the user (default: none; every peer is the user)",
        },
    ),
    (
        ("--max-request-mb",),
        {"type": int, "help": "largest request body other than an upload, in MB (default 32)"},
    ),
    (
        ("--body-timeout-s",),
        {"type": float, "help": "seconds a request body may take to arrive (default 120)"},
    ),
    (
        ("--min-free-disk-mb",),
        {
            "type": int,
            "help": "free disk, in MB, that an upload must leave in the upload folder; one that "
            "would leave less is refused with words (default 256)",
        },
    ),
)


@dataclass(frozen=True)
class Settings:
    """Everything the app was started with: what both engines share, and each audience's group."""

    backend: str = "local"  # transformers in this process, or an OpenAI-compatible server
    max_new_tokens: int = 1024
    decode_timeout_s: float = 30.0  # seconds one attached file may take to decode
    # The media budget's values given by a flag or the environment, as (field, value) pairs;
    # the rest are Budget's defaults (app/media/limits.py declares them and their flags).
    budget_values: tuple[tuple[str, Any], ...] = ()
    local: LocalModelSettings = field(default_factory=LocalModelSettings)
    remote: RemoteServerSettings = field(default_factory=RemoteServerSettings)
    web: WebServerSettings = field(default_factory=WebServerSettings)


COMMON_FLAGS: tuple[Flag, ...] = (
    (
        ("--backend",),
        {
            "choices": ["local", "openai"],
            "help": "local: transformers in this process (default); openai: an "
            "OpenAI-compatible server",
        },
    ),
    (
        ("--max-new-tokens",),
        {"type": int, "help": "default and upper bound of a reply's length (default 1024)"},
    ),
    (
        ("--decode-timeout-s",),
        {
            "type": float,
            "help": "seconds one attached file may take to decode; slower ones are refused "
            "(default 30)",
        },
    ),
)
# The media budget's flags, one per Budget field (app/media/limits.py declares them).
BUDGET_FLAGS: tuple[Flag, ...] = tuple(
    ((flag_of(name),), {"type": type(default), "help": f"{knob.help} (default {default})"})
    for name, (knob, default) in knobs().items()
)
# Each audience's flags under a title (--help and docs/flags.md show them so), and the group of
# Settings they fill (None: Settings' own fields; the budget's go to budget_values).
FLAG_GROUPS: tuple[tuple[str, str | None, tuple[Flag, ...]], ...] = (
    ("Both engines", None, COMMON_FLAGS),
    ("The local model (--backend local)", "local", LOCAL_FLAGS),
    ("A remote server (--backend openai)", "remote", REMOTE_FLAGS),
    ("The web server", "web", WEB_FLAGS),
    ("The media budget (the page's Settings can lower it per request)", "budget", BUDGET_FLAGS),
)
GROUP_CLASSES: dict[str, type] = {
    "local": LocalModelSettings,
    "remote": RemoteServerSettings,
    "web": WebServerSettings,
}


class SettingsError(ValueError):
    """A setting that cannot work; the message is for the person who started the app."""


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} is not a yes/no value (use 1/0, true/false)")


_SWITCH = {"action": "store_true", "default": None}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a SettingsError, printed by main as "error: ..."),
    not its usage block."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (--help lists the flags)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="web_demo_mm.py",
        description="Chat with a Qwen vision-language model in the browser.",
        epilog=f"Each flag can also be set by the environment variable {ENV_PREFIX}<FLAG>, "
        f"e.g. {ENV_PREFIX}CHECKPOINT_PATH.",
    )
    for title, _, flags in FLAG_GROUPS:
        group = parser.add_argument_group(title)
        for names, options in flags:
            group.add_argument(*names, **options)
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags over environment over defaults; raises SettingsError for values that cannot work."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    groups = {name: kind(**_values_of(kind, args, environ)) for name, kind in GROUP_CLASSES.items()}
    budget = {}
    for name, (_, default) in knobs().items():
        value = _given(name, type(default), False, args, environ)
        if value is not None:
            budget[name] = value
    own = _values_of(Settings, args, environ)
    settings = Settings(**own, budget_values=tuple(budget.items()), **groups)
    validate(settings)
    return settings


def _values_of(kind: type, args: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The values given for `kind`'s fields (a settings dataclass), by flag or environment."""
    values: dict[str, Any] = {}
    for one in fields(kind):
        if one.name == "budget_values" or one.name in GROUP_CLASSES:
            continue
        default_is_none = one.default is None
        value_kind = _ENV_KINDS.get(one.name) or (str if default_is_none else type(one.default))
        value = _given(one.name, value_kind, default_is_none, args, environ)
        if value is not None:
            values[one.name] = value
    return values


def _given(
    name: str, kind: type, empty_is_none: bool, args: Mapping[str, Any], environ: Mapping[str, str]
) -> Any:
    """The value of setting `name` from its flag, else from the environment; None if neither."""
    if args.get(name) is not None:
        return args[name]
    raw = environ.get(_env_name(name))
    if raw is None and name in ENV_ALIASES:
        raw = environ.get(ENV_ALIASES[name])
    if raw is None:
        return None
    if kind is bool:
        return _parse_bool(_env_name(name), raw)
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError as err:
            raise SettingsError(f"{_env_name(name)}={raw!r} is not a valid number") from err
    return raw or None if empty_is_none else raw


def validate(settings: Settings) -> None:
    if settings.max_new_tokens < 1:
        raise SettingsError("--max-new-tokens must be at least 1")
    if not 0 < settings.web.server_port < 65536:
        raise SettingsError("--server-port must be between 1 and 65535")
    problems = Budget(**dict(settings.budget_values)).problems()
    if problems:
        raise SettingsError("; ".join(problems))
    if settings.local.trial and settings.local.tiny_random:
        raise SettingsError("--trial and --tiny-random each choose the model: give one")
    if settings.web.max_upload_mb < 1:
        raise SettingsError("--max-upload-mb must be at least 1")
    logins(settings)  # a malformed login stops the app here, not at the first visit
    if settings.web.queue_size < 1:
        raise SettingsError("--queue-size must be at least 1")
    if settings.remote.max_concurrent < 1:
        raise SettingsError("--max-concurrent must be at least 1")
    if settings.local.max_batch is not None and settings.local.max_batch < 1:
        raise SettingsError("--max-batch must be at least 1")
    server_times = (
        settings.remote.server_first_token_s,
        settings.remote.server_silence_s,
        settings.remote.server_reply_s,
    )
    if min(server_times) <= 0:
        raise SettingsError(
            "--server-first-token-s, --server-silence-s, --server-reply-s must be positive"
        )
    if settings.backend == "openai" and not settings.remote.api_base:
        raise SettingsError("--backend openai needs --api-base (the server's URL)")
    if settings.local.max_prompt_tokens is not None and settings.local.max_prompt_tokens < 16:
        raise SettingsError("--max-prompt-tokens must be at least 16")
    if settings.local.prefix_cache_gb is not None and settings.local.prefix_cache_gb < 0:
        raise SettingsError("--prefix-cache-gb must be 0 (off) or more")
    if settings.decode_timeout_s <= 0 or settings.web.body_timeout_s <= 0:
        raise SettingsError("--decode-timeout-s and --body-timeout-s must be positive")
    if settings.web.keep_files_hours <= 0:
        raise SettingsError("--keep-files-hours must be positive")
    if settings.web.max_request_mb < 1:
        raise SettingsError("--max-request-mb must be at least 1")
    if settings.web.min_free_disk_mb < 0:
        raise SettingsError("--min-free-disk-mb must be 0 or more")
    trusted_networks(settings)
    if settings.local.gpus is not None and not re.fullmatch(
        r"\d+(,\d+)*", settings.local.gpus.strip()
    ):
        raise SettingsError("--gpus takes GPU numbers separated by commas, e.g. --gpus 0,1")
    if settings.web.mcp and (settings.web.auth or settings.web.auth_file):
        raise SettingsError(
            "--mcp cannot be used with a login (--auth, --auth-file): gradio's MCP server "
            "calls the app through a client that carries no login, so every tool call would "
            "fail. Serve MCP from a second instance without a login on a private address."
        )
    if (
        settings.local.load_in_4bit
        and settings.local.dtype == "float16"
        and settings.local.cpu_only
    ):
        raise SettingsError("4-bit on the CPU computes in float32 or bfloat16, not float16")


def trusted_networks(settings: Settings) -> tuple[IPNetwork, ...]:
    """The networks of --trusted-proxies (an address alone is a network of one)."""
    networks = []
    for entry in (settings.web.trusted_proxies or "").split(","):
        if entry.strip():
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as err:
                raise SettingsError(f"--trusted-proxies: {entry.strip()!r} is no address") from err
    return tuple(networks)


def logins(settings: Settings) -> list[tuple[str, str]]:
    """The (user, password) pairs from --auth and --auth-file; empty means no login."""
    entries: list[str] = []
    if settings.web.auth:
        entries += [e for e in settings.web.auth.split(",") if e.strip()]
    if settings.web.auth_file:
        try:
            text = open(settings.web.auth_file, encoding="utf-8").read()  # noqa: SIM115
        except OSError as err:
            raise SettingsError(f"--auth-file {settings.web.auth_file}: {err.strerror}") from err
        entries += [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    pairs = []
    for entry in entries:
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise SettingsError("each login must be USER:PASSWORD with both parts non-empty")
        pairs.append((user, password))
    return pairs
