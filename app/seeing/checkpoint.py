"""The seeing model's checkpoint: packed small in the repository, unpacked once into the cache.

The pack (assets/seeing/) holds the weights in bfloat16, xz-compressed (every embedding row the
training text never used is zero, and compresses away), the model and generation configs, and
what the training measured (`seeing.json`). The tokenizer, chat template and processor settings
are Qwen3-VL-2B's, already in assets/realcfg, and are copied beside the weights on unpacking:
the unpacked folder is an ordinary checkpoint that `from_pretrained` loads.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKED = ROOT / "assets" / "seeing"
SOURCE = ROOT / "assets" / "realcfg" / "Qwen3-VL-2B-Instruct"
WEIGHTS = "model.safetensors"
CONFIGS = ("config.json", "generation_config.json")
META = "seeing.json"
# The released checkpoint's files, other than its weights, that the unpacked model carries.
PROCESSOR_FILES = (
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)


def save(model: Any, processor: Any, source: Path, out: Path, meta: dict[str, Any]) -> None:
    """Pack `model` (trained) into `out`: bfloat16 weights, xz-compressed; its configs; `meta`."""
    import torch

    del processor  # its files are the source's, copied on unpacking
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.generation_config.temperature = None
    model.generation_config.top_p = None
    model.generation_config.top_k = None
    model.generation_config.max_new_tokens = 16
    with tempfile.TemporaryDirectory() as folder:
        model.to(torch.bfloat16).save_pretrained(folder)
        with (
            open(Path(folder) / WEIGHTS, "rb") as raw,
            lzma.open(out / f"{WEIGHTS}.xz", "wb", preset=9 | lzma.PRESET_EXTREME) as packed,
        ):
            shutil.copyfileobj(raw, packed)
        for name in CONFIGS:
            shutil.copy(Path(folder) / name, out / name)
    (out / META).write_text(json.dumps({"source": source.name, **meta}, indent=2) + "\n")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen-vl-chat"


def unpacked(packed: Path = PACKED, cache: Path | None = None) -> Path:
    """The seeing model as a checkpoint folder, unpacked on first use (its name carries the
    pack's hash: a new pack unpacks anew). Where the cache cannot be written, a temporary
    folder."""
    digest = hashlib.sha256((packed / f"{WEIGHTS}.xz").read_bytes()).hexdigest()[:16]
    for root in (cache or _cache_root(), Path(tempfile.gettempdir()) / "qwen-vl-chat"):
        folder = root / f"seeing-{digest}"
        if (folder / META).is_file():
            return folder
        try:
            _unpack(packed, folder)
            return folder
        except OSError:
            continue
    raise OSError(f"could not unpack the seeing model from {packed}")


def _unpack(packed: Path, folder: Path) -> None:
    """Write the checkpoint into a fresh folder beside `folder`, then rename it into place (a
    reader never sees half a checkpoint; two unpacking at once both end whole)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        with lzma.open(packed / f"{WEIGHTS}.xz") as source, open(work / WEIGHTS, "wb") as out:
            shutil.copyfileobj(source, out)
        for name in CONFIGS:
            shutil.copy(packed / name, work / name)
        for name in PROCESSOR_FILES:
            shutil.copy(SOURCE / name, work / name)
        shutil.copy(packed / META, work / META)  # last: its presence says the folder is whole
        os.replace(work, folder)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        if not (folder / META).is_file():
            raise


def measured(folder: Path) -> dict[str, Any]:
    """What the training measured of the model in `folder` (or its pack)."""
    return json.loads((folder / META).read_text())
