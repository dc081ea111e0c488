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


def expected_cpu_attention() -> str:
    """What the start-up line should name as the CPU path's attention on this machine, from
    what the machine has (not from what the app built): the app's kernel wherever a C++
    compiler is, on its AVX512-BF16 path where the CPU has that instruction set."""
    if not has_cpp_compiler():
        return "PyTorch's attention (no C++ compiler to build the app's)"
    path = "AVX512-BF16" if {"avx512f", "avx512_bf16"} <= cpu_flags() else "portable"
    return f"the app's attention kernel ({path})"


def expected_cpu_path(decoder_layers: int) -> str:
    """The start-up line's account of the default CPU path's kernels for a model of
    `decoder_layers` layers that the app's layers take (every family's but Qwen3.5's), keys and
    values included."""
    if not has_cpp_compiler():
        return f"{expected_cpu_attention()}, keys and values"
    # The layers in blocks of 4 and 8 bits: in each decoder layer q and k (one product), v, o,
    # gate and up (one product), down; then the output layer.
    products = f", its products in {5 * decoder_layers + 1} layers" if has_block_products() else ""
    layers = f", its norms and rotary in {decoder_layers} decoder layers"
    return f"{expected_cpu_attention()}{products}{layers}, keys and values"


def has_block_products() -> bool:
    """Whether the app's block products run here, from what the machine has: a C++ compiler
    and AVX-512 with VNNI."""
    return has_cpp_compiler() and {"avx512f", "avx512bw", "avx512_vnni"} <= cpu_flags()


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in info.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_cpp_compiler() -> bool:
    """Whether a C++ compiler is on the PATH (the app's kernels are built with it)."""
    from app.engines.local.generation.own_kernels import cpp_compiler

    return cpp_compiler() is not None
