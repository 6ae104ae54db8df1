"""How much memory a model will take, and whether the machine has it, told before anything is loaded.

A model that does not fit makes a machine swap or the kernel kill a process (on a shared box, maybe
another one). The estimate comes from the config alone (the model is built on the meta device): its
parameters at the load's precision (the Q-Former stays float32 under quantization), plus what
real-size loads measured beyond that (``benchmarks/real_size.py``, blip2-opt-2.7b and flan-t5-xl
shapes on CPU): 3% for bfloat16 from float32 files, up to 32% while bitsandbytes quantizes. A load
at the files' own precision maps them (page cache, not the process's own memory), but a model that
runs needs those pages resident all the same. ``BLIP2_SKIP_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, PretrainedConfig

from .errors import ModelLoadError

SKIP_ENV = "BLIP2_SKIP_MEMORY_CHECK"
#: What a load holds beyond its weights: the runtime, tokenizer, image batches, generation state.
MARGIN_BYTES = 0.5e9
#: Peak over the weights while loading: converting dtypes, and quantizing.
LOAD_FACTOR = {None: 1.05, "8bit": 1.35, "4bit": 1.35}
_QUANTIZED_BYTES = {"8bit": 1.0, "4bit": 0.5}
_QUANTIZED_PARTS = ("vision_model.", "language_projection", "language_model.")


def weight_bytes(config: PretrainedConfig, model_class: type[PreTrainedModel], dtype: torch.dtype,
                 quantize: str | None) -> tuple[int, float]:
    """The parameter count of ``model_class(config)`` and the bytes its weights take at ``dtype``
    (``quantize``: the vision encoder, projection and language model's linear layers at 8 or 4 bits)."""
    with torch.device("meta"):
        model = model_class(config)
    size = torch.finfo(dtype).bits / 8
    linear = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
              and name.startswith(_QUANTIZED_PARTS) and not name.endswith("lm_head")}
    params, total = 0, 0.0
    for name, param in model.named_parameters():
        params += param.numel()
        if quantize is not None and name in linear:
            total += param.numel() * _QUANTIZED_BYTES[quantize]
        elif quantize is not None and name.startswith(("qformer.", "query_tokens")):
            total += param.numel() * 4
        else:
            total += param.numel() * size
    return params, total


def needed_bytes(weights: float, quantize: str | None) -> float:
    """Memory a load of ``weights`` bytes needs at its peak."""
    return weights * LOAD_FACTOR[quantize] + MARGIN_BYTES


def available_bytes(device: torch.device) -> float | None:
    """Free memory where the model will live: the GPU's, or the machine's (``MemAvailable``, within a
    cgroup's limit); None where it cannot be told."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device.index or 0)[0])
    if device.type != "cpu":
        return None
    try:
        info = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    if "MemAvailable" not in fields:
        return None
    free = int(fields["MemAvailable"].split()[0]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return float(free)


def check_fits(name: str, config: PretrainedConfig, model_class: type[PreTrainedModel], device: torch.device,
               dtype: torch.dtype, quantize: str | None) -> None:
    """Refuse a load that needs more memory than ``device`` has free, saying what would fit."""
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    free = available_bytes(device)
    if free is None:
        return
    params, weights = weight_bytes(config, model_class, dtype, quantize)
    need = needed_bytes(weights, quantize)
    if need <= free:
        return
    where = "the GPU" if device.type == "cuda" else "this machine"
    load = f"quantized to {quantize}" if quantize else f"in {str(dtype).removeprefix('torch.')}"
    hints = []
    for option, other_dtype, other_quantize in (("--dtype bfloat16", torch.bfloat16, None),
                                                ("--quantize 8bit", dtype, "8bit"), ("--quantize 4bit", dtype, "4bit")):
        if (other_dtype, other_quantize) == (dtype, quantize) or (quantize == "4bit" and other_quantize == "8bit"):
            continue
        other = needed_bytes(weight_bytes(config, model_class, other_dtype, other_quantize)[1], other_quantize)
        if other < need:
            hints.append(f"{option} needs about {other / 1e9:.1f} GB")
    raise ModelLoadError(
        f"model {name!r} needs about {need / 1e9:.1f} GB of memory {load} ({params / 1e9:.2f} B parameters), "
        f"and {where} has {free / 1e9:.1f} GB free" + (f": {'; '.join(hints)}" if hints else "")
        + f" (set {SKIP_ENV}=1 to load anyway)"
    )
