"""Out of memory: telling the error, and giving the accelerator's caches back."""

from __future__ import annotations


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_accelerator_memory() -> None:
    """Give the CUDA caches back, on every visible GPU (a model may be spread over them)."""
    import torch

    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        with torch.cuda.device(index):
            torch.cuda.empty_cache()
