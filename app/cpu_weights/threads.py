"""The CPU's thread pools, set before PyTorch is imported (so this module imports nothing)."""

from __future__ import annotations

import os


def quiet_openmp() -> None:
    """Let PyTorch's OpenMP threads sleep between parallel regions: ONNX Runtime keeps a pool of
    its own (app/cpu_weights/blocks.py), and two spinning pools fight for the cores between the
    layers (200 ms a token instead of 62). Only takes effect before PyTorch is imported; a value
    the user set is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
