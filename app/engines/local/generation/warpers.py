"""Two of transformers' logits processors, made cheap for one reply's token on the CPU.

`generate`'s processors are written for a batch on a GPU. Each reply here picks its token on its
own (sampling.py), on the model thread, between two decode steps, and two of them cost a CPU
more than they need (Qwen3-VL-2B's vocabulary of 151,936; Intel Xeon, 2 cores):

- top-p (`TopPLogitsWarper`) sorts the whole vocabulary: 3.6-11 ms a token, the most of the
  10.7 ms a sampled token's pick took (a decode step: 113-139 ms), and paid once per reply in a
  batch (four users sampling: 38-41 ms between two steps, 7-9 greedy). It runs after top-k,
  which left only k scores finite (20 with Qwen3-VL's settings, the page's default); the others
  are -inf, and top-p removes them anyway. `SparseTopP` sorts only the finite scores, lays them
  out where the full sort would have put them (after the -infs) and takes the same softmax and
  cumulative sum over the whole row: the same numbers, hence the same tokens kept, as
  transformers' (tests/unit/test_warpers.py). Two scores exactly equal at the top-p boundary
  may be kept the other way round: transformers' sort does not order ties either.
- suppressed tokens (`SuppressTokensLogitsProcessor`, the checkpoint's `suppress_tokens`) build
  a mask the size of the vocabulary each token: 1.1 ms, in greedy replies too. `IndexedSuppress`
  writes -inf at those ids: the same scores.

Anything else (a top-p with every score finite, a filter value other than -inf, a batch of rows)
goes to transformers' own code.
"""

from __future__ import annotations

from typing import Any

# Below this share of finite scores, sorting them alone is the cheaper way.
SPARSE_SHARE = 1 / 8


def lean_processors(processors: Any) -> Any:
    """`processors` (a LogitsProcessorList) with top-p and suppressed tokens swapped for their
    lean equivalents; the list itself, changed in place."""
    from transformers.generation.logits_process import (
        SuppressTokensLogitsProcessor,
        TopPLogitsWarper,
    )

    lean = {TopPLogitsWarper: SparseTopP, SuppressTokensLogitsProcessor: IndexedSuppress}
    for index, processor in enumerate(processors):
        kind = lean.get(type(processor))
        if kind is not None:
            processors[index] = kind(processor)
    return processors


class SparseTopP:
    """transformers' top-p, sorting only the finite scores where few are (module docstring)."""

    def __init__(self, warper: Any) -> None:
        self.warper = warper

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        warper = self.warper
        if scores.shape[0] != 1 or warper.filter_value != -float("inf"):
            return warper(input_ids, scores)
        held = scores[0] != -float("inf")  # what top-k left (a NaN too: sorted last by both)
        positions = held.nonzero().squeeze(1)
        count = len(positions)
        if not 0 < count <= len(held) * SPARSE_SHARE:
            return warper(input_ids, scores)
        values, order = torch.sort(scores[0, positions])
        # The row as the full sort orders it: every -inf first, then the finite scores rising;
        # its softmax is the same numbers, and its running sum is 0 up to the finite ones.
        laid_out = torch.full_like(scores, -float("inf"))
        laid_out[0, -count:] = values
        cumulative = laid_out.softmax(dim=-1)[0, -count:].cumsum(dim=-1)
        remove = cumulative <= (1 - warper.top_p)
        remove[-warper.min_tokens_to_keep :] = False
        removed = torch.zeros_like(scores, dtype=torch.bool)
        removed[0, positions[order]] = remove
        return scores.masked_fill(removed, warper.filter_value)


class IndexedSuppress:
    """transformers' suppressed tokens, -inf written at their ids instead of a vocabulary-wide
    mask built each token."""

    def __init__(self, processor: Any) -> None:
        self.tokens = processor.suppress_tokens

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        tokens = self.tokens.to(scores.device)
        tokens = tokens[(tokens >= 0) & (tokens < scores.shape[-1])]
        return scores.index_fill(-1, tokens, -float("inf"))
