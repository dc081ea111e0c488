"""Where a model's weights go: the CPU, one GPU, or spread over several. Pure: sizes in, a plan
out, so that every case (one card, two, four, too big for all) is tested without a GPU.

A model that fits one GPU stays on one (no copies between cards, the fastest). One too big for
any card is spread with `device_map="auto"` over the cards there are, each within a bound that
leaves room for the work itself (the KV cache, the activations of a long prompt): transformers
fills the cards in the model's own order, so the vision encoder and the first layers are on the
first card, with the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.engines.base import EngineError
from app.engines.local.loading.memory import GB

# Of each card's free memory, what the weights may take; the rest is for the work.
WEIGHTS_SHARE = 0.85
# Where one card holds it all, the weights may take more of it (nothing is copied between
# cards, and the prefix cache adapts to what is left).
ONE_CARD_SHARE = 0.95


@dataclass(frozen=True)
class Placement:
    """What `from_pretrained` gets: a device map and, when spread, each card's bound."""

    device_map: str  # "cpu", "cuda:0" or "auto"
    max_memory: dict[int | str, int] | None = None
    where: str = "the CPU"  # for the start-up line, before the load says exactly where

    @property
    def spread(self) -> bool:
        return self.device_map == "auto"


def place(need: int, free_per_gpu: Sequence[int], four_bit_need: int | None = None) -> Placement:
    """Where `need` bytes of weights go, given each visible GPU's free bytes (none: the CPU).
    EngineError, in one line saying what would fit, where they fit nowhere."""
    if not free_per_gpu:
        return Placement("cpu")
    if need <= ONE_CARD_SHARE * free_per_gpu[0]:
        return Placement("cuda:0", where="GPU 0")
    bounds: dict[int | str, int] = {
        i: int(WEIGHTS_SHARE * free) for i, free in enumerate(free_per_gpu)
    }
    if len(free_per_gpu) > 1 and need <= sum(bounds.values()):
        used = _cards_needed(need, list(bounds.values()))
        return Placement("auto", bounds, where=f"{used} of {len(free_per_gpu)} GPUs")
    raise EngineError(_too_big(need, free_per_gpu, four_bit_need))


def _cards_needed(need: int, bounds: list[int]) -> int:
    total = 0
    for count, bound in enumerate(bounds, start=1):
        total += bound
        if total >= need:
            return count
    return len(bounds)


def _too_big(need: int, free_per_gpu: Sequence[int], four_bit_need: int | None) -> str:
    cards = len(free_per_gpu)
    free = ", ".join(f"{f / GB:.1f}" for f in free_per_gpu)
    where = f"the {free} GB free on this GPU" if cards == 1 else f"{free} GB free on {cards} GPUs"
    advice = f"try --load-in-4bit (about {four_bit_need / GB:.1f} GB), " if four_bit_need else ""
    return (
        f"The weights need about {need / GB:.1f} GB, more than fits in {where} (with room "
        f"left for the work): {advice}more GPUs, or a smaller checkpoint."
    )


def describe(device_map: Mapping[str, Any] | None) -> str:
    """How a loaded model was placed, in a few words: `model.hf_device_map` grouped by device,
    in the model's order ("cuda:0: the vision encoder, layers 0-13; cuda:1: layers 14-27, the
    output layer")."""
    if not device_map:
        return ""
    groups: dict[str, list[str]] = {}
    for name, device in device_map.items():
        key = device if isinstance(device, str) and not device.isdigit() else f"cuda:{device}"
        groups.setdefault(key, []).append(_part(name))
    return "; ".join(f"{device}: {_ranges(parts)}" for device, parts in groups.items())


def _part(module: str) -> str:
    if "visual" in module:
        return "the vision encoder"
    if "lm_head" in module:
        return "the output layer"
    if "embed" in module:
        return "the embeddings"
    tail = module.rsplit(".", 1)[-1]
    return f"layer {tail}" if tail.isdigit() else module


def _ranges(parts: list[str]) -> str:
    """Consecutive layers as one range; other parts once each, in order."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            out.append(f"layer {run[0]}" if len(run) == 1 else f"layers {run[0]}-{run[-1]}")
            run.clear()

    for part in parts:
        if part.startswith("layer ") and part[6:].isdigit():
            number = int(part[6:])
            if run and number != run[-1] + 1:
                flush()
            run.append(number)
            continue
        flush()
        if part not in out:
            out.append(part)
    flush()
    return ", ".join(out)
