"""Qwen3-VL-2B's real shapes on this machine: what users feel, beside bare transformers.

A random-weight model built from assets/realcfg/Qwen3-VL-2B-Instruct (the whole vision encoder,
`--layers` of its 28 decoder layers; times of the vision and language parts are also given
apart, so the full model's can be read off). Each dtype runs in a fresh process, for clean
memory and timing:

- first token with a 1 MP photo (office.jpg of ../shared/media, 1440x1920): the app's engine
  against bare `processor` + `model.generate` on the same photo and budget;
- text decode tokens/s: the app's engine against bare `generate` + `TextIteratorStreamer`;
- the weights' footprint and the peak resident memory; the load time.

    python -m benchmarks.real_shapes --layers 8              # fp32, bf16, 4-bit: ~40 min
    python -m benchmarks.real_shapes --layers 8 --budgets    # the CPU budget exploration

Not in CI (it builds a 2 GB model and runs for tens of minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import ROOT, bare_stream

OFFICE = ROOT.parent / "shared" / "media" / "office.jpg"
FULL_LAYERS = 28
DECODE_TOKENS = 32


def build(layers: int) -> Path:
    """The real-shape checkpoint with `layers` decoder layers (built once per machine)."""
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder

    folder = Path(tempfile.gettempdir()) / f"qwen3-vl-2b-shapes-{layers}-layers"
    if not (folder / "config.json").is_file():
        source = REAL_CONFIGS / "Qwen3-VL-2B-Instruct"
        build_from_config_folder(
            source, folder, tiny=False, text_layers=layers, dtype="bfloat16", suppress_eos=True
        )
    return folder


def _peak_rss_sampler() -> tuple[list[int], threading.Event]:
    import psutil

    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    return peak, done


def _photo_turn(engine, photo: Path, budget) -> dict[str, float]:
    """The app's first token with the photo, its vision and language parts, and bare's."""
    from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
    from app.media import open_image
    from benchmarks.common import prompt_inputs

    request = ChatRequest(
        (Turn("user", "Describe this image.", (Attachment(str(photo), photo.name),)),),
        GenerationParams(max_new_tokens=2, temperature=0),
        budget,
    )
    started = time.perf_counter()
    stages: dict[str, float] = {}
    for delta in engine.stream(request, threading.Event()):
        if delta.progress is not None:
            stages.setdefault(delta.progress.stage.split(" ·")[0], time.perf_counter())
        if delta.usage is not None:
            usage = delta.usage
    reading = [t for name, t in stages.items() if name.startswith("Reading the")]
    vision_s = (reading[0] - started) if reading else float("nan")
    image = open_image(photo, budget)
    inputs = prompt_inputs(engine.processor, "Describe this image.", image, budget.max_pixels)
    bare = bare_stream(engine.model, engine.processor, inputs, 2)
    return {
        "visual_tokens": usage.visual_tokens,
        "app_first_s": usage.first_token_s,
        "vision_s": vision_s,
        "language_s": usage.first_token_s - vision_s,
        "bare_first_s": bare["first"],
    }


def _decode(engine) -> dict[str, float]:
    from app.engines.base import ChatRequest, GenerationParams, Turn
    from benchmarks.common import prompt_inputs

    request = ChatRequest(
        (Turn("user", "Tell me a long story."),),
        GenerationParams(max_new_tokens=DECODE_TOKENS, temperature=0),
    )
    deltas = list(engine.stream(request, threading.Event()))
    usage = deltas[-1].usage
    app_rate = (usage.completion_tokens - 1) / (usage.total_s - usage.first_token_s)
    inputs = prompt_inputs(engine.processor, "Tell me a long story.")
    bare = bare_stream(engine.model, engine.processor, inputs, DECODE_TOKENS)
    return {"app_tps": app_rate, "bare_tps": (DECODE_TOKENS - 1) / (bare["last"] - bare["first"])}


def child(path: str, dtype: str, photo: str, max_pixels: int, threads: int, decode: bool) -> None:
    """One dtype (or budget) in this process; prints a JSON line."""
    import torch

    from app.engines.local.loading.checkpoint import LoadOptions
    from app.media import Budget
    from testkit.engines import load_engine

    torch.set_num_threads(threads)
    peak, done = _peak_rss_sampler()
    started = time.perf_counter()
    four_bit = dtype == "4bit"
    options = LoadOptions(
        cpu_only=True, dtype="float32" if four_bit else dtype, load_in_4bit=four_bit
    )
    engine = load_engine(path, options, prefix_cache_bytes=0)
    result: dict[str, float] = {
        "load_s": time.perf_counter() - started,
        "footprint_gb": engine.model.get_memory_footprint() / 2**30,
    }
    result |= _photo_turn(engine, Path(photo), Budget(max_pixels=max_pixels))
    if decode:
        result |= _decode(engine)
    done.set()
    result["peak_rss_gb"] = peak[0] / 2**30
    print(json.dumps(result), flush=True)


def run_child(
    path: Path, dtype: str, photo: Path, max_pixels: int, threads: int = 2, decode: bool = True
) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.real_shapes",
        "--child",
        str(path),
        dtype,
        str(photo),
        str(max_pixels),
        str(threads),
        str(int(decode)),
    ]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def full_model_s(result: dict[str, float], layers: int) -> float:
    """The first token of the 28-layer model: the vision part as measured, the language part
    scaled by the layers."""
    return result["vision_s"] + result["language_s"] * FULL_LAYERS / layers


def dtypes_table(path: Path, photo: Path, layers: int, max_pixels: int) -> str:
    rows = [
        "| dtype | first token, 1 MP photo: app / bare | 28 layers | decode tok/s: app / bare "
        "| weights | peak RSS | load |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    results = {}
    for dtype in ("float32", "bfloat16", "4bit"):
        r = results[dtype] = run_child(path, dtype, photo, max_pixels)
        rows.append(
            f"| {dtype} | {r['app_first_s']:.1f} s / {r['bare_first_s']:.1f} s "
            f"({r['visual_tokens']:.0f} visual tokens) | {full_model_s(r, layers):.0f} s "
            f"| {r['app_tps']:.2f} / {r['bare_tps']:.2f} | {r['footprint_gb']:.2f} GB "
            f"| {r['peak_rss_gb']:.2f} GB | {r['load_s']:.0f} s |"
        )
        print(rows[-1], flush=True)
    ratio = results["4bit"]["footprint_gb"] / results["float32"]["footprint_gb"]
    return "\n".join(rows) + f"\n\n4-bit / fp32 weights: {ratio:.2f} (target <= 0.30)"


def budgets_table(path: Path, photo: Path, layers: int) -> str:
    rows = [
        "| budget (max pixels) | dtype | threads | visual tokens | vision | language "
        f"({layers} layers) | first token, 28 layers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cases = [
        (1003520, "float32", 2),
        (501760, "float32", 2),
        (250880, "float32", 2),
        (200704, "float32", 2),
        (250880, "float32", 1),
        (250880, "bfloat16", 2),
    ]
    for max_pixels, dtype, threads in cases:
        r = run_child(path, dtype, photo, max_pixels, threads, decode=False)
        rows.append(
            f"| {max_pixels} | {dtype} | {threads} | {r['visual_tokens']:.0f} | "
            f"{r['vision_s']:.1f} s | {r['language_s']:.1f} s | {full_model_s(r, layers):.0f} s |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, dtype, photo, max_pixels, threads, decode = sys.argv[2:8]
        child(path, dtype, photo, int(max_pixels), int(threads), decode == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (of 28)")
    parser.add_argument("--photo", default=str(OFFICE))
    parser.add_argument("--max-pixels", type=int, default=1003520, help="the photo's budget")
    parser.add_argument("--budgets", action="store_true", help="explore the CPU budget instead")
    args = parser.parse_args()
    path, photo = build(args.layers), Path(args.photo)
    if args.budgets:
        print("\n" + budgets_table(path, photo, args.layers))
    else:
        print("\n" + dtypes_table(path, photo, args.layers, args.max_pixels))


if __name__ == "__main__":
    main()
