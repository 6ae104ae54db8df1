"""The prepared GPU check runs end to end in its CPU mode: every step has its row, the CUDA-only ones skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_in_its_cpu_mode(tmp_path) -> None:
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = done.stdout[done.stdout.index("step "):]
    rows = {line.split("  ")[0]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"opt float16", "opt bfloat16", "opt float32", "opt 8bit", "opt 4bit", "t5 float16",
                         "t5 bfloat16", "caption_throughput", "concurrent_callers", "batch_overhead"}
    for step in ("opt float16", "opt 8bit", "opt 4bit", "t5 float16"):
        assert "skipped: no CUDA" in rows[step]
    for step in ("opt bfloat16", "opt float32", "t5 bfloat16"):
        assert "tokens equal raw generate: 8/8 alone" in rows[step]
    for step in ("caption_throughput", "concurrent_callers", "batch_overhead"):
        assert "ratio: " in rows[step]
    assert "no CUDA" in done.stdout.splitlines()[0]
