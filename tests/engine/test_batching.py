"""Several replies decoded in one batch by the local engine
(app/engines/local/generation/scheduler.py).

A reply decoded beside others must be, token for token, the reply decoded alone: each family,
the CPU's 4-bit (the default), int8 and float32 paths, prompts of different lengths with and
without a photo, replies joining mid-way, one stopped, a batch held small by memory, and decode
steps taken between the layers of another's prefill. Replies are greedy and run to their length
(`suppress_eos`), so that a difference anywhere shows.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pytest
import torch

from app.engines.base import Attachment, ChatRequest, GenerationParams, Turn
from app.engines.local.generation import kv
from app.engines.local.generation.attention import stored_kv_dtype
from app.engines.local.generation.internals import ModelInternals
from app.engines.local.loading.checkpoint import LoadOptions
from testkit.checkpoints import TRIAL_FAMILIES, build_tiny_checkpoint
from testkit.engines import load_engine

QUESTIONS = (
    "Hi",
    "What is the capital of France, and why did it grow so large over the centuries?",
    "Tell me a story about a lighthouse keeper who finds a bottle on the shore one morning.",
    "Describe this picture.",
)
TOKENS = 40


def _request(index: int, media, tokens: int = TOKENS) -> ChatRequest:
    files = (Attachment(str(media / "red.jpg"), "red.jpg"),) if index == 3 else ()
    turn = Turn("user", QUESTIONS[index], files)
    params = GenerationParams(max_new_tokens=tokens, temperature=0)
    return ChatRequest((turn,), params, owner=f"user{index}")


def _reply(engine, request: ChatRequest, cancel: threading.Event | None = None, after=None) -> str:
    """The reply's text; `after(text so far)` is called at each piece (to stop it, say)."""
    text = ""
    for delta in engine.stream(request, cancel or threading.Event()):
        text += delta.text or ""
        if after is not None and delta.text:
            after(text)
    return text


def _together(engine, requests: list[ChatRequest]) -> list[str]:
    """Each request's reply, all asked at once, their prompts read
    afresh (not from the prefix cache, which holds them from the replies alone)."""
    engine.prefix_cache.clear()
    replies: list[str | None] = [None] * len(requests)

    def ask(index: int) -> None:
        replies[index] = _reply(engine, requests[index])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return [reply or "" for reply in replies]


def _alone(engine, requests: list[ChatRequest]) -> list[str]:
    return [_reply(engine, request) for request in requests]


def _most_rows_in_one_forward(engine, run):
    """`run()`'s result, and the most rows the language model computed in one forward (a
    batched decode step: a row a reply, every weight read once for all of them)."""
    most = [0]

    def count(_module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] == 1:  # a decode step, not a prompt
            most[0] = max(most[0], embeds.shape[0])

    hook = engine.model.model.language_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        return run(), most[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("family", TRIAL_FAMILIES)
def test_replies_decoded_together_equal_each_decoded_alone(tiny_checkpoint, media, family):
    engine = load_engine(tiny_checkpoint(family, suppress_eos=True), max_batch=4)
    requests = [_request(i, media) for i in range(4)]
    alone = _alone(engine, requests)
    assert engine.scheduler.largest_batch == 1
    together, rows = _most_rows_in_one_forward(engine, lambda: _together(engine, requests))
    assert engine.scheduler.largest_batch >= 3  # the four overlapped
    # ... in one forward a step: Qwen3.5's linear-attention states too, stacked for the step
    assert rows >= 3
    assert together == alone
    assert len(set(alone)) == 4 and all(alone)


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_the_other_cpu_paths_decode_the_same_in_a_batch(tiny_checkpoint, media, dtype):
    engine = load_engine(
        tiny_checkpoint("qwen3_vl", suppress_eos=True), LoadOptions(dtype=dtype), max_batch=4
    )
    assert engine.weights == dtype
    requests = [_request(i, media) for i in range(4)]
    alone = _alone(engine, requests)
    assert _together(engine, requests) == alone
    assert engine.scheduler.largest_batch >= 3


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_a_reply_joining_mid_way_and_one_stopped_leave_the_others_whole(
    tiny_checkpoint, media, family
):
    engine = load_engine(tiny_checkpoint(family, suppress_eos=True), max_batch=4)
    long_one = _request(1, media, tokens=120)
    others = [_request(0, media), _request(3, media)]
    stopped = _request(2, media, tokens=120)
    alone = _alone(engine, [long_one, *others])
    stopped_alone = _reply(engine, stopped)

    results: dict[str, str] = {}
    cancel = threading.Event()

    def stop_after_some(text: str) -> None:
        if len(text) >= 20:
            cancel.set()

    def run(name: str, request: ChatRequest, **kwargs) -> None:
        results[name] = _reply(engine, request, **kwargs)

    threads = [
        threading.Thread(target=run, args=("long", long_one)),
        threading.Thread(
            target=run,
            args=("stopped", stopped),
            kwargs={"cancel": cancel, "after": stop_after_some},
        ),
    ]
    for thread in threads:
        thread.start()
    while not cancel.is_set():  # the others join once the long reply is on its way
        time.sleep(0.01)
    joined = _together(engine, others)
    for thread in threads:
        thread.join(timeout=300)
    assert [results["long"], *joined] == alone
    # The stopped reply is a beginning of its whole reply, and shorter.
    assert stopped_alone.startswith(results["stopped"]) and len(results["stopped"]) < len(
        stopped_alone
    )
    assert engine.scheduler.largest_batch >= 3


def test_qwen35_steps_in_a_batch_leave_each_reply_the_states_it_has_alone(tmp_path):
    # Two decode steps of two replies: through transformers' own handling of each reply's cache
    # (alone), and through one batched cache whose linear-attention states are stacked for the
    # step and copied back (internals.rows_cache). The logits of both steps and each reply's
    # states after them, bit for bit. (Replies compared as text could not tell: the engine's
    # lone replies take the batched path too, and the tiny model's greedy tokens did not change
    # with those states zeroed at every step.)
    engine = load_engine(build_tiny_checkpoint(tmp_path, "qwen3_5", init_range=0.5))
    model, internals = engine.model, ModelInternals(engine.model)
    prompts = ["Hello there, how are you today?", "Tell me a long story about the sea."]
    read = [_prefill(engine, prompt) for prompt in prompts]
    alone = [copy.deepcopy(cache) for _, cache, _ in read]
    together = [copy.deepcopy(cache) for _, cache, _ in read]
    tokens = [[token] for _, _, token in read]
    lengths = [length for length, _, _ in read]
    with torch.inference_mode():
        for _ in range(2):
            solo = torch.cat(
                [
                    _step(model, internals, [length], cache, [token])
                    for length, cache, token in zip(lengths, alone, tokens, strict=True)
                ]
            )
            with internals.rows_attention():
                rows_cache = internals.rows_cache(together)
                batched = _step(model, internals, lengths, rows_cache, tokens)
            assert torch.equal(solo, batched)
            tokens = [[int(row.argmax())] for row in solo]
            lengths = [length + 1 for length in lengths]
    for one, other in zip(alone, together, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(_states(one), _states(other), strict=True))


def _prefill(engine, text: str) -> tuple[int, Any, int]:
    """(tokens read, the cache, the next token) of `text` read by the engine's model."""
    ids = engine.processor.tokenizer(text, return_tensors="pt")["input_ids"]
    cache = kv.new_cache(engine.model.config, stored_kv_dtype(engine.model))
    with torch.inference_mode():
        out = engine.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    return ids.shape[1], cache, int(out.logits[0, -1].argmax())


def _step(model, internals, lengths: list[int], cache, tokens: list[list[int]]):
    positions = internals.decode_positions(lengths, [0] * len(lengths))
    out = model(
        input_ids=torch.tensor(tokens),
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def _states(cache) -> list:
    """A cache's linear-attention states: each layer's convolution and recurrent state."""
    return [
        state
        for layer in cache.layers
        if hasattr(layer, "recurrent_states")
        for state in (layer.conv_states[0], layer.recurrent_states[0])
    ]


def test_a_batch_held_small_by_memory_makes_the_others_wait_not_fail(tiny_checkpoint, media):
    engine = load_engine(tiny_checkpoint("qwen3_vl", suppress_eos=True), max_batch=4)
    requests = [_request(i, media) for i in range(3)]
    alone = _alone(engine, requests)
    # Room for about one reply's tokens: each waits for the one before to end.
    engine.scheduler.max_batch_tokens = 60
    assert _together(engine, requests) == alone
    assert engine.scheduler.largest_batch == 1


def test_the_batch_steps_between_the_layers_of_anothers_prefill(tiny_checkpoint, media):
    engine = load_engine(tiny_checkpoint("qwen3_vl", suppress_eos=True), max_batch=4)
    streaming = _request(1, media, tokens=1000)
    joining = [_request(3, media), _request(2, media)]
    alone = _alone(engine, [streaming, *joining])
    engine.scheduler.prefill_slice_s = 0.0  # a step at every layer of a prefill
    results: dict[str, str] = {}
    on_its_way, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=lambda: results.update(
            long=_reply(engine, streaming, stop, after=lambda text: on_its_way.set())
        )
    )
    thread.start()
    assert on_its_way.wait(timeout=300)
    joined = _together(engine, joining)
    stop.set()  # the long reply was streaming all along: it is stopped once they are done
    thread.join(timeout=300)
    assert joined == alone[1:] and alone[0].startswith(results["long"])
    assert engine.scheduler.steps_during_prefill > 0


def test_a_stop_during_one_prefill_leaves_the_batch_decoding(tiny_checkpoint, media):
    engine = load_engine(tiny_checkpoint("qwen3_vl", suppress_eos=True), max_batch=4)
    streaming = _request(1, media, tokens=80)
    photo = _request(3, media)
    whole = _reply(engine, streaming)
    engine.scheduler.prefill_slice_s = 0.0
    results: dict[str, str] = {}
    thread = threading.Thread(target=lambda: results.update(long=_reply(engine, streaming)))
    thread.start()
    time.sleep(0.3)
    cancel = threading.Event()
    # The Stop comes while the photo is read: as its vision encoder starts.
    first_block = engine.model.model.visual.blocks[0]
    hook = first_block.register_forward_pre_hook(lambda *args: cancel.set())
    try:
        deltas = list(engine.stream(photo, cancel))
    finally:
        hook.remove()
    thread.join(timeout=300)
    assert cancel.is_set() and not any(delta.text for delta in deltas)
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 0
    assert results["long"] == whole


def test_out_of_memory_in_a_batch_makes_one_reply_wait_not_fail(tiny_checkpoint, media):
    import torch

    engine = load_engine(tiny_checkpoint("qwen3_vl", suppress_eos=True), max_batch=4)
    requests = [_request(i, media) for i in range(3)]
    alone = _alone(engine, requests)
    failures: list[int] = []

    def run_out_once(module, args, kwargs):
        """The first step of three replies runs out of memory half-way through the layers."""
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] == 3 and not failures:
            failures.append(hidden.shape[0])
            raise torch.OutOfMemoryError("out of memory (raised by the test)")

    layer = engine.model.model.language_model.layers[1]
    hook = layer.register_forward_pre_hook(run_out_once, with_kwargs=True)
    try:
        together = _together(engine, requests)
    finally:
        hook.remove()
    assert failures == [3]
    assert together == alone
