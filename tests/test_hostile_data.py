"""Hostile training files through the readers (``read_dataset``: JSONL, CSV, COCO, Label Studio exports)
and through ``blip2 train``: a bad record is skipped or (strict) refused with one line, a bad file is a
``DataError``; nothing blocks on a FIFO or reads /dev/zero for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from blip2plugins.training.data import read_dataset

from hostile import checks, corpus, fixtures

pytestmark = pytest.mark.timeout(60)

FOLDER = fixtures.scratch("training-files")
FILES = corpus.training_files(FOLDER)
SPECIAL = corpus.special_dataset_paths(fixtures.scratch("special-datasets"))


@pytest.mark.parametrize("case", FILES, ids=lambda c: c.id)
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_read_dataset(case: corpus.Case, strict: bool) -> None:
    what = f"read_dataset({case.id}, strict={strict})"
    dataset = checks.api(lambda: read_dataset(case.value, strict=strict), what)
    if not isinstance(dataset, Exception):
        for problem in dataset.skipped:
            checks.assert_message(str(problem), f"{what}: skipped record")
        checks.api(lambda: dataset.summary(), f"{what}.summary()")
        checks.api(lambda: dataset.fingerprint(), f"{what}.fingerprint()")
        checks.api(lambda: dataset.check_images(strict=strict), f"{what}.check_images()")
        if len(dataset) >= 2:
            checks.api(lambda: dataset.split(0.5), f"{what}.split()")


@pytest.mark.parametrize("case", [c for c in FILES if c.id.endswith(".json")][:12], ids=lambda c: c.id)
@pytest.mark.parametrize("format", ["jsonl", "csv", "coco", "label-studio"])
def test_read_dataset_with_a_forced_format(case: corpus.Case, format: str) -> None:
    checks.api(lambda: read_dataset(case.value, format=format), f"read_dataset({case.id}, format={format})")


@pytest.mark.parametrize("format", [None, "", "JSONL", "xml", 5, "\ud800"], ids=repr)
def test_read_dataset_bad_format_argument(format: object) -> None:
    checks.api(lambda: read_dataset(FOLDER / "UPPER.JSONL", format=format), f"read_dataset(format={format!r})")  # type: ignore[arg-type]


@pytest.mark.parametrize("paths", [[], "", [""], ["\x00"], [5], [None], ["a" * 5000 + ".jsonl"], [b"x.jsonl"]], ids=repr)
def test_read_dataset_bad_paths(paths: object) -> None:
    checks.api(lambda: read_dataset(paths), f"read_dataset({checks.short(paths, 60)})")  # type: ignore[arg-type]


@pytest.mark.parametrize("case", SPECIAL, ids=lambda c: c.id)
def test_special_dataset_paths_do_not_block(case: corpus.Case) -> None:
    """A FIFO blocks an open() for ever and /dev/zero never ends: in a subprocess, bounded."""
    checks.api_isolated("from blip2plugins.training.data import read_dataset",
                        f"read_dataset({str(case.value)!r})", f"read_dataset({case.id})", timeout=20)


# -- through `blip2 train` (in-process; a model that does not exist stops it right after the data is read) -----

@pytest.mark.parametrize("case", FILES, ids=lambda c: c.id)
def test_train_command_reads_hostile_files(case: corpus.Case, tmp_path: Path) -> None:
    run = checks.cli(["train", "--data", str(case.value), "--strict", "--model", str(tmp_path / "no-model"),
                      "--store", str(tmp_path / "store"), "--steps", "1"])
    checks.assert_cli_clean(run)
    assert run.code != 0


@pytest.mark.parametrize("case", [c for c in SPECIAL if c.id in ("fifo", "dev-zero")], ids=lambda c: c.id)
def test_train_command_on_special_paths_does_not_block(case: corpus.Case, tmp_path: Path) -> None:
    proc = checks.blip2("train", "--data", str(case.value), "--model", str(tmp_path / "no-model"),
                        "--store", str(tmp_path / "store"), timeout=30, memory=3 << 30)
    checks.assert_proc_clean(proc, f"blip2 train --data {case.id}")
