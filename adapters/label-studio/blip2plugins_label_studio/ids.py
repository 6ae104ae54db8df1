"""Ids of Label Studio objects (projects, tasks, annotations) as this backend accepts them: positive
integers below 2**63 (a database bigint), so that they are safe in file names and URLs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

MAX_ID = 2**63 - 1

#: A request body's id: a JSON integer (not a string, a float or a boolean) from 1 to :data:`MAX_ID`.
Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]


def is_id(value: Any) -> bool:
    """Whether ``value`` is an id (an ``int``, not a ``bool``, from 1 to :data:`MAX_ID`)."""
    return type(value) is int and 1 <= value <= MAX_ID
