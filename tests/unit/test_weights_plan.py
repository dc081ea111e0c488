"""`--dtype` resolved once (app/weights.py): every flag value on a CPU with and without its
kernels, and on a GPU."""

from __future__ import annotations

import pytest

from app.weights import DTYPE_CHOICES, CpuKernels, WeightsKind, plan_weights


def kernels(int8: bool = True, blocks: bool = True) -> CpuKernels:
    return CpuKernels(lambda: int8, lambda: blocks)


def never() -> bool:
    raise AssertionError("a GPU's plan must not time the CPU's kernels")


@pytest.mark.parametrize(
    ("dtype", "int8", "blocks", "kind", "load"),
    [
        ("auto", True, True, WeightsKind.INT4, "bfloat16"),
        ("auto", True, False, WeightsKind.INT8, "bfloat16"),
        ("auto", False, True, WeightsKind.INT4, "bfloat16"),
        ("auto", False, False, WeightsKind.FLOAT32, "float32"),
        ("int4", True, True, WeightsKind.INT4, "bfloat16"),
        ("int4", True, False, WeightsKind.INT8, "bfloat16"),
        ("int8", True, True, WeightsKind.INT8, "bfloat16"),
        ("int8", False, True, WeightsKind.INT8, "bfloat16"),  # int8 layers in 8-bit blocks
        ("int8", False, False, WeightsKind.FLOAT32, "float32"),
        ("float32", True, True, WeightsKind.FLOAT32, "float32"),
        ("bfloat16", True, True, WeightsKind.BFLOAT16, "bfloat16"),
    ],
)
def test_the_cpu_plan(dtype, int8, blocks, kind, load):
    plan = plan_weights(dtype, False, False, False, kernels(int8, blocks))
    assert (plan.kind, plan.load_dtype) == (kind, load)
    assert plan.kind.cpu_kernels == (kind in (WeightsKind.INT8, WeightsKind.INT4))
    assert plan.reason


def test_the_gpu_plan_never_asks_for_the_cpus_kernels():
    gpu = CpuKernels(never, never)
    assert plan_weights("auto", False, True, True, gpu).kind is WeightsKind.BFLOAT16
    assert plan_weights("auto", False, True, False, gpu).kind is WeightsKind.FLOAT16
    assert plan_weights("float32", False, True, True, gpu).kind is WeightsKind.FLOAT32
    nf4 = plan_weights("auto", True, True, True, gpu)
    assert (nf4.kind, nf4.load_dtype) == (WeightsKind.NF4, "bfloat16")
    for cpu_only in ("int8", "int4"):
        with pytest.raises(ValueError, match="CPU path"):
            plan_weights(cpu_only, False, True, True, gpu)


def test_4bit_on_the_cpu_computes_in_float32_or_the_dtype_asked():
    assert plan_weights("auto", True, False, False, kernels()).load_dtype == "float32"
    assert plan_weights("bfloat16", True, False, False, kernels()).load_dtype == "bfloat16"


def test_the_flag_takes_every_kind_but_nf4_and_nothing_else():
    assert set(DTYPE_CHOICES) == {"auto"} | {k.value for k in WeightsKind} - {"4-bit nf4"}
    with pytest.raises(ValueError, match="not one of"):
        plan_weights("int3", False, False, False, kernels())
