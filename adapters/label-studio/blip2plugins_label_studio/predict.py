"""Predictions for a batch of Label Studio tasks: every target TextArea of every task, through the host.

All caption targets of a call go to the host as one list (and all question targets as another), so
the host runs them in full batches. Each task gets one item back, in order: a prediction with its
regions, its ``score`` (the least confident of its regions, so that sorting by score finds the tasks
that most need a look) and the model version; or ``[]`` (no prediction, which Label Studio accepts)
when none of its images could be fetched or read, with the reason in the log.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from blip2plugins.errors import Blip2Error

from .client import LabelStudioClient
from .errors import LabelConfigError
from .schema import LabelConfig, Target, image_ref
from .serving import Serving

log = logging.getLogger(__name__)


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
    """The reply items (one per task, in order) and the number of tasks that got no prediction."""

    results: list[Any]
    failed: int = 0
    model_version: str = ""
    problems: list[str] = field(default_factory=list)


def predict(serving: Serving, client: LabelStudioClient, pool: ThreadPoolExecutor, project: str,
            config: LabelConfig, tasks: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None = None,
            options: Mapping[str, Any] | None = None) -> Outcome:
    """Predict every target of every task (``context``: an annotator's draft to continue)."""
    prefixes = {name: texts[0] for name, texts in config.texts((context or {}).get("result") or []).items()}
    items, problems = _load_images(client, pool, config, tasks, prefixes)
    captions = [item for item in items if item.target.question is None]
    questions = [item for item in items if item.target.question is not None]
    with serving.serving(project) as (host, version):
        if captions:
            prompts = [item.prompt or "" for item in captions]
            _fill(captions, host.caption([i.image for i in captions], prompt=prompts, **(options or {})), problems)
        if questions:
            _fill(questions, host.ask([i.image for i in questions], [i.target.question for i in questions],
                                      **(options or {})), problems)
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
    for problem in problems:
        log.warning("project %s: %s", project, problem)
    return Outcome(results, sum(1 for r in results if r == []), version, problems)


def _load_images(client: LabelStudioClient, pool: ThreadPoolExecutor, config: LabelConfig,
                 tasks: Sequence[Mapping[str, Any]], prefixes: Mapping[str, str]) -> tuple[list[_Item], list[str]]:
    """Fetch each task's image bytes (each distinct image once, in parallel; a cloud storage URI once per
    task, since Label Studio resolves it through the task) into items; failures as problems."""
    wanted: list[tuple[int, Target, str]] = []
    problems: list[str] = []
    for index, task in enumerate(tasks):
        for target in config.targets:
            try:
                wanted.append((index, target, image_ref(task.get("data"), target)))
            except LabelConfigError as exc:
                problems.append(f"task {task.get('id')}: no prediction for {target.from_name!r}: {exc}")

    def key(index: int, ref: str) -> tuple[int | None, str]:
        return (index if client.per_task(ref) else None), ref

    first_task: dict[tuple[int | None, str], int] = {}  # each image to fetch -> the first task showing it
    for index, _, ref in wanted:
        first_task.setdefault(key(index, ref), index)

    def fetch(image_key: tuple[int | None, str]) -> bytes | Blip2Error:
        try:  # the host decodes and checks the bytes (in its loader threads), as for any caller
            return client.image_bytes(image_key[1], tasks[first_task[image_key]].get("id"))
        except Blip2Error as exc:
            return exc

    images = dict(zip(first_task, pool.map(fetch, first_task)))
    items = []
    for index, target, ref in wanted:
        image = images[key(index, ref)]
        if isinstance(image, Blip2Error):
            problems.append(f"task {tasks[index].get('id')}: no prediction for {target.from_name!r}: {image}")
            continue
        prompt = prefixes.get(target.from_name) if target.question is None else None
        items.append(_Item(index, tasks[index].get("id"), target, image, prompt))
    return items, problems


def _fill(items: list[_Item], results: list[Any], problems: list[str]) -> None:
    for item, result in zip(items, results):
        if result.ok and result.text:
            item.text, item.score = result.text, result.score
        else:
            problems.append(f"task {item.task_id}: no prediction for {item.target.from_name!r}: "
                            f"{result.error or 'the model generated no text'}")
