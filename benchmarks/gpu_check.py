"""The GPU check: the app's local engine on a GPU, every path the CPU cannot try, in one run.

Builds a random-weight model with Qwen3-VL-2B's real shapes (assets/realcfg, all 28 layers) on
the GPU and drives the engine directly (no gradio), beside bare `model.generate` in the same
run, then prints one table:

- bf16 photo turn: first token and decode tokens/s, the engine against bare `generate`;
- a follow-up about the photo: first token with the prefix cache against without, and the
  greedy reply with the cache equal to the one without;
- attention: sdpa, and flash-attention 2 where its package is there;
- nf4 4-bit (bitsandbytes) where its package is there;
- out of memory: a request made to overflow (the GPU filled but for a little) answered with
  advice, and the next request served;
- GPU memory after 20 requests against before them (no leak);
- 8 users at once: their replies decoded in one batch, aggregate tokens/s against one user's,
  and how many of the 8 greedy replies equal the same reply alone (the CPU's kernels compute
  each row on its own and all 8 do; a GPU's kernels may sum a batch in another order);
- how the model was placed (one GPU, or spread over several).

    bash scripts/gpu_check.sh              # on a machine with a GPU (see scripts/gpu_check.sh)
    bash scripts/gpu_check.sh --dry-run    # here: a tiny model, every step on the CPU

`--dry-run` runs every step on a tiny model on the CPU (the out-of-memory step then raises the
error from a hook, as a CPU cannot be filled safely), so the check does not rot; CI runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, bare_stream, prompt_inputs

PHOTO = ROOT / "assets" / "examples" / "receipt.png"
QUESTION = "Describe this image."
FOLLOW_UP = "What is the total?"
DECODE_TOKENS = 64
REQUESTS_FOR_LEAKS = 20
USERS_AT_ONCE = 8


@dataclass
class Row:
    what: str
    app: str
    baseline: str
    verdict: str


def build(dry_run: bool) -> Path:
    """The checkpoint: real shapes in bf16 (or tiny widths for a dry run), built once."""
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder

    name = "gpu-check-tiny" if dry_run else "gpu-check-qwen3-vl-2b-shapes"
    folder = Path(tempfile.gettempdir()) / name
    if not (folder / "config.json").is_file():
        build_from_config_folder(
            REAL_CONFIGS / "Qwen3-VL-2B-Instruct",
            folder,
            tiny=dry_run,
            dtype="float32" if dry_run else "bfloat16",
            suppress_eos=True,
        )
    return folder


def engine_for(path: Path, dry_run: bool, **options: Any) -> Any:
    from app.engines.local.loading.checkpoint import LoadOptions
    from testkit.engines import load_engine

    load = LoadOptions(cpu_only=dry_run, dtype="float32" if dry_run else "bfloat16", **options)
    return load_engine(str(path), load, max_new_tokens=DECODE_TOKENS, max_batch=USERS_AT_ONCE)


def ask(engine: Any, turns: tuple, tokens: int = DECODE_TOKENS) -> tuple[str, Any]:
    from app.engines.base import ChatRequest, GenerationParams

    request = ChatRequest(turns, GenerationParams(max_new_tokens=tokens, temperature=0))
    text, usage = "", None
    for delta in engine.stream(request, threading.Event()):
        text += delta.text
        usage = delta.usage or usage
    return text, usage


def photo_turn() -> tuple:
    from app.engines.base import Attachment, Turn

    return (Turn("user", QUESTION, (Attachment(str(PHOTO), PHOTO.name),)),)


def decode_rate(usage: Any) -> float:
    generating = usage.total_s - (usage.first_token_s or 0.0)
    return (usage.completion_tokens - 1) / generating if generating > 0 else float("nan")


def check_photo_turn(engine: Any) -> list[Row]:
    from app.media import open_image

    ask(engine, photo_turn(), 2)  # warm-up: kernels, the photo decoded once
    engine.prefix_cache.clear()
    _, usage = ask(engine, photo_turn())
    image = open_image(PHOTO, engine.budget)
    inputs = prompt_inputs(engine.processor, QUESTION, image, engine.budget.max_pixels)
    bare = bare_stream(
        engine.model, engine.processor, inputs.to(engine.model.device), DECODE_TOKENS
    )
    bare_rate = (DECODE_TOKENS - 1) / (bare["last"] - bare["first"])
    first, rate = usage.first_token_s, decode_rate(usage)
    return [
        Row(
            "photo turn, first token",
            f"{first:.3f} s",
            f"{bare['first']:.3f} s",
            f"{first / bare['first']:.2f}x bare",
        ),
        Row(
            "decode", f"{rate:.1f} tok/s", f"{bare_rate:.1f} tok/s", f"{rate / bare_rate:.2f}x bare"
        ),
    ]


def check_prefix_cache(engine: Any, uncached: Any) -> list[Row]:
    from app.engines.base import Turn

    engine.prefix_cache.clear()
    answer, _ = ask(engine, photo_turn())
    follow = (*photo_turn(), Turn("assistant", answer), Turn("user", FOLLOW_UP))
    cached_text, cached = ask(engine, follow)
    plain_text, plain = ask(uncached, follow)
    return [
        Row(
            "follow-up, first token",
            f"{cached.first_token_s:.3f} s (cache)",
            f"{plain.first_token_s:.3f} s (no cache)",
            f"{plain.first_token_s / cached.first_token_s:.1f}x faster, "
            f"{cached.cached_tokens} of {cached.prompt_tokens} tokens cached",
        ),
        Row(
            "greedy reply with the cache",
            f"{len(cached_text)} chars",
            f"{len(plain_text)} chars",
            "equal" if cached_text == plain_text else "DIFFERENT",
        ),
    ]


def check_attention(path: Path, dry_run: bool) -> list[Row]:
    import importlib.util

    if dry_run or importlib.util.find_spec("flash_attn") is None:
        why = "dry run" if dry_run else "flash-attn not installed"
        return [Row("flash-attention 2", "not run", "", why)]
    flash = engine_for(path, dry_run, flash_attn2=True)
    _, usage = ask(flash, photo_turn())
    return [
        Row(
            "flash-attention 2",
            f"{usage.first_token_s:.3f} s first token",
            f"{decode_rate(usage):.1f} tok/s",
            flash.model.config._attn_implementation,
        )
    ]


def check_four_bit(path: Path, dry_run: bool) -> list[Row]:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return [
            Row(
                "nf4 4-bit",
                "not run",
                "",
                "bitsandbytes not installed (its wheel is larger than the carry allows)",
            )
        ]
    if dry_run:
        return [Row("nf4 4-bit", "not run", "", "dry run (tiny widths do not quantize)")]
    quantized = engine_for(path, dry_run, load_in_4bit=True)
    _, usage = ask(quantized, photo_turn())
    return [
        Row(
            "nf4 4-bit",
            f"{usage.first_token_s:.3f} s first token",
            f"{decode_rate(usage):.1f} tok/s",
            f"{_allocated() / (1 << 30):.1f} GB allocated",
        )
    ]


def _allocated() -> int:
    import torch

    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0


def _overflow(engine: Any, dry_run: bool) -> Any:
    """Fill the GPU but for a little (or, dry, raise the error from a hook); returns an undo."""
    import torch

    if dry_run:

        def fail(*_: Any) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the dry run)")

        handle = engine.model.model.language_model.register_forward_pre_hook(fail)
        return handle.remove
    free = torch.cuda.mem_get_info()[0]
    ballast = torch.empty(max(0, free - (256 << 20)), dtype=torch.uint8, device="cuda")
    return lambda: ballast.resize_(0)


def check_out_of_memory(engine: Any, dry_run: bool) -> list[Row]:
    from app.engines.base import EngineError

    undo = _overflow(engine, dry_run)
    try:
        ask(engine, photo_turn(), 4)
        said = "no error (the request fitted)"
    except EngineError as err:
        said = str(err)
    finally:
        undo()
    _, usage = ask(engine, photo_turn(), 4)
    served = usage is not None and usage.completion_tokens > 0
    advice = "--load-in-4bit" in said and "pixel budget" in said
    return [
        Row(
            "out of memory",
            said[:60] + ("…" if len(said) > 60 else ""),
            "next request served" if served else "NEXT REQUEST FAILED",
            "advice given" if advice else "NO ADVICE",
        )
    ]


def check_leaks(engine: Any, dry_run: bool) -> list[Row]:
    from app.engines.base import Turn

    what = f"GPU memory after {REQUESTS_FOR_LEAKS} requests"
    if dry_run:
        return [Row(what, "not measured", "", "dry run (no GPU)")]
    engine.prefix_cache.clear()
    ask(engine, photo_turn(), 4)
    before = _allocated() - engine.prefix_cache.nbytes
    for index in range(REQUESTS_FOR_LEAKS):
        ask(engine, (*photo_turn(), Turn("assistant", "..."), Turn("user", f"Question {index}")), 4)
    after = _allocated() - engine.prefix_cache.nbytes
    grown = (after - before) / (1 << 20)
    return [
        Row(
            f"GPU memory after {REQUESTS_FOR_LEAKS} requests",
            f"{after / (1 << 20):.0f} MB",
            f"{before / (1 << 20):.0f} MB before",
            "no leak" if grown < 64 else f"+{grown:.0f} MB",
        )
    ]


def check_users_at_once(engine: Any) -> list[Row]:
    """USERS_AT_ONCE different questions at once (one batch) against each asked alone."""
    from app.engines.base import Turn

    questions = [
        (Turn("user", f"Question {i}: tell me about the number {i}."),)
        for i in range(USERS_AT_ONCE)
    ]
    alone = [ask(engine, turns) for turns in questions]
    one_user = statistics.median(decode_rate(usage) for _, usage in alone)
    engine.prefix_cache.clear()
    replies: list[tuple[str, Any]] = [("", None)] * len(questions)

    def run(index: int) -> None:
        replies[index] = ask(engine, questions[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = sum(usage.completion_tokens for _, usage in replies)
    aggregate = tokens / (time.perf_counter() - started)
    same = sum(text == solo for (text, _), (solo, _) in zip(replies, alone, strict=True))
    return [
        Row(
            f"{USERS_AT_ONCE} users at once (one batch)",
            f"{aggregate:.1f} tok/s in all",
            f"{one_user:.1f} tok/s one user",
            f"{aggregate / one_user:.2f}x one user; {same} of {len(questions)} replies as alone",
        )
    ]


def environment(engine: Any) -> str:
    import torch
    import transformers

    from app.engines.local.loading.placement import describe

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
    placed = describe(getattr(engine.model, "hf_device_map", None)) or str(engine.model.device)
    return (
        f"{device}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"placed: {placed}; attention {engine.model.config._attn_implementation}"
    )


def run(dry_run: bool) -> tuple[str, list[Row]]:
    from app.engines.local import LocalEngine

    started = time.perf_counter()
    path = build(dry_run)
    engine = engine_for(path, dry_run)
    uncached = LocalEngine(
        engine.loaded,
        runner=engine.runner,  # the same model, on the thread it was loaded on
        model_name=engine.model_name,
        max_prompt_tokens=engine.max_prompt_tokens,
        prefix_cache_bytes=0,
        max_new_tokens=DECODE_TOKENS,
    )
    rows = check_photo_turn(engine) + check_prefix_cache(engine, uncached)
    rows += check_out_of_memory(engine, dry_run) + check_leaks(engine, dry_run)
    rows += check_users_at_once(engine)
    rows += check_attention(path, dry_run) + check_four_bit(path, dry_run)
    header = f"{environment(engine)}; {time.perf_counter() - started:.0f} s in all"
    return header, rows


def table(header: str, rows: list[Row]) -> str:
    lines = [header, "", "| check | the app | baseline | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.what} | {r.app} | {r.baseline} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a tiny model, on the CPU")
    args = parser.parse_args()
    header, rows = run(args.dry_run)
    print(table(header, rows), flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))


if __name__ == "__main__":
    main()
