"""Resolve a model name to a checkpoint and load it, with the guards transformers lacks."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Processor

from . import artifacts, checkpoints, memory, quiet
from .errors import ModelLoadError, StoreError
from .families import Family, family_of
from .images import describe
from .jsonfile import JSONReadError, load_file
from .presets import resolve
from .types import GENERATION_TASKS, RETRIEVAL_TASKS, ModelPreset

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE = ("8bit", "4bit")
_HASH_ALL_BELOW = 64 * 1024 * 1024
_CPU_4BIT_IN, _CPU_4BIT_OUT = 64, 32


@dataclass
class RetrievalModel:
    """A retrieval checkpoint (``Blip2ForImageTextRetrieval``) ready to match, score and embed."""

    name: str
    model: Blip2ForImageTextRetrieval
    processor: Blip2Processor
    version: str
    source: str  # where it was loaded from: a hub id or an absolute folder path

    @property
    def embedding_dim(self) -> int:
        """Size ``D`` of the ITC embeddings."""
        return int(self.model.config.image_text_hidden_size)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def max_text_tokens(self) -> int:
        """Longest text the Q-Former reads (longer texts are truncated)."""
        return int(self.model.config.qformer_config.max_position_embeddings)


@dataclass
class LoadedModel:
    """A checkpoint ready to serve: model, processor and what the host needs to know about them.

    A captioning checkpoint has ``model`` and ``family``; ``retrieval`` is set when a retrieval model
    was loaded too (the preset's companion, or the checkpoint itself when it is a retrieval
    checkpoint: then ``model`` and ``family`` are ``None``).
    """

    preset: ModelPreset
    model: Blip2ForConditionalGeneration | None
    processor: Blip2Processor
    family: Family | None
    version: str
    device: torch.device
    dtype: torch.dtype
    adapter: artifacts.Attached | None = None
    retrieval: RetrievalModel | None = None
    _tokenizing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.base_version = self.version

    def tokenize(self, text: str | list[str], *, tokenizer: Any = None, **options: Any) -> Any:
        """``tokenizer(text, **options)`` (default: the processor's), one call at a time.

        A fast tokenizer keeps its padding and truncation settings on one shared object and sets them
        on every call, so a caller counting tokens while the worker pads a batch breaks the batch
        ("Unable to create tensor"). Every tokenization of a served model goes through here.
        """
        with self._tokenizing:
            return (tokenizer or self.processor.tokenizer)(text, **options)

    def count_tokens(self, text: str, *, special: bool = True) -> int:
        """How many tokens ``text`` takes (with the tokenizer's BOS/EOS when ``special``)."""
        return len(self.tokenize(text, add_special_tokens=special).input_ids)

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this model can do: generation tasks when it has a language model, retrieval tasks when it has a retrieval model."""
        return (GENERATION_TASKS if self.model is not None else ()) + (RETRIEVAL_TASKS if self.retrieval else ())

    def require(self, task: str) -> None:
        """Raise :class:`ModelLoadError` (naming the model and what it can do) unless it can do ``task``."""
        if task in self.tasks:
            return
        if task in RETRIEVAL_TASKS:
            raise ModelLoadError(
                f"model {self.preset.name!r} has no retrieval model, so it cannot {task}: load a retrieval "
                "checkpoint beside it (Host.load(..., retrieval='blip2-itm-vit-g')) or alone (--model blip2-itm-vit-g)"
            )
        raise ModelLoadError(
            f"model {self.preset.name!r} is a retrieval checkpoint without a language model: it does "
            f"{', '.join(self.tasks)}, not {task}"
        )

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def max_positions(self) -> int:
        """Longest input the language model accepts, image query tokens included."""
        text = self.model.config.text_config
        limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        return int(limit or min(self.processor.tokenizer.model_max_length, 4096))

    def prompt_budget(self, *, image: bool, max_new_tokens: int) -> int:
        """How many prompt tokens fit the context beside the image's query tokens (when ``image``) and,
        for a decoder-only model, the ``max_new_tokens`` it will generate after them."""
        queries = self.num_query_tokens if image else 0
        generated = max_new_tokens if self.family is not None and self.family.decoder_only else 0
        return self.max_positions - queries - generated


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {device!r}: {exc}") from None
    if picked.type == "cpu":
        return picked
    if picked.type not in ("cuda", "mps"):
        raise ModelLoadError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if picked.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS (Apple GPU) is not available on this machine")
    if picked.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine")
    if picked.type == "cuda" and picked.index is not None and picked.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return picked


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _quantization(quantize: str | None, dtype: torch.dtype) -> Any:
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise ModelLoadError(f"quantize {quantize!r}: expected one of {', '.join(QUANTIZE)}")
    if not quiet.verbose():  # its optional fast CPU kernel is fetched from the hub at import: it says so when it cannot
        logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_kernel_notice)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"quantize={quantize!r} needs bitsandbytes: pip install 'blip2plugins[quantization]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        # bitsandbytes logs on every 8-bit matmul that it casts inputs to float16: the README says it once.
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_drop_cast_notice)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _drop_kernel_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


_LOAD_LOCK = threading.Lock()  # concurrent from_pretrained calls corrupt each other ("copy out of meta tensor")


def load(model: str, *, device: str = "auto", dtype: str = "auto", quantize: str | None = None,
         retrieval: str | bool = True) -> LoadedModel:
    """Load ``model`` (preset, folder or hub id) and check that model and processor agree.

    ``retrieval`` adds a retrieval model for ``match`` / ``similarity`` / ``embed_*``: ``True`` loads
    the preset's companion (if it names one), a string loads that checkpoint, ``False`` none. A
    retrieval checkpoint given as ``model`` loads alone (it has no language model). Quantization
    applies to the vision encoder, the language projection and the language model (transformers keeps
    the Q-Former in float32; a retrieval model is not quantized). Safe to call from several threads:
    loads run one at a time.
    """
    with _LOAD_LOCK:
        return _load(model, device=device, dtype=dtype, quantize=quantize, retrieval=retrieval)


def _load(model: str, *, device: str, dtype: str, quantize: str | None, retrieval: str | bool) -> LoadedModel:
    preset = _resolve(model)
    _check_folder(preset)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    if _is_retrieval(preset):
        if quantize is not None:
            raise ModelLoadError(f"model {preset.name!r}: quantize={quantize!r} applies to a language model; this "
                                 "retrieval checkpoint has none")
        head = _load_retrieval(preset, dev, torch_dtype)
        return LoadedModel(preset, None, head.processor, None, head.version, dev, torch_dtype, retrieval=head)
    companion = preset.retrieval if retrieval is True else (retrieval or None)
    quantization = _quantization(quantize, torch_dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map={"": str(dev)})
    config = _config(preset)
    _check_config(config, preset, generation=True)
    _check_contents(preset, config, Blip2ForConditionalGeneration)
    memory.check_fits(preset.name, config, Blip2ForConditionalGeneration, dev, torch_dtype, quantize)
    with _loading(f"model {preset.name!r}", preset.source):
        processor = Blip2Processor.from_pretrained(preset.source)
        net = Blip2ForConditionalGeneration.from_pretrained(preset.source, config=config, **kwargs)
    if quantization is None:
        net = net.to(dev)
    elif quantize == "4bit" and dev.type == "cpu":
        _check_cpu_4bit(net, preset.name)
    net.eval()
    family = family_of(net.config.text_config.model_type)
    if preset.family is not None and preset.family != family.name:
        raise ModelLoadError(
            f"model {preset.name!r}: the preset says family {preset.family!r} but the checkpoint's "
            f"language model is {net.config.text_config.model_type!r}"
        )
    check_pair(net, processor, preset.name)
    head = None
    if companion:
        head_preset = _resolve(companion)
        _check_folder(head_preset)
        if not _is_retrieval(head_preset):
            raise ModelLoadError(f"retrieval model {companion!r}: not a retrieval checkpoint (Blip2ForImageTextRetrieval)")
        head = _load_retrieval(head_preset, dev, torch_dtype)
        if quantization is None:
            _share_vision(net, head)
    return LoadedModel(preset, net, processor, family, _version(preset, net), dev, torch_dtype, retrieval=head)


def _resolve(model: str) -> ModelPreset:
    """The preset of ``model``; a name the file system refuses (too long, a NUL) is a :class:`ModelLoadError`."""
    try:
        return resolve(model)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ModelLoadError(f"model {describe(model)}: {reason}") from None


def _share_vision(net: Blip2ForConditionalGeneration, head: RetrievalModel) -> None:
    """Let the retrieval model use the captioning model's vision encoder when their weights are equal.

    BLIP-2 trains both stages with the ViT frozen, so a captioning checkpoint and its retrieval
    companion usually hold the same encoder (ViT-g: about 1B parameters, 2 GB in float16), and one
    copy serves both. An adapter that would change the shared encoder unshares it first
    (:func:`attach_adapter`).
    """
    ours, theirs = net.vision_model.state_dict(), head.model.vision_model.state_dict()
    if ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours):
        head.model.vision_model = net.vision_model
        log.info("retrieval model %s shares the vision encoder of the captioning model", head.name)


def _unshare_vision(loaded: LoadedModel, folder: Path) -> None:
    """Give the retrieval model its own vision encoder before an adapter that changes it is attached."""
    head = loaded.retrieval
    if head is None or loaded.model is None or head.model.vision_model is not loaded.model.vision_model:
        return
    if artifacts.touches(loaded.model, folder, "vision_model"):
        head.model.vision_model = copy.deepcopy(loaded.model.vision_model)
        log.info("adapter %s changes the vision encoder: the retrieval model %s keeps its own copy", folder, head.name)


def _is_retrieval(preset: ModelPreset) -> bool:
    """Whether ``preset`` is a retrieval checkpoint: its preset says so, or its config's architecture does."""
    if preset.kind != "generation":
        return preset.kind == "retrieval"
    return "Blip2ForImageTextRetrieval" in (_config(preset).architectures or ())


def _config(preset: ModelPreset) -> Blip2Config:
    """The checkpoint's config; a local ``config.json`` is read with :mod:`jsonfile` first (deep
    nesting, huge numbers), one of another kind of model is refused before transformers would turn it
    into a default BLIP-2, and any config transformers refuses is one :class:`ModelLoadError`."""
    local = Path(preset.source) / "config.json"
    if local.is_file():
        try:
            raw = load_file(local)
        except JSONReadError as exc:
            raise ModelLoadError(f"could not load model {preset.name!r}: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"could not load model {preset.name!r}: {local} is not a JSON object")
    else:
        with _loading(f"model {preset.name!r}", preset.source):
            raw, _ = Blip2Config.get_config_dict(preset.source)
    checkpoints.check_type(preset.name, preset.source, raw)
    with _loading(f"model {preset.name!r}", preset.source):
        return Blip2Config.from_pretrained(preset.source)


def _check_folder(preset: ModelPreset) -> None:
    """A local folder's file list, before anything is read (see :mod:`checkpoints`)."""
    if Path(preset.source).is_dir():
        checkpoints.check_folder(preset.name, Path(preset.source))


def _check_contents(preset: ModelPreset, config: Blip2Config, model_class: type) -> None:
    """A local folder's files and weights against ``config``, before the model is built (see :mod:`checkpoints`)."""
    if Path(preset.source).is_dir():
        checkpoints.check_contents(preset.name, Path(preset.source), config, model_class)


def _check_config(config: Blip2Config, preset: ModelPreset, *, generation: bool) -> None:
    """Refuse sizes no BLIP-2 can have (transformers would divide by zero or fail on the weights)."""
    parts = [("vision_config", config.vision_config), ("qformer_config", config.qformer_config)]
    if generation:
        parts.append(("text_config", config.text_config))
    problems = [f"num_query_tokens must be >= 1, got {config.num_query_tokens}"] if config.num_query_tokens < 1 else []
    for part, sub in parts:
        for key in ("hidden_size", "num_attention_heads", "vocab_size", "image_size", "patch_size", "d_model", "num_heads"):
            value = getattr(sub, key, None)
            if isinstance(value, int) and value < 1:
                problems.append(f"{part}.{key} must be >= 1, got {value}")
    vision = config.vision_config
    if not problems and vision.patch_size > vision.image_size:
        problems.append(f"vision_config.patch_size ({vision.patch_size}) exceeds image_size ({vision.image_size})")
    if not problems and vision.hidden_size % vision.num_attention_heads:
        problems.append(f"vision_config.hidden_size ({vision.hidden_size}) is not a multiple of num_attention_heads "
                        f"({vision.num_attention_heads})")
    if problems:
        raise ModelLoadError(f"could not load model {preset.name!r} from {preset.source}: config.json: {problems[0]}")


@contextmanager
def _loading(what: str, source: str) -> Iterator[None]:
    """Any failure of transformers to read a checkpoint (a bad config value, a damaged tokenizer or
    weights file) as one :class:`ModelLoadError` line naming it and the folder or hub id; no progress bars."""
    mismatches = _Mismatches()
    report = logging.getLogger("transformers.modeling_utils")  # where the load report is logged
    report.addFilter(mismatches)
    try:
        with quiet.loading():
            yield
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers fails in many ways on damaged files
        text = str(exc)
        if "ignore_mismatched_sizes" in text:
            text = f"the weights do not have the sizes config.json gives ({mismatches.first})"
        reason = " ".join(text.split()) or type(exc).__name__
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise ModelLoadError(f"could not load {what} from {source}: {reason}") from None
    finally:
        report.removeFilter(mismatches)


class _Mismatches(logging.Filter):
    """Holds back transformers' multi-line load report when it lists weights of the wrong size (the load
    then fails, and :func:`_loading` names the first of them in its one line)."""

    first = "?"

    def filter(self, record: logging.LogRecord) -> bool:
        lines = [line for line in record.getMessage().splitlines() if "| MISMATCH" in line]
        if not lines:
            return True
        match = re.search(r"^(\S+).*ckpt: torch\.Size\((\[.*?\])\) vs model: ?torch\.Size\((\[.*?\])\)", lines[0])
        self.first = (f"{match.group(1)}: {match.group(2)} in the weights, {match.group(3)} from config.json"
                      if match else " ".join(lines[0].split()))
        return False


def _load_retrieval(preset: ModelPreset, device: torch.device, dtype: torch.dtype) -> RetrievalModel:
    config = _config(preset)
    _check_config(config, preset, generation=False)
    _check_contents(preset, config, Blip2ForImageTextRetrieval)
    memory.check_fits(preset.name, config, Blip2ForImageTextRetrieval, device, dtype, None)
    with _loading(f"retrieval model {preset.name!r}", preset.source):
        processor = Blip2Processor.from_pretrained(preset.source)
        net = Blip2ForImageTextRetrieval.from_pretrained(preset.source, config=config, dtype=dtype)
    net = net.to(device).eval()
    size, expected = processor.image_processor.size, net.config.vision_config.image_size
    if (size.get("height"), size.get("width")) != (expected, expected):
        raise ModelLoadError(
            f"retrieval model {preset.name!r}: the processor resizes images to {size.get('height')}x{size.get('width')} "
            f"but the vision encoder expects {expected}x{expected}"
        )
    vocab = net.embeddings.word_embeddings.num_embeddings
    if len(processor.tokenizer) > vocab:
        raise ModelLoadError(
            f"retrieval model {preset.name!r}: the tokenizer has {len(processor.tokenizer)} tokens but the "
            f"Q-Former's text embeddings only {vocab}"
        )
    source = str(Path(preset.source).resolve()) if Path(preset.source).is_dir() else preset.source
    return RetrievalModel(preset.name, net, processor, _version(preset, net), source)


def _check_cpu_4bit(model: Blip2ForConditionalGeneration, name: str) -> None:
    """bitsandbytes' CPU 4-bit kernels pack weights in blocks of 64 input and 32 output features; a
    quantized layer of other widths crashes in generate. transformers quantizes the vision encoder,
    the language projection and the language model (not the Q-Former, kept in full precision)."""
    from bitsandbytes.nn import Linear4bit

    odd: dict[str, set[int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, Linear4bit):
            widths = {w for w, block in ((module.in_features, _CPU_4BIT_IN), (module.out_features, _CPU_4BIT_OUT)) if w % block}
            odd.setdefault(path.split(".")[0], set()).update(widths)
    parts = [f"its {part} has layers {', '.join(map(str, sorted(widths)))} wide" for part, widths in odd.items() if widths]
    if parts:
        raise ModelLoadError(
            f"model {name!r}: 4-bit on CPU needs each quantized layer's input width to be a multiple of {_CPU_4BIT_IN} "
            f"and its output width a multiple of {_CPU_4BIT_OUT} (bitsandbytes' CPU block sizes); {'; '.join(parts)}: "
            "use quantize='8bit'"
        )


def check_pair(model: Blip2ForConditionalGeneration, processor: Blip2Processor, name: str) -> None:
    """Refuse a model/processor pair that transformers would run silently wrong (or crash on deep inside).

    Also forces left padding, which batched generation needs.
    """
    config = model.config
    queries = config.num_query_tokens
    if processor.num_query_tokens is None:
        log.warning("model %r: processor has no num_query_tokens; using the model's %d", name, queries)
        processor.num_query_tokens = queries
    if processor.num_query_tokens != queries:
        raise ModelLoadError(
            f"model {name!r}: the processor inserts {processor.num_query_tokens} image tokens but the model has "
            f"{queries} query tokens; image features would land in the wrong rows"
        )
    image_token = getattr(config, "image_token_id", None)
    if image_token is None:
        raise ModelLoadError(f"model {name!r}: its config has no image_token_index; re-save it with a current transformers")
    vocab = model.get_input_embeddings().num_embeddings
    if not 0 <= image_token < vocab:
        raise ModelLoadError(f"model {name!r}: image token id {image_token} is outside the language model's vocabulary ({vocab})")
    tokenizer = processor.tokenizer
    processor_token = tokenizer.convert_tokens_to_ids(processor.image_token.content)
    if processor_token != image_token:
        raise ModelLoadError(
            f"model {name!r}: the processor's image token id is {processor_token}, the model's is {image_token}"
        )
    size = processor.image_processor.size
    expected = config.vision_config.image_size
    if (size.get("height"), size.get("width")) != (expected, expected):
        raise ModelLoadError(
            f"model {name!r}: the processor resizes images to {size.get('height')}x{size.get('width')} "
            f"but the vision encoder expects {expected}x{expected}"
        )
    tokenizer.padding_side = "left"


def _version(preset: ModelPreset, model: torch.nn.Module) -> str:
    """A short version string: the hub commit, or a digest of the local weights."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return f"{preset.name}@{commit[:10]}"
    return f"{preset.name}@{_digest(Path(preset.source))}"


def _digest(folder: Path) -> str:
    """Digest of a folder's weights and configs (whole files when small, else sizes and first MiB)."""
    files = sorted(f for pattern in ("*.safetensors", "*.bin", "*config.json") for f in folder.glob(pattern) if f.is_file())
    digest = hashlib.sha256()
    hash_all = sum(f.stat().st_size for f in files) < _HASH_ALL_BELOW
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            digest.update(handle.read() if hash_all else json.dumps(file.stat().st_size).encode() + handle.read(1 << 20))
    return digest.hexdigest()[:10]


def find_adapter(loaded: LoadedModel, adapter: str) -> str:
    """The folder of ``adapter``: itself when it is a folder, else ``NAME[@VERSION]`` in the default store."""
    if Path(adapter).expanduser().is_dir() or "/" in adapter or adapter.startswith((".", "~")):
        return adapter
    from .store import AdapterStore

    try:
        return AdapterStore().resolve(loaded.preset.name, adapter).path
    except StoreError as exc:
        raise ModelLoadError(f"adapter {adapter!r}: no such folder, and not in the adapter store: {exc}") from None


def attach_adapter(loaded: LoadedModel, adapter: str) -> None:
    """Attach an adapter folder (LoRA or trained weights, see :mod:`artifacts`) to the model,
    replacing the one attached before, and make its digest part of the model version.

    When the new adapter cannot be attached the previous one is put back, and the error raised.
    """
    loaded.require("caption")
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"adapter {adapter!r}: no such folder")
    artifacts.kind_of(folder)
    previous = loaded.adapter
    detach_adapter(loaded)
    _unshare_vision(loaded, folder)
    digest = _digest(folder)
    try:
        loaded.adapter = artifacts.attach(loaded.model, folder, name=re.sub(r"\W", "_", f"{folder.name}_{digest}"))
    except Exception:
        if previous is not None:
            attach_adapter(loaded, str(previous.folder))
        raise
    loaded.model.eval()
    loaded.version = f"{loaded.preset.name}+{folder.name}@{digest}"


def detach_adapter(loaded: LoadedModel) -> None:
    """Remove the attached adapter, if any: the base model serves again."""
    if loaded.adapter is not None:
        loaded.adapter.detach()
        loaded.adapter = None
    loaded.version = loaded.base_version
