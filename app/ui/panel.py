"""The settings panel, declared once: each field makes the page's component, its place on the
page, the API's parameter, and its part of the request.

Adding a sampling setting is one `Field` here (with its GenerationParams field and its label in
app/ui/words.py); a media budget setting is one field of `Budget` (app/media/limits.py) with
`panel=True` in its knob. The page, its rows, every event, the `/chat` API and the tests follow.
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
from app.media.limits import knobs
from app.said import Said, chinese, say
from app.ui.words import CHINESE, ENGLISH, word


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
        raise PanelError(say(f"{value!r} is not a number", f"{value!r} 不是数字")) from None
    if not math.isfinite(number):
        raise PanelError(say(f"{value!r} is not a finite number", f"{value!r} 不是有限的数字"))
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
    target: Literal["system", "params", "budget"]
    widget: Literal["text", "slider", "number", "checkbox"]
    convert: Callable[[Any], Any]  # the widget's value -> the request's (None: not set)
    make: Callable[[PanelOptions], dict[str, Any]]  # its bounds and default, from the options

    @property
    def label(self) -> Said:
        """Its label, what its error messages call it."""
        key = f"field.{self.name}"
        return say(ENGLISH[key], CHINESE[key])

    def value(self, raw: Any, options: PanelOptions) -> Any:
        """What the request gets of `raw` (from the page or the API): converted, and kept
        within the field's own bounds, the ones the page's widget offers (a script cannot ask
        for more than the page can); PanelError, naming the field, for what is no number."""
        try:
            value = self.convert(raw)
        except PanelError as err:
            label = self.label
            raise PanelError(
                say(f"Setting {str(label)!r}: {err}.", f"设置「{label.chinese}」：{chinese(err)}。")
            ) from err
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


def _slider(name: str, kind: type, bounds: Bounds, target: Any = "params") -> Field:
    """A slider field; `bounds(options)` gives (minimum, maximum, default, step)."""

    def make(options: PanelOptions) -> dict[str, Any]:
        lo, hi, value, step = bounds(options)
        return {"minimum": lo, "maximum": hi, "value": value, "step": step}

    return Field(name, target, "slider", lambda v: _number(v, kind), make)


def _budget_sliders() -> Iterator[Field]:
    """A slider for each budget field whose knob is in the panel: from its low bound to its
    high one (or the launch value, where higher), starting at the launch value."""
    for name, (knob, default) in knobs().items():
        if not knob.panel:
            continue

        def bounds(o: PanelOptions, name: str = name, knob: Any = knob) -> Any:
            low = getattr(o.budget, knob.low) if isinstance(knob.low, str) else knob.low
            value = getattr(o.budget, name)
            return low, max(value, knob.high), value, knob.step

        yield _slider(name, type(default), bounds, target="budget")


FIELDS: tuple[Field, ...] = (
    Field("system_prompt", "system", "text", _text, lambda o: {}),
    _slider("max_new_tokens", int, lambda o: (1, o.max_new_tokens, o.max_new_tokens, 1)),
    _slider("temperature", float, lambda o: (0.0, 2.0, _or(o.sampling.temperature, 0.7), 0.05)),
    _slider("top_p", float, lambda o: (0.05, 1.0, _or(o.sampling.top_p, 1.0), 0.05)),
    _slider("top_k", int, lambda o: (0, 200, _or(o.sampling.top_k, 50), 1)),
    _slider(
        "repetition_penalty",
        float,
        lambda o: (1.0, 2.0, _or(o.sampling.repetition_penalty, 1.0), 0.01),
    ),
    Field("seed", "params", "number", _seed, lambda o: {"value": -1}),
    *_budget_sliders(),
    Field(
        "enable_thinking",
        "params",
        "checkbox",
        _flag,
        lambda o: {"value": True, "visible": o.supports_thinking},
    ),
)
FIELD_NAMES = tuple(field.name for field in FIELDS)


def _rows(fields: tuple[Field, ...], width: int = 3) -> tuple[tuple[str, ...], ...]:
    """How the page lays the fields out: text boxes and checkboxes on rows of their own, the
    others `width` to a row, in the order declared."""
    rows: list[tuple[str, ...]] = []
    row: list[str] = []
    for f in fields:
        if f.widget in ("text", "checkbox"):
            rows += [tuple(row), (f.name,)] if row else [(f.name,)]
            row = []
            continue
        row.append(f.name)
        if len(row) == width:
            rows.append(tuple(row))
            row = []
    return tuple([*rows, tuple(row)] if row else rows)


ROWS = _rows(FIELDS)


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
    # Each budget value within its slider's bounds already (Field.value); none: the launch one.
    changes = {f.name: chosen[f.name] for f in FIELDS if f.target == "budget" and chosen[f.name]}
    return RequestSettings(chosen["system_prompt"], params, replace(options.budget, **changes))


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
