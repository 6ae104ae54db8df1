"""The backend's settings: command-line options and environment variables, shared with its workers.

Secrets are read from the environment only (never from the command line, where ``ps`` shows them):
``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``. Everything else travels to the
server's worker processes as JSON in ``BLIP2_LS_SETTINGS``.

The training recipe (``train_config``) is a JSON file holding :class:`FinetuneConfig` fields
(``{"train": {"method": "lora", "steps": 200, ...}, "eval_split": 0.2, "margin": 0.0}``) or
``module:ATTRIBUTE`` naming a ``FinetuneConfig`` object (e.g. ``mypackage.recipes:CAPTIONS``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blip2plugins.jsonfile import JSONReadError, load_file, loads
from blip2plugins.types import ImageLimits

from .errors import SettingsError

if TYPE_CHECKING:
    from blip2plugins.training.finetune import FinetuneConfig

ENV_SETTINGS = "BLIP2_LS_SETTINGS"
ENV_URL = "LABEL_STUDIO_URL"
ENV_API_KEY = "LABEL_STUDIO_API_KEY"
ENV_AUTH_USER = "BASIC_AUTH_USER"
ENV_AUTH_PASS = "BASIC_AUTH_PASS"

#: The recipe used when no ``train_config`` is given: LoRA on the language model's attention, short.
#: On the demo model, from the vocabulary scenario's 64 labels (32 with squares called "tiles"), it
#: captioned 88 % of fresh square scenes in the team's words and kept 100 % of the others right
#: (50 scenes each; about 2 minutes on 2 busy CPU cores).
DEFAULT_RECIPE: dict[str, Any] = {
    "train": {"method": "lora", "steps": 150, "batch_size": 16, "lr": 2e-3, "warmup": 10, "lora_rank": 8,
              "lora_alpha": 16, "log_every": 25, "seed": 0},
    "eval_split": 0.15,
    "margin": 0.0,
}


def default_model_dir() -> Path:
    """``~/.cache/blip2plugins/label-studio`` (under ``$XDG_CACHE_HOME`` when set)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "blip2plugins" / "label-studio"


@dataclass
class Settings:
    """Everything a backend process needs to know. Secrets are not fields: see :meth:`api_key`."""

    model: str = "demo"
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None
    model_dir: str = field(default_factory=lambda: str(default_model_dir()))
    adapter_store: str | None = None  # None: the core's default store (BLIP2_ADAPTER_STORE)
    label_studio_url: str | None = None
    allow_hosts: tuple[str, ...] = ()
    train_config: str | None = None
    train_every: int = 0
    refresh_predictions: bool = False  # after a promotion, ask Label Studio to re-predict the unlabeled tasks
    train_threads: int = 1
    train_nice: int = 10
    max_batch_size: int = 32
    fast_preprocess: bool = False
    batch_invariant: bool = False  # each request runs alone: results independent of batch-mates
    max_body_bytes: int = 32 * 1024 * 1024
    max_new_tokens: int | None = None
    predict_wait: float = 90.0
    download_timeout: float = ImageLimits.download_timeout
    max_downloads: int = 16
    max_predictions: int = 4
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.label_studio_url is None and os.environ.get(ENV_URL):
            self.label_studio_url = os.environ[ENV_URL]
        if self.label_studio_url:
            self.label_studio_url = self.label_studio_url.rstrip("/")
            _check_url(self.label_studio_url)
        self.allow_hosts = tuple(self.allow_hosts)
        for name in ("train_every", "train_threads", "max_batch_size", "max_body_bytes", "max_downloads",
                     "max_predictions"):
            low = 0 if name == "train_every" else 1
            if type(getattr(self, name)) is not int or getattr(self, name) < low:
                raise SettingsError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        for name, low in (("predict_wait", 0.0), ("download_timeout", 1e-3)):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value) or value < low:
                raise SettingsError(f"{name} must be a number of seconds >= {low:g}, got {value!r}")

    # -- secrets, from the environment only -------------------------------------------------------

    @staticmethod
    def api_key() -> str | None:
        return os.environ.get(ENV_API_KEY) or None

    @staticmethod
    def basic_auth() -> tuple[str, str] | None:
        user, password = os.environ.get(ENV_AUTH_USER), os.environ.get(ENV_AUTH_PASS)
        if bool(user) != bool(password):
            raise SettingsError(f"set both {ENV_AUTH_USER} and {ENV_AUTH_PASS}, or neither")
        return (user, password) if user and password else None

    # -- derived ----------------------------------------------------------------------------------

    @property
    def projects_dir(self) -> Path:
        return Path(self.model_dir).expanduser() / "projects"

    def generation(self) -> dict[str, Any]:
        return {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}

    # -- transport to workers ---------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        try:
            data = loads(text)
            return cls(**{**data, "allow_hosts": tuple(data.get("allow_hosts", ()))})
        except (ValueError, TypeError, AttributeError) as exc:
            raise SettingsError(f"{ENV_SETTINGS} is not valid backend settings: {exc}") from None

    @classmethod
    def from_env(cls) -> Settings:
        """The settings a worker process was started with (``BLIP2_LS_SETTINGS``), else the defaults."""
        text = os.environ.get(ENV_SETTINGS)
        return cls.from_json(text) if text else cls()


def load_recipe(spec: str | None) -> FinetuneConfig:
    """The training recipe named by ``spec`` (a JSON file or ``module:ATTRIBUTE``), or the default one."""
    from blip2plugins.training.finetune import FinetuneConfig

    if spec is None:
        return recipe_from_dict(DEFAULT_RECIPE, "the default recipe")
    if ":" in spec and not Path(spec).exists():
        module_name, _, attribute = spec.partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise SettingsError(f"training config {spec!r}: cannot import it ({exc})") from None
        if not isinstance(value, FinetuneConfig):
            raise SettingsError(f"training config {spec!r} is a {type(value).__name__}, not a FinetuneConfig")
        return value
    return recipe_from_dict(read_recipe_file(spec), spec)


def read_recipe_file(spec: str) -> Any:
    """The JSON of a recipe file; :class:`SettingsError` when it is missing, unreadable or not JSON."""
    try:
        return load_file(Path(spec).expanduser())
    except FileNotFoundError:
        raise SettingsError(f"training config {spec!r}: cannot read it (no such file)") from None
    except JSONReadError as exc:
        raise SettingsError(f"training config {exc}") from None


def recipe_from_dict(data: Any, where: str) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from its JSON form; :class:`SettingsError` naming the bad key."""
    from blip2plugins.training.finetune import FinetuneConfig
    from blip2plugins.training.loop import TrainConfig

    if not isinstance(data, dict) or not isinstance(data.get("train", {}), dict):
        raise SettingsError(f"training config {where}: expected an object with a 'train' object")
    outer = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"train"}
    inner = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key != "train" and key not in outer:
            raise SettingsError(f"training config {where}: unknown key {key!r} (keys: train, {', '.join(sorted(outer))})")
    train = dict(data.get("train", {}))
    for key, value in train.items():
        if key not in inner:
            raise SettingsError(f"training config {where}: unknown train key {key!r} (keys: {', '.join(sorted(inner))})")
        if isinstance(value, list) and _is_tuple(inner[key].type):
            train[key] = tuple(value)
    train.setdefault("progress", False)
    try:
        return FinetuneConfig(train=TrainConfig(**train), **{k: v for k, v in data.items() if k != "train"})
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"training config {where}: {exc}") from None


def recipe_to_dict(config: FinetuneConfig) -> dict[str, Any]:
    """The JSON form of a recipe (what :func:`recipe_from_dict` reads back)."""
    return dataclasses.asdict(config)


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError as exc:
        raise SettingsError(f"{ENV_URL} {url[:100]!r} is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{ENV_URL} {url[:100]!r} is not an http(s) URL with a host")


def _is_tuple(annotation: object) -> bool:
    """Whether a dataclass field's annotation (a string, under postponed evaluation) is a tuple."""
    return "tuple" in str(annotation)
