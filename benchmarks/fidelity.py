"""What the CPU's weight formats cost in fidelity, measured as llama.cpp measures its own.

llama.cpp's measure of a quantization (`llama-perplexity --kl-divergence`): over a fixed text in
chunks of 512 tokens, each chunk read on its own, the next-token distribution at every position
of a chunk's second half, against full precision's; the mean KL divergence, its 99th percentile,
and how often the top token stays the same. This runs it on both sides, on Qwen3-VL-2B's real
shapes (random weights, all 28 layers, built by benchmarks.real_shapes):

- llama.cpp: the model converted to f16 GGUF by its own converter, quantized by `llama-quantize`
  to Q8_0, Q4_K_M and Q4_0, each measured against f16 by `llama-perplexity`;
- the app: each CPU path (`--dtype` auto, int8) against the app's own float32, on the very token
  ids llama.cpp read (taken from its base file) and the same positions.

Each side is measured against its own full precision (the app's float32, llama.cpp's f16), so
the two columns compare formats, not runtimes. Random weights make every distribution flat:
"same top token" is harsh for every format; the KL divergence is the measure.

    bash scripts/llama_cpp.sh build                    # once (~10 min)
    python -m benchmarks.fidelity --llama-cpp DIR      # ~25 min on 2 cores, ~14 GB of memory

After the table, the seeing model's share of right answers on each path (benchmarks/seeing.py):
a tiny model that really sees, far more sensitive to its weights' format than a 2B one.

Not in CI.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.real_shapes import FULL_LAYERS, build
from testkit.servers import convert_to_gguf

TEXT = ROOT / "benchmarks" / "kl_text.txt"  # about 1,240 tokens of English and Chinese prose
CONTEXT = 512
LLAMA_TYPES = ("Q8_0", "Q4_K_M", "Q4_0")
APP_PATHS = ("auto", "int8")


def llama_rows(checkpoint: Path, llama_cpp: Path) -> tuple[list[str], Path]:
    """(llama.cpp's rows of the table, the base file holding the token ids it read)."""
    folder = checkpoint.parent / f"{checkpoint.name}-gguf"
    folder.mkdir(exist_ok=True)
    f16 = folder / "model-f16-kl.gguf"
    if not f16.is_file():
        convert_to_gguf(llama_cpp, checkpoint, f16, mmproj=False)
    base = folder / "kl-base.bin"
    _perplexity(llama_cpp, f16, ["--kl-divergence-base", str(base)])
    rows = []
    for kind in LLAMA_TYPES:
        quantized = folder / f"model-{kind}-kl.gguf"
        if not quantized.is_file():
            tool = llama_cpp / "build" / "bin" / "llama-quantize"
            subprocess.run([str(tool), str(f16), str(quantized), kind], check=True)
        out = _perplexity(
            llama_cpp, quantized, ["--kl-divergence-base", str(base), "--kl-divergence"]
        )
        # Bits a weight from the files' sizes against f16's 16 (llama-perplexity no longer
        # prints the loader's "file size ... BPW" line).
        bits = 16 * quantized.stat().st_size / f16.stat().st_size
        rows.append(_llama_row(f"llama.cpp {kind}", out, bits))
        print(rows[-1], flush=True)
    return rows, base


def _perplexity(llama_cpp: Path, model: Path, extra: list[str]) -> str:
    tool = llama_cpp / "build" / "bin" / "llama-perplexity"
    command = [str(tool), "-m", str(model), "-f", str(TEXT), "-c", str(CONTEXT), "-t", "2"]
    done = subprocess.run([*command, *extra], check=True, capture_output=True, text=True)
    return done.stdout + done.stderr


def _llama_row(label: str, out: str, bits: float) -> str:
    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else float("nan")

    mean = number(r"Mean\s+KLD:\s+([\d.]+)")
    p99 = number(r"99\.0%\s+KLD:\s+([\d.]+)")
    same = number(r"Same top p:\s+([\d.]+)")
    return f"| {label} | {mean:.4f} | {p99:.4f} | {same:.1f}% | {bits:.2f} (file) |"


def token_chunks(base: Path) -> list[list[int]]:
    """The token ids llama.cpp read, chunk by chunk, from its base file (`_logits_`, n_ctx,
    n_vocab, n_chunk, then the ids)."""
    with base.open("rb") as fh:
        assert fh.read(8) == b"_logits_", f"{base} is not llama-perplexity's base file"
        n_ctx, _, n_chunk = struct.unpack("<Iii", fh.read(12))
        ids = struct.unpack(f"<{n_ctx * n_chunk}i", fh.read(4 * n_ctx * n_chunk))
    return [list(ids[i * n_ctx : (i + 1) * n_ctx]) for i in range(n_chunk)]


def _log_probs(engine: Any, chunks: list[list[int]]) -> Any:
    """Each chunk read on its own; the log-probabilities at its second half's positions (the
    ones llama-perplexity scores). Read into the cache the engine itself reads prompts into:
    on the CPU's quantized paths it keeps keys and values in bfloat16 and attends through the
    app's kernel (without it, transformers' own cache kept them in float32 and PyTorch's
    attention ran: not what the app runs)."""
    import torch

    from app.engines.local.generation import kv
    from app.engines.local.generation.attention import stored_kv_dtype

    model = engine.model
    out = []
    with torch.no_grad():
        for ids in chunks:
            cache = kv.new_cache(model.config.get_text_config(), stored_kv_dtype(model))
            logits = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
            out.append(logits.logits[0].float()[CONTEXT // 2 : CONTEXT - 1].log_softmax(-1))
    return torch.cat(out)


def app_rows(checkpoint: Path, chunks: list[list[int]]) -> list[str]:
    from app.engines.local.loading.checkpoint import LoadOptions
    from testkit.engines import load_engine

    exact = load_engine(str(checkpoint), LoadOptions(cpu_only=True, dtype="float32"))
    reference = _log_probs(exact, chunks)
    del exact
    rows = []
    for dtype in APP_PATHS:
        engine = load_engine(str(checkpoint), LoadOptions(cpu_only=True, dtype=dtype))
        rows.append(_app_row(f"app {engine.weights} (--dtype {dtype})", reference, engine, chunks))
        print(rows[-1], flush=True)
        del engine
    return rows


def _app_row(label: str, reference: Any, engine: Any, chunks: list[list[int]]) -> str:
    log_q = _log_probs(engine, chunks)
    kl = (reference.exp() * (reference - log_q)).sum(-1)
    same = (reference.argmax(-1) == log_q.argmax(-1)).float().mean().item()
    bits = _bits_a_weight(engine.model)
    return (
        f"| {label} | {kl.mean().item():.4f} | {kl.quantile(0.99).item():.4f} "
        f"| {same:.1%} | {bits:.2f} (language model) |"
    )


def _bits_a_weight(model: Any) -> float:
    """Bits a language-model weight takes as the app keeps it (packed levels, scales, zero
    points; int8 rows and their scales), over its linear layers."""
    from app.engines.local.generation.internals import outside_vision_encoder

    bits = weights = 0
    for name, module in model.named_modules():
        if not outside_vision_encoder(name):
            continue
        layer_bits = getattr(module, "bits_a_weight", None)
        if layer_bits is not None:
            count = module.in_features * module.out_features
            bits += layer_bits * count
            weights += count
    return bits / weights if weights else float("nan")


def main() -> None:
    from app.cpu_weights.threads import quiet_openmp

    quiet_openmp()  # as the app's entry point does, before torch is imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree")
    args = parser.parse_args()
    checkpoint = build(FULL_LAYERS)
    llama, base = llama_rows(checkpoint, args.llama_cpp)
    chunks = token_chunks(base)
    print(f"{len(chunks)} chunks of {CONTEXT} tokens from {TEXT.name}", flush=True)
    rows = [
        "| weights | mean KLD | p99 KLD | same top token | bits a weight |",
        "| --- | --- | --- | --- | --- |",
        *app_rows(checkpoint, chunks),
        *llama,
    ]
    print("\n" + "\n".join(rows))
    # Beside it, a tripwire on a model that sees: its answers on each path (benchmarks/seeing.py).
    from benchmarks.seeing import table

    print("\nThe seeing model's right answers on each path (40 fresh questions a task):")
    print(table(40))


if __name__ == "__main__":
    main()
