"""JSON files for the backend: read leniently, written atomically with the core's :mod:`blip2plugins.files`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from blip2plugins.files import fsync_dir, write_atomic

__all__ = ["fsync_dir", "read_json", "write_atomic", "write_json"]

log = logging.getLogger(__name__)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing (or, with a warning, unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable file %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    write_atomic(path, json.dumps(data, ensure_ascii=False).encode("utf-8"))
