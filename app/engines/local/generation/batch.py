"""One decode step for every reply in the batch: each reply's next token read in one forward.

A decode step reads every weight once whatever the number of rows, so replies decoded together
share that cost (and the per-step overhead of Python and small operations). Each reply keeps its
own cache and RoPE offset (internals.py hands them to the model); the CPU kernels compute each
row on its own, so a reply's tokens are the same in a batch as alone
(tests/engine/test_batching.py).
A model whose cache holds recurrent states (Qwen3.5's linear attention) has them stacked for
the step and copied back into each reply's cache (internals.py): fixed-size states copied
twice a step, where stepping the replies one after another read every weight once a reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.engines.local.generation import kv
from app.engines.local.generation.calls import Job
from app.engines.local.generation.internals import ModelInternals
from app.engines.local.generation.sampling import RowSampler
from app.engines.local.generation.streamer import TokenStreamer


@dataclass(eq=False)  # one per reply: compared by identity
class Row:
    """One reply being decoded: its request, its cache and where a later prompt may cut it
    (`marks`), its sampler (the ids so far), its streamer, its RoPE offset."""

    job: Job
    cache: Any
    marks: kv.Marks
    sampler: RowSampler
    streamer: TokenStreamer
    rope_offset: int
    # Tokens the reply may hold in memory at most: what admission counts (scheduler.py).
    tokens_held: int = field(default=0)

    @property
    def last_token(self) -> int:
        return self.sampler.ids[-1]


class BatchStep:
    """The forward of one decode step over rows of `model`."""

    def __init__(self, model: Any, internals: ModelInternals) -> None:
        self.model = model
        self.internals = internals

    def logits(self, rows: list[Row]) -> Any:
        """Each row's next-token logits, (rows, vocabulary) in float32, its cache grown by its
        last token."""
        internals = self.internals
        lengths = [_tokens_read(row) for row in rows]
        with internals.rows_attention():
            out = self.model(
                input_ids=self._last_tokens(rows),
                position_ids=internals.decode_positions(lengths, [r.rope_offset for r in rows]),
                cache=internals.rows_cache([row.cache for row in rows]),
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float()

    def _last_tokens(self, rows: list[Row]) -> Any:
        import torch

        ids = [[row.last_token] for row in rows]
        return torch.tensor(ids, dtype=torch.long, device=self.model.device)


def _tokens_read(row: Row) -> int:
    """Tokens a row's cache has read: its ids but the last, not yet read."""
    return len(row.sampler.ids) - 1
