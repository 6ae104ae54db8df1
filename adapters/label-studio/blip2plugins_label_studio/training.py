"""The training worker: one background thread per server process, running queued training runs.

``request(project, ...)`` queues a run and returns at once (webhooks must answer within a second).
Requests for a project that is already queued merge into that entry, so events arriving during a run
add at most one more run. Each run is a separate process (:mod:`.job`), niced, whose log lines are
passed on to this process's log; its outcome (promoted, refused or failed, with the reason) is
recorded under the project's ``runs/`` folder, which ``/versions`` lists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .files import read_json, write_json
from .logs import failure
from .settings import Settings

log = logging.getLogger(__name__)
Done = Callable[[str, dict[str, Any]], None]
_TAIL = 20  # stderr lines kept to explain a crashed run


@dataclass
class _Request:
    project: str
    pull: bool
    label_config: str | None
    reason: str
    queued: float


class Trainer:
    """Runs training jobs one at a time on a background thread; ``on_done(project, run)`` after each."""

    def __init__(self, settings: Settings, on_done: Done | None = None) -> None:
        self.settings = settings
        self.on_done = on_done
        self.command = [sys.executable, "-m", "blip2plugins_label_studio.job"]  # the run's process
        self._pending: dict[str, _Request] = {}
        self._running: str | None = None
        self._run_now: dict[str, Any] | None = None  # the run in progress, as /versions lists it
        self._process: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="blip2-ls-train", daemon=True)
        self._thread.start()

    def request(self, project: str, *, pull: bool = False, label_config: str | None = None, reason: str = "") -> str:
        """Queue a run of ``project``: ``"queued"``, or ``"coalesced"`` into one already waiting."""
        with self._cond:
            waiting = self._pending.get(project)
            if waiting is not None:
                waiting.pull |= pull
                waiting.label_config = label_config or waiting.label_config
                return "coalesced"
            self._pending[project] = _Request(project, pull, label_config, reason, time.time())
            self._cond.notify_all()
        log.info("project %s: training queued (%s)", project, reason or "requested")
        return "queued"

    def status(self, project: str) -> dict[str, bool]:
        with self._cond:
            return {"queued": project in self._pending, "running": self._running == project}

    def runs(self, project: str, limit: int = 20) -> list[dict[str, Any]]:
        """The project's latest runs, newest first: the one in progress (``"status": "running"``), then those recorded."""
        with self._cond:
            now = dict(self._run_now) if self._run_now is not None and self._running == project else None
        done = runs(self.settings, project, limit)
        if now is not None and all(run.get("id") != now["id"] for run in done):
            done = [now, *done][:limit]
        return done

    def queue_length(self) -> int:
        """Runs waiting, plus the one running."""
        with self._cond:
            return len(self._pending) + (self._running is not None)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop: queued runs are dropped, a running one is terminated (the adapter store stays consistent)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            process = self._process
            self._cond.notify_all()
        if process is not None and process.poll() is None:
            log.warning("stopping the training run in progress (pid %d)", process.pid)
            process.terminate()
        self._thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                request = self._pending.pop(next(iter(self._pending)))
                started = time.time()
                run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
                # with _running, at once: /versions never shows a project training without its run
                self._running = request.project
                self._run_now = {"id": run_id, "project": request.project, "trigger": request.reason,
                                 "pull": request.pull, "queued_at": _iso(request.queued), "started_at": _iso(started),
                                 "status": "running"}
            try:
                run = self._run(request, run_id, started)
            except Exception as exc:  # never let the worker die
                failure(log, "project %s: the training run could not be started", request.project)
                run = {"status": "failed", "reason": f"could not start the run: {exc}"}
            finally:
                with self._cond:
                    self._running = None
                    self._run_now = None
                    self._process = None
                    self._cond.notify_all()
            if self.on_done is not None:
                try:
                    self.on_done(request.project, run)
                except Exception:
                    failure(log, "project %s: handling the finished run failed", request.project)

    def _run(self, request: _Request, run_id: str, started: float) -> dict[str, Any]:
        folder = self.settings.projects_dir / request.project / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        result_path = folder / f".{run_id}.result.json"
        spec = {"settings": dataclasses.asdict(self.settings), "project": request.project, "pull": request.pull,
                "label_config": request.label_config, "result": str(result_path)}
        log.info("project %s: training run %s started", request.project, run_id)
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        with self._cond:
            self._process = process
        assert process.stdin is not None and process.stderr is not None
        try:
            process.stdin.write(json.dumps(spec).encode())
            process.stdin.close()
        except BrokenPipeError:  # it died at once: its stderr says why
            pass
        tail: deque[str] = deque(maxlen=_TAIL)
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                log.info("project %s: train: %s", request.project, line)
        code = process.wait()
        outcome = read_json(result_path)
        result_path.unlink(missing_ok=True)
        if outcome is None:
            last = next((line for line in reversed(tail) if line.strip()), "no output")
            outcome = {"status": "failed", "reason": f"the training process exited with status {code}: {last}"}
        run = {"id": run_id, "project": request.project, "trigger": request.reason, "pull": request.pull,
               "queued_at": _iso(request.queued), "started_at": _iso(started), "finished_at": _iso(time.time()),
               "seconds": round(time.time() - started, 1), **outcome}
        write_json(folder / f"{run_id}.json", run)
        level = logging.INFO if run["status"] in ("promoted", "skipped") else logging.WARNING
        log.log(level, "project %s: training run %s %s: %s", request.project, run_id, run["status"], run.get("reason", ""))
        return run


def runs(settings: Settings, project: str, limit: int = 20) -> list[dict[str, Any]]:
    """The project's latest training runs, newest first."""
    folder = settings.projects_dir / project / "runs"
    try:
        files = sorted((p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith(".")), reverse=True)
    except FileNotFoundError:
        return []
    return [run for path in files[:limit] if (run := read_json(path)) is not None]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
