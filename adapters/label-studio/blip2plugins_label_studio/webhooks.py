"""``POST /webhook``: Label Studio's annotation and training events. Labels are recorded, deleted labels
removed, and training queued; the handlers run in worker threads and never train themselves."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

from blip2plugins.errors import Blip2Error
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import LabelConfigError, RequestError
from .labels import label_from
from .payloads import DeleteEvent, LabelEvent, ProjectRef, TasksDeletedEvent, TrainEvent, read_json, validated

if TYPE_CHECKING:
    from .app import Backend

log = logging.getLogger("blip2plugins_label_studio")
LABEL_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")


async def webhook(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    data = await read_json(request, backend.settings.max_body_bytes)
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("'action' is missing: expected e.g. ANNOTATION_CREATED or START_TRAINING", 422)
    handler = WEBHOOKS.get(action)
    if handler is None:
        backend.metrics.webhooks.labels("other", "ignored").inc()
        return JSONResponse({"status": "ignored", "action": action[:64]})
    try:
        result = await run_in_threadpool(handler, backend, data)
    except Blip2Error:
        backend.metrics.webhooks.labels(action, "refused").inc()
        raise
    backend.metrics.webhooks.labels(action, "ok").inc()
    return JSONResponse({"status": "ok", "action": action, **result})


def _on_labels(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = validated(LabelEvent, data, f"{data['action']} webhook")
    project = str(event.project.id)
    config = backend.config(project, event.project.label_config)
    annotations = event.annotation
    tasks = {task.id: task for task in event.task}
    store = backend.labels(project)
    recorded, removed, problems = 0, 0, []
    for annotation in annotations:
        task = tasks.get(annotation.task) if annotation.task is not None else None
        if task is None and len(tasks) == 1:
            task = next(iter(tasks.values()))
        if task is None:
            problems.append(f"annotation {annotation.id}: its task {annotation.task} is not in the payload")
            continue
        try:
            label = label_from(annotation.model_dump(), task.model_dump(), config)
        except LabelConfigError as exc:
            problems.append(f"annotation {annotation.id} of task {task.id}: {exc}")
            continue
        if label is None:  # cancelled, or no text any more: not an accepted label
            removed += store.remove([annotation.id])
        elif store.put(label):
            recorded += 1
    for problem in problems[:5]:
        log.warning("project %s: label not recorded: %s", project, problem)
    if len(problems) > 5:
        log.warning("project %s: %d more label(s) not recorded", project, len(problems) - 5)
    if problems and not recorded and not removed:
        raise RequestError("; ".join(problems[:3]), 422)
    log.info("project %s: %s: %d label(s) recorded, %d removed", project, data["action"], recorded, removed)
    training = None
    if recorded and store.count_new(recorded, backend.settings.train_every):
        training = backend.trainer.request(project, label_config=config_text(event.project, backend),
                                           reason=f"{backend.settings.train_every} new labels")
        backend.metrics.queue.set(backend.trainer.queue_length())
    return {"recorded": recorded, "removed": removed, "training": training}


def _on_delete(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = validated(DeleteEvent, data, f"{data['action']} webhook")
    ids = [a.id for a in event.annotations] + ([event.annotation.id] if event.annotation else [])
    removed = backend.labels(str(event.project.id)).remove(ids)
    log.info("project %s: %d deleted annotation(s), %d label(s) removed", event.project.id, len(ids), removed)
    return {"removed": removed}


def _on_tasks_deleted(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = validated(TasksDeletedEvent, data, "TASKS_DELETED webhook")
    removed = backend.labels(str(event.project.id)).remove_tasks(t.id for t in event.tasks)
    log.info("project %s: %d deleted task(s), %d label(s) removed", event.project.id, len(event.tasks), removed)
    return {"removed": removed}


def _on_train(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = validated(TrainEvent, data, "START_TRAINING webhook")
    project = str(event.project.id)
    training = backend.trainer.request(project, pull=True, label_config=config_text(event.project, backend),
                                       reason="START_TRAINING")
    backend.metrics.queue.set(backend.trainer.queue_length())
    return {"training": training}


def config_text(project: ProjectRef, backend: Backend) -> str | None:
    """The project's labeling config: the event's own, else the one /setup gave."""
    return project.label_config or backend.configs.get(str(project.id))


WEBHOOKS: dict[str, Callable[[Backend, Mapping[str, Any]], dict[str, Any]]] = {
    **{action: _on_labels for action in LABEL_EVENTS},
    **{action: _on_delete for action in DELETE_EVENTS},
    "TASKS_DELETED": _on_tasks_deleted,
    "START_TRAINING": _on_train,
}
