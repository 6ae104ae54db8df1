"""The adapter README's command blocks marked ``<!-- first-contact: NAME -->``, as the real-server test runs them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "adapters" / "label-studio" / "README.md"
_BLOCK = re.compile(r"<!-- first-contact: (?P<name>[\w-]+) -->\n```bash\n(?P<code>.*?)```", re.S)


def blocks(path: Path = README) -> dict[str, str]:
    """Name -> the bash of each marked block, in the README's order."""
    return {m["name"]: m["code"] for m in _BLOCK.finditer(path.read_text())}


def script(*parts: str) -> str:
    """A bash script running ``parts`` in order, stopping at the first failing command."""
    return "set -euo pipefail\n" + "\n".join(parts)
