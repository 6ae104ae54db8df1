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

Here: the backend's shared state and the routes but one. The request bodies are in :mod:`.payloads`,
the webhook events in :mod:`.webhooks`, authentication and error answers in :mod:`.middleware`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from concurrent.futures import wait
from typing import Any, AsyncIterator, Mapping

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from blip2plugins.errors import Blip2Error, StoreError

from .client import LabelStudioClient
from .errors import LabelConfigError, RequestError, SettingsError
from .labels import LabelStore
from .lru import LRU
from .metrics import ROUTES, Metrics
from .middleware import Guard, error_response
from .payloads import PredictBody, SetupBody, project_id, read_json, validated
from .predict import predict
from .refresh import refresh_predictions
from .schema import LabelConfig, parse_label_config
from .serving import Serving, adapter_name
from .settings import Settings, load_recipe
from .training import Trainer
from .webhooks import webhook

log = logging.getLogger("blip2plugins_label_studio")
MODEL_CLASS = "Blip2Plugins"
LABEL_STUDIO_AGENT = "heartex/"  # how Label Studio's ML client introduces itself
MAX_PROJECTS = 1000  # projects whose labeling config (from /setup) and access check are remembered
_ACCESS_TIMEOUT = 2.0  # seconds /setup waits for Label Studio to confirm the backend's credentials (it gives 3)
_ACCESS_CHECKED = 60.0  # seconds a confirmed access holds before /setup asks again


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
    body = validated(SetupBody, await read_json(request, backend.settings.max_body_bytes), "/setup")
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
    body = validated(PredictBody, data, "/predict")
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
    return error_response(exc.status if isinstance(exc, RequestError) else 422, str(exc))


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error; the backend's log has the details")


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, f"no route {request.url.path[:100]!r}; routes: {', '.join(ROUTES)}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, f"{request.method} is not allowed on {request.url.path[:100]!r}")


def configure_logging(level: str) -> None:
    """This package logs at ``level``; a process without logging set up gets a stderr handler."""
    logging.getLogger("blip2plugins_label_studio").setLevel(level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
