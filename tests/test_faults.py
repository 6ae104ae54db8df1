"""Fault injection: ``kill -9`` at random points of `blip2 train --store`, `blip2 adapters promote` and
`blip2 index add` (seeded; 24 trials). After every kill each adapter version and index entry is whole or
absent, CURRENT names a whole version, and a rerun of the same command succeeds."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from blip2plugins.index import ImageIndex
from blip2plugins.store import AdapterStore

from hostile import corpus, fixtures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
KILLPOINT = Path(__file__).parent / "hostile" / "killpoint.py"
TRAIN = ["--steps", "2", "--batch-size", "4", "--warmup", "0", "--eval-split", "0.25", "--device", "cpu", "--margin", "-1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("BLIP2_MODEL", None)


def launch(args: list[str], *, kill_at: int = 0, when: str = "before", count_file: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, str(KILLPOINT), str(kill_at), when, str(count_file or os.devnull), "--", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"hung: {err.decode(errors='replace')[-1500:]}") from None
    return process.returncode, (out + err).decode(errors="replace")


def kill_after(process: subprocess.Popen, delay: float) -> int:
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    code, _ = finish(process)
    return code


def counted(args: list[str], tmp: Path) -> tuple[int, float]:
    """Run ``args`` uncut, counting file-system operations; returns (count, seconds)."""
    count_file = tmp / f"count-{time.monotonic_ns()}"
    began = time.monotonic()
    code, output = finish(launch(args, count_file=count_file))
    assert code == 0 and "Traceback" not in output, output[-2000:]
    return int(count_file.read_text()), time.monotonic() - began


# -- integrity --------------------------------------------------------------------------------------------------

def check_store(root: Path, what: str) -> list[str]:
    """Every version folder is whole (version.json reads, recorded files have their sizes, weights load),
    CURRENT names a whole version. Returns debris (temporary files left behind) for the caller to judge."""
    store = AdapterStore(root)
    debris: list[str] = []
    if not root.exists():
        return debris
    for model_dir in [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]:
        if not (model_dir / "MODEL.json").exists():
            assert not list(model_dir.glob("*/v[0-9]*")), f"{what}: versions under {model_dir} without MODEL.json"
            continue
        base = json.loads((model_dir / "MODEL.json").read_text())["base_model"]
        for adapter_dir in [d for d in model_dir.iterdir() if d.is_dir()]:
            debris += [str(p) for p in adapter_dir.glob(".*.tmp")]
            for version_dir in sorted(adapter_dir.glob("v[0-9]*")):
                version = store.get(base, adapter_dir.name, version_dir.name)  # StoreError: a torn version
                recorded = json.loads((version_dir / "version.json").read_text())["files"]
                for name, size in recorded.items():
                    path = version_dir / name
                    assert path.is_file() and path.stat().st_size == size, f"{what}: {path} missing or not {size} bytes"
                    if name.endswith(".safetensors"):
                        with safe_open(str(path), "pt") as weights:
                            for key in weights.keys():
                                weights.get_tensor(key)
                    if name.endswith(".json"):
                        json.loads(path.read_text())
                extra = {p.name for p in version_dir.iterdir()} - set(recorded) - {"version.json"}
                debris += [str(version_dir / e) for e in extra]
                assert version.status in ("candidate", "promoted", "refused")
            current = store.current(base, adapter_dir.name) if (adapter_dir / "CURRENT").exists() else None
            if current is not None:
                assert (Path(current.path) / "version.json").is_file(), f"{what}: CURRENT names a missing version"
    return debris


def check_index(path: Path, allowed: set[str], what: str) -> list[str]:
    debris = [str(p) for p in path.parent.glob(f".{path.name}.*.tmp")]
    if not path.exists():
        return debris
    index = ImageIndex.load(path)  # IndexFileError: a torn file
    assert set(index.sources) <= allowed, f"{what}: unknown entries {set(index.sources) - allowed}"
    if len(index):
        hits = index.search_pooled([1.0] * index.dim, k=len(index))
        assert {h.source for h in hits} == set(index.sources), f"{what}: entries that search cannot reach"
    return debris


# -- the trials -------------------------------------------------------------------------------------------------

def test_kill_9_at_random_points_leaves_whole_versions_and_entries(tmp_path: Path) -> None:
    rng = random.Random(corpus.SEED)
    data = fixtures.write_dataset(tmp_path / "data", n=8)
    store = tmp_path / "store"
    blip2 = lambda *a: [*a]  # noqa: E731
    train = blip2("train", "--data", str(data), "--store", str(store), "--name", "faults", *TRAIN)
    log: list[str] = []
    debris: list[str] = []

    # train: the first run uncut (counts its file operations, gives its duration), then 10 kills
    ops, seconds = counted(train, tmp_path)
    for trial in range(10):
        if trial % 2:
            at, when = rng.randint(1, ops), rng.choice(["before", "after"])
            code = finish(launch(train, kill_at=at, when=when))[0]
            log.append(f"train: killed at file operation {at}/{ops} ({when}): exit {code}")
        else:
            delay = rng.uniform(0.3, 1.05) * seconds
            code = kill_after(launch(train), delay)
            log.append(f"train: killed after {delay:.1f} s of {seconds:.1f}: exit {code}")
        debris += check_store(store, log[-1])
    code, output = finish(launch(train))
    assert code == 0, f"train rerun failed:\n{output[-2000:]}"
    debris += check_store(store, "after the train rerun")
    versions = AdapterStore(store).versions("demo", "faults")
    assert len(versions) >= 2, versions

    # promote: kill at every kind of point of a promotion (it is too quick for timed kills to land)
    promote = lambda v: blip2("adapters", "promote", v, "--name", "faults", "--model", "demo", "--store", str(store))  # noqa: E731
    ops, _ = counted(promote(versions[0].version), tmp_path)
    for trial in range(7):
        version = versions[trial % len(versions)].version
        at, when = rng.randint(1, max(ops, 1)), rng.choice(["before", "after"])
        code = finish(launch(promote(version), kill_at=at, when=when))[0]
        log.append(f"promote {version}: killed at file operation {at}/{ops} ({when}): exit {code}")
        debris += check_store(store, log[-1])
    code, output = finish(launch(promote(versions[-1].version)))
    assert code == 0, f"promote rerun failed:\n{output[-2000:]}"
    assert AdapterStore(store).current("demo", "faults").version == versions[-1].version
    debris += check_store(store, "after the promote rerun")

    # index add: build, then add new images with kills
    images = tmp_path / "images"
    images.mkdir()
    sources = []
    for i in range(12):
        (images / f"{i}.png").write_bytes(corpus.scene_png(100 + i))
        sources.append(str(images / f"{i}.png"))
    index = tmp_path / "faults.idx"
    code, output = finish(launch(["index", "build", *sources[:2], "--out", str(index)]))
    assert code == 0, output[-2000:]
    add = ["index", "add", str(index), *sources[2:]]
    ops, seconds = counted(add, tmp_path)
    for trial in range(8):
        if trial % 2:
            at, when = rng.randint(1, max(ops, 1)), rng.choice(["before", "after"])
            code = finish(launch(add, kill_at=at, when=when))[0]
            log.append(f"index add: killed at file operation {at}/{ops} ({when}): exit {code}")
        else:
            delay = rng.uniform(0.3, 1.05) * seconds
            code = kill_after(launch(add), delay)
            log.append(f"index add: killed after {delay:.1f} s of {seconds:.1f}: exit {code}")
        debris += check_index(index, set(sources), log[-1])
    code, output = finish(launch(add))
    assert code == 0, f"index add rerun failed:\n{output[-2000:]}"
    assert set(ImageIndex.load(index).sources) == set(sources)
    leftover = check_index(index, set(sources), "after the index add rerun") + check_store(store, "at the end")
    print("\n".join(log))
    assert len(log) >= 20
    assert not leftover, f"temporary files left behind by killed writers, still there after reruns: {leftover}"
