"""The demo images of the LangChain adapter tests, as paths and as content blocks."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

IMAGES = Path(__file__).resolve().parents[3] / "examples" / "images"


def image_path(stem: str) -> str:
    """Path of an example image by file stem, e.g. ``"green-triangle_on-gray"``."""
    return str(IMAGES / f"{stem}.png")


def image_block(stem: str) -> dict[str, Any]:
    """A standard LangChain base64 image block of an example image."""
    data = base64.b64encode((IMAGES / f"{stem}.png").read_bytes()).decode()
    return {"type": "image", "base64": data, "mime_type": "image/png"}


#: File stems of the example images, e.g. ``"green-triangle_on-gray"``.
STEMS = sorted(p.stem for p in IMAGES.glob("*.png"))


def caption_of(stem: str) -> str:
    """The demo world's caption of an example image, read from its file name."""
    shapes = stem.split("_on-")[0].split("_")
    return " and ".join(f"a {colour} {kind}" for colour, kind in (s.split("-") for s in shapes))
