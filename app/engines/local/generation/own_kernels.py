"""The app's own CPU kernels (own_attention.cpp, own_norms.cpp, own_products.cpp; bound in
own_kernels.cpp), built once per machine.

Attention. PyTorch's flash kernel, which the CPU path used before, gives a token the same
numbers in a prompt and in decoding only for short replies (on tiny checkpoints of four of the
five families the keys drifted apart within 60 generated tokens, tests/engine/test_attention.py),
and for one new token it costs more in setting up than in arithmetic. This kernel computes
every query row with the same instructions whatever the number of rows, so a token read in a
prompt and the same token generated match bit for bit at any length; scores and softmax are
float32 and the values are weighed in bfloat16 pairs as PyTorch's kernel weighs them (1.2e-3
from float32 attention, PyTorch's 2e-3). Measured on Qwen3-VL-2B's shapes (2 cores, AMD EPYC
with AVX512-BF16; docs/cpu.md), a layer, keys not in the cache as in a step: one new token over
400 cached tokens 0.16 ms against the flash kernel's 0.42, over 2,000 tokens 0.44 against
1.01; prompts of 400 tokens 7.4 ms against 8.8, of 2,150 tokens 195 against 135 (slower
there; in the model the long prompt's first token did not move against llama-server's).

Norms and rotary embedding (own_layers.py calls them): one call where PyTorch's take six to
twelve small operations, each slow in a decode step (own_norms.cpp says why); exact per row too.

Products with weights in blocks of 4 or 8 bits (app/cpu_weights/blocks.py calls them, on CPUs
with AVX-512 VNNI; ONNX Runtime's MatMulNBits elsewhere): exact per row, and faster than
MatMulNBits where measured, most with several rows (own_products.cpp says why).

They are compiled with PyTorch's C++ extension tools the first time the CPU path loads on a
machine (about 30 seconds), kept in PyTorch's extension folder (`TORCH_EXTENSIONS_DIR`, else
~/.cache/torch_extensions) under a name made of the sources', PyTorch's and the CPU's
fingerprints, and loaded from there on later starts. Where they cannot be built (no C++
compiler, as on many Windows laptops) the CPU path runs PyTorch's attention and transformers'
layers, and the start-up line says which.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in ("own_kernels.cpp", "own_attention.cpp", "own_norms.cpp", "own_products.cpp")
)
# A build takes about 30 s on 2 cores; a lock this old was left by a start that was stopped.
STALE_LOCK_S = 600.0


@dataclass(frozen=True)
class OwnKernels:
    """The built kernels, as own_attention.cpp, own_norms.cpp and own_products.cpp describe
    them."""

    module: Any

    def attend(self, query: Any, key: Any, value: Any, scale: float) -> Any:
        return self.module.attend(query, key, value, scale)

    def rms_norm(self, x: Any, weight: Any, eps: float) -> Any:
        return self.module.rms_norm(x, weight, eps)

    def norm_rope(self, x: Any, weight: Any | None, eps: float, cos: Any, sin: Any) -> Any:
        return self.module.norm_rope(x, weight, eps, cos, sin)

    def block_products_fast(self) -> bool:
        """Whether the block products run on this CPU (AVX-512 VNNI)."""
        return bool(self.module.block_products_fast())

    def repack_blocks(self, levels: Any, scales: Any, zeros: Any, bits: int, block: int) -> Any:
        """Block weights (levels [out, blocks x block] and zero points [out, blocks], uint8, a
        value a byte; scales [out, blocks]) in the product kernel's order."""
        return self.module.block_repack(levels, scales, zeros, bits, block)

    def block_product(self, x: Any, packed: Any, bits: int, block: int) -> Any:
        """x [rows, in] float32 times weights `repack_blocks` made: [rows, out rounded up to
        64] float32."""
        return self.module.block_product(x, packed, bits, block)

    def fast_for(self, dim: int) -> bool:
        """Whether heads `dim` wide take the AVX512-BF16 path (else the portable one)."""
        return bool(self.module.fast_path_for(dim))


@dataclass(frozen=True)
class KernelChoice:
    """The kernels (None: PyTorch's attention and transformers' layers instead) and why, for
    the start-up line."""

    kernels: OwnKernels | None
    reason: str


def build_kernels() -> KernelChoice:
    """The kernels for this machine: built on the first call on a machine, loaded after."""
    if cpp_compiler() is None:
        return KernelChoice(None, "PyTorch's attention (no C++ compiler to build the app's)")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    # -march=native: the build is for this CPU only, hence the CPU in the name (a home folder
    # shared by machines of different CPUs gets one build each). -ffp-contract=off: no
    # multiply and add fused where the source does not say so, so a row's instructions never
    # depend on where the compiler inlined them.
    flags = ["-O3", "-ffp-contract=off", *(["-march=native"] if x86 else [])]
    name = f"qwen_vl_chat_kernels_{_fingerprint(flags)}"
    # Its import warns that no CUDA runtime is found: true of every CPU machine, and no concern
    # of a kernel for the CPU.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
        folder.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(folder, time.time())
        if not (folder / f"{name}.so").exists():
            log.info("building the app's CPU kernels for this CPU (once, about 30 s)")
        module = load(
            name=name,
            sources=[str(source) for source in SOURCES],
            extra_cflags=flags,
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 - any build failure: PyTorch's kernel instead
        last = str(err).strip().splitlines()[-1:] or ["unknown error"]
        log.warning("could not build the app's CPU kernels (%s); using PyTorch's", last[0])
        return KernelChoice(None, "PyTorch's attention (the app's kernel failed to build)")
    kernels = OwnKernels(module)
    path = "AVX512-BF16" if kernels.fast_for(128) else "portable"
    return KernelChoice(kernels, f"the app's attention kernel ({path})")


def cpp_compiler() -> str | None:
    """The C++ compiler on the PATH that PyTorch's extension tools would build with, if any."""
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def clear_stale_lock(folder: Path, now: float) -> None:
    """Remove a build's lock file that no process holds and that is older than any build
    takes (STALE_LOCK_S). PyTorch before 2.14 waits for ever while the file exists, and a
    start stopped while it built left it; later PyTorch locks the file instead (its existence
    blocks nothing), so a lock a build holds is kept."""
    lock = folder / "lock"
    try:
        age = now - lock.stat().st_mtime
    except OSError:
        return  # no lock
    if age <= STALE_LOCK_S:
        return  # a build may be under way
    try:
        import fcntl
    except ImportError:  # Windows: PyTorch's own wait decides
        return
    with lock.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # held by a build under way
        log.debug("removing the CPU kernels' build lock (%.0f s old, held by none)", age)
        lock.unlink(missing_ok=True)


def _fingerprint(flags: list[str]) -> str:
    """The sources', the flags', PyTorch's and this CPU's fingerprint, for the build's name."""
    import torch

    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(" ".join(flags).encode())
    # Its version (headers, ABI) and where it is installed: the build's commands name its
    # headers' folder, so two environments sharing one folder would rebuild at each switch.
    digest.update(f"{torch.__version__} {torch.__file__}".encode())
    digest.update(_cpu_features().encode())
    return digest.hexdigest()[:16]


def _cpu_features() -> str:
    """This CPU's model and feature flags where the system says (Linux), else its platform."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features")
    lines = [line for line in info.splitlines() if line.split(":")[0].strip() in wanted]
    return "\n".join(dict.fromkeys(lines))  # the first CPU's lines (all cores alike)
