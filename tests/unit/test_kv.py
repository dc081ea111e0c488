"""The KV cache's growing layers: a token is written into room kept for it, and whatever
replaces a layer's keys (a cut, a copy) is never written through."""

from types import SimpleNamespace

import pytest
import torch

from app.engines.local.generation import kv


def _states(tokens: int, start: float = 0.0) -> torch.Tensor:
    return torch.arange(tokens * 4, dtype=torch.float32).reshape(1, 1, tokens, 4) + start


@pytest.mark.parametrize("inference", [False, True])
def test_tokens_are_appended_in_place_with_room_to_spare(inference):
    layer = kv.growing_layer_class()()
    with torch.inference_mode(inference):
        first, _ = layer.update(_states(5), _states(5))
        storage = first.untyped_storage().data_ptr()
        keys, values = layer.update(_states(1, 100), _states(1, 100))
        assert keys.shape[-2] == 6 and keys.untyped_storage().data_ptr() == storage
        assert torch.equal(keys, torch.cat([_states(5), _states(1, 100)], dim=-2))
        assert torch.equal(values, keys)
        # The room costs what it holds: ROOM_TOKENS tokens here, for keys and for values.
        assert kv.nbytes(layer) == 2 * kv.ROOM_TOKENS * 4 * 4


def test_a_cut_is_never_written_through():
    layer = kv.growing_layer_class()()
    layer.update(_states(5), _states(5))
    kept = layer.keys[..., :3, :].clone()
    layer.keys, layer.values = kept, layer.values[..., :3, :].clone()
    keys, _ = layer.update(_states(1, 50), _states(1, 50))
    assert torch.equal(keys[..., :3, :], _states(3)) and keys.shape[-2] == 4
    assert torch.equal(kept, _states(3))  # the tensor put in its place is left alone


def test_growing_past_the_room_keeps_every_token():
    layer = kv.growing_layer_class()()
    layer.update(_states(kv.ROOM_TOKENS - 1), _states(kv.ROOM_TOKENS - 1))
    keys, _ = layer.update(_states(3, 7), _states(3, 7))
    assert keys.shape[-2] == kv.ROOM_TOKENS + 2
    assert torch.equal(keys[..., -3:, :], _states(3, 7))


def test_compact_lets_the_room_go():
    layer = kv.growing_layer_class()()
    layer.update(_states(5), _states(5))

    kv.compact(SimpleNamespace(layers=[layer]))
    assert kv.nbytes(layer) == 2 * 5 * 4 * 4 and torch.equal(layer.keys, _states(5))
    keys, _ = layer.update(_states(1, 9), _states(1, 9))
    assert keys.shape[-2] == 6
