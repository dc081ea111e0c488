"""Several users at once on the local engine, beside `llama-server -np N`, on Qwen3-VL-2B's shapes.

The same random-weight model (all 28 layers, from assets/realcfg) in both: the app's CPU default
(the language model in 4 bits) and llama.cpp's Q4_K_M, the same threads, each in its own
process. For N users (1, 2, 4, 8) N different text questions are sent at once, each answered
with `--tokens` tokens (greedy, end tokens ignored); the engines take turns, N by N:

- aggregate tokens/s: every user's tokens over the time from the first question sent to the
  last token;
- each user's wait for a first token (the median and the longest);
- the longest pause in any stream between two of its tokens.

A last row sends three text questions and, once they stream, a photo turn (office.jpg at the
app's CPU budget, the same PNG to both): the longest pause the photo's reading puts into the
three streams (the app reads a prompt layer by layer and takes the others' decode steps
between layers, app/engines/local/generation/scheduler.py).

    bash scripts/llama_cpp.sh build                          # llama-server, once (~10 min)
    python -m benchmarks.batching --llama-cpp DIR             # ~15 min on 2 cores

Not in CI.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.llama_cpp import gguf_files, photo_at_cpu_budget
from benchmarks.real_shapes import FULL_LAYERS, OFFICE, build
from testkit.servers import llama_server_command, wait_until_ready

QUESTIONS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle gear works.",
    "What should I pack for a week of hiking in the rain?",
    "Describe the taste of a ripe mango to someone who never had one.",
    "List some ways to keep a kitchen tidy.",
    "Why is the sky blue at noon and red at sunset?",
    "Give advice to someone learning to play the violin.",
    "How do bees decide where to build a new hive?",
)
PHOTO_QUESTION = "Describe this image."
PHOTO_AFTER_S = 2.0


def stream_stats(sent: float, token_times: list[float]) -> dict[str, float]:
    """One stream's first-token wait and longest pause, from its tokens' arrival times."""
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    return {
        "first_s": token_times[0] - sent,
        "pause_s": max(gaps, default=0.0),
        "tokens": len(token_times),
        "end": token_times[-1],
    }


def summary(streams: list[dict[str, float]], sent: float, text_only: int) -> dict[str, float]:
    """The table's cells for one run: `streams` in order, the first `text_only` text ones."""
    firsts = [s["first_s"] for s in streams]
    return {
        "aggregate_tps": sum(s["tokens"] for s in streams)
        / (max(s["end"] for s in streams) - sent),
        "first_median_s": statistics.median(firsts),
        "first_max_s": max(firsts),
        "pause_s": max(s["pause_s"] for s in streams[:text_only]),
    }


def _at_once(ask: Any, questions: list[str], photo: str | None) -> dict[str, float]:
    """Every question asked at once by `ask(question, photo, sent) -> stats`; the photo turn
    (if any) PHOTO_AFTER_S later."""
    results: list[dict[str, float] | None] = [None] * (len(questions) + bool(photo))
    sent = time.perf_counter()

    def run(index: int, question: str, image: str | None) -> None:
        results[index] = ask(question, image, time.perf_counter())

    threads = [threading.Thread(target=run, args=(i, q, None)) for i, q in enumerate(questions)]
    for thread in threads:
        thread.start()
    if photo:
        time.sleep(PHOTO_AFTER_S)
        threads.append(threading.Thread(target=run, args=(len(questions), PHOTO_QUESTION, photo)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return summary([r for r in results if r], sent, len(questions))


def checkpoint_sampling(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's own sampling settings (what the app takes by default), for a server
    that does not read them."""
    config = json.loads((checkpoint / "generation_config.json").read_text())
    names = ("temperature", "top_p", "top_k")
    return {name: config[name] for name in names if name in config} | {"seed": 1}


# --- the app's engine, in a child process taking one JSON command per line -----------------


def app_child(
    checkpoint: str, threads: int, max_batch: int, tokens: int, dtype: str, sampled: bool
) -> None:
    from app.cpu_weights.threads import quiet_openmp

    quiet_openmp()  # as the app's entry point does, before torch is imported
    import torch

    from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
    from app.engines.local.loading.checkpoint import LoadOptions
    from app.media import Budget
    from app.media.limits import CPU_MAX_PIXELS
    from testkit.engines import load_engine

    torch.set_num_threads(threads)
    options = LoadOptions(cpu_only=True, dtype=dtype, weights_store=None)
    engine = load_engine(checkpoint, options, max_batch=max_batch)
    budget = Budget(max_pixels=CPU_MAX_PIXELS)
    print("READY " + json.dumps({"weights": engine.weights}), flush=True)

    def ask(question: str, photo: str | None, sent: float, system: str) -> dict[str, float]:
        files = (Attachment(photo, Path(photo).name),) if photo else ()
        turns = (Turn("system", system), Turn("user", question, files))
        # Sampled: the checkpoint's settings (None), as the page's defaults are; else greedy.
        temperature = None if sampled else 0
        params = GenerationParams(tokens, temperature, seed=1, enable_thinking=False)
        request = ChatRequest(turns, params, budget, owner=question)
        times = [
            time.perf_counter() for delta in engine.stream(request, threading.Event()) if delta.text
        ]
        return stream_stats(sent, times)

    for line in sys.stdin:
        command = json.loads(line)
        asked = functools.partial(ask, system=command["system"])
        result = _at_once(asked, command["questions"], command["photo"])
        print("RESULT " + json.dumps(result), flush=True)


class AppProcess:
    def __init__(
        self, checkpoint: Path, threads: int, max_batch: int, tokens: int, dtype: str, sampled: bool
    ) -> None:
        command = [sys.executable, "-m", "benchmarks.batching", "--app-child", str(checkpoint)]
        self.process = subprocess.Popen(
            [*command, str(threads), str(max_batch), str(tokens), dtype, str(int(sampled))],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.loaded = self._line("READY ")

    def _line(self, prefix: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(prefix):
                return dict(json.loads(line.removeprefix(prefix)))
        raise RuntimeError("the app's benchmark process ended")

    def run(self, questions: list[str], photo: str | None, system: str) -> dict[str, float]:
        assert self.process.stdin is not None
        command = {"questions": questions, "photo": photo, "system": system}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._line("RESULT ")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- llama-server ------------------------------------------------------------------------


class LlamaServer:
    def __init__(
        self,
        llama_cpp: Path,
        checkpoint: Path,
        threads: int,
        slots: int,
        tokens: int,
        sampled: bool,
    ):
        model, mmproj = gguf_files(checkpoint, llama_cpp)
        command = llama_server_command(llama_cpp, model, mmproj, 8093)
        command += ["-t", str(threads), "-c", str(4096 * slots), "-np", str(slots)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = "http://127.0.0.1:8093"
        self.tokens = tokens
        self.sampling = checkpoint_sampling(checkpoint) if sampled else {"temperature": 0}
        wait_until_ready(self.process, self.url + "/health", "llama-server", 300)

    def _ask(self, question: str, photo: str | None, sent: float, system: str) -> dict[str, float]:
        import httpx

        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        if photo:
            data = base64.b64encode(Path(photo).read_bytes()).decode()
            image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}
            content.insert(0, image)
        body = {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": content},
            ],
            "max_tokens": self.tokens,
            **self.sampling,
            "ignore_eos": True,
            "stream": True,
        }
        times = []
        url = self.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=900) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line.removeprefix("data: "))
                    if any((c.get("delta") or {}).get("content") for c in chunk["choices"]):
                        times.append(time.perf_counter())
        return stream_stats(sent, times)

    def run(self, questions: list[str], photo: str | None, system: str) -> dict[str, float]:
        return _at_once(functools.partial(self._ask, system=system), questions, photo)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --- the comparison ----------------------------------------------------------------------

ROWS = (
    ("aggregate tokens/s", "aggregate_tps", "{:.1f}"),
    ("first token, median (s)", "first_median_s", "{:.1f}"),
    ("first token, longest wait (s)", "first_max_s", "{:.1f}"),
    ("longest pause in a stream (s)", "pause_s", "{:.2f}"),
)


def table(results: dict[str, dict[str, dict[str, float]]], one_user: str) -> str:
    """Rows: each run (N users, the photo row) of each engine; the aggregate against the same
    engine's one user, and the app's against llama-server's."""
    lines = [
        "| users | engine | " + " | ".join(label for label, _, _ in ROWS) + " | x one user |",
        "| --- " * (len(ROWS) + 3) + "|",
    ]
    for run, engines in results.items():
        for engine, cells in engines.items():
            solo = results[one_user][engine]["aggregate_tps"]
            values = [fmt.format(cells[key]) for _, key, fmt in ROWS]
            ratio = cells["aggregate_tps"] / solo
            lines.append(f"| {run} | {engine} | " + " | ".join(values) + f" | {ratio:.2f} |")
    app_vs = [
        f"{run}: {e['app']['aggregate_tps'] / e['llama-server']['aggregate_tps']:.2f}"
        for run, e in results.items()
        if "llama-server" in e
    ]
    return "\n".join(lines) + "\n\napp / llama-server, aggregate: " + ", ".join(app_vs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp tree with build/bin")
    parser.add_argument("--users", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="the app's --dtype (default: its own)")
    parser.add_argument(
        "--sampled", action="store_true", help="sample as the checkpoint says (default: greedy)"
    )
    parser.add_argument(
        "--app-child", nargs=6, metavar=("CKPT", "THREADS", "BATCH", "TOKENS", "DTYPE", "SAMPLED")
    )
    args = parser.parse_args()
    if args.app_child:
        path, threads, batch, tokens, dtype, sampled = args.app_child
        app_child(path, int(threads), int(batch), int(tokens), dtype, sampled == "1")
        return
    users = [int(n) for n in args.users.split(",")]
    checkpoint = build(FULL_LAYERS)
    photo = str(photo_at_cpu_budget(OFFICE, checkpoint.parent / "office-cpu-budget.png"))
    app = AppProcess(checkpoint, args.threads, max(users), args.tokens, args.dtype, args.sampled)
    print(f"app loaded: {app.loaded}", flush=True)
    engines: dict[str, Any] = {"app": app}
    if args.llama_cpp:
        engines["llama-server"] = LlamaServer(
            args.llama_cpp, checkpoint, args.threads, max(users), args.tokens, args.sampled
        )
    for engine in engines.values():  # warm: the first run of each pays for its kernels' set-up
        engine.run(list(QUESTIONS[:2]), None, "Warming up.")
    runs = [(str(n), list(QUESTIONS[:n]), None) for n in users]
    runs.append(("3 + a photo", list(QUESTIONS[:3]), photo))
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for index, (name, questions, image) in enumerate(runs):
            system = f"You are a helpful assistant. (Benchmark run {index}.)"
            results[name] = {
                e: engine.run(questions, image, system) for e, engine in engines.items()
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    print(table(results, str(users[0])))


if __name__ == "__main__":
    main()
