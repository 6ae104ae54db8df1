"""Expensive things built once per test session (cached at module level, so that every hostile test
module shares them): the demo host, a store holding a real LoRA adapter, an image index."""

from __future__ import annotations

import atexit
import functools
import json
import random
import shutil
import tempfile
from pathlib import Path

from . import corpus

_ROOT = Path(tempfile.mkdtemp(prefix="blip2-hostile-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def scratch(name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_ROOT))
    return folder


def write_dataset(folder: Path, n: int = 8, seed: int = 0) -> Path:
    from blip2plugins.demo import world

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = world.random_scene(rng)
        world.render(scene).save(folder / f"{i}.png")
        lines.append({"image": f"{i}.png", "caption": world.caption(scene)})
    path = folder / "labels.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@functools.cache
def host():
    """The demo host (captioning + retrieval), loaded once for the whole session."""
    from blip2plugins.host import Host

    return Host.load("demo", device="cpu")


@functools.cache
def retrieval_host():
    """The demo retrieval model alone, as `blip2 index` loads it."""
    from blip2plugins.host import Host

    return Host.load("demo-retrieval", device="cpu")


@functools.cache
def trained_store() -> tuple[Path, str]:
    """A store with one real LoRA version (``hostile`` v0001, promoted) for the demo model."""
    from blip2plugins.store import AdapterStore
    from blip2plugins.training import TrainConfig
    from blip2plugins.training.finetune import FinetuneConfig, finetune

    root = scratch("store")
    data = write_dataset(root / "data")
    config = FinetuneConfig(TrainConfig(method="lora", steps=1, batch_size=4, warmup=0), eval_split=0.25, margin=-1.0)
    finetune("demo", data, config, store=AdapterStore(root / "store"), name="hostile", device="cpu", log=lambda _: None)
    return root / "store", "hostile"


def copy_store(dest: Path) -> tuple[Path, Path]:
    """A fresh copy of the trained store in ``dest``; returns (store root, the v0001 folder)."""
    source, name = trained_store()
    shutil.copytree(source, dest, symlinks=True)
    version = next(dest.glob(f"*/{name}/v0001"))
    return dest, version


@functools.cache
def built_index() -> tuple[Path, list[str]]:
    """An index of four images built by the demo retrieval model; returns (its file, the image paths)."""
    from blip2plugins import index as index_module

    folder = scratch("index")
    images = []
    for i in range(4):
        path = folder / f"img{i}.png"
        path.write_bytes(corpus.scene_png(10 + i))
        images.append(str(path))
    index, report = index_module.build_index(retrieval_host(), images, progress=False)
    assert not report.failed, report.failed
    target = folder / "shapes.idx"
    index.save(target)
    return target, images


class _Shared:
    """A host the commands may "close": the session's host stays open for the next case."""

    def __init__(self, host) -> None:
        self._host = host

    def __getattr__(self, name: str):
        return getattr(self._host, name)

    def close(self) -> None:
        pass


def share_hosts(monkeypatch) -> None:
    """Make the CLI's host loading hand out the session's demo hosts (for ``--model demo`` / the
    retrieval companion on CPU without an adapter) instead of loading the model again for every case."""
    from blip2plugins import cli_options

    real = cli_options.load_host

    def load(model, adapter, device, dtype, quantize, **kwargs):
        if adapter is None and quantize is None and device in ("auto", "cpu") and dtype in ("auto", "float32") \
                and not kwargs.get("fast_preprocess") and not kwargs.get("batch_invariant"):
            if model == "demo":
                return _Shared(host())
            if model == "demo-retrieval":
                return _Shared(retrieval_host())
        return real(model, adapter, device, dtype, quantize, **kwargs)

    monkeypatch.setattr(cli_options, "load_host", load)
