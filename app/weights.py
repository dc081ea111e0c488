"""What the local model's weights are: `--dtype` resolved once into a plan (a kind and a reason).

The flag's values, the kinds the page and the start-up line name, and the rule from one to the
other live here, and nowhere else: the loader (app/engines/local/loading/checkpoint.py) follows
the plan, the quantized store (app/cpu_weights/store.py) is named after its kind, the engine
reports it, and `main`'s banner words it. Pure: no torch; what only a loaded library can tell
(whether a kernel runs fast here) is asked through the callables `plan_weights` is given.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class WeightsKind(enum.StrEnum):
    """What the weights are once loaded (the value is how the page and the log name them)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    # The CPU's paths (app/cpu_weights/): every linear layer and the embedding table in int8;
    # or the language model's linear layers in 4- and 8-bit blocks, the vision encoder in int8.
    INT8 = "int8"
    INT4 = "int4"
    NF4 = "4-bit nf4"  # bitsandbytes, on CUDA (--load-in-4bit)

    @property
    def cpu_kernels(self) -> bool:
        """Computed by the app's own CPU kernels (quantized from bfloat16 at load)."""
        return self in (WeightsKind.INT8, WeightsKind.INT4)


AUTO = "auto"
# --dtype's values: "auto" and every kind a flag can ask for (nf4 is --load-in-4bit's).
DTYPE_CHOICES = (AUTO, *(kind.value for kind in WeightsKind if kind is not WeightsKind.NF4))


@dataclass(frozen=True)
class WeightsPlan:
    kind: WeightsKind
    reason: str  # why, in words for the start-up line
    # The torch dtype the checkpoint is read in: the CPU's kernels quantize bfloat16; nf4
    # computes in this one.
    load_dtype: str


@dataclass(frozen=True)
class CpuKernels:
    """Whether the CPU's kernels run here (asked only on a CPU: each times a product)."""

    int8: Callable[[], bool]
    blocks: Callable[[], bool]


def plan_weights(
    dtype: str, load_in_4bit: bool, on_cuda: bool, gpu_bfloat16: bool, kernels: CpuKernels
) -> WeightsPlan:
    """The plan for `--dtype dtype` (and --load-in-4bit) on this machine; ValueError where the
    flags ask for what this machine cannot do."""
    if dtype != AUTO and dtype not in DTYPE_CHOICES:
        raise ValueError(f"--dtype {dtype}: not one of {', '.join(DTYPE_CHOICES)}")
    asked = None if dtype == AUTO else WeightsKind(dtype)
    if on_cuda and asked is not None and asked.cpu_kernels:
        raise ValueError(f"--dtype {asked} is the CPU path; on a GPU use --load-in-4bit")
    if on_cuda:
        default = WeightsKind.BFLOAT16 if gpu_bfloat16 else WeightsKind.FLOAT16
    else:
        default = WeightsKind.FLOAT32
    if load_in_4bit:
        return WeightsPlan(WeightsKind.NF4, "--load-in-4bit", (asked or default).value)
    if asked is not None and not asked.cpu_kernels:
        return WeightsPlan(asked, f"--dtype {dtype}", asked.value)
    if on_cuda:
        return WeightsPlan(default, "the GPU's default", default.value)
    return _cpu_kernels_plan(asked, kernels)


def _cpu_kernels_plan(asked: WeightsKind | None, kernels: CpuKernels) -> WeightsPlan:
    """The CPU's quantized paths, where their kernels run here; float32 where none does. The
    default is the block formats (4 bits, 8 where it matters most: app/cpu_weights/blocks.py)."""
    bfloat16 = WeightsKind.BFLOAT16.value
    if asked is not WeightsKind.INT8 and kernels.blocks():
        why = "the CPU's default" if asked is None else "--dtype int4"
        return WeightsPlan(WeightsKind.INT4, why, bfloat16)
    if kernels.int8() or kernels.blocks():  # int8 layers go to 8-bit blocks where need be
        why = "--dtype int8" if asked is WeightsKind.INT8 else "ONNX Runtime's 4 bits do not run"
        return WeightsPlan(WeightsKind.INT8, why, bfloat16)
    why = "neither oneDNN's int8 nor ONNX Runtime's 8-bit product runs fast here"
    return WeightsPlan(WeightsKind.FLOAT32, why, WeightsKind.FLOAT32.value)
