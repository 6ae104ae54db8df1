"""One training run for one project, in a process of its own: ``python -m blip2plugins_label_studio.job``.

The server's training worker starts it with a JSON spec on stdin and reads the outcome from the
file the spec names; the log goes to stderr. Running apart keeps the server answering (the run is
niced and gets its own torch threads) and a crash of the run from taking the server down.

Steps: take the project's training lock (runs of one project, from any process, never overlap);
on ``pull``, refresh the label store from Label Studio's export; download each labeled image once
into the project's image cache; fine-tune (:func:`blip2plugins.training.finetune.finetune`) on the
accepted captions and answers, which stores a new adapter version and lets the eval gate promote it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from blip2plugins.errors import Blip2Error

from .client import LabelStudioClient
from .files import write_atomic, write_json
from .labels import Label, LabelStore, labels_from_export
from .schema import parse_label_config
from .serving import adapter_name
from .settings import Settings, load_recipe

log = logging.getLogger("blip2plugins_label_studio.job")
Log = Callable[[str], None]


def run(settings: Settings, project: str, *, pull: bool = False, label_config: str | None = None,
        client: LabelStudioClient | None = None) -> dict[str, Any]:
    """Train on the project's accepted labels; the outcome as a JSON-able dict (``status`` and ``reason``)."""
    folder = settings.projects_dir / project
    folder.mkdir(parents=True, exist_ok=True)
    own = client is None
    client = client or LabelStudioClient(settings.label_studio_url, Settings.api_key(), allow_hosts=settings.allow_hosts)
    try:
        with open(folder / ".train.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            store = LabelStore(folder)
            if pull:
                _pull(client, store, project, label_config)
            labels = store.labels()
            if not labels:
                return {"status": "failed", "reason": "no accepted labels to train on", "labels": 0}
            records, skipped = _records(client, folder / "images", labels)
            if not records:
                return {"status": "failed", "reason": f"no usable labels: {'; '.join(skipped[:5])}",
                        "labels": len(labels)}
            return _finetune(settings, project, records, skipped, len(labels))
    finally:
        if own:
            client.close()


def _pull(client: LabelStudioClient, store: LabelStore, project: str, label_config: str | None) -> None:
    """Make the label store match Label Studio's export; on failure keep it and say so."""
    if not label_config:
        log.warning("project %s: no labeling config came with the request; training on the labels recorded so far",
                    project)
        return
    try:
        config = parse_label_config(label_config)
        labels, problems = labels_from_export(client.labeled_tasks(project), config)
    except Blip2Error as exc:
        log.warning("project %s: could not pull the labeled tasks (%s); training on the labels recorded so far",
                    project, exc)
        return
    stored, removed = store.replace_all(labels)
    log.info("project %s: pulled %d accepted annotations from Label Studio (%d stale removed)", project, stored, removed)
    for problem in problems[:20]:
        log.warning("project %s: %s", project, problem)


def _records(client: LabelStudioClient, cache: Path, labels: list[Label]) -> tuple[list[Any], list[str]]:
    """Training records with local image copies, and the labels left out (image unavailable)."""
    from blip2plugins.training.data import Record

    cache.mkdir(parents=True, exist_ok=True)
    wanted = {(entry.image, label.task) for label in labels for entry in label.entries}

    def fetch(key: tuple[str, int]) -> tuple[str, str | None]:
        ref, task = key
        path = cache / hashlib.sha256(ref.encode()).hexdigest()[:32]
        if not path.exists():
            try:
                data = client.image_bytes(ref, task)
            except Blip2Error as exc:
                return ref, f"task {task}: {exc}"
            write_atomic(path, data)
        return ref, None

    local: dict[str, str] = {}
    skipped: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        for ref, problem in pool.map(fetch, sorted(wanted)):
            if problem is None:
                local[ref] = str(cache / hashlib.sha256(ref.encode()).hexdigest()[:32])
            else:
                skipped.append(problem)
    records = [Record(local[entry.image], text, entry.question, f"task {label.task} annotation {label.annotation}")
               for label in labels for entry in label.entries if entry.image in local for text in entry.texts]
    return records, skipped


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
    spec = json.loads(sys.stdin.read())
    settings = Settings.from_json(json.dumps(spec["settings"]))
    try:
        os.nice(settings.train_nice)
    except OSError:
        pass
    import torch

    torch.set_num_threads(settings.train_threads)
    started = time.time()
    try:
        outcome = run(settings, spec["project"], pull=spec.get("pull", False), label_config=spec.get("label_config"))
    except (Blip2Error, ValueError, OSError) as exc:
        outcome = {"status": "failed", "reason": str(exc)}
    outcome["seconds"] = round(time.time() - started, 1)
    write_json(Path(spec["result"]), outcome)


if __name__ == "__main__":
    main()
