"""JSON files for the backend: read with the core's careful reader (:mod:`blip2plugins.jsonfile`), leniently,
and written atomically with the core's :mod:`blip2plugins.files`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from blip2plugins.files import fsync_dir, write_atomic
from blip2plugins.jsonfile import JSONReadError, load_file

__all__ = ["fsync_dir", "read_json", "write_atomic", "write_json"]

log = logging.getLogger(__name__)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing (or, with a warning, unreadable)."""
    try:
        data = load_file(path)
    except FileNotFoundError:
        return None
    except JSONReadError as exc:
        log.warning("unreadable file %s", exc)
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    write_atomic(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))
