"""The request bodies Label Studio sends, and how a body is read: size-capped, parsed by the careful JSON
reader, validated into these models; anything wrong is one :class:`RequestError` (4xx) saying what."""

from __future__ import annotations

import re
from typing import Any

import anyio
from blip2plugins.jsonfile import JSONReadError, loads
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

from .errors import RequestError
from .ids import Id, TaskId, is_id

_PROJECT = re.compile(r"([0-9]{1,18})(?:\.[0-9]{1,30})?")
_PARSE_INLINE = 1024 * 1024  # larger bodies are parsed in a worker thread, not on the event loop


class Body(BaseModel):
    """A request body: fields beyond the declared ones are kept (Label Studio adds some)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupBody(Body):
    project: str | int
    schema_: str = Field(alias="schema")


class TaskBody(Body):
    id: TaskId | None = None
    data: dict[str, Any]


class PredictParams(Body):
    context: dict[str, Any] | None = None


class PredictBody(Body):
    tasks: list[TaskBody]
    project: str | int | None = None
    label_config: str | None = None
    params: PredictParams | None = None


class ProjectRef(Body):
    id: Id
    label_config: str | None = None


class AnnotationBody(Body):
    id: Id
    result: list[Any] = []
    was_cancelled: bool = False
    updated_at: str | None = None
    task: TaskId | None = None


class TaskRef(Body):
    id: TaskId
    data: dict[str, Any] = {}


class LabelEvent(Body):
    """ANNOTATION_CREATED / ANNOTATION_UPDATED carry one annotation and task, ANNOTATIONS_CREATED lists."""

    project: ProjectRef
    annotation: list[AnnotationBody]
    task: list[TaskRef]

    @field_validator("annotation", "task", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class AnnotationRef(Body):
    id: Id


class DeleteEvent(Body):
    project: ProjectRef
    annotation: AnnotationRef | None = None
    annotations: list[AnnotationRef] = []


class TasksDeletedEvent(Body):
    project: ProjectRef
    tasks: list[TaskRef]


class TrainEvent(Body):
    project: ProjectRef


def validated(model: type[BaseModel], data: Any, what: str) -> Any:
    """``data`` as ``model``, or a 422 naming the first problems of the ``what`` body."""
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
