"""The settings panel, declared once: each field makes the page's component, the API's parameter,
and its part of the request.

Adding a setting is one `Field` here (and, for a new kind of request value, the line in
`request_settings` that reads it); the page, every event, the `/chat` API and the tests follow.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import gradio as gr

from app.engines.base import GenerationParams, SamplingDefaults
from app.media import Budget
from app.ui.words import word


@dataclass(frozen=True)
class PanelOptions:
    """What the panel's bounds and defaults come from: the app's settings and the engine."""

    max_new_tokens: int = 1024
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    supports_thinking: bool = False
    budget: Budget = field(default_factory=Budget)


class PanelError(ValueError):
    """A setting no request can use (not a number, infinite); the message says which."""


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PanelError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise PanelError(f"{value!r} is not a finite number")
    return number


def _number(value: Any, kind: type) -> Any:
    return None if value is None or value == "" else kind(_finite(value))


# Seeds beyond this are folded into it: torch takes seeds of 64 bits.
_SEED_RANGE = 1 << 63


def _seed(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = _finite(value)
    return None if number < 0 else int(number) % _SEED_RANGE


def _flag(value: Any) -> bool | None:
    # From the API, true/false arrive as 1.0/0.0, and "not given" as None.
    return None if value is None or value == "" else bool(value)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _or(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


@dataclass(frozen=True)
class Field:
    """One setting: its name (the API parameter and the request field), label, page widget."""

    name: str
    label: str
    target: Literal["system", "params", "budget"]
    widget: Literal["text", "slider", "number", "checkbox"]
    convert: Callable[[Any], Any]  # the widget's value -> the request's (None: not set)
    make: Callable[[PanelOptions], dict[str, Any]]  # its bounds and default, from the options

    def value(self, raw: Any, options: PanelOptions) -> Any:
        """What the request gets of `raw` (from the page or the API): converted, and kept
        within the field's own bounds, the ones the page's widget offers (a script cannot ask
        for more than the page can); PanelError, naming the field, for what is no number."""
        try:
            value = self.convert(raw)
        except PanelError as err:
            raise PanelError(f"Setting {self.label!r}: {err}.") from err
        bounds = self.make(options)
        if value is None or "maximum" not in bounds:
            return value
        return min(max(value, type(value)(bounds["minimum"])), type(value)(bounds["maximum"]))

    def component(self, options: PanelOptions) -> gr.components.Component:
        kwargs = {"label": word(f"field.{self.name}"), "elem_id": self.name, **self.make(options)}
        if self.widget == "text":
            return gr.Textbox(lines=2, **kwargs)
        if self.widget == "number":
            return gr.Number(precision=0, **kwargs)
        if self.widget == "checkbox":
            return gr.Checkbox(**kwargs)
        return gr.Slider(**kwargs)

    def restored(self, saved: Any, options: PanelOptions) -> Any:
        """The widget's value kept in the browser (`saved`: what the browser sent, so checked
        as any input is), or gr.skip() where there is none it can show."""
        if not isinstance(saved, dict) or self.name not in saved:
            return gr.skip()
        try:
            value = self.value(saved[self.name], options)
        except PanelError:
            return gr.skip()
        if value is None:
            return "" if self.widget == "text" else gr.skip()
        return value

    def api_component(self) -> gr.components.Component:
        """A hidden input of `/chat`: empty by default, which means "as the checkpoint says"."""
        if self.widget == "text":
            return gr.Textbox(value=None, label=self.name)
        # A Number, even for the checkbox: a Checkbox turns "not given" into False.
        return gr.Number(value=None, label=self.name)


Bounds = Callable[[PanelOptions], tuple[float, float, float, float]]
_USUAL = Budget()  # frozen: the usual media budget, read for the pixel slider's maximum


def _slider(name: str, label: str, kind: type, bounds: Bounds, target: Any = "params") -> Field:
    """A slider field; `bounds(options)` gives (minimum, maximum, default, step)."""

    def make(options: PanelOptions) -> dict[str, Any]:
        lo, hi, value, step = bounds(options)
        return {"minimum": lo, "maximum": hi, "value": value, "step": step}

    return Field(name, label, target, "slider", lambda v: _number(v, kind), make)


FIELDS: tuple[Field, ...] = (
    Field("system_prompt", "System prompt", "system", "text", _text, lambda o: {}),
    _slider(
        "max_new_tokens",
        "Max new tokens",
        int,
        lambda o: (1, o.max_new_tokens, o.max_new_tokens, 1),
    ),
    _slider(
        "temperature",
        "Temperature (0 = greedy)",
        float,
        lambda o: (0.0, 2.0, _or(o.sampling.temperature, 0.7), 0.05),
    ),
    _slider("top_p", "Top-p", float, lambda o: (0.05, 1.0, _or(o.sampling.top_p, 1.0), 0.05)),
    _slider("top_k", "Top-k (0 = off)", int, lambda o: (0, 200, _or(o.sampling.top_k, 50), 1)),
    _slider(
        "repetition_penalty",
        "Repetition penalty",
        float,
        lambda o: (1.0, 2.0, _or(o.sampling.repetition_penalty, 1.0), 0.01),
    ),
    Field("seed", "Seed (-1 = random)", "params", "number", _seed, lambda o: {"value": -1}),
    _slider(
        "max_pixels",
        "Max pixels per image (lower it if memory runs out)",
        int,
        # Up to the usual budget (what the CPU note offers), or the launch flag's where higher.
        lambda o: (
            o.budget.min_pixels,
            max(o.budget.max_pixels, _USUAL.max_pixels),
            o.budget.max_pixels,
            28 * 28,
        ),
        target="budget",
    ),
    _slider(
        "video_fps",
        "Video frames per second",
        float,
        lambda o: (0.25, 8.0, o.budget.video_fps, 0.25),
        target="budget",
    ),
    _slider(
        "video_max_frames",
        "Max video frames",
        int,
        lambda o: (
            o.budget.video_min_frames,
            max(o.budget.video_max_frames, 256),
            o.budget.video_max_frames,
            2,
        ),
        target="budget",
    ),
    Field(
        "enable_thinking",
        "Thinking (models whose template takes enable_thinking)",
        "params",
        "checkbox",
        _flag,
        lambda o: {"value": True, "visible": o.supports_thinking},
    ),
)
# How the page lays the fields out, row by row.
ROWS = (
    ("system_prompt",),
    ("max_new_tokens", "temperature", "top_p"),
    ("top_k", "repetition_penalty", "seed"),
    ("max_pixels", "video_fps", "video_max_frames"),
    ("enable_thinking",),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)


@dataclass(frozen=True)
class RequestSettings:
    system_prompt: str | None
    params: GenerationParams
    budget: Budget


def request_settings(values: Mapping[str, Any], options: PanelOptions) -> RequestSettings:
    """What the panel's (or the API's) values ask of a request; missing values are not set."""
    chosen = {f.name: f.value(values.get(f.name), options) for f in FIELDS}
    if not options.supports_thinking:
        chosen["enable_thinking"] = None
    params = GenerationParams(**{f.name: chosen[f.name] for f in FIELDS if f.target == "params"})
    base = options.budget
    changes: dict[str, Any] = {}
    if chosen["max_pixels"]:
        changes["max_pixels"] = max(base.min_pixels, chosen["max_pixels"])
    if chosen["video_fps"]:
        changes["video_fps"] = chosen["video_fps"]
    if chosen["video_max_frames"]:
        changes["video_max_frames"] = max(base.video_min_frames, chosen["video_max_frames"])
    return RequestSettings(chosen["system_prompt"], params, replace(base, **changes))


def page_defaults(options: PanelOptions) -> dict[str, Any]:
    """The value of every field as the page first shows it (scripts and tests send these)."""
    return {f.name: f.make(options).get("value") for f in FIELDS if f.widget != "text"} | {
        "system_prompt": ""
    }


def with_panel_parameters(handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """`handler` (a generator taking the panel as **kwargs), shown to gradio with every field
    as a keyword parameter that defaults to None: API callers may leave any of them out, and
    a field left out means "as the checkpoint says"."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from handler(*args, **kwargs)

    signature = inspect.signature(handler)
    parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    parameters += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in FIELD_NAMES
    ]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper
