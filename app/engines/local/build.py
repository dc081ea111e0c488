"""The local engine built from a checkpoint: loaded on its model thread, bounded by memory.

The one builder of a LocalEngine: `main` calls it with the settings' values, the tests
(testkit/engines.py) with theirs, so both get the engine the app runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.engines.local.engine import LocalEngine
from app.engines.local.loading.checkpoint import LoadOptions, load_model
from app.engines.local.loading.memory import memory_defaults
from app.engines.local.model_thread import ModelThread
from app.media import Budget
from app.trial import model_label


def build_local_engine(
    checkpoint: str,
    options: LoadOptions,
    budget_for: Callable[[bool], Budget] | None = None,
    **given: Any,
) -> LocalEngine:
    """`checkpoint` loaded on a model thread of its own (model_thread.py says why every forward
    pass runs there) and its engine. LocalEngine's keywords in `given` override what the memory
    free after loading gives (a None: the default); `budget_for(on_cpu)` is the media budget
    for where the model landed."""
    runner = ModelThread()
    loaded = runner.submit(load_model, checkpoint, options).result()
    defaults = memory_defaults(loaded.model)
    name, notice = model_label(checkpoint)
    kwargs: dict[str, Any] = {
        "model_name": name,
        "notice": notice,
        "max_prompt_tokens": defaults.max_prompt_tokens,
        "prefix_cache_bytes": defaults.prefix_cache_bytes,
        "max_batch": defaults.max_batch,
        "max_batch_tokens": defaults.max_batch_tokens,
    }
    kwargs |= {key: value for key, value in given.items() if value is not None}
    if budget_for is not None:
        kwargs["budget"] = budget_for(loaded.model.device.type == "cpu")
    return LocalEngine(loaded, runner=runner, **kwargs)
