"""The local engine as `main` builds it (app/engines/local/build.py), for a checkpoint path and
load options instead of the command line; keywords override what `main` would pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engines.local import LocalEngine
from app.engines.local.build import build_local_engine
from app.engines.local.loading.checkpoint import LoadOptions


def load_engine(
    checkpoint: str | Path, options: LoadOptions | None = None, **overrides: Any
) -> LocalEngine:
    """Load `checkpoint` on a model thread of its own and build its engine; the memory-derived
    bounds and the page's name as `main` computes them, unless `overrides` says otherwise."""
    return build_local_engine(str(checkpoint), options or LoadOptions(), **overrides)
