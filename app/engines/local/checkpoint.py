"""Finding and loading a checkpoint: a local folder or the hub, device, dtype, attention, 4-bit."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engines.base import EngineError
from app.engines.local.attention import use_bfloat16_kv
from app.engines.local.cpu_int4 import (
    EIGHT_BITS,
    FOUR_BITS,
    INT4,
    BlockFormat,
    int4_kernels_available,
)
from app.engines.local.cpu_int8 import (
    INT8,
    BlockFormats,
    int8_kernels_available,
    to_cpu_int8,
)
from app.engines.local.int8_store import Int8Store, store_folder
from app.engines.local.internals import (
    OUTPUT_LAYER,
    SENSITIVE_PROJECTIONS,
    language_layer_index,
    outside_vision_encoder,
)
from app.engines.local.memory import GB, available_bytes, gpu_free_bytes
from app.engines.local.placement import Placement, describe, place

log = logging.getLogger(__name__)

# Whether the CPU's default (--dtype auto) puts the language model in block formats (4 bits,
# 8 where it matters most: cpu_int4.py, `language_model_formats`).
FOUR_BIT_BY_DEFAULT = True


class CheckpointNotFound(EngineError):
    """The checkpoint is neither a local folder, in the hub cache, nor reachable."""


@dataclass(frozen=True)
class LoadOptions:
    cpu_only: bool = False
    flash_attn2: bool = False
    load_in_4bit: bool = False
    dtype: str = "auto"
    # "auto" spreads the model with transformers' device map even where one device holds it
    # (tests of the spread path on the CPU); None: as `place` decides.
    device_map: str | None = None
    # Where the CPU's int8 weights are saved once and read on later starts (app/engines/
    # int8_store.py); None: quantized afresh at each start.
    int8_store: Path | None = None


def resolve_checkpoint(name: str) -> str:
    """A local folder for `name` (a folder, or a hub id downloaded or found in the cache).

    Fails fast, in one clear sentence, where there is no network and no local copy: the hub
    client's own retries would otherwise take minutes and end in a traceback.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    import huggingface_hub as hub

    try:
        return hub.snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or not a valid id): try the hub below
        pass
    hint = (
        f"Checkpoint {name!r} is not a local folder, not in the Hugging Face cache, and the hub "
        "cannot be reached. Download it where there is network "
        f"(hf download {name} --local-dir ./model) and start with "
        "-c ./model, or try the app offline with --tiny-random qwen3_vl."
    )
    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise CheckpointNotFound(f"Checkpoint folder {name!r} does not exist.")
    try:
        hub.HfApi().model_info(name, timeout=10)
    except Exception as err:
        if "404" in str(err) or "not found" in str(err).lower():
            raise CheckpointNotFound(f"Checkpoint {name!r} does not exist on the hub.") from err
        raise CheckpointNotFound(hint) from err
    return str(hub.snapshot_download(name))


def choose_attention(flash_attn2: bool, on_cuda: bool) -> str:
    """flash_attention_2 where asked for and runnable, else sdpa (with a warning when asked)."""
    if not flash_attn2:
        return "sdpa"
    if not on_cuda:
        log.warning("--flash-attn2 needs a CUDA GPU; using sdpa attention on the CPU")
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is None:
        log.warning("--flash-attn2: the flash-attn package is not installed; using sdpa")
        return "sdpa"
    import torch

    if torch.cuda.get_device_capability()[0] < 8:
        log.warning("--flash-attn2: this GPU is older than Ampere; using sdpa")
        return "sdpa"
    return "flash_attention_2"


def cpu_int8_chosen(options: LoadOptions, on_cuda: bool) -> bool:
    """The int8 CPU path (app/engines/local/cpu_int8.py; with --dtype int4 the language model's
    layers in 4 bits): the default on a CPU, unless a dtype or 4-bit is asked for, or this
    PyTorch lacks the int8 kernels (then float32, said in the log)."""
    if on_cuda:
        if options.dtype in (INT8, INT4):
            raise EngineError(
                f"--dtype {options.dtype} is the CPU path; on a GPU use --load-in-4bit"
            )
        return False
    if options.load_in_4bit or options.dtype not in ("auto", INT8, INT4):
        return False
    if not int8_kernels_available() and not int4_kernels_available():
        log.warning(
            "neither oneDNN's int8 nor ONNX Runtime's 8-bit product runs fast here: "
            "the CPU computes in float32"
        )
        return False
    return True


def language_model_formats(options: LoadOptions) -> BlockFormats | None:
    """On the int8 CPU path: the language model's linear layers in block formats
    (app/engines/local/cpu_int4.py, `block_plan`), where --dtype int4 asks, or by default where
    ONNX Runtime's kernel works here; the vision encoder stays int8 (its products are a
    prefill's, where int8 is the faster kernel). None: all int8."""
    wanted = options.dtype == INT4 or (options.dtype == "auto" and FOUR_BIT_BY_DEFAULT)
    if not wanted:
        return None
    if not int4_kernels_available():
        log.warning("ONNX Runtime's 4-bit kernel is not available here: int8 weights instead")
        return None
    return block_plan


def block_plan(name: str) -> BlockFormat | None:
    """A language-model layer's format (the vision encoder's: None, int8): 8 bits for the output
    layer and for the projections that write into the residual stream or carry attention's
    values (`SENSITIVE_PROJECTIONS`), 4 bits for the rest (measured: docs in README, "What the
    CPU's formats cost")."""
    if not outside_vision_encoder(name):
        return None
    projection = name.rsplit(".", 1)[-1]
    sensitive = language_layer_index(name) is not None and projection in SENSITIVE_PROJECTIONS
    if name == OUTPUT_LAYER or sensitive:
        return EIGHT_BITS
    return FOUR_BITS


def choose_dtype(name: str, on_cuda: bool, cpu_int8: bool = False) -> Any:
    """The dtype the weights are loaded in (the int8 path loads bfloat16, then quantizes)."""
    import torch

    if cpu_int8:
        return torch.bfloat16
    if name not in ("auto", INT8, INT4):
        return getattr(torch, name)
    if on_cuda:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Every weight's shape, read from the safetensors headers alone (no weight is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with file.open("rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                shapes[name] = tuple(entry["shape"])
    return shapes


def weight_bytes(path: str, dtype_bytes: int, four_bit: bool) -> int:
    """The weights' size once loaded: in `dtype_bytes` a parameter, or, in 4-bit, half a byte
    for the matrices bitsandbytes quantizes (not the embeddings and the output layer)."""
    total = 0.0
    for name, shape in _tensor_shapes(path).items():
        count = math.prod(shape)
        quantized = four_bit and len(shape) == 2 and not ("embed" in name or "lm_head" in name)
        total += count * (0.5 if quantized else dtype_bytes)
    return int(total)


def check_fits(
    checkpoint: str, path: str, dtype: Any, options: LoadOptions, on_cuda: bool
) -> Placement:
    """Where the weights go (app/engines/local/placement.py), said in one line before loading
    starts; EngineError, in one line, where they cannot fit in free memory or a dependency the
    options need is missing."""
    if options.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise EngineError("--load-in-4bit needs bitsandbytes: pip install bitsandbytes")
    need = weight_bytes(path, dtype.itemsize, options.load_in_4bit)
    smaller = None if options.load_in_4bit else weight_bytes(path, 2, True)
    kind = "4-bit nf4" if options.load_in_4bit else str(dtype).removeprefix("torch.")
    if on_cuda:
        free_per_gpu = gpu_free_bytes()
        placement = place(need, free_per_gpu, smaller)
        free = sum(free_per_gpu)
    else:
        free = available_bytes(False)
        if need > 0.95 * free:
            raise EngineError(_too_big_for_the_machine(checkpoint, need, free, smaller))
        placement = place(need, [])
    if options.device_map:
        placement = Placement(options.device_map, placement.max_memory, placement.where)
    log.info(
        "loading %s: about %.1f GB of weights in %s onto %s (%.1f GB free)",
        checkpoint,
        need / GB,
        kind,
        placement.where,
        free / GB,
    )
    return placement


def _too_big_for_the_machine(checkpoint: str, need: int, free: int, smaller: int | None) -> str:
    advice = f"try --load-in-4bit (about {smaller / GB:.1f} GB), or " if smaller else "try "
    return (
        f"{checkpoint} needs about {need / GB:.1f} GB for its weights, more than the "
        f"{free / GB:.1f} GB free on this machine: {advice}a smaller checkpoint."
    )


def load_model(checkpoint: str, options: LoadOptions) -> tuple[Any, Any]:
    """(model, processor) of `checkpoint`, ready for inference; logs what it chose and how long."""
    path = resolve_checkpoint(checkpoint)  # first: a missing checkpoint fails in a blink
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    imported = time.perf_counter() - started
    on_cuda = torch.cuda.is_available() and not options.cpu_only
    cpu_int8 = cpu_int8_chosen(options, on_cuda)
    dtype = choose_dtype(options.dtype, on_cuda, cpu_int8)
    placement = check_fits(checkpoint, path, dtype, options, on_cuda)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": choose_attention(options.flash_attn2, on_cuda),
        "device_map": placement.device_map,
    }
    if placement.max_memory:
        kwargs["max_memory"] = placement.max_memory
    if options.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    processor = AutoProcessor.from_pretrained(path)
    formats = language_model_formats(options) if cpu_int8 else None
    store = (
        Int8Store(store_folder(options.int8_store, Path(path), INT4 if formats else INT8))
        if cpu_int8 and options.int8_store
        else None
    )
    model = (
        store.load(Path(path), kwargs["attn_implementation"]) if store and store.exists() else None
    )
    if model is None:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        model.eval()
        if store is not None:
            model = store.quantize_and_save(model, formats)
        elif cpu_int8:
            model = to_cpu_int8(model, formats=formats)
    if cpu_int8:
        use_bfloat16_kv(model)
    log.info(
        "loaded %s in %.1f s, %.1f s of it importing torch and transformers (%s, %s, %s%s)",
        checkpoint,
        time.perf_counter() - started,
        imported,
        kwargs["device_map"],
        weights_kind(model),
        kwargs["attn_implementation"] + (", keys and values in bfloat16" if cpu_int8 else ""),
        "; --dtype float32 for the exact, slower path" if cpu_int8 else "",
    )
    if placement.spread:
        log.info("placed %s", describe(getattr(model, "hf_device_map", None)) or "on one device")
    return model, processor


def weights_kind(model: Any) -> str:
    """What the loaded weights are, as the page and the start-up line name them."""
    names = {type(module).__name__ for module in model.modules()}
    if any(getattr(module, "bits", None) == 4 for module in model.modules()):
        return INT4
    if "Int8Linear" in names or "Int4Linear" in names:  # 8-bit blocks where oneDNN is slow
        return INT8
    if "Linear4bit" in names:
        return "4-bit nf4"
    return str(model.dtype).removeprefix("torch.")
