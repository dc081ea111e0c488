"""The lean top-p and suppressed tokens (app/engines/local/generation/warpers.py) give the very
scores transformers' processors give, on a vocabulary of Qwen's size."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from app.engines.local.generation.warpers import IndexedSuppress, SparseTopP, lean_processors

VOCABULARY = 151_936
IDS = torch.tensor([[1, 2, 3]])


def _scores(seed: int, spread: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, VOCABULARY, generator=generator) * spread


@pytest.mark.parametrize("top_k", [1, 2, 20, 50, 200, 0])
def test_top_p_after_top_k_keeps_the_tokens_transformers_keeps(top_k):
    cases = itertools.product(range(4), (0.5, 3.0, 12.0), (0.05, 0.5, 0.8, 0.95, 1.0), (1, 3))
    for seed, spread, top_p, keep in cases:
        before = [TemperatureLogitsWarper(0.7)]
        if top_k:
            before.append(TopKLogitsWarper(top_k, min_tokens_to_keep=keep))
        scores = LogitsProcessorList(before)(IDS, _scores(seed, spread))
        theirs = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)
        expected = theirs(IDS, scores.clone())
        got = SparseTopP(theirs)(IDS, scores.clone())
        assert torch.equal(got, expected), (seed, spread, top_p, keep)


def test_top_p_of_scores_all_removed_or_with_a_nan_is_transformers_own():
    theirs = TopPLogitsWarper(0.8)
    nothing = torch.full((1, VOCABULARY), -float("inf"))
    assert torch.equal(SparseTopP(theirs)(IDS, nothing), theirs(IDS, nothing))
    with_nan = TopKLogitsWarper(5)(IDS, _scores(0, 1.0))
    with_nan[0, 7] = float("nan")
    got, expected = SparseTopP(theirs)(IDS, with_nan), theirs(IDS, with_nan)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(0.0), expected.nan_to_num(0.0))


def test_suppressed_tokens_are_the_same_scores():
    tokens = [151645, 151643, 0, VOCABULARY - 1, VOCABULARY + 5]  # one past the vocabulary
    theirs = SuppressTokensLogitsProcessor(tokens)
    scores = _scores(1, 2.0)
    assert torch.equal(IndexedSuppress(theirs)(IDS, scores), theirs(IDS, scores))


def test_a_processor_list_gets_the_lean_ones_in_place_of_theirs_and_keeps_the_rest():
    temperature = TemperatureLogitsWarper(0.7)
    suppress, top_k = SuppressTokensLogitsProcessor([5]), TopKLogitsWarper(20)
    top_p = TopPLogitsWarper(0.8)
    processors = LogitsProcessorList([suppress, temperature, top_k, top_p])
    kinds = [type(p).__name__ for p in lean_processors(processors)]
    assert kinds == ["IndexedSuppress", "TemperatureLogitsWarper", "TopKLogitsWarper", "SparseTopP"]
    assert processors[1] is temperature
