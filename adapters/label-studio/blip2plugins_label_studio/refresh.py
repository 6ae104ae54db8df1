"""After a promotion, have Label Studio re-predict the tasks nobody has labeled yet (``--refresh-predictions``).

Label Studio shows only predictions of the backend's current model version, but it asks for new ones
only when someone presses *Retrieve predictions* (or opens a task). This runs that Data Manager action
(``retrieve_tasks_predictions``) itself, with the backend's key, on the project's tasks without
annotations: Label Studio then calls ``/predict`` for them, and the new version's predictions are there
when the annotators come back. Labeled tasks are left as they are.
"""

from __future__ import annotations

import logging

import anyio
from blip2plugins.errors import Blip2Error

from .client import LabelStudioClient
from .settings import Settings

log = logging.getLogger(__name__)


def refresh_predictions(settings: Settings, project: str) -> int | None:
    """Ask Label Studio to retrieve predictions for ``project``'s unlabeled tasks; how many (None: it failed,
    logged). Blocks until Label Studio has stored them (it calls this backend's ``/predict`` meanwhile)."""
    try:
        count = anyio.run(_refresh, settings, project)
    except Blip2Error as exc:
        log.warning("project %s: could not have Label Studio re-predict the unlabeled tasks: %s", project, exc)
        return None
    log.info("project %s: Label Studio re-predicted %d unlabeled task(s) with the new version", project, count)
    return count


async def _refresh(settings: Settings, project: str) -> int:
    async with LabelStudioClient.from_settings(settings) as client:
        ids = await client.unlabeled_task_ids(project)
        if ids:
            await client.retrieve_predictions(project, ids)
        return len(ids)
