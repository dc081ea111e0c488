"""Train the seeing model: a tiny Qwen3-VL that answers questions about drawn pictures.

    python scripts/train_seeing.py                 # train, then pack assets/seeing/
    python scripts/train_seeing.py --minutes 2     # a short run (to try a change)

The model has Qwen3-VL-2B's architecture, tokenizer, chat template and processor settings
(assets/realcfg) at tiny widths. It learns from the questions of app/seeing/pictures.py, each
prompt built by the app's own code (app/engines/local/generation/prompt.py: the same file
reading, resizing, frame sampling and PDF pages as a request in the app), so what it saw in
training is what the app gives it. The loss is taken on the answer's tokens only, and the output
layer is computed for those positions alone (151,936 words: over every position a step took
~4x longer).

Only the tokens the training text uses are learned: the model is trained on that small
vocabulary (ids renumbered), every other token counted in the loss as one more choice holding
their whole share of a zero logit, exactly as in the full softmax. The saved model has the full
vocabulary, every row it never learned zero (its logit 0, below every answer the model learned),
which the packed file compresses away. Seeds are fixed: the same command gives the same model on
the same machine.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.engines.base import ChatRequest  # noqa: E402
from app.engines.local.generation.prompt import build_prompt  # noqa: E402
from app.media import Budget, MediaCache  # noqa: E402
from app.seeing import checkpoint  # noqa: E402
from app.seeing.pictures import TASKS, Question, questions  # noqa: E402

SOURCE = ROOT / "assets" / "realcfg" / "Qwen3-VL-2B-Instruct"
WIDTH, TEXT_LAYERS, VISION_DEPTH, HEADS = 128, 4, 2, 4
EVAL_EACH = 24  # questions per task in the held-out check
EVAL_EVERY = int(os.environ.get("SEEING_EVAL_EVERY", 200))  # steps
PEAK_LR = 2e-3


def shrunk_config(source: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size = WIDTH, WIDTH * 3
    text.num_hidden_layers, text.num_attention_heads = TEXT_LAYERS, HEADS
    text.num_key_value_heads, text.head_dim = HEADS, WIDTH // HEADS
    # The rotary sections sum to half a head (16): the real (24, 20, 20) scaled down.
    text.rope_parameters = dict(text.rope_parameters or {}) | {"mrope_section": [6, 5, 5]}
    vision.depth, vision.hidden_size, vision.intermediate_size = VISION_DEPTH, WIDTH, WIDTH * 2
    vision.num_heads, vision.out_hidden_size = HEADS, WIDTH
    vision.deepstack_visual_indexes = [VISION_DEPTH - 1]
    return config


class Examples:
    """Questions made into the app's own prompts, with their answers' token ids."""

    def __init__(self, processor: Any, folder: Path) -> None:
        self.processor = processor
        self.folder = folder
        self.cache = MediaCache()
        self.end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._made = 0

    def build(self, question: Question) -> tuple[Any, list[int]]:
        self._made += 1
        where = self.folder / str(self._made)
        where.mkdir()
        files = question.make(where)
        request = ChatRequest(turns=question.turns(files))
        prompt = build_prompt(self.processor, request, Budget(), self.cache)
        answer = self.processor.tokenizer.encode(question.answer, add_special_tokens=False)
        return prompt.inputs, [*answer, self.end]


class Vocabulary:
    """The tokens training uses, renumbered 0..n-1, and the way back to the full vocabulary."""

    def __init__(self, used: list[int], full_size: int) -> None:
        import torch

        self.used = torch.tensor(sorted(set(used)))
        self.full_size = full_size
        self._small = torch.full((full_size,), -1, dtype=torch.long)
        self._small[self.used] = torch.arange(len(self.used))
        # The tokens never used, as one choice: n zero logits hold log(n) of the softmax.
        self.rest_logit = math.log(full_size - len(self.used))

    def small(self, ids: Any) -> Any:
        mapped = self._small[ids]
        if bool((mapped < 0).any()):
            raise ValueError("a token outside the training vocabulary")
        return mapped

    def small_config(self, config: Any) -> Any:
        import copy

        small = copy.deepcopy(config)
        small.text_config.vocab_size = len(self.used)
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            setattr(small, name, int(self._small[getattr(config, name)]))
        return small

    def small_state(self, full_model: Any) -> dict[str, Any]:
        """`full_model`'s weights for the small vocabulary: its rows of the used tokens."""
        state = full_model.state_dict()
        return {
            name: weight[self.used] if weight.shape[0] == self.full_size else weight
            for name, weight in state.items()
        }

    def full_model(self, small_model: Any, config: Any) -> Any:
        """`small_model`'s weights in a model of the full vocabulary (unused rows zero)."""
        import torch
        from transformers import AutoModelForImageTextToText

        full = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        state = small_model.state_dict()
        for name, weight in full.state_dict().items():
            if weight.shape[0] == self.full_size and state[name].shape[0] == len(self.used):
                grown = torch.zeros_like(weight)
                grown[self.used] = state[name]
                state[name] = grown
        full.load_state_dict(state)
        full.generation_config = small_model.generation_config
        return full


def collate(built: list[tuple[Any, list[int]]], vocab: Vocabulary, pad: int) -> dict[str, Any]:
    """One batch: prompt + answer ids padded on the right (in the small vocabulary), the media
    stacked in order, and where each answer token is predicted (row, position before it)."""
    import torch

    rows = [[*inputs["input_ids"][0].tolist(), *answer] for inputs, answer in built]
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    kinds = torch.zeros((len(rows), longest), dtype=torch.long)  # which tokens are visual
    targets = []
    for row, ((inputs, answer), tokens) in enumerate(zip(built, rows, strict=True)):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        start = inputs["input_ids"].shape[1]
        kinds[row, :start] = inputs["mm_token_type_ids"][0]
        targets += [(row, start + i - 1, token) for i, token in enumerate(answer)]
    small_ids = vocab.small(ids)
    batch: dict[str, Any] = {
        "input_ids": small_ids,
        "attention_mask": mask,
        "mm_token_type_ids": kinds,
    }
    for pixels, grid in (
        ("pixel_values", "image_grid_thw"),
        ("pixel_values_videos", "video_grid_thw"),
    ):
        present = [inputs for inputs, _ in built if grid in inputs]
        if present:
            batch[pixels] = torch.cat([inputs[pixels] for inputs in present])
            batch[grid] = torch.cat([inputs[grid] for inputs in present])
    where = torch.tensor([(r, p) for r, p, _ in targets])
    return {
        "model": batch,
        "rows": where[:, 0],
        "positions": where[:, 1],
        "tokens": vocab.small(torch.tensor([t for _, _, t in targets])),
    }


def answer_logits(model: Any, batch: dict[str, Any], vocab: Vocabulary) -> Any:
    """The logits of each answer position over the small vocabulary and the rest (last)."""
    import torch

    hidden = model.model(**batch["model"]).last_hidden_state
    logits = model.lm_head(hidden[batch["rows"], batch["positions"]])
    rest = torch.full((logits.shape[0], 1), vocab.rest_logit)
    return torch.cat([logits, rest], dim=-1)


def used_tokens(processor: Any, examples: Examples, rng: random.Random) -> list[int]:
    """Every token id of the prompts and answers of the training questions (a sample of each
    task covers them: the questions' words are fixed, the answers few), and the padding."""
    seen: set[int] = set()
    for task in TASKS:
        for question in questions(task, 60, seed=rng.randint(0, 1 << 30)):
            inputs, answer = examples.build(question)
            seen.update(inputs["input_ids"][0].tolist(), answer)
    seen.add(processor.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    return sorted(seen)


def accuracy(model: Any, examples: Examples, vocab: Vocabulary, pad: int) -> dict[str, float]:
    """Per task, the share of held-out questions whose every answer token is the top one."""
    import torch

    scores = {}
    model.eval()
    with torch.no_grad():
        for task in TASKS:
            built = [examples.build(q) for q in questions(task, EVAL_EACH, seed=10_000)]
            batch = collate(built, vocab, pad)
            right = answer_logits(model, batch, vocab).argmax(-1) == batch["tokens"]
            rows = batch["rows"]
            whole = [bool(right[rows == r].all()) for r in range(len(built))]
            scores[task] = sum(whole) / len(whole)
    model.train()
    return scores


def _learning_rate(step: int, left: float, peak: float = PEAK_LR) -> float:
    """Warm up for 100 steps, then a cosine down to 5% as the time runs out."""
    return peak * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * (1 - math.cos(math.pi * left)) / 2)


def train(
    minutes: float,
    batch_size: int,
    out: Path,
    seed: int,
    resume: Path | None = None,
    weighted: bool = False,
    peak_lr: float = PEAK_LR,
) -> dict[str, float]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = AutoProcessor.from_pretrained(SOURCE)
    pad = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = shrunk_config(SOURCE)
    with tempfile.TemporaryDirectory(prefix="seeing-") as folder:
        examples = Examples(processor, Path(folder))
        vocab = Vocabulary(used_tokens(processor, examples, rng), config.text_config.vocab_size)
        model = AutoModelForImageTextToText.from_config(vocab.small_config(config))
        if resume is not None:  # go on from a packed model (its weights, a fresh schedule)
            earlier = AutoModelForImageTextToText.from_pretrained(
                checkpoint.unpacked(resume), dtype=torch.float32
            )
            model.load_state_dict(vocab.small_state(earlier))
        optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01)
        started, step, scores = time.monotonic(), 0, {}
        deadline = started + minutes * 60
        while time.monotonic() < deadline:
            left = max(0.0, (deadline - time.monotonic()) / (minutes * 60))
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, left, peak_lr)
            # Tasks drawn alike, or (--weighted) as much as is left to learn of each.
            weights = [1.1 - scores.get(task, 0.0) if weighted else 1.0 for task in TASKS]
            drawn = rng.choices(list(TASKS), weights, k=batch_size)
            built = [examples.build(TASKS[task](rng)) for task in drawn]
            batch = collate(built, vocab, pad)
            logits = answer_logits(model, batch, vocab)
            loss = torch.nn.functional.cross_entropy(logits, batch["tokens"])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % EVAL_EVERY == 0:
                scores = accuracy(model, examples, vocab, pad)
                shown = " ".join(f"{t}={s:.2f}" for t, s in scores.items())
                took = time.monotonic() - started
                print(f"step {step} {took:.0f}s loss {loss.item():.3f} {shown}", flush=True)
        scores = accuracy(model, examples, vocab, pad)
    full = vocab.full_model(model, config)
    meta = {"steps": step, "minutes": minutes, "batch": batch_size, "seed": seed}
    meta |= {"weighted": weighted, "peak_lr": peak_lr}
    if resume is not None:
        earlier = checkpoint.measured(resume)
        meta |= {"resumed_from": {k: earlier[k] for k in ("steps", "minutes") if k in earlier}}
    checkpoint.save(full, processor, SOURCE, out, meta | {"accuracy": scores})
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=checkpoint.PACKED)
    parser.add_argument("--resume", type=Path, help="a pack to go on training from")
    parser.add_argument(
        "--peak-lr",
        type=float,
        default=PEAK_LR,
        help=f"the learning rate after warm-up (default {PEAK_LR}; lower to go on from a pack)",
    )
    parser.add_argument(
        "--weighted",
        action="store_true",
        help="draw each task as often as is left to learn of it (at the last check)",
    )
    args = parser.parse_args(argv)
    scores = train(
        args.minutes, args.batch, args.out, args.seed, args.resume, args.weighted, args.peak_lr
    )
    print("held-out accuracy:", {t: round(s, 3) for t, s in scores.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
