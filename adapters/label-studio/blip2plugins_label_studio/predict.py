"""Predictions for a batch of Label Studio tasks: every target TextArea of every task, through the host.

Images are fetched on the event loop (no thread waits on a slow host); generation runs in a worker
thread under the ``generating`` limiter, which bounds the predictions on the host at once. All
caption targets of a call go to the host as one list (and all question targets as another), so the
host runs them in full batches. Each task gets one item back, in order: a prediction with its
regions, its ``score`` (the least confident of its regions, so that sorting by score finds the tasks
that most need a look) and the model version; or ``[]`` (no prediction, which Label Studio accepts)
when none of its images could be fetched or read, with the reason in the log: one line per call,
and a line per distinct reason for the first few.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import anyio
from blip2plugins.errors import Blip2Error

from .client import LabelStudioClient
from .errors import LabelConfigError
from .schema import LabelConfig, Target, image_ref
from .serving import Serving

log = logging.getLogger(__name__)
SHOWN_REASONS = 5  # distinct failure reasons logged per call; the rest are counted


@dataclass
class _Item:
    """One target of one task: what to generate, and what came back."""

    task: int  # the task's index in the call
    task_id: Any
    target: Target
    image: bytes
    prompt: str | None = None
    text: str | None = None
    score: float | None = None


@dataclass
class Outcome:
    """The reply items (one per task, in order), the tasks without a prediction, and why (task id, reason)."""

    results: list[Any]
    failed: int = 0
    model_version: str = ""
    problems: list[tuple[Any, str]] = field(default_factory=list)

    def log(self, project: str) -> None:
        """One line for the call; one more per distinct reason (at most :data:`SHOWN_REASONS`)."""
        tasks = len(self.results)
        log.info("project %s: predicted %d of %d task(s) (%s)", project, tasks - self.failed, tasks, self.model_version)
        by_reason: dict[str, list[Any]] = {}
        for task_id, reason in self.problems:
            by_reason.setdefault(reason, []).append(task_id)
        for reason, ids in list(by_reason.items())[:SHOWN_REASONS]:
            shown = ", ".join(str(i) for i in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            log.warning("project %s: task %s: %s", project, shown, reason)
        if len(by_reason) > SHOWN_REASONS:
            rest = sum(len(ids) for ids in list(by_reason.values())[SHOWN_REASONS:])
            log.warning("project %s: %d more problem(s) for %d other reason(s) not shown", project, rest,
                        len(by_reason) - SHOWN_REASONS)


async def predict(serving: Serving, client: LabelStudioClient, generating: anyio.CapacityLimiter, project: str,
                  config: LabelConfig, tasks: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None = None,
                  options: Mapping[str, Any] | None = None) -> Outcome:
    """Predict every target of every task (``context``: an annotator's draft to continue)."""
    draft = (context or {}).get("result")
    prefixes = {name: texts[0] for name, texts in config.texts(draft if isinstance(draft, list) else []).items()}
    items, problems = await _load_images(client, config, tasks, prefixes)
    version = await anyio.to_thread.run_sync(_generate, serving, project, items, problems, options or {},
                                             limiter=generating)
    by_task: dict[int, list[_Item]] = {}
    for item in items:
        if item.text is not None:
            by_task.setdefault(item.task, []).append(item)
    results: list[Any] = []
    for index in range(len(tasks)):
        done = by_task.get(index)
        if not done:
            results.append([])
            continue
        regions = [item.target.region(item.text) for item in done if item.text is not None]
        score = min(item.score for item in done if item.score is not None)
        results.append({"result": regions, "score": score, "model_version": version})
    return Outcome(results, sum(1 for r in results if r == []), version, problems)


def _generate(serving: Serving, project: str, items: list[_Item], problems: list[tuple[Any, str]],
              options: Mapping[str, Any]) -> str:
    """Fill the items' texts on the host (a worker thread); the model version that served them."""
    captions = [item for item in items if item.target.question is None]
    questions = [item for item in items if item.target.question is not None]
    with serving.serving(project) as (host, version):
        if captions:
            prompts = [item.prompt or "" for item in captions]
            _fill(captions, host.caption([i.image for i in captions], prompt=prompts, **options), problems)
        if questions:
            _fill(questions, host.ask([i.image for i in questions], [i.target.question for i in questions],
                                      **options), problems)
    return version


async def _load_images(client: LabelStudioClient, config: LabelConfig, tasks: Sequence[Mapping[str, Any]],
                       prefixes: Mapping[str, str]) -> tuple[list[_Item], list[tuple[Any, str]]]:
    """Fetch each task's image bytes (each distinct image once, concurrently; a cloud storage URI once per
    task, since Label Studio resolves it through the task) into items; failures as problems."""
    wanted: list[tuple[int, Target, str]] = []
    problems: list[tuple[Any, str]] = []
    for index, task in enumerate(tasks):
        for target in config.targets:
            try:
                wanted.append((index, target, image_ref(task.get("data"), target)))
            except LabelConfigError as exc:
                problems.append((task.get("id"), f"no prediction for {target.from_name!r}: {exc}"))

    def key(index: int, ref: str) -> tuple[int | None, str]:
        return (index if client.per_task(ref) else None), ref

    first_task: dict[tuple[int | None, str], int] = {}  # each image to fetch -> the first task showing it
    for index, _, ref in wanted:
        first_task.setdefault(key(index, ref), index)
    images: dict[tuple[int | None, str], bytes | Blip2Error] = {}

    async def fetch(image_key: tuple[int | None, str]) -> None:
        try:  # the host decodes and checks the bytes (in its loader threads), as for any caller
            images[image_key] = await client.image_bytes(image_key[1], tasks[first_task[image_key]].get("id"))
        except Blip2Error as exc:
            images[image_key] = exc

    async with anyio.create_task_group() as group:
        for image_key in first_task:
            group.start_soon(fetch, image_key)
    items = []
    for index, target, ref in wanted:
        image = images[key(index, ref)]
        if isinstance(image, Blip2Error):
            problems.append((tasks[index].get("id"), f"no prediction for {target.from_name!r}: {image}"))
            continue
        prompt = prefixes.get(target.from_name) if target.question is None else None
        items.append(_Item(index, tasks[index].get("id"), target, image, prompt))
    return items, problems


def _fill(items: list[_Item], results: list[Any], problems: list[tuple[Any, str]]) -> None:
    for item, result in zip(items, results):
        if result.ok and result.text:
            item.text, item.score = result.text, result.score
        else:
            problems.append((item.task_id, f"no prediction for {item.target.from_name!r}: "
                                           f"{result.error or 'the model generated no text'}"))
