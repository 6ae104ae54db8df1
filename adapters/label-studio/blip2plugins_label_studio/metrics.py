"""Prometheus metrics of one backend (``/metrics``), correct with several worker processes too.

With one process the metrics live in the app's own registry. With several (``--workers``), the CLI
sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts, every process writes its values there,
and ``/metrics`` (whichever worker answers) aggregates them: counters and histograms are summed,
the queue length is summed over live processes, and the model-version gauge carries a ``pid`` label.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "blip2_label_studio"
ROUTES = ("/health", "/setup", "/predict", "/webhook", "/versions", "/metrics")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TRAIN_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600, 7200)
MAX_PROJECT_LABELS = 100  # projects with a series of their own in the model-version gauge; later ones are "other"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The backend's metrics; :meth:`render` gives the text ``/metrics`` answers."""

    def __init__(self) -> None:
        shared = multiprocess_dir() is not None
        self.registry = None if shared else CollectorRegistry()
        registry = self.registry
        self.latency = Histogram(f"{PREFIX}_request_seconds", "Request latency by route and status class",
                                 ["route", "status"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram(f"{PREFIX}_predict_batch_tasks", "Tasks per /predict call",
                                    buckets=_BATCH_BUCKETS, registry=registry)
        self.predictions = Counter(f"{PREFIX}_predictions_total", "Tasks predicted, by outcome",
                                   ["outcome"], registry=registry)
        self.webhooks = Counter(f"{PREFIX}_webhook_events_total", "Webhook events, by action and outcome",
                                ["action", "outcome"], registry=registry)
        self.queue = Gauge(f"{PREFIX}_training_queue_length", "Training runs waiting or running",
                           registry=registry, multiprocess_mode="livesum")
        self.runs = Counter(f"{PREFIX}_training_runs_total", "Finished training runs, by outcome "
                            "(promoted, refused, failed)", ["outcome"], registry=registry)
        self.train_seconds = Histogram(f"{PREFIX}_training_seconds", "Duration of training runs",
                                       buckets=_TRAIN_BUCKETS, registry=registry)
        self.version = Gauge(f"{PREFIX}_model_version_info", "1 for the model version served, per project",
                             ["project", "model_version"], registry=registry, multiprocess_mode="liveall")
        self.ready = Gauge(f"{PREFIX}_model_ready", "1 once the model is loaded", registry=registry,
                           multiprocess_mode="livemin")
        self._versions: dict[str, str] = {}

    def serving(self, project: str, model_version: str) -> None:
        """Record the version served for ``project`` (the previous one's series drops to 0); past
        :data:`MAX_PROJECT_LABELS` projects, new ones share the series of project ``"other"``."""
        if project not in self._versions and len(self._versions) >= MAX_PROJECT_LABELS:
            project = "other"
        previous = self._versions.get(project)
        if previous == model_version:
            return
        if previous is not None:
            self.version.labels(project, previous).set(0)
        self.version.labels(project, model_version).set(1)
        self._versions[project] = model_version

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
