"""The output layer in 4-bit blocks, its likeliest tokens' logits computed again in 8 bits.

Why: the output layer (151,936 x 2,048 in Qwen3-VL-2B) is a fifth of the bytes a decoded token
reads; in 4-bit blocks instead of 8 it reads 38% fewer of them (the whole model 8.7% fewer; a
decode step on an AVX2 CPU about 5% shorter). But 4 bits blur the logits, and llama.cpp keeps
this layer in 6 bits even in Q4_K_M: in a trained model most of the probability sits on a few
tokens, whose logits decide what is said. So the 4-bit logits only choose the `HEAD` likeliest
tokens of each row; theirs are computed again from the int8 rows of the input embedding, which
holds the same weights where the two are tied (Qwen3-VL-2B, Qwen2.5-VL-3B) and is in memory
anyway for the lookup (app/cpu_weights/int8.py). Those 64 rows are 128 KB a token.

Exact per row: each row's head is chosen and its logits summed from that row alone, so a token
read in a prompt and the same token decoded get the same logits (the prefix cache rests on it).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from app.cpu_weights.blocks import BlockLinear
from app.cpu_weights.int8 import Int8Embedding

# Tokens a row whose logits are computed again. Measured on Qwen3-VL-2B's shapes over the
# fidelity text (docs/cpu.md, "The output layer in 4 bits"): the 8-bit layer's top token was the
# 4-bit one's at 81% of the positions, among its top 8 at all of them; 64 leaves a margin for
# the flatter ends of a trained model's distributions.
HEAD = 64
# Rows refined at once: their temporaries (rows x HEAD x width floats) stay small.
ROWS_AT_ONCE = 16


class RefinedOutput(nn.Module):
    """The output layer: `coarse` (4-bit blocks) for every token, then the `head` likeliest
    tokens' logits from `rows` (an `Int8Embedding` of the same weights)."""

    coarse: BlockLinear
    head: int
    rows: Int8Embedding

    def __init__(self, coarse: BlockLinear, rows: Int8Embedding, head: int = HEAD) -> None:
        super().__init__()
        self.coarse = coarse
        self.head = head
        # Not a submodule: the embedding is the model's own (saved and counted there).
        object.__setattr__(self, "rows", rows)

    @property
    def in_features(self) -> int:
        return self.coarse.in_features

    @property
    def out_features(self) -> int:
        return self.coarse.out_features

    def forward(self, x: Tensor) -> Tensor:
        logits = self.coarse(x)
        flat = logits.view(-1, self.out_features)
        inputs = x.reshape(-1, self.in_features).float()
        for start in range(0, len(flat), ROWS_AT_ONCE):
            self._refine(flat[start : start + ROWS_AT_ONCE], inputs[start : start + ROWS_AT_ONCE])
        return logits

    def _refine(self, logits: Tensor, inputs: Tensor) -> None:
        """`logits`' `head` likeliest entries of each row, again from the int8 rows, in place."""
        top = logits.topk(min(self.head, self.out_features), dim=-1).indices
        weights = self.rows.qweight[top].float()  # (rows, head, in)
        # Elementwise products summed over the last axis: each row's sums in the same order
        # however many rows there are.
        exact = (weights * inputs[:, None, :]).sum(-1) * self.rows.scale[top]
        logits.scatter_(1, top, exact.to(logits.dtype))

    def extra_repr(self) -> str:
        return f"the {self.head} likeliest tokens again from the int8 embedding rows"


def refine_output(model: Any) -> bool:
    """Give `model`'s output layer, where it is in 4-bit blocks and tied to an int8 input
    embedding of the same shape, its refined form; whether it did."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = (
        isinstance(output, BlockLinear)
        and output.bits == 4
        and isinstance(embedding, Int8Embedding)
        and (embedding.num_embeddings, embedding.embedding_dim)
        == (output.out_features, output.in_features)
    )
    if tied:
        model.set_output_embeddings(RefinedOutput(output, embedding))
    return tied


def tied_output(model: Any) -> bool:
    """Whether `model`'s output layer and input embedding hold one table (before quantizing)."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return output is not None and output.weight is embedding.weight
