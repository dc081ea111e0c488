"""The command line, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from testkit.engines import expected_cpu_path
from testkit.launch import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    # No hub and no cache: an endpoint on a closed loopback port and an empty home.
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), **extra)
    return env


def _demo(
    *flags: str, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`python web_demo_mm.py FLAGS` run to its end, as a user starts it."""
    return subprocess.run(
        [sys.executable, "web_demo_mm.py", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_help_lists_the_flags():
    out = _demo("--help")
    assert out.returncode == 0
    for flag in (
        "--checkpoint-path", "--cpu-only", "--flash-attn2", "--share", "--inbrowser",
        "--server-port", "--server-name", "--load-in-4bit", "--max-new-tokens", "--tiny-random",
    ):  # fmt: skip
        assert flag in out.stdout


def test_missing_checkpoint_without_network_exits_fast_with_one_clear_line(tmp_path):
    started = time.perf_counter()
    out = _demo("-c", "Qwen/Qwen3-VL-2B-Instruct", env=_env(tmp_path), timeout=60)
    # Not a timing: without network a hub lookup could wait for minutes; this takes a few
    # seconds (the imports), and 30 s is ten times that.
    assert time.perf_counter() - started < 30
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "Qwen/Qwen3-VL-2B-Instruct" in last and "-c ./model" in last


def test_missing_local_folder(tmp_path):
    out = _demo("-c", str(tmp_path / "nope"), env=_env(tmp_path), timeout=60)
    assert out.returncode == 1 and "does not exist" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tiny-random", "qwen4"], "argument --tiny-random: invalid choice: 'qwen4'"),
        (["--max-pixels", "abc"], "argument --max-pixels: invalid int value: 'abc'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_argparse_errors_are_one_line_too(flags, words):
    out = _demo(*flags)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()  # not argparse's usage block
    assert line.startswith(f"error: {words}") and line.endswith("(--help lists the flags)")


def test_an_unreachable_server_at_start_gets_start_up_advice(tmp_path):
    flags = ("--backend", "openai", "--api-base", "http://127.0.0.1:9/v1")
    out = _demo(*flags, env=_env(tmp_path), timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("error: Cannot reach the model server")
    assert "Start it first" in last and "Regenerate" not in last


def test_bad_flag_value_is_one_line():
    out = _demo("--max-new-tokens", "0")
    assert (
        out.returncode == 2 and out.stderr.strip() == "error: --max-new-tokens must be at least 1"
    )


def test_offline_trial_serves_a_tiny_model_with_a_banner(tmp_path):
    port = free_port()
    env = _env(tmp_path, QWEN_DEMO_SERVER_PORT=str(port))  # set by environment, as in Docker
    process = subprocess.Popen(
        [sys.executable, "web_demo_mm.py", "--tiny-random", "qwen2_5_vl"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        config = httpx.get(url + "config", timeout=5).text
        assert "answers are meaningless" in config
        # On a CPU the image budget is the one measured for CPUs, and the page says so.
        on_cpu = "Running on the CPU: images are read at up to 0.4 megapixels" in config
        assert on_cpu == (not _has_cuda())
        # On a CPU the default path is 4-bit weights: the page and the start-up line say so.
        fast_note = "Running on the CPU with the language model in 4-bit weights" in config
        assert fast_note == on_cpu
        reply = Client(url, verbose=False).predict(
            {"text": "hi", "files": []}, max_new_tokens=4, api_name="/chat"
        )
        assert isinstance(reply, str)
    finally:
        process.terminate()
        process.wait(timeout=20)
    console = process.stdout.read()
    # One line says where the app is, in the app's words; gradio's advice about its own
    # `share=True` and a line per HTTP request are not there; SIGTERM left no trial folder.
    assert f"Qwen-VL Chat is at http://127.0.0.1:{port}" in console
    assert "share=True" not in console and "HTTP Request:" not in console
    [built] = re.findall(r"built a tiny random qwen2_5_vl in (\S+)", console)
    assert not Path(built).exists()
    loaded = [line for line in console.splitlines() if " loaded " in line]
    if on_cpu:
        said = (
            f"(cpu, int4 (the CPU's default), {expected_cpu_path(2)} in "
            "bfloat16; --dtype float32 for the exact"
        )
        assert said in loaded[0]


def test_a_model_too_large_for_the_memory_is_refused_in_one_line_before_loading(tmp_path):
    import json
    import struct

    # 80e9 bytes of float32 weights, in a sparse file (nothing written, nothing read): the CPU
    # path loads them in bfloat16 (half: 37.3 GiB) before making them int8.
    folder = tmp_path / "huge-model"
    folder.mkdir()
    size = 200_000 * 100_000 * 4
    header = {"model.language_model.layers.0.mlp.weight": {
        "dtype": "F32", "shape": [200_000, 100_000], "data_offsets": [0, size]}}  # fmt: skip
    raw = json.dumps(header).encode()
    with (folder / "model.safetensors").open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        file.truncate(8 + len(raw) + size)
    out = _demo("-c", str(folder), env=_env(tmp_path), timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "needs about 37.3 GB" in last and "--load-in-4bit (about 9.3 GB)" in last  # GiB


def test_ctrl_c_while_the_model_loads_is_one_line(tmp_path):
    # Before: a ~50-line traceback.
    import signal

    process = subprocess.Popen(
        [sys.executable, "web_demo_mm.py", "--tiny-random", "qwen3_vl"],
        cwd=ROOT,
        env=_env(tmp_path, QWEN_DEMO_SERVER_PORT=str(free_port())),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # the start-up under way: torch imported, the model built
        line = process.stdout.readline()
        if "built a tiny random" in line or not line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode == 130 and "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "stopped"
