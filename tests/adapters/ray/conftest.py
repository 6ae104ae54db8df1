"""Fixtures of the Ray integration's tests: real Ray clusters on this machine (``ray.cluster_utils.Cluster``),
images drawn by the independent painter, and ``blip2 ray`` run as a user runs it, in its own process.

Skipped unless the integration is installed (``pip install -e 'adapters/ray[test]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator

import pytest

if importlib.util.find_spec("blip2plugins_ray") is None or importlib.util.find_spec("ray") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from ray_helpers import NODE, painter


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster of two simulated nodes with one CPU each, shared by the tests."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder of 12 PNG scenes by the independent painter; and their paths, sorted."""
    folder = tmp_path_factory.mktemp("photos")
    for index, scene in enumerate(painter.scenes(12, "ray-tests")):
        painter.paint(scene, 64 + 8 * (index % 3), 64).save(folder / f"scene-{index:02d}.png")
    return folder, sorted(str(path) for path in folder.iterdir())
