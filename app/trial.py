"""The offline trial (`--tiny-random FAMILY`): tiny random Qwen-VL checkpoints built offline.

The app serves one when there is no model and no network; the tests and benchmarks build theirs
with the same code (testkit/checkpoints.py adds what only they need). Each checkpoint is real:
a byte-level BPE tokenizer trained on the spot with the Qwen special tokens and a Qwen-style
chat template, a model config from transformers' own config classes, and the Qwen image and
video processors, all written with ``save_pretrained``. It loads through ``AutoProcessor`` and
``AutoModelForImageTextToText`` exactly as a hub checkpoint does; its answers are random text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.said import say

TRIAL_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5")
# The file that marks a checkpoint as one of ours (random weights), and says what it is.
MARKER = "TINY_RANDOM_CHECKPOINT.json"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
]

# A Qwen-style template: content lists with image/video/text parts, a system prompt, and, where
# the family thinks (Qwen3.5), the `enable_thinking` switch that the real templates take.
# Newlines are written as {{ NL }} expressions: `{%- -%}` would strip literal ones.
CHAT_TEMPLATE = (
    "{%- set NL = '\\n' -%}"
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ NL }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in part -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ NL }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ NL }}"
    "THINKING"
    "{%- endif -%}"
)
# Qwen3.5's templates open a reasoning block unless `enable_thinking` is false.
THINKING = (
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "<think>{{ NL }}{{ NL }}</think>{{ NL }}{{ NL }}"
    "{%- else -%}<think>{{ NL }}{%- endif -%}"
)

_CORPUS = (
    "A photo of a cat on a red sofa. The chart shows sales rising in 2024. "
    "Describe the image. What is in the video? The receipt total is 12.50 dollars. "
    "There are two dogs and a person in the park, with trees and a blue sky. "
    '{"bbox_2d": [10, 20, 300, 400], "label": "cat"} 0123456789 ' * 4
)


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    return tok


def _fast_tokenizer(vocab_size: int, thinking: bool) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    # As in the real Qwen3 tokenizers: reasoning tags are added tokens but not special ones, so
    # they survive decoding with skip_special_tokens.
    tokenizer.add_tokens(["<think>", "</think>"], special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("THINKING", THINKING if thinking else "")
    return tokenizer


def _token_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


# The transformers config class of each family.
CONFIG_CLASSES = {
    "qwen2_vl": "Qwen2VLConfig",
    "qwen2_5_vl": "Qwen2_5_VLConfig",
    "qwen3_vl": "Qwen3VLConfig",
    "qwen3_vl_moe": "Qwen3VLMoeConfig",
    "qwen3_5": "Qwen3_5Config",
}
HEADS = 2


def _text_config(family: str, vocab: int, eos: int, pad: int, width: int) -> dict[str, Any]:
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        # Sections sum to head_dim / 2 (32 at width 64).
        "mrope_section": [4, 6, 6],
    }
    text: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": width * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": 4096,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "bos_token_id": None,
        "rope_parameters": rope,
    }
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        text["head_dim"] = width // HEADS
        rope["mrope_interleaved"] = True
    if family == "qwen3_vl_moe":
        text.update({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": width})
    if family == "qwen3_5":
        text.update(
            {
                "layer_types": ["linear_attention", "full_attention"],
                "linear_key_head_dim": 8,
                "linear_value_head_dim": 8,
                "linear_num_key_heads": 8,
                # 2 x value heads must be a multiple of 64 for bitsandbytes' 4-bit kernels.
                "linear_num_value_heads": 32,
                "num_key_value_heads": 1,
            }
        )
    return text


def _vision_config(family: str, width: int) -> dict[str, Any]:
    common: dict[str, Any] = {"hidden_size": width, "num_heads": HEADS}
    if family == "qwen2_vl":
        return common | {"depth": 1, "embed_dim": width, "mlp_ratio": 2, "patch_size": 14}
    vision = common | {"depth": 2, "intermediate_size": width * 2, "out_hidden_size": width}
    if family == "qwen2_5_vl":
        return vision | {"patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1]}
    vision |= {"patch_size": 16, "num_position_embeddings": 64}
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        vision["deepstack_visual_indexes"] = [1]
    return vision


def _config(family: str, vocab: int, token_ids: dict[str, int], eos: int, pad: int, width: int):
    """A model config with every linear size a multiple of `width` (64 suits 4-bit)."""
    import transformers

    config_class = getattr(transformers, CONFIG_CLASSES[family])
    return config_class(
        text_config=_text_config(family, vocab, eos, pad, width),
        vision_config=_vision_config(family, width),
        **token_ids,
    )


def _processor(family: str, model_type: str, tokenizer: Any) -> Any:
    import transformers
    from transformers import Qwen2VLImageProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    patch = 14 if family in ("qwen2_vl", "qwen2_5_vl") else 16
    # Small pixel budgets keep tests fast; they are the checkpoint's defaults, as on the hub.
    size = {"shortest_edge": (patch * 2) ** 2 * 4, "longest_edge": (patch * 2) ** 2 * 64}
    video_name = "Qwen2VLVideoProcessor" if patch == 14 else "Qwen3VLVideoProcessor"
    return getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])(
        image_processor=Qwen2VLImageProcessor(patch_size=patch, merge_size=2, size=size),
        tokenizer=tokenizer,
        video_processor=getattr(transformers, video_name)(
            patch_size=patch, merge_size=2, size=size
        ),
        chat_template=tokenizer.chat_template,
    )


def _generation_config(tokenizer: Any) -> Any:
    """A generation config like Qwen's released ones (sampling, both end tokens)."""
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(
        eos_token_id=[eos, pad],
        pad_token_id=pad,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.0,
        max_new_tokens=256,
    )


def build_tiny_checkpoint(
    out_dir: str | Path,
    family: str = "qwen3_vl",
    *,
    width: int = 64,
    vocab_size: int = 512,
    seed: int = 0,
    init_range: float | None = None,
) -> Path:
    """Write a tiny random checkpoint of `family` into `out_dir` and return the path.
    `init_range` spreads the random weights wider than transformers' default, so that greedy
    replies vary token by token (tests comparing replies need that)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in TRIAL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(TRIAL_FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _fast_tokenizer(vocab_size, thinking=family == "qwen3_5")
    vocab = ((len(tokenizer) + 63) // 64) * 64
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = _config(family, vocab, _token_ids(tokenizer), eos, pad, width)
    if init_range is not None:
        config.text_config.initializer_range = config.vision_config.initializer_range = init_range
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out)
    _processor(family, config.model_type, tokenizer).save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps({"family": family, "note": "random weights; answers are meaningless"})
    )
    return out


TRIAL_BANNER = say(
    "Offline trial: this model has random weights, made on the spot. "
    "Its answers are meaningless; everything else works as with a real checkpoint.",
    "离线试用：这个模型的权重是当场随机生成的，它的回答没有意义；其余一切都和真实模型一样运行。",
)


def build_trial_checkpoint(family: str) -> Path:
    """A tiny random checkpoint of `family` in a new temporary folder, for `--tiny-random`."""
    import atexit
    import logging
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"tiny-{family}-")
    # Gone when the app ends (Ctrl+C and SIGTERM included: app/main.py): each start made a new
    # one, and every one stayed in the temporary folder.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = build_tiny_checkpoint(folder, family)
    logging.getLogger(__name__).info("offline trial: built a tiny random %s in %s", family, path)
    return path


def trial_name(path: str | Path) -> str | None:
    """What the random-weight checkpoint at `path` is, for people ("tiny random qwen3_vl",
    "random-weight Qwen3-VL-2B-Instruct shapes"); None when it is not one of ours."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    made = json.loads(marker.read_text())
    if "source" not in made:
        return f"tiny random {made.get('family', 'model')}"
    return f"{'tiny ' if made.get('tiny') else ''}random-weight {made['source']} shapes"


SEEING_NAME = "seeing Qwen3-VL, tiny, trained on drawn pictures"
SEEING_BANNER = say(
    "Offline trial: a tiny Qwen3-VL trained here on drawn pictures. Ask it the colour or shape "
    "of a shape, how many dots there are, which corner a shape is in, the colour a clip starts "
    "or ends with, the digit on a PDF's second page (the examples below). About anything else "
    "its answers mean nothing.",
    "离线试用：一个在这里用绘制的图片训练的微型 Qwen3-VL。可以问它图形的颜色或形状、有几个点、"
    "图形在哪个角、视频开头或结尾的颜色、PDF 第 2 页上的数字（见下方示例）。"
    "问别的，它的回答没有意义。",
)


def model_label(checkpoint: str) -> tuple[str, str | None]:
    """The page's name for the model at `checkpoint` (never a server path: the folder's or hub
    id's last part), and the notice to show with it (the offline trial's banner, or none)."""
    from app.seeing.checkpoint import META

    if (Path(checkpoint) / META).is_file():
        return SEEING_NAME, SEEING_BANNER
    trial = trial_name(checkpoint)
    return trial or Path(checkpoint).name, TRIAL_BANNER if trial else None
