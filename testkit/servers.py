"""Model servers as the tests and benchmarks run them: waiting for one to answer, and llama.cpp's
converter and `llama-server` (scripts/llama_cpp.sh builds them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.3


def wait_until_ready(
    process: subprocess.Popen, url: str, name: str, timeout_s: float, log: Path | None = None
) -> None:
    """Return once `url` answers 200; raise (with the end of `log`) if `process` exits first or
    `timeout_s` passes."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None else ""
            raise RuntimeError(f"{name} exited:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"{name} did not start in {timeout_s:.0f} s")


def convert_to_gguf(llama_cpp: Path, checkpoint: Path, out: Path, *, mmproj: bool) -> Path:
    """`checkpoint` in f16 GGUF by llama.cpp's own converter: the language model, or with
    `mmproj` its vision part (the projector file llama-server's --mmproj takes)."""
    command = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(checkpoint)]
    command += ["--outtype", "f16", *(["--mmproj"] if mmproj else []), "--outfile", str(out)]
    env = dict(os.environ, PYTHONPATH=str(llama_cpp / "gguf-py"))
    subprocess.run(command, env=env, check=True, capture_output=True)
    return out


def llama_server_command(llama_cpp: Path, model: Path, mmproj: Path, port: int) -> list[str]:
    """`llama-server` serving `model` with its projector on a loopback port."""
    command = [str(llama_cpp / "build" / "bin" / "llama-server"), "-m", str(model)]
    command += ["--mmproj", str(mmproj), "--port", str(port), "--no-webui"]
    # Its AMX weight repacking (built with -march=native on an AMX Xeon) segfaults at start in
    # this version (build 11434); without it the AVX-512 kernels run. Elsewhere its repacked
    # kernels are what users get, and faster (on an AMD EPYC: 27-30 tok/s against 20-22).
    return [*command, "--no-repack"] if cpu_has_amx() else command


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX (Linux's flags; False where they cannot be read)."""
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
