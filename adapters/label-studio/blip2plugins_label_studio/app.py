"""The ML backend as an ASGI app (Starlette): the routes Label Studio calls, in the 2.x shapes.

``GET /health`` and ``POST /setup`` answer at once, whether or not the model has loaded yet (it
loads in the background); ``POST /predict`` waits for it (up to ``predict_wait`` seconds).
``POST /webhook`` records labels and queues training, never trains. ``GET /versions`` lists each
project's model versions and training runs; ``GET /metrics`` is Prometheus' text format.

The control routes (health, setup, webhook, versions, metrics) never wait behind predictions: their
file work runs in the default worker threads, while predictions fetch images on the event loop (at
most ``max_downloads`` at once, each within ``download_timeout``) and generate in threads of their
own limiter (at most ``max_predictions`` at once).

Every error is a JSON ``{"error": reason}`` with a 4xx status (5xx only for a model that failed to
load or is still loading, and for bugs, logged with their traceback and answered without it). Bodies
are never logged: they carry secrets (``project.token``, task data passwords).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
import threading
import time
from concurrent.futures import wait
from typing import Any, AsyncIterator, Callable, Mapping

import anyio
from blip2plugins.jsonfile import JSONReadError, loads
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blip2plugins.errors import Blip2Error, StoreError

from .client import LabelStudioClient
from .errors import LabelConfigError, RequestError, SettingsError
from .ids import Id, TaskId, is_id
from .labels import LabelStore, label_from
from .logs import failure
from .lru import LRU
from .metrics import ROUTES, Metrics
from .predict import predict
from .refresh import refresh_predictions
from .schema import LabelConfig, parse_label_config
from .serving import Serving, adapter_name
from .settings import Settings, load_recipe
from .training import Trainer

log = logging.getLogger("blip2plugins_label_studio")
MODEL_CLASS = "Blip2Plugins"
LABEL_STUDIO_AGENT = "heartex/"  # how Label Studio's ML client introduces itself
_PROJECT = re.compile(r"([0-9]{1,18})(?:\.[0-9]{1,30})?")
_PARSE_INLINE = 1024 * 1024  # larger bodies are parsed in a worker thread, not on the event loop
_LABEL_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
_DELETE_EVENTS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
MAX_PROJECTS = 1000  # projects whose labeling config (from /setup) and access check are remembered
_ACCESS_TIMEOUT = 2.0  # seconds /setup waits for Label Studio to confirm the backend's credentials (it gives 3)
_ACCESS_CHECKED = 60.0  # seconds a confirmed access holds before /setup asks again


# -- request bodies ------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupBody(_Body):
    project: str | int
    schema_: str = Field(alias="schema")


class TaskBody(_Body):
    id: TaskId | None = None
    data: dict[str, Any]


class PredictParams(_Body):
    context: dict[str, Any] | None = None


class PredictBody(_Body):
    tasks: list[TaskBody]
    project: str | int | None = None
    label_config: str | None = None
    params: PredictParams | None = None


class ProjectRef(_Body):
    id: Id
    label_config: str | None = None


class AnnotationBody(_Body):
    id: Id
    result: list[Any] = []
    was_cancelled: bool = False
    updated_at: str | None = None
    task: TaskId | None = None


class TaskRef(_Body):
    id: TaskId
    data: dict[str, Any] = {}


class LabelEvent(_Body):
    """ANNOTATION_CREATED / ANNOTATION_UPDATED carry one annotation and task, ANNOTATIONS_CREATED lists."""

    project: ProjectRef
    annotation: list[AnnotationBody]
    task: list[TaskRef]

    @field_validator("annotation", "task", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class AnnotationRef(_Body):
    id: Id


class DeleteEvent(_Body):
    project: ProjectRef
    annotation: AnnotationRef | None = None
    annotations: list[AnnotationRef] = []


class TasksDeletedEvent(_Body):
    project: ProjectRef
    tasks: list[TaskRef]


class TrainEvent(_Body):
    project: ProjectRef


def _validated(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))[:100] or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise RequestError(f"bad {what} body: {problems}", 422) from None


def project_id(value: object) -> str:
    """The project id of ``"1.1795353650"`` (Label Studio's ``<id>.<created_at>``) or ``1``."""
    match = _PROJECT.fullmatch(value.strip()) if isinstance(value, str) else None
    number = int(match[1]) if match else value
    if not is_id(number):
        raise RequestError(f"'project' must be a positive project id like '1.1795353650', got {repr(value)[:40]}", 422)
    return str(number)


# -- the backend ------------------------------------------------------------------------------------

class Backend:
    """What the routes share: settings, the model, the Label Studio client, label stores, the trainer."""

    def __init__(self, settings: Settings, client: LabelStudioClient | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.serving = Serving(settings)
        self.client = client or LabelStudioClient.from_settings(settings)
        self.generating = anyio.CapacityLimiter(settings.max_predictions)
        self.trainer = Trainer(settings, on_done=self._trained)
        self.configs: LRU[str, str] = LRU(MAX_PROJECTS)  # project -> the labeling config of its last /setup
        self._access_ok: LRU[str, float] = LRU(MAX_PROJECTS)  # project -> until when its last access check holds
        self.access_error: str | None = None  # the last failed access check, shown by /health

    def start(self) -> None:
        self.serving.start()
        threading.Thread(target=self._check_recipe, name="blip2-ls-recipe", daemon=True).start()

    def _check_recipe(self) -> None:
        """Say at start-up (in the log) when the training recipe is unusable, not only when a run fails.

        Runs after the model has loaded: transformers' lazy imports are not safe from two threads at once.
        """
        wait([self.serving.loaded])
        try:
            load_recipe(self.settings.train_config)
        except SettingsError as exc:
            log.error("training runs will fail: %s", exc)

    def close(self) -> None:
        self.trainer.close()
        self.serving.close()

    async def access_problem(self, project: str) -> str | None:
        """Why the backend cannot use Label Studio for ``project`` (its URL, key, access), or None.

        A success is remembered for :data:`_ACCESS_CHECKED` seconds; a failure is asked again next time.
        """
        if time.monotonic() < self._access_ok.get(project, 0.0):
            return None
        try:
            with anyio.fail_after(_ACCESS_TIMEOUT):
                await self.client.check_access(project)
        except TimeoutError:
            problem = f"Label Studio did not answer within {_ACCESS_TIMEOUT:g} s at {self.client.url} (LABEL_STUDIO_URL)"
        except Blip2Error as exc:
            problem = f"the backend cannot use Label Studio's API: {exc}"
        else:
            self._access_ok[project] = time.monotonic() + _ACCESS_CHECKED
            self.access_error = None
            return None
        self.access_error = problem
        return problem

    def labels(self, project: str) -> LabelStore:
        return LabelStore(self.settings.projects_dir / project)

    def config(self, project: str, given: str | None) -> LabelConfig:
        text = given or self.configs.get(project)
        if not text:
            raise RequestError(f"no labeling config for project {project}: the request has none, and /setup "
                               "was not called for it since the backend started", 422)
        return parse_label_config(text)

    def _trained(self, project: str, run: Mapping[str, Any]) -> None:
        status = run.get("status", "failed")
        self.metrics.runs.labels(status if status in ("promoted", "refused", "skipped") else "failed").inc()
        if isinstance(run.get("seconds"), (int, float)):
            self.metrics.train_seconds.observe(run["seconds"])
        self.metrics.queue.set(self.trainer.queue_length())
        if status == "promoted" and self.serving.state == "ready":
            with self.serving.serving(project) as (_, version):  # swap now, not on the next request
                self.metrics.serving(project, version)
        if status == "promoted" and self.settings.refresh_predictions:
            threading.Thread(target=refresh_predictions, args=(self.settings, project), name="blip2-ls-refresh",
                             daemon=True).start()


# -- routes -------------------------------------------------------------------------------------------

async def health(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    serving = backend.serving
    body = {"status": "UP", "model_class": MODEL_CLASS, "model": backend.settings.model, "state": serving.state,
            "ready": serving.state == "ready", "pid": os.getpid()}
    if serving.load_seconds is not None:
        body["load_seconds"] = round(serving.load_seconds, 2)
    if backend.access_error is not None:
        body["label_studio_error"] = backend.access_error
    if serving.state == "failed":
        return JSONResponse({**body, "status": "DOWN", "error": serving.error}, status_code=503)
    return JSONResponse(body)


async def setup(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = _validated(SetupBody, await read_json(request, backend.settings.max_body_bytes), "/setup")
    project = project_id(body.project)
    try:
        parse_label_config(body.schema_)
    except LabelConfigError as exc:
        log.warning("project %s: setup refused: %s", project, exc)
        if request.headers.get("user-agent", "").startswith(LABEL_STUDIO_AGENT):
            # Label Studio 1.23 drops the body of a refused /setup and shows "422 Client Error: ... for url:
            # URL". It follows redirects, so the reason travels in the URL it shows.
            return RedirectResponse(f"/setup/refused/{_slug(str(exc))}", status_code=303)
        raise
    problem = await backend.access_problem(project)
    if problem is not None:
        log.error("project %s: setup refused: %s", project, problem)
        if request.headers.get("user-agent", "").startswith(LABEL_STUDIO_AGENT):
            return RedirectResponse(f"/setup/refused/{_slug(problem)}", status_code=303)
        raise RequestError(problem, 422)
    backend.configs[project] = body.schema_
    version = await run_in_threadpool(backend.serving.model_version, project)
    log.info("project %s: setup, model version %s", project, version)
    return JSONResponse({"model_version": version})


async def setup_refused(request: Request) -> Response:
    """Where a refused /setup from Label Studio is redirected: the reason, from the URL, as a 422."""
    raise RequestError(f"setup refused: {request.path_params['reason'].replace('-', ' ')}", 422)


def _slug(text: str, limit: int = 200) -> str:
    """``text`` as a readable URL path segment: runs of other characters become one ``-``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].rstrip("-")


async def predict_route(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    data = await read_json(request, backend.settings.max_body_bytes, backend.generating)
    body = _validated(PredictBody, data, "/predict")
    if body.project is None:
        raise RequestError("'project' is missing", 422)
    project = project_id(body.project)
    config = backend.config(project, body.label_config)
    backend.metrics.batch_size.observe(len(body.tasks))
    if not body.tasks:
        return JSONResponse({"results": []})
    await _model_ready(backend)
    tasks = [task.model_dump() for task in body.tasks]
    context = body.params.context if body.params else None
    outcome = await predict(backend.serving, backend.client, backend.generating, project, config, tasks, context,
                            backend.settings.generation())
    outcome.log(project)
    backend.metrics.predictions.labels("predicted").inc(len(tasks) - outcome.failed)
    backend.metrics.predictions.labels("failed").inc(outcome.failed)
    backend.metrics.serving(project, outcome.model_version)
    return JSONResponse({"results": outcome.results, "model_version": outcome.model_version})


async def _model_ready(backend: Backend) -> None:
    loaded = backend.serving.loaded
    if not loaded.done():
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(loaded)), backend.settings.predict_wait)
        except asyncio.TimeoutError:
            raise RequestError(f"the model is still loading (waited {backend.settings.predict_wait:g} s); "
                               "try again shortly", 503) from None
        except Blip2Error:
            pass
    if loaded.exception() is not None:
        raise RequestError(f"the model failed to load: {loaded.exception()}", 503)


async def webhook(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    data = await read_json(request, backend.settings.max_body_bytes)
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("'action' is missing: expected e.g. ANNOTATION_CREATED or START_TRAINING", 422)
    handler = _WEBHOOKS.get(action)
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
    event = _validated(LabelEvent, data, f"{data['action']} webhook")
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
    event = _validated(DeleteEvent, data, f"{data['action']} webhook")
    ids = [a.id for a in event.annotations] + ([event.annotation.id] if event.annotation else [])
    removed = backend.labels(str(event.project.id)).remove(ids)
    log.info("project %s: %d deleted annotation(s), %d label(s) removed", event.project.id, len(ids), removed)
    return {"removed": removed}


def _on_tasks_deleted(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = _validated(TasksDeletedEvent, data, "TASKS_DELETED webhook")
    removed = backend.labels(str(event.project.id)).remove_tasks(t.id for t in event.tasks)
    log.info("project %s: %d deleted task(s), %d label(s) removed", event.project.id, len(event.tasks), removed)
    return {"removed": removed}


def _on_train(backend: Backend, data: Mapping[str, Any]) -> dict[str, Any]:
    event = _validated(TrainEvent, data, "START_TRAINING webhook")
    project = str(event.project.id)
    training = backend.trainer.request(project, pull=True, label_config=config_text(event.project, backend),
                                       reason="START_TRAINING")
    backend.metrics.queue.set(backend.trainer.queue_length())
    return {"training": training}


def config_text(project: ProjectRef, backend: Backend) -> str | None:
    return project.label_config or backend.configs.get(str(project.id))


_WEBHOOKS: dict[str, Callable[[Backend, Mapping[str, Any]], dict[str, Any]]] = {
    **{action: _on_labels for action in _LABEL_EVENTS},
    **{action: _on_delete for action in _DELETE_EVENTS},
    "TASKS_DELETED": _on_tasks_deleted,
    "START_TRAINING": _on_train,
}


async def versions(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    given = request.query_params.get("project")
    projects = [project_id(given)] if given else await run_in_threadpool(_known_projects, backend)
    listing = await run_in_threadpool(lambda: [_project_versions(backend, p) for p in projects])
    names = [backend.serving.version_of(None)] + [v for p in listing for v in p["versions"][1:]]
    return JSONResponse({"versions": list(dict.fromkeys(names)), "model": backend.settings.model,
                         "projects": listing})


def _known_projects(backend: Backend) -> list[str]:
    found = set(backend.configs)
    folder = backend.settings.projects_dir
    if folder.is_dir():
        found |= {p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}
    try:
        found |= {name.removeprefix("project-") for _, name in backend.serving.store.names(backend.serving.base_model)
                  if name.startswith("project-") and name.removeprefix("project-").isdigit()}
    except StoreError:
        pass
    return sorted(found, key=int)


def _project_versions(backend: Backend, project: str) -> dict[str, Any]:
    serving = backend.serving
    try:
        adapters = serving.store.versions(serving.base_model, adapter_name(project))
    except StoreError:
        adapters = []
    current = serving.model_version(project)
    return {
        "project": project, "current": current,
        "versions": [serving.version_of(None)] + [serving.version_of(a) for a in adapters if a.status == "promoted"],
        "adapters": [{"model_version": serving.version_of(a), "version": a.version, "status": a.status,
                      "reason": a.reason, "metrics": dict(a.metrics), "created": a.created, "parent": a.parent}
                     for a in adapters],
        "runs": backend.trainer.runs(project),
        "training": backend.trainer.status(project),
    }


async def metrics(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    backend.metrics.queue.set(backend.trainer.queue_length())
    backend.metrics.ready.set(1 if backend.serving.state == "ready" else 0)
    body, content_type = backend.metrics.render()
    return Response(body, media_type=content_type)


async def read_json(request: Request, limit: int, limiter: anyio.CapacityLimiter | None = None) -> dict[str, Any]:
    """The request's JSON object, read with a size cap and parsed by the careful reader (a large body in a
    worker thread of ``limiter``); :class:`RequestError` (4xx) saying what is wrong."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError(f"the body is {int(length)} bytes, over the limit of {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise RequestError("the body is empty: expected a JSON object")
    try:
        data = loads(raw) if len(raw) <= _PARSE_INLINE else await anyio.to_thread.run_sync(loads, raw, limiter=limiter)
    except JSONReadError as exc:
        raise RequestError(f"the body is refused: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object, got {type(data).__name__}")
    return data


# -- middleware ----------------------------------------------------------------------------------------

class Guard:
    """Outermost middleware: basic auth, latency metrics, and JSON errors without tracebacks."""

    def __init__(self, app: ASGIApp, backend: Backend, credentials: tuple[str, str] | None) -> None:
        self.app = app
        self.backend = backend
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500, "sent": False}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            if self.credentials is not None and not self._authorised(scope):
                if route == "/webhook":
                    log.warning("a webhook without valid credentials was refused: register the backend URL as "
                                "http://USER:PASS@host:port, or add the Authorization header to the project's webhook")
                await _error(401, "authentication required", headers={"WWW-Authenticate": 'Basic realm="blip2"'})(
                    scope, receive, watch)
            else:
                await self.app(scope, receive, watch)
        except Exception:  # answered already by the app's handler (Starlette re-raises for the server's log)
            failure(log, "%s %s failed", scope.get("method"), route)
            if not status["sent"]:
                await _error(500, "internal error; the backend's log has the details")(scope, receive, watch)
        finally:
            self.backend.metrics.latency.labels(route, f"{status['code'] // 100}xx").observe(time.perf_counter() - started)

    def _authorised(self, scope: Scope) -> bool:
        assert self.credentials is not None
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user.encode(), self.credentials[0].encode()) & secrets.compare_digest(
            password.encode(), self.credentials[1].encode())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"status": "ERROR", "error": message}, status_code=status, headers=headers)


# -- the app -----------------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, client: LabelStudioClient | None = None) -> ASGIApp:
    """The backend app; without ``settings``, those of ``BLIP2_LS_SETTINGS`` (how server workers get theirs)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    backend = Backend(settings, client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backend.start()
        try:
            yield
        finally:
            await run_in_threadpool(backend.close)
            await backend.client.aclose()

    routes = [
        Route("/", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/setup", setup, methods=["POST"]),
        Route("/setup/refused/{reason}", setup_refused, methods=["GET"]),
        Route("/predict", predict_route, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]),
        Route("/versions", versions, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    handlers = {404: _not_found, 405: _not_allowed, RequestError: _refused, Blip2Error: _refused, Exception: _internal}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)  # type: ignore[arg-type]
    app.state.backend = backend
    return Guard(app, backend, Settings.basic_auth())


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(exc.status if isinstance(exc, RequestError) else 422, str(exc))


async def _internal(request: Request, exc: Exception) -> Response:
    return _error(500, "internal error; the backend's log has the details")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no route {request.url.path[:100]!r}; routes: {', '.join(ROUTES)}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path[:100]!r}")


def configure_logging(level: str) -> None:
    """This package logs at ``level``; a process without logging set up gets a stderr handler."""
    logging.getLogger("blip2plugins_label_studio").setLevel(level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
