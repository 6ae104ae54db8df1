"""A versioned, atomic store of fine-tuned adapters, shared safely by several processes.

Layout under the store's root::

    .lock                              exclusive fcntl lock: version numbers, status and CURRENT changes
    .tmp/<id>/  .tmp/<id>.lock         a version being written; its writer holds the lock file
    <model slug>/MODEL.json            {"base_model": the original name}
    <model slug>/<name>/CURRENT        {"current": "v0002", "previous": [...], "history": [...]}
    <model slug>/<name>/v0001/         the artifact files (a PEFT folder, Q-Former weights...)
    <model slug>/<name>/v0001/version.json   the AdapterVersion (less its path) and the file list

A version appears complete or not at all: its folder is written under ``.tmp``, fsynced and renamed
into place. ``version.json`` and ``CURRENT`` are replaced with ``os.replace`` after an fsync. Readers
take no lock. POSIX only (``fcntl``).

``CURRENT`` alone records promotions: promoting a version is one atomic write of it (the new current
version, and a ``promote`` entry in its history), so a process killed at any moment leaves the
promotion done or not done. A version's status is read from there: ``"promoted"`` when its last
``promote`` or ``refuse`` entry in the history is a promotion (``refuse`` is written when the gate
refuses a version promoted before), else what its ``version.json`` says (``"candidate"``, or
``"refused"`` by the gate). A ``version.json`` that says ``"promoted"`` with no such entry (left by
a process killed between the two writes of older blip2plugins) reads as a candidate.

Metadata files are read with :mod:`blip2plugins.jsonfile` (size, nesting and number limits); names,
version ids and files that the store cannot use are refused with one-line :class:`StoreError`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import uuid
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import jsonfile, plugins
from .errors import StoreError
from .files import exclusive_lock, fsync_dir, remove_stale_temps, write_atomic
from .texts import shown
from .types import AdapterVersion

log = logging.getLogger(__name__)

ENV_STORE = "BLIP2_ADAPTER_STORE"
STATUSES = ("candidate", "promoted", "refused")
VERSION_FILE = "version.json"
CURRENT_FILE = "CURRENT"
MODEL_FILE = "MODEL.json"
FORMAT = 1
_TMP = ".tmp"
_LOCK = ".lock"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION_DIR = re.compile(r"v[0-9]{4,9}")
_MAX_JSON = 64 * 1024 * 1024  # metadata is small: a CURRENT with 100,000 promotions in its history is ~15 MB
_REQUIRED = ("name", "version", "method", "base_model")


def default_root() -> Path:
    """``$BLIP2_ADAPTER_STORE``, else ``blip2plugins/adapters`` in the user's cache folder."""
    if os.environ.get(ENV_STORE):
        return Path(os.environ[ENV_STORE]).expanduser()
    if sys.platform == "darwin":
        cache = Path.home() / "Library" / "Caches"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "blip2plugins" / "adapters"


def model_slug(base_model: str) -> str:
    """The folder name of ``base_model``: readable, filesystem safe, and distinct for distinct names."""
    _check_text(base_model, "base model")
    readable = re.sub(r"[^a-z0-9._-]+", "-", base_model.lower()).strip("-._")[:48] or "model"
    return f"{readable}-{hashlib.sha256(base_model.encode()).hexdigest()[:12]}"


def version_id(version: str | int) -> str:
    """The canonical id of a version given as ``"v0003"``, ``"v3"``, ``"3"`` or ``3`` (at most 9 digits)."""
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < 10**9:
        return f"v{version:04d}"
    match = re.fullmatch(r"[vV]?([0-9]{1,9})", version.strip()) if isinstance(version, str) else None
    if not match or int(match[1]) < 1:
        raise StoreError(f"version {shown(version)} is not a version id like v0003")
    return f"v{int(match[1]):04d}"


class AdapterStore:
    """Adapter versions under ``root`` (default: :func:`default_root`), keyed by base model and name."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    # -- reading (no lock) -------------------------------------------------------------------

    def names(self, base_model: str | None = None) -> list[tuple[str, str]]:
        """``(base model, adapter name)`` of every adapter with versions (of ``base_model`` only if given)."""
        if base_model is not None:
            model_dir = self._model_dir(base_model)
            if not _is_dir(model_dir):
                raise StoreError(f"no adapters for base model {shown(base_model)} in {self.root} "
                                 f"(base models: {_listing(sorted({b for b, _ in self.names()}))})")
            models = [(base_model, model_dir)]
        else:
            models = [(model, entry) for entry in _subfolders(self._checked_root())
                      if not entry.name.startswith(".") and (model := self._model_name(entry)) is not None]
        return sorted((model, adapter_dir.name) for model, model_dir in models
                      for adapter_dir in _subfolders(model_dir) if _version_dirs(adapter_dir))

    def versions(self, base_model: str, name: str) -> list[AdapterVersion]:
        """Every readable version, oldest first; a corrupt one is skipped with a logged warning."""
        adapter_dir = self._existing_adapter(base_model, name)
        history = self._history(adapter_dir)
        found = []
        for folder in _version_dirs(adapter_dir):
            try:
                found.append(_with_decisions(_read_version(folder, base_model, name), history))
            except StoreError as exc:
                log.warning("skipping an adapter version: %s", exc)
        return found

    def get(self, base_model: str, name: str, version: str) -> AdapterVersion:
        """One version (``"v0003"``, ``"v3"`` or ``"3"``)."""
        return self._get(base_model, name, version, None)

    def _get(self, base_model: str, name: str, version: str, history: list[Any] | None) -> AdapterVersion:
        """:meth:`get`, given CURRENT's ``history`` when it was read already (None: read it)."""
        vid = version_id(version)
        adapter_dir = self._existing_adapter(base_model, name)
        folder = adapter_dir / vid
        if not _is_dir(folder):
            known = [entry.name for entry in _version_dirs(adapter_dir)]
            raise StoreError(f"adapter {name!r} of {shown(base_model)} has no version {vid} (versions: {_listing(known)})")
        adapter = _read_version(folder, base_model, name)
        return _with_decisions(adapter, self._history(adapter_dir) if history is None else history)

    def latest(self, base_model: str, name: str) -> AdapterVersion | None:
        """The newest readable version, whatever its status."""
        versions = self.versions(base_model, name)
        return versions[-1] if versions else None

    def current(self, base_model: str, name: str) -> AdapterVersion | None:
        """The version to serve, or None before any promotion (or any version). Reads two small files:
        cheap to poll."""
        folder = self._model_dir(base_model) / _check_name(name)
        if not _is_dir(folder):
            return None
        state = self._read_current(folder)
        return None if state is None else self._get(base_model, name, state["current"], state["history"])

    # -- writing (under the store lock) ------------------------------------------------------

    def resolve(self, base_model: str, ref: str) -> AdapterVersion:
        """The version ``ref`` names: ``"NAME"`` (its current version) or ``"NAME@VERSION"``."""
        name, version = parse_ref(ref)
        if version:
            return self.get(base_model, name, version)
        current = self.current(base_model, name)
        if current is None:
            self.versions(base_model, name)  # an unknown adapter: say which exist
            raise StoreError(f"adapter {name!r} of {shown(base_model)} has no current version "
                             f"(promote one, or name it as {name}@VERSION)")
        return current

    def add(self, base_model: str, name: str, write: Callable[[Path], object], *, method: str,
            metrics: Mapping[str, float], dataset: str, parent: str | None = None) -> AdapterVersion:
        """Store a new version: ``write(folder)`` writes its artifact files into an empty folder.

        The version gets the next free id once its files are written and fsynced, and appears with one
        rename. If ``write`` raises, its folder is removed and the exception propagates.
        """
        _check_name(name)
        self._model_dir(base_model)
        if not isinstance(method, str) or not method.strip():
            raise StoreError(f"method must be a non-empty string, got {shown(method)}")
        _check_text(method, "method")
        if not isinstance(dataset, str):
            raise StoreError(f"dataset must be a string (a fingerprint), got {shown(dataset)}")
        _check_text(dataset, "dataset")
        checked_metrics = _check_metrics(metrics)
        if parent is not None:
            parent = self.get(base_model, name, parent).version
        try:
            (self.root / _TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"adapter store {self.root}: {exc.strerror}") from None
        with self._locked(), _os_errors(f"adapter store {self.root}"):
            self._collect_garbage()
            folder = self.root / _TMP / uuid.uuid4().hex
            owner = open(folder.with_name(folder.name + ".lock"), "w")
            fcntl.flock(owner, fcntl.LOCK_EX)
            folder.mkdir()
        try:
            write(folder)
            files = _sync_tree(folder)
            with self._locked(), _os_errors(f"adapter store {self.root}"):
                adapter_dir = self._prepare(base_model, name)
                taken = [int(entry[1:]) for entry in os.listdir(adapter_dir) if _VERSION_DIR.fullmatch(entry)]
                vid = f"v{max(taken, default=0) + 1:04d}"
                adapter = AdapterVersion(
                    name=name, version=vid, path=str(adapter_dir / vid), method=method, base_model=base_model,
                    metrics=checked_metrics, dataset=dataset, parent=parent, created=_now(),
                )
                _write_json(folder / VERSION_FILE, {**_record(adapter), "files": files})
                os.rename(folder, adapter_dir / vid)
                fsync_dir(adapter_dir)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            Path(owner.name).unlink(missing_ok=True)
            owner.close()
        return adapter

    def judge(self, candidate: AdapterVersion, *, metric: str = "caption_exact_match", margin: float = 0.0,
              higher_is_better: bool = True, baseline: float | None = None,
              baseline_version: str | None = None) -> AdapterVersion:
        """The eval gate: promote ``candidate`` if its ``metric`` beats the current version's by ``margin``.

        ``baseline`` is the metric of what is served now (the current version, or the base model when
        there is none) measured on the candidate's own held-out set: a fairer comparison than the value
        stored with the current version, which was measured on other data. Without it, and with no
        current version, the candidate is promoted. Otherwise, or when the metric is missing, it
        is stored as ``"refused"`` with a reason naming both values. Returns the updated version; the
        current version itself is returned unchanged. ``baseline_version`` is the version ``baseline``
        was measured on (``None``: the base model); if another became current since, the candidate is
        refused, since it was never compared with what is served now.
        """
        for label, value in (("margin", margin), ("baseline", 0.0 if baseline is None else baseline)):
            if not _finite(value):
                raise StoreError(f"{label} must be a finite number, got {shown(value)}")
        if not isinstance(metric, str) or not metric:
            raise StoreError(f"metric must be a metric's name, got {shown(metric)}")
        _check_text(metric, "metric")
        if baseline_version is not None:
            baseline_version = version_id(baseline_version)
        base_model, name = candidate.base_model, candidate.name
        self.get(base_model, name, candidate.version)  # unknown -> error before taking the lock
        with self._locked():
            adapter = self.get(base_model, name, candidate.version)
            current = self.current(base_model, name)
            if current is not None and current.version == adapter.version:
                return adapter
            serving = current.version if current is not None else None
            if baseline is not None and serving != baseline_version:
                passed, reason = False, (
                    f"measured against {baseline_version or 'the base model'}, but {serving or 'the base model'} "
                    "became current during training: not compared with what is served now (promote it by hand "
                    "if it is better)")
            else:
                passed, reason = _verdict(adapter, current, metric, margin, higher_is_better, baseline)
            if passed:
                judged = self._promote_locked(adapter, reason)
            else:
                judged = dataclasses.replace(adapter, status="refused", reason=reason)
                self._refuse_locked(judged)
        if passed:
            plugins.notify("adapter_promoted", judged)
        return judged

    def promote(self, base_model: str, name: str, version: str, *, reason: str = "promoted by hand") -> AdapterVersion:
        """Make ``version`` current (the previous one goes on the rollback history) and fire ``adapter_promoted``."""
        self.get(base_model, name, version)
        with self._locked():
            promoted = self._promote_locked(self.get(base_model, name, version), reason)
        plugins.notify("adapter_promoted", promoted)
        return promoted

    def rollback(self, base_model: str, name: str) -> AdapterVersion:
        """Make the previously current version current again and fire ``adapter_promoted``."""
        adapter_dir = self._existing_adapter(base_model, name)
        with self._locked():
            state = self._read_current(adapter_dir)
            if state is None or not state["previous"]:
                raise StoreError(f"adapter {name!r} of {shown(base_model)} has no previous version to roll back to")
            restored = self._get(base_model, name, state["previous"].pop(), state["history"])
            state["history"].append({"action": "rollback", "version": restored.version, "from": state["current"],
                                     "at": _now()})
            state["current"] = restored.version
            _write_json(adapter_dir / CURRENT_FILE, state)
        plugins.notify("adapter_promoted", restored)
        return restored

    def gc(self) -> list[Path]:
        """Remove the temporary folders of writers that died; returns the folders removed."""
        if not _is_dir(self._checked_root() / _TMP):
            return []
        with self._locked():
            return self._collect_garbage()

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(self.root / _LOCK))
            except OSError as exc:
                raise StoreError(f"adapter store {self.root}: cannot lock {_LOCK}: {exc.strerror or exc}") from None
            yield

    def _collect_garbage(self) -> list[Path]:
        """With the store lock held: remove each temporary folder whose writer no longer holds its lock
        (an entry the store did not make, e.g. a folder named like a lock file, is left alone)."""
        tmp = self.root / _TMP
        removed = []
        if not _is_dir(tmp):
            return removed
        for stem in sorted({entry.removesuffix(".lock") for entry in os.listdir(tmp)}):
            lock_path, folder = tmp / f"{stem}.lock", tmp / stem
            try:
                with open(lock_path, "a") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its writer is alive
                    if _is_dir(folder) and not folder.is_symlink():
                        shutil.rmtree(folder)
                        removed.append(folder)
                    lock_path.unlink()
            except OSError as exc:
                log.warning("leaving %s in place: %s", lock_path, exc.strerror or exc)
        if removed:
            log.info("removed %d unfinished adapter version(s) from %s", len(removed), tmp)
        return removed

    def _checked_root(self) -> Path:
        if "\0" in str(self.root):
            raise StoreError(f"adapter store {shown(str(self.root))}: a folder name cannot hold a NUL character")
        return self.root

    def _model_dir(self, base_model: str) -> Path:
        if not isinstance(base_model, str) or not base_model.strip():
            raise StoreError(f"base model must be a non-empty string, got {shown(base_model)}")
        return self._checked_root() / model_slug(base_model)

    def model_problem(self, base_model: str) -> str | None:
        """What is wrong with the MODEL.json of ``base_model``'s folder, if anything: its adapters are
        still listed and served (each version.json names its base model), but no version can be added."""
        path = self._model_dir(base_model) / MODEL_FILE
        try:
            stored = _read_json(path).get("base_model")
        except StoreError as exc:
            return str(exc)
        return None if stored == base_model else f"{path}: holds base model {shown(stored)}, not {shown(base_model)}"

    def _model_name(self, model_dir: Path) -> str | None:
        """The base model a slug folder holds: its MODEL.json's, else (with a warning) that of a
        version.json that belongs in this folder, else None (with a warning)."""
        try:
            stored = _read_json(model_dir / MODEL_FILE).get("base_model")
            if isinstance(stored, str) and model_slug(stored) == model_dir.name:
                return stored
            problem = f"{model_dir / MODEL_FILE}: base_model does not match the folder name"
        except StoreError as exc:
            problem = str(exc)
        for version_dir in (folder for adapter_dir in _subfolders(model_dir) for folder in _version_dirs(adapter_dir)):
            try:
                stored = _read_json(version_dir / VERSION_FILE).get("base_model")
                if isinstance(stored, str) and model_slug(stored) == model_dir.name:
                    log.warning("%s; listing its adapters by the base model their versions name", problem)
                    return stored
            except StoreError:
                continue
        log.warning("skipping a base model: %s", problem)
        return None

    def _existing_adapter(self, base_model: str, name: str) -> Path:
        folder = self._model_dir(base_model) / _check_name(name)
        if not _is_dir(folder):
            known = [adapter for _, adapter in self.names(base_model)]
            raise StoreError(f"no adapter {name!r} for base model {shown(base_model)} in {self.root} "
                             f"(adapters: {_listing(known)})")
        return folder

    def _prepare(self, base_model: str, name: str) -> Path:
        """With the store lock held: the adapter's folder, created (with MODEL.json) if new."""
        model_dir = self._model_dir(base_model)
        model_dir.mkdir(exist_ok=True)
        model_file = model_dir / MODEL_FILE
        if not os.path.lexists(model_file):
            _write_json(model_file, {"base_model": base_model})
        elif (stored := _read_json(model_file).get("base_model")) != base_model:
            raise StoreError(f"{model_file}: holds base model {shown(stored)}, not {shown(base_model)}")
        adapter_dir = model_dir / name
        adapter_dir.mkdir(exist_ok=True)
        return adapter_dir

    def _read_current(self, adapter_dir: Path) -> dict[str, Any] | None:
        path = adapter_dir / CURRENT_FILE
        if not os.path.lexists(path):
            return None
        state = _read_json(path)
        previous = state.get("previous")
        if not isinstance(state.get("current"), str) or not _VERSION_DIR.fullmatch(state["current"]):
            raise StoreError(f"{path}: 'current' is not a version id")
        if not isinstance(previous, list) or not all(isinstance(v, str) and _VERSION_DIR.fullmatch(v) for v in previous):
            raise StoreError(f"{path}: 'previous' is not a list of version ids")
        if not isinstance(state.get("history"), list):
            raise StoreError(f"{path}: 'history' is not a list")
        return state

    def _history(self, adapter_dir: Path) -> list[Any]:
        """CURRENT's history, for the statuses it decides; empty (with a warning) when CURRENT is corrupt."""
        try:
            state = self._read_current(adapter_dir)
        except StoreError as exc:
            log.warning("version statuses from version.json alone: %s", exc)
            return []
        return [] if state is None else state["history"]

    def _promote_locked(self, adapter: AdapterVersion, reason: str) -> AdapterVersion:
        """With the store lock held: make ``adapter`` current, with one write of CURRENT."""
        adapter_dir = Path(adapter.path).parent
        state = self._read_current(adapter_dir) or {"current": None, "previous": [], "history": []}
        if state["current"] not in (None, adapter.version):
            state["previous"].append(state["current"])
        state["current"] = adapter.version
        state["history"].append({"action": "promote", "version": adapter.version, "at": _now(), "reason": reason})
        _write_json(adapter_dir / CURRENT_FILE, state)
        return dataclasses.replace(adapter, status="promoted", reason=reason)

    def _refuse_locked(self, refused: AdapterVersion) -> None:
        """With the store lock held: record the gate's refusal, in CURRENT's history if it promoted the
        version before (where its status is decided), else in its version.json."""
        adapter_dir = Path(refused.path).parent
        state = self._read_current(adapter_dir)
        if state is not None and _last_decision(refused.version, state["history"]) is not None:
            state["history"].append({"action": "refuse", "version": refused.version, "at": _now(),
                                     "reason": refused.reason})
            _write_json(adapter_dir / CURRENT_FILE, state)
        else:
            _write_version(refused)


def _verdict(adapter: AdapterVersion, current: AdapterVersion | None, metric: str, margin: float,
             higher_is_better: bool, baseline: float | None = None) -> tuple[bool, str]:
    """Whether ``adapter`` passes the gate against ``current`` (or a measured ``baseline``), and why."""
    value = adapter.metrics.get(metric)
    if value is None:
        return False, f"{adapter.version} has no metric {metric!r} (metrics: {_listing(sorted(adapter.metrics))})"
    if baseline is not None:
        base, against = baseline, f"{current.version if current else 'the base model'}'s (same held-out set)"
    elif current is None:
        return True, f"{metric} {value:g}, and no version was current"
    else:
        base, against = current.metrics.get(metric), f"current {current.version}'s"
        if base is None:
            return False, f"current {current.version} has no metric {metric!r} to compare with"
    if higher_is_better:
        passed = value >= base + margin
        return passed, f"{metric} {value:g} {'>=' if passed else '<'} {against} {base:g} + margin {margin:g}"
    passed = value <= base - margin
    return passed, f"{metric} {value:g} {'<=' if passed else '>'} {against} {base:g} - margin {margin:g}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``(name, version id or None)`` of ``"NAME"`` or ``"NAME@VERSION"``, both checked."""
    if not isinstance(ref, str):
        raise StoreError(f"an adapter reference is NAME or NAME@VERSION, got {shown(ref)}")
    name, at, version = ref.partition("@")
    return _check_name(name), version_id(version) if at else None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StoreError(f"adapter name {shown(name)} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def _check_text(text: str, what: str) -> None:
    """Refuse a string the store's UTF-8 JSON cannot hold (a lone surrogate, e.g. from a file name
    that is not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} {shown(text)} is not valid text (it holds a lone surrogate)") from None


def _check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise StoreError(f"metrics must be a mapping of name to number, got {shown(metrics)}")
    checked = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise StoreError(f"metric names must be non-empty strings, got {shown(key)}")
        _check_text(key, "metric name")
        if not _finite(value):
            raise StoreError(f"metric {shown(key)} must be a finite number, got {shown(value)}")
        checked[key] = float(value)
    return checked


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, not an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _record(adapter: AdapterVersion) -> dict[str, Any]:
    """What ``version.json`` says about ``adapter``: every field but its path."""
    fields = dataclasses.asdict(adapter)
    del fields["path"]
    return {"format": FORMAT, **fields}


def _read_version(folder: Path, base_model: str, name: str) -> AdapterVersion:
    """The version in ``folder``, checked field by field; StoreError naming its version.json if corrupt."""
    path = folder / VERSION_FILE
    data = _read_json(path)
    if data.get("format", FORMAT) != FORMAT:
        raise StoreError(f"{path}: format {shown(data['format'])}, not {FORMAT} (written by another blip2plugins)")
    fields: dict[str, Any] = {"path": str(folder)}
    for field in dataclasses.fields(AdapterVersion):
        if field.name == "path" or (field.name not in data and field.name not in _REQUIRED):
            continue  # an optional field keeps its default
        value = data.get(field.name)
        if field.name == "metrics":
            valid = isinstance(value, dict) and all(_finite(v) for v in value.values())
        elif field.name == "parent":
            valid = value is None or isinstance(value, str) and bool(_VERSION_DIR.fullmatch(value))
        elif field.name == "status":
            valid = value in STATUSES
        else:
            valid = isinstance(value, str)
        if not valid:
            raise StoreError(f"{path}: bad or missing {field.name!r}: {shown(value)}")
        fields[field.name] = value
    adapter = AdapterVersion(**fields)
    if (adapter.base_model, adapter.name, adapter.version) != (base_model, name, folder.name):
        raise StoreError(f"{path}: describes {shown(adapter.name)} {shown(adapter.version)} of "
                         f"{shown(adapter.base_model)}, but lies in the folder of {name!r} {folder.name} of "
                         f"{shown(base_model)}")
    return adapter


def _last_decision(version: str, history: list[Any]) -> dict[str, Any] | None:
    """The last ``promote`` or ``refuse`` entry of ``version`` in CURRENT's history, if any."""
    decisions = [entry for entry in history if isinstance(entry, dict) and entry.get("version") == version
                 and entry.get("action") in ("promote", "refuse")]
    return decisions[-1] if decisions else None


def _with_decisions(adapter: AdapterVersion, history: list[Any]) -> AdapterVersion:
    """``adapter`` with the status CURRENT's history gives it (see the module docs)."""
    decision = _last_decision(adapter.version, history)
    if decision is not None:
        reason = decision.get("reason")
        return dataclasses.replace(adapter, status="promoted" if decision["action"] == "promote" else "refused",
                                   reason=reason if isinstance(reason, str) else "")
    if adapter.status == "promoted":
        return dataclasses.replace(adapter, status="candidate",
                                   reason="its promotion did not complete: CURRENT never named it")
    return adapter


def _write_version(adapter: AdapterVersion) -> None:
    """Replace the fields of ``adapter``'s version.json atomically, keeping its other keys."""
    path = Path(adapter.path) / VERSION_FILE
    _write_json(path, {**_read_json(path), **_record(adapter)})


def _read_json(path: Path) -> dict[str, Any]:
    """A metadata file, read with :mod:`jsonfile`; StoreError naming it when it is missing, not a regular
    file (a FIFO would block, a device never end), unreadable, not JSON or not a JSON object."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise StoreError(f"{path}: not a regular file")
        data = jsonfile.load_file(path, max_bytes=_MAX_JSON)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except OSError as exc:
        raise StoreError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except jsonfile.JSONReadError as exc:
        raise StoreError(str(exc)) from None
    if not isinstance(data, dict):
        raise StoreError(f"{path}: not a JSON object")
    return data


def _write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with ``data`` as indented JSON (first removing what writes of it
    killed midway left)."""
    try:
        remove_stale_temps(path)
        write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None


@contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """An ``OSError`` of the store's own file operations as one-line StoreError naming ``what``."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"{what}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None


def _sync_tree(folder: Path) -> dict[str, int]:
    """Fsync every file and folder ``write`` made; returns each file's relative path and size."""
    files = {}
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            path = Path(dirpath, filename)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
        fsync_dir(Path(dirpath))
    if VERSION_FILE in files:
        raise StoreError(f"write() created {VERSION_FILE}, which the store writes itself")
    if not files:
        raise StoreError("write() wrote no files")
    return dict(sorted(files.items()))


def _subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder`` (none when it is missing, unreadable or not a folder)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(entry.path) for entry in entries if _entry_is_dir(entry))
    except OSError:
        return []


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, a name too long to follow
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _version_dirs(adapter_dir: Path) -> list[Path]:
    """The version folders of an adapter, oldest first."""
    found = [entry for entry in _subfolders(adapter_dir) if _VERSION_DIR.fullmatch(entry.name)]
    return sorted(found, key=lambda entry: int(entry.name[1:]))


def _listing(items: list[str], most: int = 10) -> str:
    listed = ", ".join(shown(item, 60).strip("'") for item in items[:most]) or "none"
    return listed + (f" and {len(items) - most} more" if len(items) > most else "")



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
