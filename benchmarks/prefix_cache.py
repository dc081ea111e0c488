"""Follow-up questions with and without the prefix cache: the first token of each turn.

One conversation, as a script holds it through the app's `/chat` API and its `history`: a photo
and "Describe this image.", then three text follow-ups. Each turn's first token is timed, beside
the first token of the last question asked with no history, on the same app; the app runs once
with the prefix cache and once without (`--prefix-cache-gb 0`), each in its own process.

    python -m benchmarks.prefix_cache                  # a tiny checkpoint (row 8 of benchmarks.run)
    python -m benchmarks.prefix_cache --real --layers 8
        # Qwen3-VL-2B's real shapes from assets/realcfg (random weights, 8 of its 28 decoder
        # layers, the whole vision encoder), with ../shared/media/office.jpg: tens of minutes
        # on 2 CPU cores, so not in CI; prints the table of docs/benchmarks.md's prefix-cache
        # section.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT

QUESTIONS = (
    "Describe this image.",
    "How many chairs are there?",
    "And what colour are they?",
    "Which one is closest to the window?",
)
OFFICE = ROOT.parent / "shared" / "media" / "office.jpg"


def _first_token(client, message: dict, history: list, max_new_tokens: int) -> tuple[float, str]:
    """(seconds to the first piece of text, the whole reply) for one `/chat` call."""
    started = time.perf_counter()
    job = client.submit(
        message, history, max_new_tokens=max_new_tokens, temperature=0, api_name="/chat"
    )
    first = None
    for partial in job:
        if partial and first is None:
            first = time.perf_counter() - started
    reply = job.result()
    return (first if first is not None else time.perf_counter() - started), reply


def conversation(url: str, photo: Path, max_new_tokens: int, round_: int = 1) -> dict[str, float]:
    """First-token times of the last question asked alone, first, then of each turn of the
    conversation about the photo. Each round words its questions apart (`[2]`), so that it
    does not find an earlier round's turns in the cache, only the photo."""
    from gradio_client import Client, handle_file

    questions = [f"{q} [{round_}]" if round_ > 1 else q for q in QUESTIONS]
    client = Client(url, verbose=False)
    alone = {"text": questions[-1], "files": []}
    times = {"no history": _first_token(client, alone, [], max_new_tokens)[0]}
    history: list[dict] = []
    for turn, question in enumerate(questions, start=1):
        files = [handle_file(str(photo))] if turn == 1 else []
        message = {"text": question, "files": files}
        times[f"turn {turn}"], reply = _first_token(client, message, history, max_new_tokens)
        parts = [{"type": "file", "file": handle_file(str(photo))}] if files else []
        history += [
            {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        ]
    return times


def measure(
    checkpoint: str, photo: Path, max_new_tokens: int = 8, rounds: int = 3
) -> dict[str, dict]:
    """{"cache": times, "no cache": times}, each from its own app process: medians over
    `rounds` conversations, but turn 1 and the cached app's question alone from the first
    (later ones find the photo, and that question, in the cache)."""
    from benchmarks.common import app_process

    results = {}
    for label, extra in (("cache", []), ("no cache", ["--prefix-cache-gb", "0"])):
        args = ["-c", checkpoint, "--max-new-tokens", str(max_new_tokens), *extra]
        with app_process(*args, ready_s=1800) as (url, _):
            runs = [conversation(url, photo, max_new_tokens, r) for r in range(1, rounds + 1)]
        first = runs[0]
        results[label] = {key: statistics.median(run[key] for run in runs) for key in first}
        results[label]["turn 1"] = first["turn 1"]
        if label == "cache":
            results[label]["no history"] = first["no history"]
    return results


def table(results: dict[str, dict]) -> str:
    rows = ["| turn | first token, with the cache | without |", "| --- | --- | --- |"]
    for key in results["cache"]:
        rows.append(f"| {key} | {results['cache'][key]:.2f} s | {results['no cache'][key]:.2f} s |")
    return "\n".join(rows)


def tiny_photo() -> Path:
    from PIL import Image

    photo = Path(tempfile.mkdtemp()) / "photo.jpg"
    Image.effect_noise((1280, 720), 60).convert("RGB").save(photo, quality=90)
    return photo


def real_checkpoint(layers: int) -> str:
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder

    source = REAL_CONFIGS / "Qwen3-VL-2B-Instruct"
    folder = Path(tempfile.mkdtemp(prefix="qwen3-vl-2b-shapes-"))
    # Written in bf16 (half the disk); the app loads it in its own dtype (fp32 on a CPU).
    built = build_from_config_folder(
        source, folder, tiny=False, text_layers=layers, dtype="bfloat16"
    )
    return str(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="Qwen3-VL-2B's real shapes")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the real shapes")
    parser.add_argument("--photo", default=str(OFFICE), help="the photo of the real-shape run")
    args = parser.parse_args()
    if args.real:
        checkpoint, photo = real_checkpoint(args.layers), Path(args.photo)
    else:
        from benchmarks.common import tiny

        checkpoint, photo = str(tiny(suppress_eos=False)), tiny_photo()
    results = measure(checkpoint, photo)
    print(table(results))
    print(f"\nturn 4 with the cache / the question alone: {ratio(results):.2f}")


def ratio(results: dict[str, dict]) -> float:
    """Turn 4's first token with the cache over the same question's with no history (the app
    without the cache: there it is never found in a cache)."""
    return float(results["cache"]["turn 4"] / results["no cache"]["no history"])


if __name__ == "__main__":
    main()
