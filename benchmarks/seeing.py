"""The seeing model's answers on each CPU path: the share right, per task, beside float32's.

A tiny model is far more sensitive to its weights' format than a 2B one: this is a tripwire (a
path that loses many answers is broken), not the fidelity measure (benchmarks/fidelity.py).
Questions are drawn fresh (app/seeing/pictures.py, seeds the training never used) and asked
through the local engine as the app asks them.

    python -m benchmarks.seeing [--per-task 40]      # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from app.engines.base import ChatRequest
from app.engines.local.loading.checkpoint import LoadOptions
from app.seeing import checkpoint
from app.seeing.pictures import TASKS, questions
from testkit.engines import load_engine

PATHS = ("float32", "int8", "auto")


def answered(engine, question, folder: Path) -> str:
    request = ChatRequest(turns=question.turns(question.make(folder)))
    cancel = threading.Event()
    engine.read_media(request, cancel)
    return "".join(d.text for d in engine.stream(request, cancel)).strip().lower()


def scores(path: str, per_task: int, folder: Path) -> dict[str, float]:
    engine = load_engine(checkpoint.unpacked(), LoadOptions(dtype=path), max_new_tokens=8)
    result = {}
    for task in TASKS:
        asked = questions(task, per_task, seed=3)
        right = 0
        for index, question in enumerate(asked):
            where = folder / f"{path}-{task}-{index}"
            where.mkdir(parents=True)
            right += answered(engine, question, where) == question.answer
        result[task] = right / len(asked)
    return result


def table(per_task: int) -> str:
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in PATHS:
            started = time.perf_counter()
            rows[path] = scores(path, per_task, Path(folder))
            print(f"{path}: {time.perf_counter() - started:.0f} s", flush=True)
    header = "| task | " + " | ".join(f"`--dtype {p}`" for p in PATHS) + " |"
    lines = [header, "|" + " --- |" * (len(PATHS) + 1)]
    for task in TASKS:
        lines.append(f"| {task} | " + " | ".join(f"{rows[p][task]:.0%}" for p in PATHS) + " |")
    mean = {p: sum(rows[p].values()) / len(TASKS) for p in PATHS}
    lines.append("| **all** | " + " | ".join(f"**{mean[p]:.0%}**" for p in PATHS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-task", type=int, default=40)
    args = parser.parse_args()
    print(f"seeing model, {args.per_task} fresh questions a task, right answers:")
    print(table(args.per_task))


if __name__ == "__main__":
    main()
