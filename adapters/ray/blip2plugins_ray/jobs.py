"""Whole-collection jobs on a Ray cluster: list the sources, skip what the output already holds, run
the images through :class:`~blip2plugins_ray.predictor.Blip2Predictor` actors and write Parquet shards.

:func:`annotate` adds the result columns to any ``ray.data.Dataset`` with an ``image`` column, for
people composing their own pipelines; :func:`run` is what ``blip2 ray caption|ask|embed`` does.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from blip2plugins.errors import Blip2Error
from blip2plugins.images import short_reason
from blip2plugins.presets import resolve

from .output import added, existing
from .predictor import Blip2Predictor
from .sources import expand, plan

if TYPE_CHECKING:
    import ray.data

#: Rows Ray gathers before it writes a shard (the last shard of a run may hold fewer).
ROWS_PER_SHARD = 1000
#: Listed items (images or table shards) per input block: the unit a listing task expands.
ITEMS_PER_BLOCK = 1000
#: Seconds the workers have to start and load their models.
ACTOR_START_TIMEOUT = 900
_done_sets: dict[str, set[str]] = {}


def annotate(ds: "ray.data.Dataset", task: str = "caption", *, workers: int = 1, gpus_per_worker: float = 0.0,
             cpus_per_worker: float = 1.0, batch_size: int = 16, **predictor: Any) -> "ray.data.Dataset":
    """``ds`` (an ``image`` column of references or image bytes; other columns pass through) with
    the result columns of ``task`` (see :class:`Blip2Predictor`, which takes ``predictor``'s keyword
    arguments), computed by ``workers`` actors that each load the model once. GPU actors take
    ``gpus_per_worker``; CPU-only clusters leave it 0."""
    import ray.data

    return ds.map_batches(
        Blip2Predictor, fn_constructor_kwargs={"task": task, **predictor}, batch_size=batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker or None,
        num_cpus=cpus_per_worker, udf_modifying_row_count=False,
    )


@dataclass(frozen=True)
class Summary:
    """What a run did."""

    task: str
    out: str
    rows: int  # written by this run
    errors: int  # of those, rows with an error
    shards: int  # written by this run
    resumed: int  # rows already in the output folder, skipped
    unreadable: list[tuple[str, str]]  # output shards moved aside, and why
    seconds: float

    def line(self) -> str:
        """One line for people."""
        rate = self.rows / self.seconds if self.seconds else 0.0
        text = (f"{self.task}: {self.rows} rows ({self.errors} with errors) in {self.shards} new shards of "
                f"{self.out}, {self.seconds:.1f} s ({rate:.1f} rows/s)")
        if self.resumed:
            text += f"; {self.resumed} rows were already there and were skipped"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable shards moved to .unreadable/ and redone"
        return text


class JobError(Blip2Error):
    """A job failed on the cluster (a worker could not start, or Ray gave up)."""


def reason(exc: BaseException) -> str:
    """What went wrong, from the error Ray raised: the first blip2plugins error among its causes,
    else the first line of the outermost message."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Blip2Error):
            return str(current)
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    match = re.search(r"^\S*(ModelLoadError|OptionError|ImageError|Blip2Error): (.+)$", str(exc), re.MULTILINE)
    if match:
        return match.group(2)
    return short_reason(exc)


def _new_rows(done_ref: Any) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """A ``flat_map`` function: the rows of a work item that the output does not hold yet."""
    def rows(item: dict[str, Any]) -> list[dict[str, Any]]:
        import ray

        key = done_ref.hex()
        if key not in _done_sets:
            _done_sets[key] = ray.get(done_ref)
        done = _done_sets[key]
        return [row for row in expand(item) if row["image"] not in done]
    return rows


def run(task: str, sources: Sequence[str], out: str | Path, *, files_from: Iterable[str] = (),
        address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
        batch_size: int = 16, **predictor: Any) -> Summary:
    """Run ``task`` over every image of ``sources`` (and ``files_from``'s lines) that ``out`` does
    not hold yet, writing Parquet shards into ``out``. Starts a local Ray cluster unless one is
    running or ``address`` names one (``"auto"``: the one this machine belongs to)."""
    import ray

    started = time.perf_counter()
    resolve(predictor.get("model", "demo"))  # an unknown model name fails here, not in every worker
    out = Path(out)
    before = existing(out)
    items = plan(sources, files_from)
    todo = [item for item in items if item.table or item.ref not in before.done]
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=True, log_to_driver=False)
        # Every worker has loaded its model before the first batch goes out, and a cluster that
        # cannot place them (no GPU, too few CPUs) fails the job instead of waiting forever.
        ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT
        blocks = min(len(todo), max(2 * workers, -(-len(todo) // ITEMS_PER_BLOCK)))
        ds = ray.data.from_items([{"ref": item.ref, "table": item.table} for item in todo], override_num_blocks=blocks)
        # Listing shards and writing them take no CPU of their own: with the actors holding every CPU
        # (2 workers on 2 cores) those stages would otherwise wait forever.
        ds = ds.flat_map(_new_rows(ray.put(before.done)), num_cpus=0, compute=ray.data.TaskPoolStrategy(size=workers))
        ds = annotate(ds, task, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                      batch_size=batch_size, **predictor)
        try:
            ds.write_parquet(str(out), min_rows_per_file=ROWS_PER_SHARD, ray_remote_args={"num_cpus": 0})
        except Exception as exc:  # Ray's wrapper of what failed on the cluster: say what it was, in one line
            raise JobError(f"the {task} job failed: {reason(exc)}") from exc
    new = added(out, before.shards)
    return Summary(task, str(out), new.rows, new.errors, new.shards, before.rows, before.moved,
                   time.perf_counter() - started)
