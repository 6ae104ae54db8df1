"""Ids of Label Studio objects as this backend accepts them: integers below 2**63 (a database bigint),
from 1 for projects and annotations, from 0 for tasks (they only name a task in logs and URLs), so
that they are safe in file names and URLs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

MAX_ID = 2**63 - 1

#: A request body's project or annotation id: a JSON integer (not a string, a float or a boolean), 1 to MAX_ID.
Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
#: A request body's task id: as :data:`Id`, from 0.
TaskId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


def is_id(value: Any, low: int = 1) -> bool:
    """Whether ``value`` is an id (an ``int``, not a ``bool``, from ``low`` to :data:`MAX_ID`)."""
    return type(value) is int and low <= value <= MAX_ID
