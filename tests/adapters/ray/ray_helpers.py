"""Helpers of the Ray integration's tests: run ``blip2 ray`` as a user does, read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

from independent import painter  # noqa: E402

__all__ = ["NODE", "ROOT", "blip2_ray", "painter", "rows", "summary"]

#: Each node of a test cluster: one CPU and a small object store, as on a 2-core CI machine.
NODE = {"num_cpus": 1, "object_store_memory": 150 * 1024 * 1024, "include_dashboard": False}


def blip2_ray(*args: str, address: str | None = None, timeout: float = 400, **env: str) -> subprocess.CompletedProcess[str]:
    """``blip2 ray ARGS`` in its own process, with the integration loaded (joining ``address``)."""
    command = [sys.executable, "-m", "blip2plugins.cli", "ray", *args]
    if address:
        command += ["--address", address]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "BLIP2_PLUGINS": "ray", **env})


def summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON summary a ``--json`` run printed (fails with its stderr's tail if it did not finish)."""
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows(out: Path) -> list[dict[str, Any]]:
    """Every row of the Parquet shards in ``out``."""
    import pyarrow.parquet as pq

    return [row for shard in sorted(out.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]
