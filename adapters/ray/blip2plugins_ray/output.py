"""The output folder: Parquet shards, what they already hold (so a rerun resumes), and what a run added.

Ray writes each shard whole or leaves it unreadable (a job killed while writing). A rerun reads the
``image`` column of every shard: the images there are done and skipped. An unreadable shard is moved
to ``OUT/.unreadable/`` (never deleted: it is the user's data), and its images are done again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from blip2plugins.errors import OptionError
from blip2plugins.images import short_reason

UNREADABLE = ".unreadable"


@dataclass
class Existing:
    """What an output folder holds before a run."""

    shards: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    rows: int = 0
    moved: list[tuple[str, str]] = field(default_factory=list)  # (shard, why) moved to .unreadable


def shard_names(out: Path) -> set[str]:
    """The Parquet files directly in ``out``."""
    return {entry.name for entry in os.scandir(out) if entry.is_file() and entry.name.endswith(".parquet")}


def existing(out: Path) -> Existing:
    """Read what ``out`` already holds (creating it when missing); unreadable shards are moved aside."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    found = Existing()
    for name in sorted(shard_names(out)):
        try:
            images = pq.read_table(out / name, columns=["image"]).column("image").to_pylist()
        except Exception as exc:
            aside = out / UNREADABLE
            aside.mkdir(exist_ok=True)
            shutil.move(str(out / name), str(aside / name))
            found.moved.append((name, short_reason(exc)))
            continue
        found.shards.add(name)
        found.done.update(images)
        found.rows += len(images)
    return found


@dataclass(frozen=True)
class Added:
    """What one run wrote: rows, rows with an error, and the new shards."""

    rows: int
    errors: int
    shards: int


def added(out: Path, before: set[str]) -> Added:
    """The rows of the shards in ``out`` that were not there ``before``."""
    rows = errors = 0
    new = sorted(shard_names(out) - before)
    for name in new:
        column = pq.read_table(out / name, columns=["error"]).column("error")
        rows += len(column)
        errors += len(column) - column.null_count
    return Added(rows, errors, len(new))
