"""A loaded model as the loader hands it over: what the engine needs, and nothing of how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.weights import WeightsPlan


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers image-text-to-text model, ready for inference
    processor: Any
    weights: WeightsPlan  # what its weights are, and why
