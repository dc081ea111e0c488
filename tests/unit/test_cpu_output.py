"""The output layer in 4-bit blocks with its likeliest tokens computed again from the tied int8
embedding rows (app/cpu_weights/output.py): those logits are the int8 rows' own, every row's
are the same bits alone or among others, and the top token is the int8 rows' where the 4-bit
logits keep it among their likeliest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.cpu_weights.blocks import FOUR_BITS, block_kernels_available
from app.cpu_weights.int8 import quantize
from app.cpu_weights.output import ROWS_AT_ONCE, RefinedOutput, refine_output, tied_output

pytestmark = pytest.mark.skipif(
    not block_kernels_available(), reason="ONNX Runtime's MatMulNBits is not available here"
)

VOCAB, WIDTH = 3000, 256


class Tied(nn.Module):
    """A language model's ends with tied weights, as transformers' models expose them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def set_output_embeddings(self, layer: nn.Module) -> None:
        self.head = layer


@pytest.fixture(scope="module")
def model() -> Tied:
    torch.manual_seed(0)
    tied = Tied()
    assert tied_output(tied)
    with torch.no_grad():
        tied.embed.weight.normal_()
    quantize(tied, formats=lambda name: FOUR_BITS if name == "head" else None)
    assert refine_output(tied)
    return tied


def int8_logits(model: Tied, x: torch.Tensor) -> torch.Tensor:
    rows = model.embed
    return (rows.qweight.float()[None] * x[:, None, :]).sum(-1) * rows.scale


def test_the_likeliest_tokens_logits_are_the_int8_rows_own(model):
    head: RefinedOutput = model.head
    x = torch.randn(9, WIDTH)
    coarse, got = head.coarse(x), head(x)
    top = coarse.topk(head.head, dim=-1).indices
    exact = int8_logits(model, x)
    assert torch.equal(got.gather(1, top), exact.gather(1, top))
    others = torch.ones_like(got, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(got[others], coarse[others])


def test_a_rows_logits_are_the_same_bits_alone_or_among_others(model):
    x = torch.randn(ROWS_AT_ONCE * 2 + 5, WIDTH)  # refined in parts, the last one short
    together = model.head(x[None])[0]
    for i in range(len(x)):
        assert torch.equal(model.head(x[i : i + 1]), together[i : i + 1])


def test_the_top_token_is_the_int8_rows_top_token(model):
    # Rows whose logits are peaked, as a trained model's are: the input leans on one token's row.
    torch.manual_seed(1)
    tokens = torch.randint(0, VOCAB, (200,))
    x = model.embed(tokens) * 0.3 + torch.randn(200, WIDTH)
    expected = int8_logits(model, x).argmax(-1)
    coarse = model.head.coarse(x).argmax(-1)
    refined = model.head(x).argmax(-1)
    assert (refined == expected).all()
    assert (coarse != expected).any(), "the 4-bit logits alone should miss some: no test then"


def test_an_output_layer_of_its_own_is_not_refined():
    torch.manual_seed(0)
    untied = Tied()
    untied.head = nn.Linear(WIDTH, VOCAB, bias=False)
    assert not tied_output(untied)
