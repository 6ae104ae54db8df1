"""Checkpoints: a run resumes from an intact one; a damaged one is one ModelLoadError line, never a traceback
or code run from a pickle; a full disk while saving is one StoreError line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from blip2plugins.errors import ModelLoadError, OptionError, StoreError
from blip2plugins.training import TrainConfig
from blip2plugins.training.loop import latest_checkpoint, train

from test_training import examples, tiny


def config(folder: Path, steps: int, **overrides) -> TrainConfig:
    return TrainConfig(**{"method": "full", "steps": steps, "batch_size": 4, "lr": 1e-3, "warmup": 0, "progress": False,
                          "checkpoint_dir": str(folder), "checkpoint_every": 1, **overrides})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    model, processor = tiny("opt")
    train(model, processor, examples(8), config(folder, 2))
    return folder


def resume(folder: Path):
    model, processor = tiny("opt")
    return train(model, processor, examples(8), config(folder, 3, resume=True))


def test_a_run_resumes_from_its_checkpoint(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    assert resume(copy).resumed_from == 2


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/blip2-pwned",))


def damage(step: Path, how: str) -> None:
    state = step / "trainer_state.json"
    if how == "state-deep":
        state.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "state-huge-number":
        state.write_text('{"step": ' + "9" * 5000 + "}")
    elif how == "state-wrong-types":
        state.write_text(json.dumps({**json.loads(state.read_text()), "step": "2", "losses": None}))
    elif how == "state-not-an-object":
        state.write_text("[]")
    elif how == "weights-garbage":
        (step / "trainable.pt").write_bytes(b"\x00garbage")
    elif how == "weights-foreign":
        torch.save({"no.such.parameter": torch.zeros(1)}, step / "trainable.pt")
    elif how == "optimizer-pickle":
        (step / "optimizer.pt").write_bytes(pickle.dumps(Boom()))
    elif how == "rng-pickle":
        torch.save({"torch": Boom(), "python": None}, step / "rng-0.pt")


@pytest.mark.parametrize("how", ["state-deep", "state-huge-number", "state-wrong-types", "state-not-an-object",
                                 "weights-garbage", "weights-foreign", "optimizer-pickle", "rng-pickle"])
def test_a_damaged_checkpoint_is_one_line(saved: Path, tmp_path: Path, how: str) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    step = latest_checkpoint(copy)
    assert step is not None
    damage(step, how)
    Path("/tmp/blip2-pwned").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=f"^cannot resume from checkpoint {step}: ") as caught:
        resume(copy)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 600
    assert not Path("/tmp/blip2-pwned").exists()


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_folder(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nfile write failed")

    monkeypatch.setattr(torch, "save", full)
    model, processor = tiny("opt")
    with pytest.raises(StoreError, match=f"^cannot save a checkpoint in {tmp_path}: .*file write failed$"):
        train(model, processor, examples(8), config(tmp_path, 2))
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_dir_that_is_a_file_is_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match="checkpoint_dir .*file is not a folder"):
        config(tmp_path / "file", 2)
