"""All benchmarks in one run: each row a ratio against its baseline, measured in this run.

    python -m benchmarks.run            # about 3-5 minutes on 2 CPU cores
    python -m benchmarks.run --quick    # shorter streams and clip, for a smoke check

Everything runs on tiny random checkpoints made on the spot (the app's own cost dominates there,
which is what these measure), on this machine, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Tell me a long story about a red cat."


@dataclass
class Row:
    name: str
    measured: str
    ratio: str
    target: str
    ok: bool | None

    def line(self) -> str:
        verdict = "n/a" if self.ok is None else ("met" if self.ok else "MISSED")
        return f"| {self.name} | {self.measured} | {self.ratio} | {self.target} | {verdict} |"


def _client_stream(url: str, message: dict, **kwargs) -> tuple[float, float, float, int]:
    """(submit time, first output time, last output time, outputs) through gradio_client."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    started = time.perf_counter()
    job = client.submit(message, api_name="/chat", **kwargs)
    first = last = None
    count = 0
    for _ in job:
        now = time.perf_counter()
        first = first or now
        last = now
        count += 1
    job.result()
    return started, first, last, count


def _sse_first_token(url: str, message: dict, max_new_tokens: int) -> float:
    """Time to the first streamed output over gradio's REST + SSE API, with no client library."""
    from app.ui.panel import FIELD_NAMES

    fields = {"max_new_tokens": max_new_tokens, "temperature": 0}
    data = [message, None, *(fields.get(name) for name in FIELD_NAMES)]
    started = time.perf_counter()
    event = httpx.post(f"{url}gradio_api/call/chat", json={"data": data}, timeout=30).json()
    with httpx.stream("GET", f"{url}gradio_api/call/chat/{event['event_id']}", timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() not in ("", "null"):
                return time.perf_counter() - started
    raise RuntimeError("no output")


def gradio_floor() -> float:
    """gradio + gradio_client's own latency: a trivial app yielding at once (median of 5)."""
    import gradio as gr
    from gradio_client import Client

    from testkit.launch import free_port

    def echo(text: str):
        yield text

    with gr.Blocks() as demo:
        box, out, button = gr.Textbox(), gr.Textbox(), gr.Button()
        button.click(echo, box, out, api_name="echo")
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, quiet=True, server_port=port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        times = []
        for _ in range(6):
            started = time.perf_counter()
            job = client.submit("x", api_name="/echo")
            next(iter(job))
            times.append(time.perf_counter() - started)
            job.result()
        return statistics.median(times[1:])
    finally:
        demo.close()


def streaming_and_first_token(tokens: int) -> list[Row]:
    from PIL import Image

    from app.media import Budget, open_image
    from benchmarks.common import app_process, bare_stream, prompt_inputs, tiny
    from testkit.engines import load_engine

    engine = load_engine(str(tiny()), max_new_tokens=tokens)
    model, processor = engine.model, engine.processor
    photo = Path(tempfile.mkdtemp()) / "photo.jpg"
    Image.effect_noise((1280, 720), 60).convert("RGB").save(photo, quality=90)

    # Bare baselines: the same prompt, greedy, the same number of tokens.
    bare_stream(model, processor, prompt_inputs(processor, PROMPT), 8)  # warm up
    bare_rate = statistics.median(
        (tokens - 1) / (b["last"] - b["first"])
        for b in (
            bare_stream(model, processor, prompt_inputs(processor, PROMPT), tokens)
            for _ in range(3)
        )
    )
    bare_ttft = statistics.median(
        bare_stream(model, processor, prompt_inputs(processor, PROMPT), 4)["first"]
        for _ in range(5)
    )
    started = time.perf_counter()
    image = open_image(photo, Budget())
    image_inputs = prompt_inputs(processor, PROMPT, image)
    preprocessing = time.perf_counter() - started
    bare_image_ttft = statistics.median(
        bare_stream(model, processor, prompt_inputs(processor, PROMPT, image), 4)["first"]
        for _ in range(3)
    )
    del image_inputs

    checkpoint = str(engine.model.name_or_path)
    with app_process("-c", checkpoint, "--max-new-tokens", str(tokens)) as (url, _):
        text = {"text": PROMPT, "files": []}
        _client_stream(url, text, max_new_tokens=8, temperature=0)  # warm up
        rates = []
        for _ in range(3):
            _, first, last, outputs = _client_stream(
                url, text, max_new_tokens=tokens, temperature=0
            )
            rates.append((tokens - 1) / (last - first))
        app_rate = statistics.median(rates)
        ttfts = []
        for _ in range(5):
            s, f, _, _ = _client_stream(url, text, max_new_tokens=4, temperature=0)
            ttfts.append(f - s)
        app_ttft = statistics.median(ttfts)
        sse_ttft = statistics.median(_sse_first_token(url, text, 4) for _ in range(5))
        from gradio_client import handle_file

        with_image = {"text": PROMPT, "files": [handle_file(str(photo))]}
        image_ttfts = []
        for _ in range(3):
            s, f, _, _ = _client_stream(url, with_image, max_new_tokens=4, temperature=0)
            image_ttfts.append(f - s)
        app_image_ttft = statistics.median(image_ttfts)
    floor = gradio_floor()
    over = (app_ttft - bare_ttft) * 1000
    over_sse = (sse_ttft - bare_ttft) * 1000
    over_image = (app_image_ttft - bare_image_ttft) * 1000
    return [
        Row(
            f"1. streaming, {tokens} tokens via gradio_client",
            f"app {app_rate:.0f} tok/s ({outputs} updates seen) vs bare generate+streamer "
            f"{bare_rate:.0f} tok/s (medians of 3, first to last chunk)",
            f"{app_rate / bare_rate:.3f}",
            ">= 0.90",
            app_rate / bare_rate >= 0.90,
        ),
        Row(
            "2a. first token, text, via gradio_client",
            f"app {app_ttft * 1000:.0f} ms vs bare {bare_ttft * 1000:.0f} ms; a trivial gradio "
            f"app answers gradio_client in {floor * 1000:.0f} ms",
            f"+{over:.0f} ms",
            "<= +50 ms",
            over <= 50,
        ),
        Row(
            "2b. first token, text, raw SSE (no client library)",
            f"app {sse_ttft * 1000:.0f} ms vs bare {bare_ttft * 1000:.0f} ms",
            f"+{over_sse:.0f} ms",
            "<= +50 ms",
            over_sse <= 50,
        ),
        Row(
            "2c. first token, 1280x720 image, via gradio_client",
            f"app {app_image_ttft * 1000:.0f} ms vs bare {bare_image_ttft * 1000:.0f} ms "
            f"(bare includes the processor); decoding + budgeting the photo "
            f"{preprocessing * 1000:.0f} ms, upload included in the app's time",
            f"+{over_image:.0f} ms",
            "<= +50 ms + preprocessing",
            over_image <= 50 + preprocessing * 1000,
        ),
    ]


def video(seconds: int) -> Row:
    from benchmarks.video_decode import run

    r = run(seconds, repeat=2)
    return Row(
        f"3. video, {seconds} s 1280x720 30 fps H.264 at 2 fps",
        f"app {r['app_s']:.2f} s vs one bare threaded PyAV pass {r['bare_s']:.2f} s; RSS growth "
        f"{r['rss_growth_mb']:.0f} MB for {r['sampled_mb']:.0f} MB of frames",
        f"{r['time_ratio']:.3f}x",
        "<= 1.25x",
        r["time_ratio"] <= 1.25 and r["rss_over_allowance"] <= 1.0,
    )


def memory() -> Row:
    from app.engines.local.loading.checkpoint import LoadOptions
    from testkit.checkpoints import build_tiny_checkpoint
    from testkit.engines import load_engine

    path = build_tiny_checkpoint(tempfile.mkdtemp(), "qwen3_vl", width=256)
    full = load_engine(str(path), LoadOptions(cpu_only=True)).model.get_memory_footprint()
    quant = load_engine(
        str(path), LoadOptions(cpu_only=True, load_in_4bit=True)
    ).model.get_memory_footprint()
    return Row(
        "4. memory, 4-bit nf4 over fp32 (tiny Qwen3-VL, width 256)",
        f"{quant / 1e6:.1f} MB vs {full / 1e6:.1f} MB",
        f"{quant / full:.3f}",
        "<= 0.36",
        quant / full <= 0.36,
    )


def many_users(tokens: int) -> Row:
    from benchmarks.common import app_process, tiny

    with app_process("-c", str(tiny()), "--max-new-tokens", str(tokens)) as (url, _):
        message = {"text": PROMPT, "files": []}
        _client_stream(url, message, max_new_tokens=8, temperature=0)
        alone_rates = []
        for _ in range(3):
            s, _, last, _ = _client_stream(url, message, max_new_tokens=tokens, temperature=0)
            alone_rates.append(tokens / (last - s))
        alone = statistics.median(alone_rates)
        waits: list[float] = []
        together_rates = []
        for _ in range(2):
            ends: list[float] = []
            lock = threading.Lock()
            barrier = threading.Barrier(8)

            def user(
                ends: list[float] = ends, lock: threading.Lock = lock, barrier=barrier
            ) -> None:
                barrier.wait()
                s, f, last, _ = _client_stream(url, message, max_new_tokens=tokens, temperature=0)
                with lock:
                    waits.append(f - s)
                    ends.append(last)

            started = time.perf_counter()
            threads = [threading.Thread(target=user) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            together_rates.append(8 * tokens / (max(ends) - started))
        together = statistics.median(together_rates)
    waits.sort()
    p50 = statistics.median(waits)
    p95 = waits[min(len(waits) - 1, round(0.95 * (len(waits) - 1)))]
    return Row(
        f"5. eight users at once, {tokens} tokens each",
        f"{together:.0f} tok/s in all vs {alone:.0f} tok/s for one alone (medians, whole "
        f"requests); wait for the first token "
        f"p50 {p50:.2f} s, p95 {p95:.2f} s",
        f"{together / alone:.3f}",
        ">= 1.0",
        together / alone >= 1.0,
    )


def start_up() -> Row:
    from benchmarks.common import app_process, tiny

    path = tiny()
    started = time.perf_counter()
    with app_process("-c", str(path), poll_s=0.05) as (_, log):
        answered = time.perf_counter() - started
        output = log.read_text()
    found = re.search(r"loaded .* in ([\d.]+) s, ([\d.]+) s of it importing", output)
    load, imports = float(found.group(1)), float(found.group(2))
    return Row(
        "6. start-up, process start to the UI answering, minus the model's load",
        f"{answered:.1f} s in all, of which the model's load {load:.1f} s ({imports:.1f} s of "
        "it importing torch and transformers, which only the model needs)",
        f"{answered - load:.1f} s",
        "<= 5 s",
        answered - load <= 5,
    )


def openai_backend(tokens: int) -> Row:
    """Tokens/s through the app (openai backend) vs the same server read with `openai`."""
    import shutil

    from openai import OpenAI

    from benchmarks.common import app_process, tiny
    from testkit.launch import free_port

    path = tiny()
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("transformers") or "transformers", "serve", str(path), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = OpenAI(base_url=base, api_key="none")

        def direct() -> float:
            stream = client.chat.completions.create(
                model=str(path),
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=tokens,
                temperature=0,
                stream=True,
            )
            first = last = None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    now = time.perf_counter()
                    first = first or now
                    last = now
            return (tokens - 1) / (last - first)

        direct()
        app = ["--backend", "openai", "--api-base", base, "--max-new-tokens", str(tokens)]
        with app_process(*app) as (url, _):
            message = {"text": PROMPT, "files": []}
            # Interleaved, so a slow spell of the machine hits both sides alike.
            rates, direct_rates = [], []
            for _ in range(3):
                _, first, last, _ = _client_stream(
                    url, message, max_new_tokens=tokens, temperature=0
                )
                rates.append((tokens - 1) / (last - first))
                direct_rates.append(direct())
            app_rate = statistics.median(rates)
            direct_rate = statistics.median(direct_rates)
    finally:
        server.terminate()
        server.wait(timeout=20)
    return Row(
        f"7. openai backend, {tokens} tokens from transformers serve",
        f"through the app {app_rate:.0f} tok/s vs the openai client directly "
        f"{direct_rate:.0f} tok/s",
        f"{app_rate / direct_rate:.3f}",
        ">= 0.95",
        app_rate / direct_rate >= 0.95,
    )


def follow_ups() -> list[Row]:
    """An image then three text follow-ups (tiny checkpoint): the fourth turn's first token
    against the same question with no history; and the cache's bytes per cached token."""
    from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
    from app.engines.local.generation import kv
    from benchmarks.common import tiny
    from benchmarks.prefix_cache import measure, ratio, tiny_photo
    from testkit.engines import load_engine

    checkpoint, photo = str(tiny(suppress_eos=False)), tiny_photo()
    results = measure(checkpoint, photo)
    cached, plain = results["cache"], results["no cache"]
    follow_up = ratio(results)
    engine = load_engine(checkpoint)
    request = ChatRequest(
        (Turn("user", "Describe", (Attachment(str(photo), "photo.jpg"),)),),
        GenerationParams(max_new_tokens=16, temperature=0),
    )
    list(engine.stream(request, threading.Event()))
    [entry] = engine.prefix_cache._entries.values()
    stored = entry.nbytes / len(entry.ids)
    kv_size = kv.bytes_per_token(engine.model.config, engine.model.dtype.itemsize)
    return [
        Row(
            "8. follow-up after an image, first token (turn 4 / same question, no history)",
            f"turn 4 {cached['turn 4'] * 1000:.0f} ms (without the cache "
            f"{plain['turn 4'] * 1000:.0f} ms) vs no history {cached['no history'] * 1000:.0f} "
            f"ms; turn 1 with the image {cached['turn 1'] * 1000:.0f} ms",
            f"{follow_up:.2f}",
            "<= 1.5",
            follow_up <= 1.5,
        ),
        Row(
            "9. prefix cache memory, bytes per cached token / the model's KV bytes per token",
            f"{stored:.0f} B vs {kv_size} B ({len(entry.ids)} tokens cached)",
            f"{stored / kv_size:.2f}",
            "<= 1.0",
            stored <= kv_size,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmarks: ratios against baselines.")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "LAST_RUN.md"))
    args = parser.parse_args()
    tokens = 256 if args.quick else 1024
    started = time.perf_counter()
    rows: list[Row] = []
    steps = [
        lambda: streaming_and_first_token(tokens),
        lambda: [video(10 if args.quick else 60)],
        lambda: [memory()],
        lambda: [many_users(64 if args.quick else 128)],
        lambda: [start_up()],
        lambda: [openai_backend(tokens)],
        follow_ups,
    ]
    for step in steps:
        try:
            rows += step()
        except Exception as err:  # noqa: BLE001 - one failed row must not hide the others
            rows.append(Row(getattr(step, "__name__", "step"), f"failed: {err!r}", "-", "-", False))
        print(rows[-1].line(), flush=True)
    header = ["| benchmark | measured | ratio | target | |", "| --- | --- | --- | --- | --- |"]
    table = "\n".join(header + [r.line() for r in rows])
    elapsed = time.perf_counter() - started
    print("\n" + table + f"\n\n{len(rows)} rows in {elapsed:.0f} s")
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    Path(args.out).write_text(
        f"# Last benchmark run\n\n`{command}` on {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}, {elapsed:.0f} s.\n\n{table}\n"
    )
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
