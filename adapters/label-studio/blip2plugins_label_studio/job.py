"""One training run for one project, in a process of its own: ``python -m blip2plugins_label_studio.job``.

The server's training worker starts it with a JSON spec on stdin and reads the outcome from the
file the spec names; the log goes to stderr. Running apart keeps the server answering (the run is
niced and gets its own torch threads) and a crash of the run from taking the server down.

Steps: take the project's training lock (runs of one project, from any process, never overlap);
on ``pull``, refresh the label store from Label Studio's export; download each labeled image once
into the project's image cache; fine-tune (:func:`blip2plugins.training.finetune.finetune`) on the
accepted captions and answers, which stores a new adapter version and lets the eval gate promote it.
Labels that the serving version (or a refused attempt from it) was already trained on, by the dataset's
fingerprint, are not trained again: the run ends ``skipped``, "nothing new since v0003".
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Callable

import anyio
from blip2plugins.errors import Blip2Error
from blip2plugins.jsonfile import JSONReadError, loads
from blip2plugins.types import AdapterVersion

from .client import LabelStudioClient
from .files import write_atomic, write_json
from .labels import Label, LabelStore, labels_from_export
from .schema import parse_label_config
from .serving import adapter_name, base_model_name
from .settings import Settings, load_recipe

log = logging.getLogger("blip2plugins_label_studio.job")
Log = Callable[[str], None]


def run(settings: Settings, project: str, *, pull: bool = False, label_config: str | None = None,
        client: LabelStudioClient | None = None) -> dict[str, Any]:
    """Train on the project's accepted labels; the outcome as a JSON-able dict (``status`` and ``reason``)."""
    folder = settings.projects_dir / project
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".train.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        labels, records, skipped, pulled = anyio.run(_prepare, settings, client, folder, project, pull, label_config)
        if not labels:
            because = f" ({pulled})" if pulled else ""
            return {"status": "failed", "reason": f"no accepted labels to train on{because}", "labels": 0}
        if not records:
            return {"status": "failed", "reason": f"no usable labels: {'; '.join(skipped[:5])}",
                    "labels": len(labels)}
        same = _trained_on(settings, project, records)
        if same is not None:
            return {"status": "skipped", "version": same.version, "labels": len(labels), "records": len(records),
                    "reason": f"nothing new since {same.version} ({same.status}): it was trained on these same labels"}
        outcome = _finetune(settings, project, records, skipped, len(labels))
        return {**outcome, "pull_problem": pulled} if pulled else outcome


async def _prepare(settings: Settings, client: LabelStudioClient | None, folder: Path, project: str, pull: bool,
                   label_config: str | None) -> tuple[list[Label], list[Any], list[str], str | None]:
    """The project's labels (pulled from Label Studio first on ``pull``), their training records, the labels
    left out, and why the pull failed (None: it did not, or was not asked for)."""
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(LabelStudioClient.from_settings(settings))
        store = LabelStore(folder)
        pulled = await _pull(client, store, project, label_config) if pull else None
        labels = store.labels()
        records, skipped = await _records(client, folder / "images", labels) if labels else ([], [])
    return labels, records, skipped, pulled


async def _pull(client: LabelStudioClient, store: LabelStore, project: str, label_config: str | None) -> str | None:
    """Make the label store match Label Studio's export; on failure keep it, and say why (the return value)."""
    if not label_config:
        log.warning("project %s: no labeling config came with the request; training on the labels recorded so far",
                    project)
        return None
    try:
        config = parse_label_config(label_config)
        labels, problems = labels_from_export(await client.labeled_tasks(project), config)
    except Blip2Error as exc:
        problem = f"pulling the labeled tasks from Label Studio failed: {exc}"
        log.warning("project %s: %s; training on the labels recorded so far", project, problem)
        return problem
    stored, removed = store.replace_all(labels)
    log.info("project %s: pulled %d accepted annotations from Label Studio (%d stale removed)", project, stored, removed)
    for problem in problems[:20]:
        log.warning("project %s: %s", project, problem)
    if len(problems) > 20:
        log.warning("project %s: %d more exported annotations left out", project, len(problems) - 20)
    return None


async def _records(client: LabelStudioClient, cache: Path, labels: list[Label]) -> tuple[list[Any], list[str]]:
    """Training records with local image copies, and the labels left out (image unavailable)."""
    from blip2plugins.training.data import Record

    cache.mkdir(parents=True, exist_ok=True)
    wanted = {(entry.image, label.task) for label in labels for entry in label.entries}
    local: dict[str, str] = {}
    skipped: list[str] = []

    async def fetch(ref: str, task: int) -> None:
        path = cache / hashlib.sha256(ref.encode()).hexdigest()[:32]
        if not path.exists():
            try:
                data = await client.image_bytes(ref, task)
            except Blip2Error as exc:
                skipped.append(f"task {task}: {exc}")
                return
            write_atomic(path, data)
        local[ref] = str(path)

    async with anyio.create_task_group() as group:
        for ref, task in sorted(wanted):
            group.start_soon(fetch, ref, task)
    records = [Record(local[entry.image], text, entry.question, f"task {label.task} annotation {label.annotation}")
               for label in labels for entry in label.entries if entry.image in local for text in entry.texts]
    return records, sorted(skipped)


def _trained_on(settings: Settings, project: str, records: list[Any]) -> AdapterVersion | None:
    """The adapter version already trained on exactly ``records`` (by the dataset's fingerprint) from the
    version serving now: the current one, or a refused attempt from it; None when there is none."""
    from blip2plugins.store import AdapterStore
    from blip2plugins.training.data import CaptionDataset

    store, base, name = AdapterStore(settings.adapter_store), base_model_name(settings.model), adapter_name(project)
    try:
        current = store.current(base, name)
        fingerprint = CaptionDataset(records).fingerprint()
        if current is not None and current.dataset == fingerprint:
            return current
        parent = current.version if current is not None else None
        return next((v for v in reversed(store.versions(base, name)) if v.dataset == fingerprint and v.parent == parent),
                    None)
    except Blip2Error:  # the store has nothing for this project yet, or cannot be read: train (which says why)
        return None


def _finetune(settings: Settings, project: str, records: list[Any], skipped: list[str], n_labels: int) -> dict[str, Any]:
    from blip2plugins.store import AdapterStore
    from blip2plugins.training.data import CaptionDataset
    from blip2plugins.training.finetune import finetune

    dataset = CaptionDataset(records)
    for problem in skipped[:20]:
        log.warning("project %s: label left out: %s", project, problem)
    result = finetune(settings.model, dataset, load_recipe(settings.train_config),
                      store=AdapterStore(settings.adapter_store), name=adapter_name(project), device=settings.device,
                      log=lambda line: log.info("%s", line))
    adapter = result.adapter
    assert adapter is not None  # one process: always the main one
    return {"status": adapter.status, "reason": adapter.reason, "version": adapter.version,
            "metrics": dict(adapter.metrics), "baseline": result.report.get("baseline", {}), "labels": n_labels,
            "records": len(records), "skipped": len(skipped)}


def main() -> None:
    """Read the spec from stdin, run, write the outcome to ``spec["result"]``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        spec = loads(sys.stdin.buffer.read())
        settings = Settings(**spec["settings"])
        project, result = str(spec["project"]), Path(spec["result"])
    except (JSONReadError, KeyError, TypeError, Blip2Error) as exc:
        sys.exit(f"the training job's spec on stdin is unusable: {type(exc).__name__}: {exc}")
    try:
        os.nice(settings.train_nice)
    except OSError:
        pass
    import torch

    torch.set_num_threads(settings.train_threads)
    started = time.time()
    try:
        outcome = run(settings, project, pull=spec.get("pull") is True, label_config=spec.get("label_config"))
    except (Blip2Error, ValueError, OSError) as exc:
        outcome = {"status": "failed", "reason": str(exc)}
    outcome["seconds"] = round(time.time() - started, 1)
    write_json(result, outcome)


if __name__ == "__main__":
    main()
