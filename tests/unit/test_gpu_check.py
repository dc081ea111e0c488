"""The GPU check's dry run: every step on a tiny model on the CPU, so that the script is ready
the day a GPU is lent (scripts/gpu_check.sh, benchmarks/gpu_check.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_every_step_on_the_cpu():
    ran = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in ran.stdout.splitlines()
        if line.startswith("| ")
    }
    for check in ("photo turn, first token", "decode", "follow-up, first token", "out of memory"):
        assert check in rows, ran.stdout
    assert "| equal |" in rows["greedy reply with the cache"]
    assert (
        "advice given" in rows["out of memory"] and "next request served" in rows["out of memory"]
    )
    assert "cached" in rows["follow-up, first token"]
    # On the CPU each row of a batch is computed on its own: every reply as alone.
    assert "8 of 8 replies as alone" in rows["8 users at once (one batch)"]
