"""Training settings: every one checked (type, NaN, range) when the config is made, before any model loads."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from blip2plugins.cli import build_cli
from blip2plugins.errors import OptionError
from blip2plugins.training import TrainConfig
from blip2plugins.training.finetune import FinetuneConfig
from blip2plugins.training.loop import train
from blip2plugins.training.retrieval_train import RetrievalTrainConfig

from test_training import examples, tiny


@pytest.mark.parametrize("settings, message", [
    ({"lora_dropout": math.nan}, r"lora_dropout must be a finite number in \[0, 1\), got nan"),
    ({"lora_dropout": 1.0}, r"lora_dropout must be a finite number in \[0, 1\), got 1.0"),
    ({"lora_rank": 0}, "lora_rank must be between 1 and 4096, got 0"),
    ({"lora_rank": 10**9}, "lora_rank must be between 1 and 4096, got 1000000000"),
    ({"lora_alpha": math.nan}, "lora_alpha must be a whole number, got float nan"),
    ({"weight_decay": math.inf}, "weight_decay must be a finite number >= 0, got inf"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"warmup": -1}, "warmup must be >= 0, got -1"),
    ({"warmup": 1.5}, "warmup must be a whole number, got float 1.5"),
    ({"max_grad_norm": math.nan}, "max_grad_norm must be a finite number >= 0, got nan"),
    ({"min_lr_ratio": math.nan}, r"min_lr_ratio must be a finite number in \[0, 1\], got nan"),
    ({"seed": 2**70}, "seed must be between 0 and 4294967295, got 1180591620717411303424"),
    ({"seed": -1}, "seed must be between 0 and 4294967295, got -1"),
    ({"steps": True}, "steps must be a whole number, got bool True"),
    ({"lr": "1e-3"}, "lr must be a number, got str '1e-3'"),
    ({"lora_extra": ("(",)}, r"lora_extra '\(' is not a valid regular expression: missing \)"),
    ({"lora_extra": ("(?i)x",)}, "lora_extra '.*' is not a valid regular expression: global flags not at the start"),
    ({"lora_extra": "x"}, "lora_extra must be a list of strings, got str 'x'"),
    ({"lora_targets": ("",)}, "lora_targets must hold non-empty strings, got ''"),
    ({"lora_token_ids": (-1,)}, "lora_token_ids must be >= 0, got -1"),
    ({"augment": ("rotate",)}, "unknown augmentation 'rotate'"),
    ({"eval_every": -1}, "eval_every must be >= 0, got -1"),
    ({"method": "nope"}, "unknown training method 'nope'"),
    ({"seed": 10**5000}, "seed must be between 0 and 4294967295, got a number of about 5,000 digits$"),
    ({"lr": 10**5000}, "lr must be a finite number > 0, got a number of about 5,000 digits$"),
    ({"lora_extra": ("(" * 1000 + ")" * 1000,)}, "lora_extra '[(]+[.]{3} is nested too deeply$"),
    ({"lora_modules_to_save": ["x" * 10**6]}, None),
])
def test_train_config_refuses_bad_settings(settings, message) -> None:
    if message is None:  # allowed: a long name is not wrong in itself
        TrainConfig(**settings)
        return
    with pytest.raises(OptionError, match=message) as caught:
        TrainConfig(**settings)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("make, message", [
    (lambda: FinetuneConfig(eval_split=math.nan), r"eval_split must be a finite number in \[0, 1\), got nan"),
    (lambda: FinetuneConfig(margin=math.inf), "margin must be a finite number, got inf"),
    (lambda: FinetuneConfig(eval_batch_size=0), "eval_batch_size must be >= 1, got 0"),
    (lambda: RetrievalTrainConfig(lr=math.nan), "lr must be a finite number > 0, got nan"),
    (lambda: RetrievalTrainConfig(seed=-1), "seed must be between 0 and 4294967295"),
    (lambda: RetrievalTrainConfig(itm_weight=math.inf), "itm_weight must be a finite number >= 0, got inf"),
])
def test_run_and_retrieval_configs_refuse_bad_settings(make, message) -> None:
    with pytest.raises(OptionError, match=message):
        make()


@pytest.mark.parametrize("args, message", [
    (["--lora-extra", "("], "Error: --lora-extra '(' is not a valid regular expression"),
    (["--resume"], "Error: --resume and --checkpoint-every need --checkpoint-dir"),
    (["--lora-dropout", "nan"], "Invalid value for '--lora-dropout': must be a finite number in [0, 1), got nan"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--seed", str(2**70)], "Invalid value for '--seed'"),
    (["--lr", "inf"], "Invalid value for '--lr': must be a finite number > 0, got inf"),
    (["--margin", "nan"], "Invalid value for '--margin': must be a finite number, got nan"),
    (["--eval-split", "nan"], "Invalid value for '--eval-split'"),
    (["--steps", "9" * 5000], "Invalid value for '--steps': '99999999999999999999'... (5,000 characters) is not a number"),
    (["--margin", "x" * 5000], "Invalid value for '--margin': 'xxxxxxxxxxxxxxxxxxxx'... (5,000 characters)"),
    (["--lora-rank", str(10**9)], "Invalid value for '--lora-rank': must be between 1 and 4096, got 1000000000"),
])
def test_blip2_train_refuses_bad_settings_before_reading_data_or_loading_the_model(monkeypatch, args, message) -> None:
    monkeypatch.setattr("blip2plugins.models.load", lambda *a, **k: pytest.fail("loaded the model"))
    result = CliRunner().invoke(build_cli(), ["train", "--data", "absent.jsonl", "--out", "absent-out", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()[-1]) < 300


def test_a_run_that_diverges_stops_with_one_line_instead_of_training_on_nan() -> None:
    model, processor = tiny("opt")
    config = TrainConfig(method="full", steps=20, batch_size=4, lr=1e30, warmup=0, progress=False)
    with pytest.raises(OptionError, match=r"training diverged at step \d+: the loss is nan \(a lower lr may help\)"):
        train(model, processor, examples(8), config)
