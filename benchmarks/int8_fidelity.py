"""What the CPU's quantized paths cost in fidelity, measured against float32 where it can be.

Both paths: the default (the language model's linear layers in 4 and 8 bits,
app/cpu_weights/blocks.py; the vision encoder in int8) and `--dtype int8` (all in int8).

Random weights make answers meaningless, so this measures numbers:

- on Qwen3-VL-2B's real shapes (all 28 layers), the logits of fixed prompts (two with a photo at
  the CPU budget, one of text) from each quantized model against the float32 one: cosine
  similarity and relative error of the logits at every position, how often the top token
  agrees, the overlap of the top fives, and the KL divergence of the quantized next-token
  distribution from fp32's;
- on the tiny checkpoints of every family, the greedy tokens of each path against float32 (how many
  of the first 16 agree). Tiny random models have near-flat distributions, so this is a
  pessimistic view; the real shapes' top-token agreement is the figure that matters.

    python -m benchmarks.int8_fidelity        # ~10 min on 2 cores, about 12 GB of memory

Not in CI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.real_shapes import FULL_LAYERS, OFFICE, build

PROMPTS = (
    ("Describe this image.", OFFICE),
    ("How many people are in this picture, and what are they doing?", OFFICE),
    ("Write a short poem about the sea.", None),
)
GREEDY_TOKENS = 16
# The quantized paths, by --dtype: the CPU's default (4-bit language model) and int8.
PATHS = ("auto", "int8")


def _logits(engine: Any, text: str, photo: Path | None) -> Any:
    import torch

    from app.engines.base import Attachment, ChatRequest, Turn
    from app.engines.local.generation.prompt import build_prompt
    from app.media import Budget
    from app.media.limits import CPU_MAX_PIXELS

    files = (Attachment(str(photo), photo.name),) if photo else ()
    request = ChatRequest((Turn("user", text, files),))
    budget = Budget(max_pixels=CPU_MAX_PIXELS)
    built = build_prompt(engine.processor, request, budget, engine.media_cache)
    with torch.no_grad():
        return engine.model(**built.inputs).logits[0].float()


def compare(exact: Any, fast: Any) -> dict[str, float]:
    """Position by position: fast's logits against exact's."""
    import torch

    cosine = torch.nn.functional.cosine_similarity(exact, fast, dim=-1)
    relative = (fast - exact).norm(dim=-1) / exact.norm(dim=-1)
    top1 = (exact.argmax(-1) == fast.argmax(-1)).float()
    top5_exact, top5_fast = exact.topk(5).indices, fast.topk(5).indices
    overlap = (top5_exact[:, :, None] == top5_fast[:, None, :]).any(-1).float().mean(-1)
    log_p, log_q = exact.log_softmax(-1), fast.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "positions": float(exact.shape[0]),
        "cosine_mean": cosine.mean().item(),
        "cosine_min": cosine.min().item(),
        "relative_error": relative.mean().item(),
        "top1_agree": top1.mean().item(),
        "top5_overlap": overlap.mean().item(),
        "kl_mean": kl.mean().item(),
    }


def real_shapes() -> list[str]:
    from app.engines.local.loading.checkpoint import LoadOptions
    from testkit.engines import load_engine

    checkpoint = str(build(FULL_LAYERS))
    exact = load_engine(checkpoint, LoadOptions(cpu_only=True, dtype="float32"))
    reference = [_logits(exact, text, photo) for text, photo in PROMPTS]
    del exact
    rows = [
        "| weights | prompt | positions | cosine (mean / min) | relative error | top-1 agrees "
        "| top-5 overlap | KL (nats) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dtype in PATHS:
        fast = load_engine(checkpoint, LoadOptions(cpu_only=True, dtype=dtype))
        for (text, photo), expected in zip(PROMPTS, reference, strict=True):
            r = compare(expected, _logits(fast, text, photo))
            label = text + (" + photo" if photo else "")
            rows.append(
                f"| {fast.weights} | {label} | {r['positions']:.0f} "
                f"| {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['relative_error']:.3f} "
                f"| {r['top1_agree']:.1%} | {r['top5_overlap']:.1%} | {r['kl_mean']:.4f} |"
            )
            print(rows[-1], flush=True)
        del fast
    return rows


def _greedy(engine: Any) -> list[int]:
    """The first GREEDY_TOKENS ids `engine`'s model makes, greedy, for a fixed question."""
    from app.engines.base import ChatRequest, Turn
    from app.engines.local.generation.prompt import build_prompt

    request = ChatRequest((Turn("user", "Tell me about the weather today."),))
    built = build_prompt(engine.processor, request, engine.budget, engine.media_cache)
    out = engine.model.generate(
        **built.inputs,
        max_new_tokens=GREEDY_TOKENS,
        min_new_tokens=GREEDY_TOKENS,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return list(out[0, built.inputs["input_ids"].shape[1] :].tolist())


def tiny_families() -> list[str]:
    from app.engines.local.loading.checkpoint import LoadOptions
    from testkit.checkpoints import TRIAL_FAMILIES, build_tiny_checkpoint
    from testkit.engines import load_engine

    rows = [
        f"| family | leading greedy tokens equal to float32's (of {GREEDY_TOKENS}): "
        + ", ".join(PATHS)
        + " |",
        "| --- | --- |",
    ]
    for family in TRIAL_FAMILIES:
        path = str(build_tiny_checkpoint(tempfile.mkdtemp(), family, suppress_eos=True))
        exact = _greedy(load_engine(path, LoadOptions(cpu_only=True, dtype="float32")))
        same = []
        for dtype in PATHS:
            fast = _greedy(load_engine(path, LoadOptions(cpu_only=True, dtype=dtype)))
            pairs = enumerate(zip(exact, fast, strict=False))
            same.append(next((i for i, (a, b) in pairs if a != b), len(exact)))
        rows.append(f"| {family} | " + ", ".join(map(str, same)) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    from app.cpu_weights.threads import quiet_openmp

    quiet_openmp()  # as the app's entry point does, before torch is imported
    rows = [*tiny_families(), "", *real_shapes()]
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
