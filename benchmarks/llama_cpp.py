"""The app's local engine beside llama.cpp's `llama-server`, on Qwen3-VL-2B's real shapes.

Both run the same random-weight model (all 28 layers, built from assets/realcfg): the app from
its safetensors, one column per `--dtypes` entry (its CPU default, the language model in 4 bits;
`int8`; `float32`), llama.cpp from a Q4_K_M GGUF and an f16 projector made from the same
checkpoint by its own converter. Each engine runs in its own process with the same threads;
requests alternate between them (interleaved rounds, medians of three):

- a photo turn in a new chat (office.jpg scaled to the app's CPU budget and given to both as
  the same PNG, so both read the same pixels): time to the first token, then the decode rate
  over 64 new tokens (EOS ignored on both sides);
- a text follow-up in that chat: time to its first token (both reuse the chat's prefix);
- a long text question in that chat (about 1,600 tokens of pasted text, so the context is about
  2,100 tokens): time to its first token, and the decode rate over 64 tokens at that length
  (a long conversation, where attention reads every earlier token's keys at each new one);
- the peak resident memory of each process, and the app's load time.

    bash scripts/llama_cpp.sh build                         # llama-server, once (~9 min)
    python -m benchmarks.llama_cpp --llama-cpp DIR           # ~25 min on 2 cores

DIR is the llama.cpp source tree with `build/bin/llama-server` (scripts/llama_cpp.sh prints
it). The GGUF files are made once, next to the checkpoint. Not in CI.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.real_shapes import FULL_LAYERS, OFFICE, build
from testkit.servers import convert_to_gguf, llama_server_command, wait_until_ready

NEW_TOKENS = 64
FOLLOW_UP_TOKENS = 8
QUESTION = "Describe this image."
FOLLOW_UP = "What else is in it?"
LLAMA = "llama.cpp Q4_K_M"


def _long_question() -> str:
    """About 1,600 tokens of plain prose (the same text for both engines), then a question."""
    sentences = [
        f"Item {i} on the desk is a {colour} {thing} beside the {place}."
        for i, (colour, thing, place) in enumerate(
            (c, t, p)
            for c in ("red", "green", "blue", "grey", "white")
            for t in ("mug", "book", "lamp", "pen", "plant", "phone")
            for p in ("window", "door", "screen", "shelf")
        )
    ]
    return " ".join(sentences[:110]) + " Which items are beside the window?"


# What each turn after the photo asks, and how many tokens it may answer with.
SECOND_QUESTIONS = {"follow_up": (FOLLOW_UP, FOLLOW_UP_TOKENS), "long": (_long_question(), 64)}


def gguf_files(checkpoint: Path, llama_cpp: Path) -> tuple[Path, Path]:
    """(Q4_K_M model, f16 projector) of `checkpoint`, converted once by llama.cpp's tools."""
    folder = checkpoint.parent / f"{checkpoint.name}-gguf"
    folder.mkdir(exist_ok=True)
    f16, mmproj, q4 = (
        folder / n for n in ("model-f16.gguf", "mmproj-f16.gguf", "model-Q4_K_M.gguf")
    )
    if not f16.is_file() and not q4.is_file():
        convert_to_gguf(llama_cpp, checkpoint, f16, mmproj=False)
    if not mmproj.is_file():
        convert_to_gguf(llama_cpp, checkpoint, mmproj, mmproj=True)
    if not q4.is_file():
        quantize = llama_cpp / "build" / "bin" / "llama-quantize"
        subprocess.run([str(quantize), str(f16), str(q4), "Q4_K_M"], check=True)
        f16.unlink()
    return q4, mmproj


def photo_at_cpu_budget(photo: Path, out: Path) -> Path:
    """`photo` scaled into the app's CPU image budget, as a PNG both engines are given."""
    from app.media import Budget, open_image
    from app.media.limits import CPU_MAX_PIXELS

    open_image(photo, Budget(max_pixels=CPU_MAX_PIXELS)).save(out)
    return out


class PeakRss:
    """The peak resident memory of a process, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.peak = 0
        self._process = psutil.Process(pid)
        self._done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except Exception:  # noqa: BLE001 - the process ended
                return

    def stop(self) -> float:
        self._done.set()
        return self.peak / 2**30


# --- the app's engine, in a child process that takes one JSON command per line -------------


def app_child(checkpoint: str, dtype: str, threads: int, store: str) -> None:
    """Load the engine as the app does on a CPU, then answer commands from stdin."""
    from app.cpu_weights.threads import quiet_openmp

    quiet_openmp()  # as the app's entry point does, before torch is imported
    import torch

    from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
    from app.engines.local.loading.checkpoint import LoadOptions
    from app.media import Budget
    from app.media.limits import CPU_MAX_PIXELS
    from testkit.engines import load_engine

    torch.set_num_threads(threads)
    started = time.perf_counter()
    weights_store = Path(store) if store != "-" else None
    options = LoadOptions(cpu_only=True, dtype=dtype, weights_store=weights_store)
    engine = load_engine(checkpoint, options)
    _reply({"load_s": time.perf_counter() - started, "weights": engine.weights})
    budget = Budget(max_pixels=CPU_MAX_PIXELS)
    for line in sys.stdin:
        command = json.loads(line)
        photo = Attachment(command["photo"], Path(command["photo"]).name)
        turns = [Turn("system", command["system"]), Turn("user", QUESTION, (photo,))]
        tokens = NEW_TOKENS
        if command["op"] in SECOND_QUESTIONS:
            question, tokens = SECOND_QUESTIONS[command["op"]]
            turns += [Turn("assistant", command["reply"]), Turn("user", question)]
        params = GenerationParams(max_new_tokens=tokens, temperature=0, enable_thinking=False)
        request = ChatRequest(tuple(turns), params, budget, owner=command["system"])
        deltas = list(engine.stream(request, threading.Event()))
        usage = deltas[-1].usage
        _reply(
            {
                "first_s": usage.first_token_s,
                "decode_tps": (usage.completion_tokens - 1) / (usage.total_s - usage.first_token_s),
                "prompt_tokens": usage.prompt_tokens,
                "reply": "".join(d.text for d in deltas),
            }
        )


def _reply(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


class AppProcess:
    def __init__(self, checkpoint: Path, dtype: str, threads: int, store: Path | None) -> None:
        command = [sys.executable, "-m", "benchmarks.llama_cpp", "--app-child", str(checkpoint)]
        self.process = subprocess.Popen(
            [*command, dtype, str(threads), str(store or "-")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.rss = PeakRss(self.process.pid)
        self.loaded = self._result()

    def _result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("RESULT "):
                return dict(json.loads(line.removeprefix("RESULT ")))
        raise RuntimeError("the app's benchmark process ended")

    def ask(self, op: str, photo: Path, system: str, reply: str = "") -> dict[str, Any]:
        assert self.process.stdin is not None
        command = {"op": op, "photo": str(photo), "system": system, "reply": reply}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._result()

    def close(self) -> float:
        peak = self.rss.stop()
        self.process.terminate()
        self.process.wait(timeout=30)
        return peak


# --- llama-server ------------------------------------------------------------------------


class LlamaServer:
    def __init__(self, llama_cpp: Path, model: Path, mmproj: Path, threads: int, port: int):
        command = llama_server_command(llama_cpp, model, mmproj, port)
        command += ["-t", str(threads), "-c", "8192", "-np", "1"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.rss = PeakRss(self.process.pid)
        self.url = f"http://127.0.0.1:{port}"
        wait_until_ready(self.process, self.url + "/health", "llama-server", 300)

    def ask(self, op: str, photo: Path, system: str, reply: str = "") -> dict[str, Any]:
        import httpx

        image = "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()
        user = [{"type": "image_url", "image_url": {"url": image}}]
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": [*user, {"type": "text", "text": QUESTION}]},
        ]
        tokens = NEW_TOKENS
        if op in SECOND_QUESTIONS:
            question, tokens = SECOND_QUESTIONS[op]
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": question},
            ]
        body = {
            "messages": messages,
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "timings_per_token": False,
        }
        return _stream_timings(httpx.stream, self.url + "/v1/chat/completions", body)

    def close(self) -> float:
        peak = self.rss.stop()
        self.process.terminate()
        self.process.wait(timeout=30)
        return peak


def _stream_timings(stream: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    started, first, text, timings = time.perf_counter(), None, [], {}
    with stream("POST", url, json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter()
                    text.append(piece)
    if first is None:
        raise RuntimeError(f"llama-server streamed no text: {timings}")
    return {
        "first_s": first - started,
        "decode_tps": timings["predicted_per_second"],
        "prompt_tokens": timings["prompt_n"] + timings.get("cache_n", 0),
        "reply": "".join(text),
    }


# --- the comparison ----------------------------------------------------------------------


def measure(engines: dict[str, Any], photo: Path, rounds: int) -> dict[str, dict[str, list]]:
    """Interleaved rounds: each engine's photo turn, then each engine's follow-up."""
    results: dict[str, dict[str, list]] = {n: {} for n in engines}
    for round_ in range(rounds):
        system = f"You are a helpful assistant. (Benchmark round {round_ + 1}.)"
        replies = {}
        for name, engine in engines.items():
            photo_turn = engine.ask("photo", photo, system)
            replies[name] = photo_turn["reply"]
            _keep(results[name], "photo_first_s", photo_turn["first_s"])
            _keep(results[name], "decode_tps", photo_turn["decode_tps"])
            _keep(results[name], "photo_prompt_tokens", photo_turn["prompt_tokens"])
        for name, engine in engines.items():
            follow_up = engine.ask("follow_up", photo, system, replies[name])
            _keep(results[name], "follow_up_first_s", follow_up["first_s"])
        for name, engine in engines.items():
            long = engine.ask("long", photo, system, replies[name])
            _keep(results[name], "long_first_s", long["first_s"])
            _keep(results[name], "long_decode_tps", long["decode_tps"])
            _keep(results[name], "long_prompt_tokens", long["prompt_tokens"])
        print(f"round {round_ + 1}: {json.dumps(results)}", flush=True)
    return results


def _keep(into: dict[str, list], key: str, value: float) -> None:
    into.setdefault(key, []).append(value)


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    names = list(results)
    rows = [
        "| | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{n} / {baseline}" for n in names[:-1])
        + " |",
        "| --- " * (2 * len(names)) + "|",
    ]
    lines = [
        ("photo turn, first token (s)", "photo_first_s", "{:.1f}"),
        ("decode (tok/s)", "decode_tps", "{:.1f}"),
        ("text follow-up, first token (s)", "follow_up_first_s", "{:.2f}"),
        ("long question, first token (s)", "long_first_s", "{:.1f}"),
        ("decode after the long question (tok/s)", "long_decode_tps", "{:.1f}"),
        ("prompt tokens of the long question", "long_prompt_tokens", "{:.0f}"),
        ("peak memory of the process (GB)", "peak_gb", "{:.2f}"),
        ("prompt tokens of the photo turn", "photo_prompt_tokens", "{:.0f}"),
    ]
    for label, key, fmt in lines:
        values = {n: _median(results[n][key]) for n in names}
        cells = [fmt.format(values[n]) for n in names]
        ratios = [f"{values[n] / values[baseline]:.2f}" for n in names[:-1]]
        rows.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    loads = [f"{n} {results[n]['load_s']:.0f} s" for n in names if "load_s" in results[n]]
    return "\n".join(rows) + "\n\nload: " + ", ".join(loads)


def _median(values: Any) -> float:
    return statistics.median(values) if isinstance(values, list) else float(values)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--app-child":
        app_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source tree")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--dtypes",
        default="float32,int8,auto",
        help="the app's columns, by --dtype (auto: its CPU default, 4-bit; int8: the default "
        "before it; float32: the exact path)",
    )
    args = parser.parse_args()
    checkpoint = build(FULL_LAYERS)
    model, mmproj = gguf_files(checkpoint, args.llama_cpp)
    photo = photo_at_cpu_budget(OFFICE, checkpoint.parent / "office-at-cpu-budget.png")
    engines: dict[str, Any] = {}
    dtypes = args.dtypes.split(",")
    # The app keeps its quantized weights once made (app/cpu_weights/store.py): its first
    # start quantizes the checkpoint, later ones read them. Both are measured for its default;
    # the comparison runs on a later start, as users run it every day.
    store = checkpoint.parent / f"{checkpoint.name}-weights-store"
    shutil.rmtree(store, ignore_errors=True)
    first = AppProcess(checkpoint, "auto", args.threads, store)
    first_start = f"app {first.loaded['weights']} (auto), first start: "
    first_start += f"load {first.loaded['load_s']:.0f} s, peak memory {first.close():.2f} GB"
    for dtype in dtypes:
        engines[f"app {dtype}"] = AppProcess(checkpoint, dtype, args.threads, store)
    engines[LLAMA] = LlamaServer(args.llama_cpp, model, mmproj, args.threads, args.port)
    results: dict[str, dict[str, Any]] = {}
    try:
        results = measure(engines, photo, args.rounds)
    finally:
        for name, engine in engines.items():
            peak = engine.close()
            if name in results:
                results[name]["peak_gb"] = peak
                if isinstance(engine, AppProcess):
                    results[name]["load_s"] = engine.loaded["load_s"]
    print("\n" + table(results, LLAMA) + "\n" + first_start)


if __name__ == "__main__":
    main()
