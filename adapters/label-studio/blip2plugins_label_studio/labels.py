"""The accepted labels of one project, on disk: atomic, and safe to share between processes.

Layout under a project's folder::

    .lock                              exclusive fcntl lock, held for every change
    labels/annotation-<id>.json        one accepted annotation: its task, image references and texts
    state.json                         {"new_labels": n}: labels recorded since training was last queued

Each file is replaced atomically (written aside, fsynced, renamed), so a reader sees a label whole or
not at all and a crash loses nothing that was acknowledged. Later updates of an annotation replace
earlier ones; an update older than the stored one (by Label Studio's ``updated_at``) is ignored.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import LabelConfigError
from .files import fsync_dir, read_json, write_json
from .ids import is_id
from .schema import LabelConfig, image_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """The accepted texts of one TextArea: ``question`` is None for a caption."""

    from_name: str
    image: str
    texts: tuple[str, ...]
    question: str | None = None


@dataclass(frozen=True)
class Label:
    """One accepted annotation of a task."""

    task: int
    annotation: int
    entries: tuple[Entry, ...]
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Label:
        entries = tuple(Entry(e["from_name"], e["image"], tuple(e["texts"]), e.get("question")) for e in data["entries"])
        return cls(int(data["task"]), int(data["annotation"]), entries, str(data.get("updated_at", "")))


def label_from(annotation: Mapping[str, Any], task: Mapping[str, Any], config: LabelConfig) -> Label | None:
    """The accepted label an annotation gives, or None when it gives none (cancelled, or no text).

    Raises :class:`LabelConfigError` when a TextArea has text but the task has no image for it.
    """
    if annotation.get("was_cancelled"):
        return None
    result = annotation.get("result")
    if not isinstance(result, (list, type(None))):
        raise LabelConfigError(f"its result is {type(result).__name__} {str(result)[:40]!r}, not a list of regions")
    entries = []
    for from_name, texts in config.texts(result or []).items():
        target = config.target(from_name)
        assert target is not None
        entries.append(Entry(from_name, image_ref(task.get("data"), target), tuple(texts), target.question))
    if not entries:
        return None
    return Label(int(task["id"]), int(annotation["id"]), tuple(entries), str(annotation.get("updated_at") or ""))


class LabelStore:
    """The labels of one project under ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._labels = self.folder / "labels"

    def put(self, label: Label) -> bool:
        """Store ``label`` (replacing an older version of its annotation); False if a newer one is stored."""
        with self._locked():
            path = self._path(label.annotation)
            stored = read_json(path)
            if stored is not None and label.updated_at and str(stored.get("updated_at", "")) > label.updated_at:
                log.info("annotation %d: kept the newer stored version", label.annotation)
                return False
            write_json(path, label.to_json())
            return True

    def remove(self, annotation_ids: Iterable[int]) -> int:
        """Forget these annotations; returns how many were stored."""
        with self._locked():
            removed = 0
            for annotation in annotation_ids:
                path = self._path(int(annotation))
                if path.exists():
                    path.unlink()
                    removed += 1
            if removed:
                fsync_dir(self._labels)
            return removed

    def remove_tasks(self, task_ids: Iterable[int]) -> int:
        """Forget every annotation of these tasks; returns how many were removed."""
        tasks = {int(t) for t in task_ids}
        return self.remove([label.annotation for label in self.labels() if label.task in tasks])

    def replace_all(self, labels: Iterable[Label]) -> tuple[int, int]:
        """Make the store hold exactly ``labels`` (a fresh export); returns (stored, removed)."""
        labels = list(labels)
        keep = {label.annotation for label in labels}
        with self._locked():
            for label in labels:
                write_json(self._path(label.annotation), label.to_json())
            stale = [path for path in self._files() if _annotation_id(path) not in keep]
            for path in stale:
                path.unlink()
            if stale:
                fsync_dir(self._labels)
        return len(labels), len(stale)

    def labels(self) -> list[Label]:
        """Every stored label, by task then annotation; a corrupt file is skipped with a warning."""
        found = []
        for path in self._files():
            data = read_json(path)
            try:
                if data is None:
                    continue
                found.append(Label.from_json(data))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping a corrupt label file %s: %s", path.name, exc)
        return sorted(found, key=lambda label: (label.task, label.annotation))

    def count_new(self, added: int, every: int) -> bool:
        """Count ``added`` new labels; True (and the count restarts) when ``every`` > 0 is reached."""
        with self._locked():
            state_path = self.folder / "state.json"
            state = read_json(state_path) or {}
            count = int(state.get("new_labels", 0)) + added
            due = every > 0 and count >= every
            write_json(state_path, {**state, "new_labels": 0 if due else count})
            return due

    def _path(self, annotation: int) -> Path:
        return self._labels / f"annotation-{annotation}.json"

    def _files(self) -> list[Path]:
        try:
            return [p for p in self._labels.iterdir() if p.name.startswith("annotation-") and p.suffix == ".json"]
        except FileNotFoundError:
            return []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._labels.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def labels_from_export(tasks: Iterable[Any], config: LabelConfig) -> tuple[list[Label], list[str]]:
    """The accepted labels in a Label Studio JSON export, and the problems of the tasks left out."""
    labels: list[Label] = []
    problems: list[str] = []
    for number, task in enumerate(tasks, 1):
        if not isinstance(task, dict) or not is_id(task.get("id"), low=0):
            problems.append(f"exported task #{number}: not an object with an id (an integer >= 0)")
            continue
        annotations = task.get("annotations")
        if not isinstance(annotations, (list, type(None))):
            problems.append(f"task {task['id']}: its annotations are {type(annotations).__name__}, not a list")
            continue
        for annotation in annotations or []:
            if not isinstance(annotation, dict) or not is_id(annotation.get("id")):
                problems.append(f"task {task['id']}: an annotation that is not an object with an id (a positive integer)")
                continue
            try:
                label = label_from(annotation, task, config)
            except LabelConfigError as exc:
                problems.append(f"task {task['id']} annotation {annotation['id']}: {exc}")
                continue
            if label is not None:
                labels.append(label)
    return labels, problems


def _annotation_id(path: Path) -> int | None:
    try:
        return int(path.stem.removeprefix("annotation-"))
    except ValueError:
        return None
