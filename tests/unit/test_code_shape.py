"""The shape of the code: functions short enough to read at once, heavy imports where used."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_app_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(APP.parent)}:{line} {name} ({length} lines)"
        for path in sorted(APP.rglob("*.py"))
        for name, line, length in _functions(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_pure_parts_import_without_torch_gradio_or_av():
    code = (
        "import sys, app.settings, app.conversation, app.render, app.grounding, app.media, "
        "app.engines.base, app.engines.local.generation.prefix_cache, app.replies, app.main, "
        "app.engines.local.loading.checkpoint, app.weights, app.cpu_weights.threads\n"
        "heavy = {'torch', 'transformers', 'gradio', 'av', 'PIL', 'numpy'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# What the local engine uses of transformers' and Qwen-VL's internals: only its adapter
# (app/engines/local/generation/internals.py) and the KV cache's operations (kv.py) may name them.
INTERNALS = (
    "rope_deltas",
    "get_image_features",
    "get_video_features",
    "mm_encoder_outputs",
    "cache_utils",
    "DynamicLayer",
    "DynamicCache",
    "language_model",
    "model.model",
    ".visual",
)
_INTERNAL = re.compile("|".join(re.escape(name) + r"\b" for name in INTERNALS))
ADAPTERS = {"app/engines/local/generation/internals.py", "app/engines/local/generation/kv.py"}


def test_only_the_adapter_touches_transformers_internals():
    touching = [
        f"{path.relative_to(APP.parent)}: {found.group()}"
        for path in sorted(APP.rglob("*.py"))
        if str(path.relative_to(APP.parent)) not in ADAPTERS
        for found in _INTERNAL.finditer(path.read_text())
    ]
    assert touching == []


def _app_imports(path: Path) -> set[str]:
    """The app's modules that `path` imports, at its top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name == "app" or name.startswith("app.")}


def test_the_cpu_weight_formats_import_nothing_else_of_the_app():
    package = APP / "cpu_weights"
    outside = {
        f"{path.name}: {name}"
        for path in sorted(package.glob("*.py"))
        for name in _app_imports(path)
        if not name.startswith("app.cpu_weights")
    }
    assert outside == set()
    code = (
        "import sys, app.cpu_weights.store, app.cpu_weights.threads\n"
        "print(sorted(m for m in sys.modules if m.startswith('app.') "
        "and not m.startswith('app.cpu_weights')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_request_side_never_imports_the_loading_side():
    local = APP / "engines" / "local"
    request_side = [local / "engine.py", *sorted((local / "generation").glob("*.py"))]
    loading = {
        f"{path.name}: {name}"
        for path in request_side
        for name in _app_imports(path)
        if name.startswith(("app.engines.local.loading", "app.cpu_weights"))
    }
    assert loading == set()
