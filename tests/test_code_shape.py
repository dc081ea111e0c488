"""The shape of the code: functions short enough to read at once, heavy imports where used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
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
        "app.engines.base, app.engines.prefix_cache, app.replies\n"
        "heavy = {'torch', 'transformers', 'gradio', 'av', 'PIL', 'numpy'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
