"""Random-weight checkpoints for tests and benchmarks.

`build_tiny_checkpoint` is the offline trial's builder (app/trial.py) with two generation
configs that only tests and benchmarks need: one that never ends (`suppress_eos`), one that
answers a script (`scripted_reply`). `build_from_config_folder` makes a model with a released
checkpoint's configuration, tokenizer, chat template and processor settings (assets/realcfg):
tiny widths for tests, the real shapes for benchmarks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app import trial
from app.trial import MARKER, TRIAL_FAMILIES

# The files of a released checkpoint, other than its weights, that a built model carries.
CONFIG_FILES = (
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
REAL_CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "realcfg"
__all__ = ["REAL_CONFIGS", "TRIAL_FAMILIES", "build_from_config_folder", "build_tiny_checkpoint"]


def build_tiny_checkpoint(
    out_dir: str | Path,
    family: str = "qwen3_vl",
    *,
    suppress_eos: bool = False,
    scripted_reply: str | None = None,
    **kwargs: Any,
) -> Path:
    """The trial's tiny checkpoint of `family` (`kwargs`: its width, vocabulary, seed, spread).

    `suppress_eos` forbids the end tokens (and the reasoning tags), so that a generation always
    runs to `max_new_tokens` as answer text (benchmarks and Stop tests need a long, predictable
    stream). `scripted_reply` makes the model answer exactly that text, then stop, whatever it
    is asked (`sequence_bias`): the real generation stack runs, and tests get a reply with boxes
    or reasoning in it."""
    out = trial.build_tiny_checkpoint(out_dir, family, **kwargs)
    _script_generation(out, suppress_eos, scripted_reply)
    return out


def _script_generation(checkpoint: Path, suppress_eos: bool, scripted_reply: str | None) -> None:
    """Rewrite `checkpoint`'s generation config for `suppress_eos` / `scripted_reply`."""
    if not suppress_eos and scripted_reply is None:
        return
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    generation = GenerationConfig.from_pretrained(checkpoint)
    ids: Any = tokenizer.convert_tokens_to_ids
    eos = ids("<|im_end|>")
    if suppress_eos:
        pad = ids("<|endoftext|>")
        reasoning_tags = ids(["<think>", "</think>"])
        generation.suppress_tokens = [eos, pad, *reasoning_tags]
        generation.eos_token_id = None
    if scripted_reply is not None:
        generation.sequence_bias = script_bias(tokenizer, scripted_reply, eos)
    generation.save_pretrained(checkpoint)


def script_bias(tokenizer: Any, reply: str, eos: int) -> list[list]:
    """`sequence_bias` entries that force `reply` then `eos`.

    Entry i biases token i after the exact i tokens before it, with a bias growing with i: where
    several entries match, the longest (the true continuation) wins by far over random logits.
    """
    ids = [*tokenizer.encode(reply, add_special_tokens=False), eos]
    return [[ids[: i + 1], 1000.0 * (i + 1)] for i in range(len(ids))]


def _shrink(config: Any, width: int) -> None:
    """Tiny widths, the real vocabulary: what the tests need of a real configuration."""
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size = width, width * 2
    text.num_hidden_layers, text.num_attention_heads = 2, trial.HEADS
    text.num_key_value_heads, text.head_dim = trial.HEADS, width // trial.HEADS
    # mrope sections sum to head_dim / 2; the real ones (24, 20, 20) scaled down.
    text.rope_parameters = dict(text.rope_parameters or {}) | {"mrope_section": [6, 5, 5]}
    vision.depth, vision.hidden_size, vision.intermediate_size = 2, width, width * 2
    vision.num_heads, vision.out_hidden_size = trial.HEADS, width
    vision.deepstack_visual_indexes = [1]
    # A wide spread of random weights: with the real 151k vocabulary and the usual narrow one,
    # a greedy reply repeats one token, and a test comparing replies would prove nothing.
    text.initializer_range = vision.initializer_range = 1.0


def build_from_config_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    tiny: bool = True,
    width: int = 64,
    text_layers: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    suppress_eos: bool = False,
    scripted_reply: str | None = None,
) -> Path:
    """A random-weight model with the configuration, tokenizer, chat template and processor
    settings of the released checkpoint in `folder`: tiny widths (tests), or the real shapes
    (benchmarks), with `text_layers` decoder layers where given. `suppress_eos` and
    `scripted_reply` as in `build_tiny_checkpoint`."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    source, out = Path(folder), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(source)
    if tiny:
        _shrink(config, width)
    if text_layers:
        config.text_config.num_hidden_layers = text_layers
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig.from_pretrained(source)
    model.save_pretrained(out)
    for name in CONFIG_FILES:
        shutil.copy(source / name, out / name)
    _script_generation(out, suppress_eos, scripted_reply)
    marker = {"family": config.model_type, "source": source.name, "tiny": tiny}
    (out / MARKER).write_text(json.dumps(marker))
    return out
