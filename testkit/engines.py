"""The local engine as `main` builds it (app/main.py `build_local_engine`), for a checkpoint
path and load options instead of the command line; keywords override what `main` would pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.engines.local import LocalEngine
from app.engines.local.checkpoint import LoadOptions, load_model
from app.engines.local.memory import memory_defaults
from app.engines.local.model_thread import ModelThread
from app.trial import model_label


def load_engine(
    checkpoint: str | Path, options: LoadOptions | None = None, **overrides: Any
) -> LocalEngine:
    """Load `checkpoint` on a model thread of its own and build its engine; the memory-derived
    bounds and the page's name as `main` computes them, unless `overrides` says otherwise."""
    runner = ModelThread()
    path = str(checkpoint)
    model, processor = runner.submit(load_model, path, options or LoadOptions()).result()
    defaults = memory_defaults(model)
    name, notice = model_label(path)
    kwargs: dict[str, Any] = {
        "model_name": name,
        "notice": notice,
        "max_prompt_tokens": defaults.max_prompt_tokens,
        "prefix_cache_bytes": defaults.prefix_cache_bytes,
        "max_batch": defaults.max_batch,
        "max_batch_tokens": defaults.max_batch_tokens,
    }
    return LocalEngine(model, processor, runner=runner, **(kwargs | overrides))
