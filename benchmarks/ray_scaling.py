"""What the Ray path costs, and how it scales: captioning the same images in-process and on Ray.

Images: scenes drawn by the tests' independent painter (64 px). Each arm runs twice, on all the
images and on a quarter of them, so that the fixed cost (cluster, workers, model loads) and the
marginal throughput (images per second once running) are told apart:

1. the in-process host (``Host.caption`` over the list) against ``blip2plugins_ray.run`` with one
   2-CPU worker on a local one-node cluster, on the same 2 cores: what Ray's scheduling, data
   movement and Parquet writing cost here;
2. ``run`` on one simulated node (one CPU, one worker) against two (one CPU each, two workers),
   both on this machine's 2 cores;
3. on paper: hours and machine-hours for 100M images on N one-CPU workers, from the measured
   marginal throughput and fixed cost, and the driver's listing rate (where it stops scaling). These
   are estimates, from CPU figures on the model measured (no GPU figures yet).

    python benchmarks/ray_scaling.py [--quick] [--images 400] [--model random-7m|demo]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.ROOT / "tests"))

from independent import painter  # noqa: E402


def images(folder: Path, count: int) -> list[str]:
    for index, scene in enumerate(painter.scenes(count, "ray-benchmark")):
        painter.paint(scene).save(folder / f"{index:05d}.png")
    return sorted(str(path) for path in folder.iterdir())


def in_process(model: str, paths: list[str]) -> float:
    """Seconds to caption ``paths`` with a host in this process (loaded before the clock starts)."""
    from blip2plugins import Host

    with Host.load(model) as host:
        host.caption(paths[:4])  # warm up
        started = time.perf_counter()
        host.caption(paths)
        return time.perf_counter() - started


def on_ray(model: str, folders: list[Path], out: Path, nodes: int, cpus: int, workers: int) -> list[float]:
    """Seconds of each ``run`` (one per folder, in order) on a fresh local cluster of ``nodes``."""
    import ray
    from blip2plugins_ray import run
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        seconds = []
        for index, folder in enumerate(folders):
            summary = run("caption", [str(folder)], out / str(index), model=model, workers=workers,
                          cpus_per_worker=cpus, batch_size=16)
            assert summary.rows and not summary.errors, summary
            seconds.append(summary.seconds)
        return seconds
    finally:
        ray.shutdown()
        cluster.shutdown()


def split(count: int, small: float, large: float) -> tuple[float, float]:
    """(fixed seconds, images per second) from the times of a quarter and of all ``count`` images."""
    rate = (count - count // 4) / max(large - small, 1e-9)
    return max(0.0, small - (count // 4) / rate), rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--model", default="random-7m", help="random-7m (built here, 224 px) or a preset (demo)")
    p.add_argument("--quick", action="store_true", help="80 images")
    args = p.parse_args()
    count = 80 if args.quick else args.images
    model = c.build_model(args.model) if args.model in c.BUILT else args.model
    c.torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        everything, quarter = work / "all", work / "quarter"
        everything.mkdir()
        quarter.mkdir()
        paths = images(everything, count)
        for path in paths[: count // 4]:
            shutil.copy(path, quarter)
        from blip2plugins_ray.sources import plan

        started = time.perf_counter()
        listed = plan([str(everything)])
        listing = len(listed) / (time.perf_counter() - started)

        local = split(count, in_process(model, paths[: count // 4]), in_process(model, paths))
        ray1 = split(count, *on_ray(model, [quarter, everything], work / "one", nodes=1, cpus=2, workers=1))
        single = split(count, *on_ray(model, [quarter, everything], work / "a", nodes=1, cpus=1, workers=1))
        double = split(count, *on_ray(model, [quarter, everything], work / "b", nodes=2, cpus=1, workers=2))
        rows = [["in-process host, 2 threads", f"{local[0]:.1f}", f"{local[1]:.1f}"],
                ["Ray: 1 node x 2 CPUs, 1 worker", f"{ray1[0]:.1f}", f"{ray1[1]:.1f}"],
                ["Ray: 1 node x 1 CPU, 1 worker", f"{single[0]:.1f}", f"{single[1]:.1f}"],
                ["Ray: 2 nodes x 1 CPU, 2 workers", f"{double[0]:.1f}", f"{double[1]:.1f}"]]
        print(f"{count} images, model {args.model}; driver lists {listing:,.0f} files/s")
        c.table(["arm", "fixed s", "images/s"], rows)
        print(f"\nRay / in-process throughput on the same 2 cores: {ray1[1] / local[1]:.2f}x")
        print(f"2 nodes / 1 node throughput: {double[1] / single[1]:.2f}x (ideal 2x; both nodes share these 2 cores)")
        per_worker = single[1]
        print(f"\nOn paper, 100M images on one-CPU workers of {per_worker:.1f} images/s each, {single[0]:.0f} s to "
              f"start (estimates; the driver lists the sources first: {1e8 / listing / 3600:.1f} h at "
              f"{listing:,.0f} files/s, so give it Parquet shards of references instead, which the cluster reads):")
        print("| workers | hours | machine-hours |")
        print("|---|---|---|")
        for workers in (10, 100, 1000, 10000):
            hours = (1e8 / per_worker / workers + single[0]) / 3600
            print(f"| {workers:,} | {hours:,.1f} | {hours * workers:,.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
