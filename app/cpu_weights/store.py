"""The CPU's int8 weights, saved once and loaded on later starts (app/cpu_weights/int8.py).

The first start on a CPU loads the checkpoint in bfloat16 and quantizes it; its peak memory is
the bfloat16 model's and more. It saves what it made, one file per layer (the int8 rows and
scales) and one for the rest (norms, convolutions, in float32), in a folder named after the
checkpoint and its files' sizes and times. Later starts build the model without weights and
read those files one at a time: the peak is about the int8 model's, and the load is faster.
A checkpoint that changes gets a new folder; the old one of the same checkpoint is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from app.cpu_weights.blocks import BlockProducts
from app.cpu_weights.int8 import (
    BlockFormats,
    Int8Layer,
    Int8Placer,
    give_large_buffers_their_own_pages,
    int8_kernels_available,
    return_freed_memory,
    to_cpu_kernels,
)

log = logging.getLogger(__name__)

# Bump when what is saved changes: older folders are then not read. 2: per-layer pickles;
# 3: safetensors, the format in each file's metadata; 4: an output layer tied to the embedding
# in 4-bit blocks, not 8 (checkpoint.block_plan).
FORMAT = 4
REST = "rest.safetensors"
DONE = "layers.json"  # written last: a folder without it is unfinished


def store_folder(root: Path, checkpoint: Path, kind: str) -> Path:
    """The folder for `checkpoint`'s quantized weights of `kind` (app/weights.py's: int8, or
    int4, the language model's layers in blocks): one per checkpoint path, kind and files'
    state."""
    import torch

    files = sorted(p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".json"))
    state = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    where = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:12]
    # Which form holds the int8 layers (oneDNN's int8, or 8-bit blocks where oneDNN is slow
    # or wrong) is part of what is saved.
    kernels = int8_kernels_available()
    what = json.dumps([state, FORMAT, torch.__version__, kernels])
    what = hashlib.sha256(what.encode()).hexdigest()
    return root / f"{checkpoint.name}-{kind}-{where}-{what[:12]}"


class QuantizedStore:
    """Saves a freshly quantized model's layers into `folder`, and loads them back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / DONE).is_file()

    def quantize_and_save(
        self,
        model: Any,
        formats: BlockFormats | None = None,
        products: BlockProducts | None = None,
    ) -> Any:
        """`model` (bfloat16) quantized by `to_cpu_kernels` (int8, and block formats where
        `formats` says, multiplied by `products` where it runs), each layer saved as it is
        made."""
        partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        names: list[str] = []
        failed: list[OSError] = []

        def keep(name: str, layer: Int8Layer) -> None:
            if not failed:  # a full disk stops the saving, never the quantizing
                try:
                    _save_layer(layer, partial / _layer_file(len(names)))
                except OSError as err:
                    failed.append(err)
            names.append(name)

        model = to_cpu_kernels(model, keep, formats, products)
        int8 = tuple(f"{name}." for name in names)
        rest = {k: v for k, v in model.state_dict().items() if not k.startswith(int8)}
        try:
            if failed:
                raise failed[0]
            # Copies: the rest may hold tensors that share memory (tied weights), which
            # safetensors refuses; a quantized layer's tensors are its own.
            _save_tensors({k: v.clone() for k, v in rest.items()}, {}, partial / REST)
            (partial / DONE).write_text(json.dumps(names))
            self._replace_older(partial)
            log.info("weights: quantized layers saved in %s for later starts", self.folder)
        except OSError as err:
            log.warning("the quantized weights could not be saved for later starts: %s", err)
            shutil.rmtree(partial, ignore_errors=True)
        return model

    def _replace_older(self, partial: Path) -> None:
        """Rename the finished folder into place, removing this checkpoint's older ones."""
        stem = self.folder.name.rsplit("-", 1)[0] + "-"
        for older in self.folder.parent.glob(stem + "*"):
            if older != partial:
                shutil.rmtree(older, ignore_errors=True)
        os.replace(partial, self.folder)

    def load(self, checkpoint: Path, attention: str, products: BlockProducts | None = None) -> Any:
        """The quantized model of `checkpoint` from the saved layers (those in a block format
        multiplied by `products` where it runs); None where they do not fit the model or are of
        another format (then the caller quantizes afresh)."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

        config = AutoConfig.from_pretrained(checkpoint)
        # Parameters on the meta device (no memory); buffers such as rotary tables made as usual.
        with init_empty_weights():
            model = AutoModelForImageTextToText.from_config(
                config, dtype=torch.float32, attn_implementation=attention
            )
        names = json.loads((self.folder / DONE).read_text())
        rest = _load_layer(self.folder / REST)
        if rest is None:
            log.warning("the saved weights in %s are of another format", self.folder)
            return None
        placer = Int8Placer(products)
        for index, name in enumerate(names):
            layer = _load_layer(self.folder / _layer_file(index))
            if layer is None:
                log.warning("the saved weights in %s are of another format", self.folder)
                return None
            parent_name, _, child = name.rpartition(".")
            placer.put(model.get_submodule(parent_name), child, layer)
            del layer
        placer.finish()
        model.load_state_dict(rest, strict=False, assign=True)
        del rest
        if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
            log.warning("the saved weights in %s do not fit the model", self.folder)
            return None
        if (checkpoint / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(checkpoint)
        model.eval()
        return_freed_memory()
        give_large_buffers_their_own_pages()
        log.info("weights: %d quantized layers read from %s", len(names), self.folder)
        return model


def _layer_file(index: int) -> str:
    return f"{index:04d}.safetensors"


def _save_layer(layer: Int8Layer, path: Path) -> None:
    """A quantized layer's tensors in a safetensors file, its other fields (bits, block, a
    padding index; None for a missing bias) in the file's metadata."""
    import torch

    tensors = {key: value for key, value in layer.items() if torch.is_tensor(value)}
    fields = {key: value for key, value in layer.items() if key not in tensors}
    _save_tensors(tensors, fields, path)


def _save_tensors(tensors: dict[str, Any], fields: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    laid_out = {key: value.detach().contiguous() for key, value in tensors.items()}
    save_file(laid_out, str(path), metadata={"format": str(FORMAT), "fields": json.dumps(fields)})


def _load_layer(path: Path) -> dict[str, Any] | None:
    """What `_save_layer` (or `_save_tensors`) wrote; None for a file of another format."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != str(FORMAT):
            return None
        layer: dict[str, Any] = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    return layer | json.loads(metadata.get("fields", "{}"))
