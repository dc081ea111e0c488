"""The CPU's quantized paths (app/cpu_weights/int8.py; the language model in 4 bits by
default, blocks.py, tested alone in tests/unit/test_cpu_blocks.py): every family, exact in how they
split a prompt (so the prefix cache changes nothing: tests/engine/test_prefix_cache.py runs on the
default), and close to float32."""

from __future__ import annotations

import copy
import json
import platform
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cpu_weights.blocks import block_kernels_available
from app.cpu_weights.int8 import int8_kernels_available, quantize
from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
from app.engines.local import LocalEngine
from app.engines.local.loading.checkpoint import LoadOptions
from app.trial import TRIAL_FAMILIES
from testkit.engines import load_engine

# Not skipped where the kernels are missing or slow on an x86 CPU: the app would fall back to
# float32 there, and a test fails instead. (Signed 8-bit inputs once ran oneDNN's reference
# code on a CPU without AMX, 67 times slower than float32, and nothing failed.)
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the int8 path is the CPU's, made for oneDNN's x86 kernels",
)


GREEDY = GenerationParams(max_new_tokens=8, temperature=0, enable_thinking=False)


def test_the_int8_path_has_a_fast_kernel_on_this_cpu():
    # oneDNN's int8 where its probe finds it fast; else ONNX Runtime's 8-bit blocks (on a CPU
    # with AVX2 but no VNNI, oneDNN ran its reference code: 8 ms against float32's 0.3).
    assert int8_kernels_available() or block_kernels_available()


def test_where_onednn_is_slow_the_int8_layers_go_to_onnx_runtimes_8_bits(monkeypatch):
    from app.cpu_weights import int8 as cpu_int8

    monkeypatch.setattr(cpu_int8, "int8_kernels_available", lambda: False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 160), nn.GELU(), nn.Linear(160, 48, bias=False))
    x = torch.randn(2, 37, 96)
    expected = model(x)
    assert quantize(model) == (2, 0)
    assert {(type(m).__name__, m.bits) for m in model if hasattr(m, "bits")} == {("BlockLinear", 8)}
    error = (model(x) - expected).norm() / expected.norm()
    assert error < 0.03, f"relative error {error:.4f}"  # as the oneDNN layers


# Tests of oneDNN's int8 layers themselves; where its product is slow, the int8 path does not use
# it (the two tests above), and these say so.
onednn = pytest.mark.skipif(
    not int8_kernels_available(),
    reason="oneDNN's int8 product is slow or wrong on this CPU: the int8 path uses ONNX "
    "Runtime's 8 bits",
)


def _quantized_modules(model) -> set[str]:
    kinds = {"BlockLinear", "Int8Linear", "Int8Embedding"}
    return {type(m).__name__ for m in model.modules()} & kinds


def _stream(engine: LocalEngine, request: ChatRequest, cancel=None):
    return list(engine.stream(request, cancel or threading.Event()))


@onednn
def test_a_linear_layer_in_int8_is_close_to_float32_and_exact_however_the_rows_are_split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 160), nn.GELU(), nn.Linear(160, 48, bias=False))
    x = torch.randn(2, 37, 96)
    expected = model(x)
    assert quantize(model) == (2, 0)
    got = model(x)
    assert got.dtype == x.dtype and got.shape == expected.shape
    error = (got - expected).norm() / expected.norm()
    assert error < 0.03, f"relative error {error:.4f}"
    # Each row (token) has its own activation scale: a prefix read alone gives the same bits.
    assert torch.equal(model(x[:, :11]), got[:, :11])


class _Attention(nn.Module):
    """Three projections of one input, named as Qwen's are (so they share one int8 matmul)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q_proj = nn.Linear(64, 64, bias=bias)
        self.k_proj = nn.Linear(64, 32, bias=bias)
        self.v_proj = nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


@onednn
@pytest.mark.parametrize("bias", [True, False])
def test_projections_of_one_input_share_one_matmul_and_give_the_same_numbers(bias):
    torch.manual_seed(0)
    shared = _Attention(bias)
    # The same layers under other names: quantized apart.
    apart = nn.ModuleDict({n[0]: copy.deepcopy(m) for n, m in shared.named_children()})
    x = torch.randn(3, 5, 64)
    quantize(shared), quantize(apart)
    assert type(shared.k_proj).__name__ == "Int8Part"
    assert {type(m).__name__ for m in apart.children()} == {"Int8Linear"}
    assert shared.k_proj.shared is shared.q_proj.shared
    expected = torch.cat([apart[n](x) for n in "qkv"], dim=-1)
    torch.testing.assert_close(shared(x), expected, rtol=1e-6, atol=1e-6)
    # Called alone, or with another input than its siblings', a part still gives its own.
    other = torch.randn(2, 64)
    torch.testing.assert_close(shared.v_proj(other), apart["v"](other), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shared.k_proj(x), expected[..., 64:96], rtol=1e-6, atol=1e-6)


@onednn
def test_a_tied_embedding_and_output_layer_are_quantized_once():
    embed = nn.Embedding(300, 64)
    head = nn.Linear(64, 300, bias=False)
    head.weight = embed.weight  # tied, as Qwen3-VL-2B's
    model = nn.ModuleDict({"embed": embed, "head": head})
    assert quantize(model) == (1, 1)
    assert model["embed"].scale is model["head"].scale
    ids = torch.tensor([[3, 299, 0]])
    rows = model["embed"](ids)
    assert torch.allclose(rows, embed.weight[ids], atol=embed.weight.abs().max().item() / 127)


@pytest.mark.parametrize("family", TRIAL_FAMILIES)
def test_every_family_loads_4_bit_by_default_on_the_cpu_and_int8_or_float32_when_asked(
    tiny_checkpoint, family
):
    path = str(tiny_checkpoint(family))
    fast = load_engine(path)
    assert fast.weights == "int4"
    assert _quantized_modules(fast.model) >= {"BlockLinear", "Int8Embedding"}
    # The vision encoder stays int8; the language model is in 4 bits, 8 for the projections
    # into the residual stream and attention's values.
    modules = dict(fast.model.named_modules())
    vision = [
        m
        for n, m in modules.items()
        if n.startswith("model.visual.") and hasattr(m, "bits_a_weight")
    ]
    assert vision and all(getattr(m, "bits", 8) == 8 for m in vision)
    # An output layer tied to the embedding in 4 bits, its likeliest tokens from the int8 rows;
    # one of its own in 8 bits.
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")):
        assert type(modules["lm_head"]).__name__ == "RefinedOutput"
        assert modules["lm_head.coarse"].bits == 4
    else:
        assert type(modules["lm_head"]).__name__ == "BlockLinear" and modules["lm_head"].bits == 8
    bits = {m.bits for n, m in fast.model.named_modules() if type(m).__name__ == "BlockLinear"}
    assert bits == {4, 8}
    int8 = load_engine(path, LoadOptions(dtype="int8"))
    assert int8.weights == "int8"
    linear = "Int8Linear" if int8_kernels_available() else "BlockLinear"  # 8-bit blocks
    assert _quantized_modules(int8.model) == {linear, "Int8Embedding"}
    exact = load_engine(path, LoadOptions(dtype="float32"))
    assert exact.weights == "float32" and not _quantized_modules(exact.model)
    request = ChatRequest((Turn("user", "Hello there"),), GREEDY)
    for engine in (fast, int8, exact):
        deltas = _stream(engine, request)
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens >= 1


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_the_default_cpu_path_reads_an_image_and_a_video(tiny_checkpoint, media, family):
    engine = load_engine(str(tiny_checkpoint(family)))
    files = (
        Attachment(str(media / "red.jpg"), "red.jpg"),
        Attachment(str(media / "clip.mp4"), "clip.mp4"),
    )
    deltas = _stream(engine, ChatRequest((Turn("user", "What is shown?", files),), GREEDY))
    usage = deltas[-1].usage
    assert usage is not None and usage.visual_tokens > 0 and usage.completion_tokens >= 1


def test_stop_ends_a_reply_on_the_default_cpu_path(tiny_checkpoint):
    engine = load_engine(str(tiny_checkpoint("qwen3_vl", suppress_eos=True)))
    cancel = threading.Event()
    params = GenerationParams(max_new_tokens=400, temperature=0, enable_thinking=False)
    texts = []
    for delta in engine.stream(ChatRequest((Turn("user", "Count"),), params), cancel):
        texts.append(delta.text)
        if len(texts) == 3:
            cancel.set()
    assert 3 <= len(texts) < 50


@pytest.mark.parametrize(("family", "dtype"), [("qwen3_vl", "auto"), ("qwen3_5", "int8")])
def test_the_quantized_weights_are_saved_once_and_read_back_the_same(
    tiny_checkpoint, media, tmp_path, caplog, family, dtype
):
    path = str(tiny_checkpoint(family))
    options = LoadOptions(weights_store=tmp_path / "int8", dtype=dtype)
    files = (Attachment(str(media / "red.jpg"), "red.jpg"),)
    request = ChatRequest((Turn("user", "What is it?", files),), GREEDY)
    replies = []
    with caplog.at_level("INFO", logger="app.cpu_weights.store"):
        for _ in range(2):
            engine = load_engine(path, options)
            assert engine.weights == ("int4" if dtype == "auto" else dtype)
            replies.append("".join(d.text for d in _stream(engine, request)))
    said = [r.getMessage() for r in caplog.records]
    assert any("saved in" in m for m in said) and any("read from" in m for m in said)
    fresh = load_engine(path, LoadOptions(dtype=dtype))  # quantized afresh, nothing saved
    assert replies[0] == replies[1] == "".join(d.text for d in _stream(fresh, request))
    assert replies[0]


def test_a_changed_checkpoint_gets_new_int8_weights_and_the_old_ones_go(tmp_path):
    from app.cpu_weights.store import store_folder
    from testkit.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ck", "qwen3_vl")
    root = tmp_path / "int8"
    load_engine(str(path), LoadOptions(weights_store=root))
    first = store_folder(root, path, "int4")
    assert first.is_dir()
    config = path / "config.json"
    config.write_text(config.read_text() + "\n")  # the checkpoint changed
    load_engine(str(path), LoadOptions(weights_store=root))
    assert [p.name for p in root.iterdir()] == [store_folder(root, path, "int4").name]
    assert first.name != store_folder(root, path, "int4").name


def test_a_store_of_an_older_format_is_rebuilt_not_misread(tmp_path, monkeypatch, caplog):
    from app.cpu_weights import store as int8_store
    from app.cpu_weights.blocks import EIGHT_BITS
    from app.cpu_weights.store import store_folder
    from app.engines.local.loading import checkpoint
    from testkit.checkpoints import REAL_CONFIGS, build_from_config_folder

    # Tiny widths with Qwen3-VL-2B's configuration: its output layer tied to the embedding.
    path = build_from_config_folder(REAL_CONFIGS / "Qwen3-VL-2B-Instruct", tmp_path / "ck")
    root = tmp_path / "int8"
    # As the app of format 3 saved it: the output layer in 8 bits.
    monkeypatch.setattr(int8_store, "FORMAT", int8_store.FORMAT - 1)
    plan = checkpoint.block_plan
    monkeypatch.setattr(
        checkpoint, "block_plan", lambda name, **_: EIGHT_BITS if name == "lm_head" else plan(name)
    )
    assert load_engine(str(path), LoadOptions(weights_store=root)).model.lm_head.bits == 8
    older = store_folder(root, path, "int4")
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="app.cpu_weights.store"):
        engine = load_engine(str(path), LoadOptions(weights_store=root))
    said = [r.getMessage() for r in caplog.records]
    assert any("saved in" in m for m in said) and not any("read from" in m for m in said)
    assert [p.name for p in root.iterdir()] == [store_folder(root, path, "int4").name]
    assert older.name not in [p.name for p in root.iterdir()]
    assert engine.model.lm_head.coarse.bits == 4


def test_a_store_file_of_another_format_is_not_read(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from app.cpu_weights.store import REST, store_folder
    from testkit.checkpoints import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ck", "qwen3_vl")
    root = tmp_path / "weights"
    load_engine(str(path), LoadOptions(weights_store=root))
    rest = store_folder(root, path, "int4") / REST
    save_file(load_file(rest), str(rest), metadata={"format": "2"})  # as an older app wrote
    with caplog.at_level("INFO", logger="app.cpu_weights.store"):
        engine = load_engine(str(path), LoadOptions(weights_store=root))
    said = [r.getMessage() for r in caplog.records]
    assert any("of another format" in m for m in said) and any("saved in" in m for m in said)
    assert engine.model.lm_head.bits == 8  # its own output layer, not tied
