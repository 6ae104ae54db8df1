"""finetune(): data -> training -> held-out metrics -> adapter store -> gate -> events; `blip2 train`."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from blip2plugins import hookimpl, plugins
from blip2plugins.cli import build_cli
from blip2plugins.errors import DataError, ModelLoadError, StoreError
from blip2plugins.demo import world
from blip2plugins.host import Host
from blip2plugins.store import AdapterStore
from blip2plugins.training import TrainConfig
from blip2plugins.training.data import read_dataset
from blip2plugins.training.finetune import FinetuneConfig, finetune


def write_dataset(folder: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = world.random_scene(rng)
        world.render(scene).save(folder / f"{i}.png")
        lines.append({"image": f"{i}.png", "caption": world.caption(scene)})
        q, a = world.questions(scene)[0]
        lines.append({"image": f"{i}.png", "question": q, "answer": a})
    lines.append({"image": "missing.png", "caption": "a red circle"})  # reported and skipped
    path = folder / "labels.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    @hookimpl
    def training_finished(self, adapter) -> None:
        self.seen.append(("training_finished", adapter.version, adapter.status))

    @hookimpl
    def adapter_promoted(self, adapter) -> None:
        self.seen.append(("adapter_promoted", adapter.version, adapter.status))


@pytest.fixture
def events():
    recorder = Events()
    plugins.register_plugin(recorder, "test-events")
    yield recorder
    plugins.unregister_plugin("test-events")


def small(**overrides) -> FinetuneConfig:
    train = TrainConfig(**{"method": "lora", "steps": 6, "batch_size": 8, "lr": 1e-2, "warmup": 1,
                           "progress": False, "log_every": 2, **overrides})
    return FinetuneConfig(train, eval_split=0.25)


def test_finetune_stores_a_version_with_report_and_curve_and_fires_events(tiny_opt, tmp_path, events) -> None:
    data = write_dataset(tmp_path / "data")
    store = AdapterStore(tmp_path / "store")
    logged: list[str] = []
    result = finetune(str(tiny_opt), data, small(), store=store, name="shapes", log=logged.append)
    adapter = result.adapter
    assert adapter is not None and adapter.version == "v0001" and adapter.method == "lora"
    assert adapter.status == "promoted" and "(same held-out set)" in adapter.reason
    folder = Path(adapter.path)
    assert {"adapter_config.json", "adapter_model.safetensors", "report.json", "curve.png"} <= {p.name for p in folder.iterdir()}
    report = json.loads((folder / "report.json").read_text())
    assert report["dataset"]["skipped"][0]["reason"].startswith("image file not found")
    assert report["dataset"]["train"] + report["dataset"]["held_out"] == 48
    assert set(report["metrics"]) >= {"caption_exact_match", "bleu4", "cider", "vqa_accuracy"}
    assert set(report["baseline"]) == set(report["metrics"])
    assert report["train"]["steps"] == 6 and report["train"]["trainable_params"] < report["train"]["total_params"]
    assert dict(adapter.metrics) == report["metrics"] and adapter.dataset == report["dataset"]["fingerprint"]
    assert Image.open(folder / "curve.png").size[0] > 100
    assert events.seen == [("training_finished", "v0001", "candidate"), ("adapter_promoted", "v0001", "promoted")]
    assert any("skipped" in line for line in logged) and any(line.startswith("v0001: promoted") for line in logged)
    # the host serves it from the store by name, as a new model version
    with Host.load(str(tiny_opt), adapter=str(folder)) as by_path, Host.load(str(tiny_opt)) as base:
        assert by_path.model_version != base.model_version


def test_the_gate_refuses_an_adapter_that_is_not_better(tiny_opt, tmp_path, events) -> None:
    data = write_dataset(tmp_path / "data")
    store = AdapterStore(tmp_path / "store")
    first = finetune(str(tiny_opt), data, small(), store=store, name="shapes").adapter
    config = small()
    config.margin = 0.5  # demand far more than a 6-step run can gain
    second = finetune(str(tiny_opt), data, config, store=store, name="shapes").adapter
    assert second is not None and second.status == "refused" and second.parent == first.version
    assert "+ margin 0.5" in second.reason and "v0001's (same held-out set)" in second.reason
    assert store.current(second.base_model, "shapes").version == first.version
    assert [e[0] for e in events.seen].count("adapter_promoted") == 1
    assert [v.status for v in store.versions(second.base_model, "shapes")] == ["promoted", "refused"]


@pytest.mark.parametrize("method", ["qformer", "full"])
def test_finetune_weights_methods_to_a_folder(tiny_opt, tmp_path, method: str) -> None:
    data = write_dataset(tmp_path / "data", n=8)
    result = finetune(str(tiny_opt), data, small(method=method, steps=2), out=tmp_path / "out")
    assert result.adapter is None and result.report["method"] == method
    assert {"weights.safetensors", "blip2_weights.json", "report.json", "curve.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_bad_finetune_arguments_are_clear(tiny_opt, tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of store= or out="):
        finetune(str(tiny_opt), [], small())
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"image": "nope.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match="no usable training records"):
        finetune(str(tiny_opt), empty, small(), out=tmp_path / "out")


def test_blip2_train_and_adapters_commands(tiny_opt, tmp_path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", n=12)
    store = tmp_path / "store"
    monkeypatch.setenv("BLIP2_ADAPTER_STORE", str(store))
    runner, cli = CliRunner(), build_cli()
    args = ["train", "--data", str(data), "--model", str(tiny_opt), "--name", "shapes", "--steps", "3",
            "--batch-size", "8", "--warmup", "1", "--eval-split", "0.25", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["adapter"]["version"] == "v0001" and summary["adapter"]["status"] == "promoted"
    assert summary["method"] == "lora" and "caption_exact_match" in summary["metrics"]
    listed = runner.invoke(cli, ["adapters", "list", "--json"])
    assert listed.exit_code == 0 and [v["version"] for v in json.loads(listed.stdout)] == ["v0001"]
    # inference by store name: NAME -> its current version
    caption = runner.invoke(cli, ["caption", "--model", str(tiny_opt), "--adapter", "shapes", "--json",
                                  str(data.parent / "0.png")])
    assert caption.exit_code == 0, caption.output
    assert "+v0001@" in json.loads(caption.stdout)["model_version"]
    missing = runner.invoke(cli, ["caption", "--model", str(tiny_opt), "--adapter", "nope", str(data.parent / "0.png")])
    assert isinstance(missing.exception, ModelLoadError)  # main() prints it as one line
    assert "adapter 'nope'" in str(missing.exception) and "no current version" not in str(missing.exception)
    bad = runner.invoke(cli, ["train", "--data", str(tmp_path / "none.jsonl"), "--model", str(tiny_opt)])
    assert bad.exit_code == 1 and bad.output.startswith("blip2: ") and "none.jsonl" in bad.output


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_processes(tiny_opt, tmp_path) -> None:
    """`accelerate launch` runs `blip2 train` unchanged on 2 CPU processes (gloo) and writes the same kind of adapter."""
    import os
    import subprocess
    import sys

    data = write_dataset(tmp_path / "data", n=16)
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "blip2plugins.cli", "train",
                           "--data", str(data), "--model", str(tiny_opt), "--out", str(tmp_path / "out"),
                           "--steps", "4", "--batch-size", "4", "--warmup", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["train"]["examples_seen"] == 4 * 4 * 2  # each process took its own micro-batches
    assert done.stderr.count("held-out after training") == 1  # only the main process reports
    with Host.load(str(tiny_opt), adapter=str(tmp_path / "out")) as host:
        assert "+out@" in host.model_version


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (lambda: TrainConfig(lr=float("inf")), "lr must be a finite number > 0, got inf"),
    (lambda: FinetuneConfig(margin=float("nan")), "margin must be a finite number, got nan"),
    (lambda: FinetuneConfig(metric="bleu"), "unknown gate metric 'bleu': expected one of caption_exact_match, bleu4"),
    (lambda: FinetuneConfig(metric="n_captions"), "unknown gate metric 'n_captions'"),
])
def test_run_settings_training_would_fail_on_are_refused_up_front(make, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_strict_refuses_an_image_that_does_not_decode_before_loading_the_model(tmp_path: Path, monkeypatch) -> None:
    data = write_dataset(tmp_path)
    (tmp_path / "corrupt.png").write_text("not an image")
    with data.open("a") as file:
        file.write(json.dumps({"image": "corrupt.png", "caption": "a red circle"}) + "\n")
    monkeypatch.setattr("blip2plugins.models.load", lambda *a, **k: pytest.fail("loaded the model"))
    records = read_dataset(data)  # reading skips the record of missing.png; decoding is what strict checks here
    with pytest.raises(DataError, match=r"corrupt\.png: not an image"):
        finetune("demo", records, FinetuneConfig(), out=tmp_path / "out", strict=True)


def test_an_out_folder_with_files_in_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter_config.json").write_text("{}")  # an earlier run's LoRA would shadow a new one
    with pytest.raises(ValueError, match="out folder .* is not empty"):
        finetune("demo", write_dataset(tmp_path / "data"), FinetuneConfig(), out=tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out folder .*file is a file"):
        finetune("demo", write_dataset(tmp_path / "data"), FinetuneConfig(), out=tmp_path / "file")


def _full_disk(*args, **kwargs) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_out_is_one_line_leaves_nothing_and_the_rerun_works(tiny_opt, tmp_path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", n=8)
    out = tmp_path / "runs" / "out"
    monkeypatch.setattr("blip2plugins.training.finetune._write_report", _full_disk)  # after the weights were written
    with pytest.raises(StoreError, match=f"^cannot write the trained adapter to {out}: No space left on device$"):
        finetune(str(tiny_opt), data, small(steps=1), out=out)
    assert list(out.parent.iterdir()) == []  # no README.md or weights left, in out or beside it
    monkeypatch.undo()
    finetune(str(tiny_opt), data, small(steps=1), out=out)
    assert {"adapter_model.safetensors", "report.json"} <= {p.name for p in out.iterdir()}


def test_a_full_disk_under_the_store_is_one_line_and_stores_nothing(tiny_opt, tmp_path, monkeypatch) -> None:
    from safetensors import SafetensorError

    def serialize(model, method, folder, **kwargs) -> None:
        (Path(folder) / "README.md").write_text("half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("blip2plugins.artifacts.save", serialize)
    store = tmp_path / "store"
    result = CliRunner().invoke(build_cli(), [
        "train", "--data", str(write_dataset(tmp_path / "data", n=8)), "--model", str(tiny_opt), "--store", str(store),
        "--steps", "1", "--batch-size", "8", "--warmup", "0"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == f"blip2: cannot write the trained adapter to {store}: No space left on device"
    assert "Traceback" not in result.output and AdapterStore(store).names() == []


def test_a_label_too_long_for_the_model_is_skipped_not_a_traceback_or_terabytes(tiny_opt, tmp_path) -> None:
    data = write_dataset(tmp_path / "data", n=8)
    with data.open("a") as file:
        file.write(json.dumps({"image": "0.png", "caption": "a red circle " * 20_000}) + "\n")
    result = finetune(str(tiny_opt), data, small(steps=1), out=tmp_path / "out")
    skipped = {p["where"]: p["reason"] for p in result.report["dataset"]["skipped"]}
    assert skipped[f"{data}:18"] == "too long for the model: 60002 tokens, and its context holds 124 beside the image"
    with pytest.raises(DataError, match=r"labels\.jsonl:18: too long for the model"):
        finetune(str(tiny_opt), read_dataset(data), small(steps=1), out=tmp_path / "strict", strict=True)
