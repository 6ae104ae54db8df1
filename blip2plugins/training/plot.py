"""A PNG of a training run: the loss curve, and held-out metrics on a second axis.

    plot_curves({"losses": [(50, 2.1), (100, 0.9)], "evals": [{"step": 100, "cider": 1.4}]}, "run.png")

Drawn with matplotlib's Agg canvas on a private :class:`~matplotlib.figure.Figure`, so pyplot's
global state is never touched.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .metrics import INSTALL_HINT, EvalError


def _losses(report: Mapping[str, Any]) -> list[tuple[float, float]]:
    points = report.get("losses")
    if not points:
        raise EvalError("report['losses']: empty or missing, nothing to plot")
    try:
        return [(float(step), float(loss)) for step, loss in points]
    except (TypeError, ValueError) as e:
        raise EvalError(f"report['losses']: needs (step, loss) pairs of numbers ({e})") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _evals(report: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Each metric's ``(step, value)`` points, in the order the metrics first appear."""
    series: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(report.get("evals") or ()):
        if not isinstance(row, Mapping) or not _is_number(row.get("step")):
            raise EvalError(f"report['evals'][{i}]: needs a mapping with a numeric 'step', got {row!r}")
        for name, value in row.items():
            if name == "step":
                continue
            if not _is_number(value):
                raise EvalError(f"report['evals'][{i}][{name!r}]: needs a number, got {value!r}")
            series.setdefault(name, []).append((float(row["step"]), float(value)))
    return series


def plot_curves(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the loss curve of ``report`` (and its ``evals``, when any) as a PNG at ``path``.

    ``report["losses"]`` holds ``(step, loss)`` pairs (as in :class:`TrainReport`);
    ``report["evals"]`` optional ``{"step": int, "<metric>": float, ...}`` rows. The file is
    replaced atomically: a failed plot leaves any earlier one in place.
    """
    losses = _losses(report)
    evals = _evals(report)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plotting needs matplotlib: {INSTALL_HINT}") from e

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lines = ax.plot(*zip(*losses), color="tab:blue", label="training loss")
    if all(loss > 0 and math.isfinite(loss) for _, loss in losses):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if evals:
        metric_ax = ax.twinx()
        for colour, (name, points) in enumerate(evals.items(), start=1):
            lines += metric_ax.plot(*zip(*points), marker="o", color=f"C{colour}", label=f"held-out {name}")
        metric_ax.set_ylabel("held-out metric")
    ax.legend(handles=lines, loc="best")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
