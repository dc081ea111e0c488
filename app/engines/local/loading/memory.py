"""How much memory there is to spend (the defaults of the prompt bound and the prefix cache),
and what to do when it runs out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

GB = 1 << 30


def gpu_free_bytes() -> list[int]:
    """Free memory of each visible GPU, in order (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())]


def available_bytes(on_cuda: bool) -> int:
    """Free memory where the model runs: all visible GPUs' together (a model spread over them
    keeps each layer's cache beside it), or the machine's available RAM."""
    if on_cuda:
        return sum(gpu_free_bytes())
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_prefix_cache_bytes(available: int) -> int:
    """A quarter of what is free, at most 8 GB: room for a few long conversations with images
    (the real Qwen3-VL-2B keeps about 0.22 MB a token in fp32), and most memory left to work."""
    return min(8 * GB, available // 4)


def default_max_prompt_tokens(context: int, available: int, bytes_per_token: int) -> int:
    """The model's context, or fewer where half the free memory cannot hold that many tokens."""
    return max(1024, min(context, available // 2 // max(1, bytes_per_token)))


# Replies decoded together by default. On 2 CPU cores (Qwen3-VL-2B's shapes, the 4-bit default,
# 48-token replies; benchmarks/batching.py) one reply streams 11.3 tokens/s (its reading
# included); four at once 25.1 in all (2.2x), each at 6.3, a pace still read comfortably; eight
# 29.7 (2.6x) but each at 3.7 and the last first token after 4.1 s: four is the CPU's default.
# A GPU's decode step costs about the same for many more rows; 16 is not measured here (no GPU
# was lent): its check (benchmarks/gpu_check.py) reports eight users against one.
DEFAULT_MAX_BATCH_CPU = 4
DEFAULT_MAX_BATCH_GPU = 16


def default_max_batch(on_cuda: bool) -> int:
    return DEFAULT_MAX_BATCH_GPU if on_cuda else DEFAULT_MAX_BATCH_CPU


def default_batch_tokens(available: int, bytes_per_token: int) -> int:
    """Tokens the replies decoded together may hold in all: half the free memory's worth (a
    reply that would pass it waits for room; one alone is bounded by the prompt bound)."""
    return max(1024, available // 2 // max(1, bytes_per_token))


@dataclass(frozen=True)
class MemoryDefaults:
    """What a model's engine may hold where the settings leave it to the app."""

    max_prompt_tokens: int
    prefix_cache_bytes: int
    max_batch: int
    max_batch_tokens: int


def memory_defaults(model: Any) -> MemoryDefaults:
    """The prompt bound and the prefix cache's size for `model`, from the memory free now."""
    from app.engines.local.generation.attention import kv_bytes_per_token

    free = available_bytes(model.device.type == "cuda")
    per_token = kv_bytes_per_token(model)
    context = model.config.get_text_config().max_position_embeddings
    return MemoryDefaults(
        default_max_prompt_tokens(context, free, per_token),
        default_prefix_cache_bytes(free),
        default_max_batch(model.device.type == "cuda"),
        default_batch_tokens(free, per_token),
    )
