"""A request's sampling settings as `model.generate` keywords (pure: no model, no torch)."""

from __future__ import annotations

from typing import Any

from app.engines.base import GenerationParams


def generate_kwargs(params: GenerationParams, max_new_tokens: int) -> dict[str, Any]:
    """`generate`'s keywords for `params`: what is not set keeps the checkpoint's own default
    (its generation config); a temperature of 0 or below is greedy decoding."""
    kwargs: dict[str, Any] = {"max_new_tokens": params.bounded_max_new_tokens(max_new_tokens)}
    if params.temperature is not None:
        if params.temperature <= 0:
            kwargs["do_sample"] = False
            # Silence sampling-only defaults that greedy decoding would warn about.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs["do_sample"] = True
            kwargs["temperature"] = params.temperature
    if kwargs.get("do_sample", True):
        if params.top_p is not None:
            kwargs["top_p"] = params.top_p
        if params.top_k is not None:
            kwargs["top_k"] = params.top_k
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    return kwargs
