"""Finding and loading a checkpoint: a local folder or the hub, device, dtype, attention, 4-bit."""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engines.base import EngineError
from app.engines.local.generation.attention import use_bfloat16_kv
from app.engines.local.generation.internals import (
    OUTPUT_LAYER,
    SENSITIVE_PROJECTIONS,
    language_layer_index,
    outside_vision_encoder,
)
from app.engines.local.generation.own_kernels import OwnKernels, build_kernels
from app.engines.local.generation.own_layers import use_own_layers
from app.engines.local.loaded import LoadedModel
from app.engines.local.loading.memory import GB, available_bytes, gpu_free_bytes
from app.engines.local.loading.placement import Placement, describe, place
from app.weights import AUTO, CpuKernels, WeightsKind, WeightsPlan, plan_weights

if TYPE_CHECKING:
    from app.cpu_weights.blocks import BlockFormat

# app/cpu_weights/ imports torch: it is imported where a model is loaded (the load's log line
# counts it), not with this module (main reads LoadOptions before anything heavy).

log = logging.getLogger(__name__)


class CheckpointNotFound(EngineError):
    """The checkpoint is neither a local folder, in the hub cache, nor reachable."""


@dataclass(frozen=True)
class LoadOptions:
    cpu_only: bool = False
    flash_attn2: bool = False
    load_in_4bit: bool = False
    dtype: str = AUTO  # --dtype: app/weights.py resolves it
    # "auto" spreads the model with transformers' device map even where one device holds it
    # (tests of the spread path on the CPU); None: as `place` decides.
    device_map: str | None = None
    # Where the CPU's quantized weights are saved once and read on later starts
    # (app/cpu_weights/store.py); None: quantized afresh at each start.
    weights_store: Path | None = None


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


def weights_plan(options: LoadOptions, on_cuda: bool) -> WeightsPlan:
    """`--dtype` resolved for this machine (app/weights.py), said in the log where the CPU's
    kernels do not run as asked."""
    import torch

    from app.cpu_weights.blocks import block_kernels_available
    from app.cpu_weights.int8 import int8_kernels_available

    kernels = CpuKernels(int8_kernels_available, block_kernels_available)
    gpu_bfloat16 = on_cuda and torch.cuda.is_bf16_supported()
    try:
        plan = plan_weights(options.dtype, options.load_in_4bit, on_cuda, gpu_bfloat16, kernels)
    except ValueError as err:
        raise EngineError(str(err)) from err
    asked = options.dtype
    if asked not in (AUTO, plan.kind.value) and not options.load_in_4bit:
        log.warning("--dtype %s: %s, so the weights are %s", asked, plan.reason, plan.kind)
    return plan


def block_plan(name: str, tied_output: bool = False) -> BlockFormat | None:
    """A language-model layer's format (the vision encoder's: None, int8): 8 bits for the
    projections that write into the residual stream or carry attention's values
    (`SENSITIVE_PROJECTIONS`) and for an output layer of its own; 4 bits for the rest, and for an
    output layer `tied_output` to the input embedding, whose likeliest tokens are computed again
    from the embedding's int8 rows (app/cpu_weights/output.py). Measured: docs/cpu.md, "What
    each CPU path costs in fidelity"."""
    from app.cpu_weights.blocks import EIGHT_BITS, FOUR_BITS

    if not outside_vision_encoder(name):
        return None
    projection = name.rsplit(".", 1)[-1]
    if language_layer_index(name) is not None and projection in SENSITIVE_PROJECTIONS:
        return EIGHT_BITS
    if name == OUTPUT_LAYER and not tied_output:
        return EIGHT_BITS
    return FOUR_BITS


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Every weight's shape, read from the safetensors headers alone (no weight is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(file, framework="numpy") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[name] = tuple(tensors.get_slice(name).get_shape())
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
    """Where the weights go (placement.py), said in one line before loading starts;
    EngineError, in one line, where they cannot fit in free memory or a dependency the
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


def load_model(checkpoint: str, options: LoadOptions) -> LoadedModel:
    """`checkpoint` ready for inference, with its weights' plan; logs what it chose and how
    long it took."""
    path = resolve_checkpoint(checkpoint)  # first: a missing checkpoint fails in a blink
    started = time.perf_counter()
    import torch
    from transformers import AutoProcessor

    imported = time.perf_counter() - started
    on_cuda = torch.cuda.is_available() and not options.cpu_only
    plan = weights_plan(options, on_cuda)
    dtype = getattr(torch, plan.load_dtype)
    placement = check_fits(checkpoint, path, dtype, options, on_cuda)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": choose_attention(options.flash_attn2, on_cuda),
        "device_map": placement.device_map,
    }
    if placement.max_memory:
        kwargs["max_memory"] = placement.max_memory
    if plan.kind is WeightsKind.NF4:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    processor = AutoProcessor.from_pretrained(path)
    cpu_kernels = plan.kind.cpu_kernels
    # Built before the model: the layers in blocks of 4 and 8 bits are repacked for the
    # kernels' products as they are placed.
    choice = build_kernels() if cpu_kernels else None
    kernels = choice.kernels if choice is not None else None
    model = _model(Path(path), plan, kwargs, options.weights_store, kernels)
    if plan.kind is WeightsKind.INT4:
        from app.cpu_weights.output import refine_output

        refine_output(model)  # whether read from the store or quantized just now
    attention = kwargs["attn_implementation"]
    if choice is not None:
        attention = f"{choice.reason}{_own_parts(model, kernels)}, keys and values in bfloat16"
    log.info(
        "loaded %s in %.1f s, %.1f s of it importing torch and transformers (%s, %s (%s), %s%s)",
        checkpoint,
        time.perf_counter() - started,
        imported,
        kwargs["device_map"],
        plan.kind,
        plan.reason,
        attention,
        "; --dtype float32 for the exact, slower path" if cpu_kernels else "",
    )
    if placement.spread:
        log.info("placed %s", describe(getattr(model, "hf_device_map", None)) or "on one device")
    return LoadedModel(model, processor, plan)


def _own_parts(model: Any, kernels: OwnKernels | None) -> str:
    """The CPU path's model set to use the app's kernels beyond attention (bfloat16 keys and
    values, decoder layers, block products), and, for the start-up line, where they run."""
    from app.cpu_weights.blocks import own_kernel_layers

    use_bfloat16_kv(model, kernels)
    if kernels is None:
        return ""
    products, lean = own_kernel_layers(model), use_own_layers(model, kernels)
    said = f", its products in {products} layers" if products else ""
    return said + (f", its norms and rotary in {lean} decoder layers" if lean else "")


def _model(
    path: Path,
    plan: WeightsPlan,
    kwargs: dict[str, Any],
    store_root: Path | None,
    kernels: OwnKernels | None,
) -> Any:
    """The model as `plan` says: read from the quantized store where it holds it, else from
    the checkpoint (then quantized for the CPU's kernels, and saved in the store); its layers
    in a block format multiplied by `kernels` where they run."""
    from transformers import AutoModelForImageTextToText

    from app.cpu_weights.int8 import to_cpu_kernels
    from app.cpu_weights.output import tied_output
    from app.cpu_weights.store import QuantizedStore, store_folder

    store = None
    if plan.kind.cpu_kernels and store_root is not None:
        store = QuantizedStore(store_folder(store_root, path, plan.kind))
        attention = kwargs["attn_implementation"]
        if store.exists() and (model := store.load(path, attention, kernels)):
            return model
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.eval()
    if not plan.kind.cpu_kernels:
        return model
    formats = None
    if plan.kind is WeightsKind.INT4:
        formats = functools.partial(block_plan, tied_output=tied_output(model))
    if store is not None:
        return store.quantize_and_save(model, formats, kernels)
    return to_cpu_kernels(model, formats=formats, products=kernels)
