"""Training speed and memory per method: samples/second and peak memory of lora / qformer / full.

Each (model, method) pair trains in its own child process, so peak memory is that run's alone:
the peak resident set during training minus the resident set after loading the model (weights
that every method shares), on CPU. Models: the bundled demo model and a ~7M-parameter 224 px model
with random weights (``random-7m``, built here). The data are demo-world captions.

    python benchmarks/training_methods.py [--steps 30] [--batch 16] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import _common

METHODS = ("lora", "qformer", "full")


def child(model: str, method: str, steps: int, batch: int, threads: int) -> dict[str, float]:
    import torch

    from blip2plugins import models
    from blip2plugins.demo import world
    from blip2plugins.training import Example, TrainConfig, apply_method, count_parameters, train

    torch.set_num_threads(threads)
    source = _common.build_model(model) if model in _common.BUILT else model
    loaded = models.load(source, dtype="float32")
    rng = random.Random(0)
    scenes = [world.random_scene(rng) for _ in range(steps * batch)]
    data = [Example(world.render(s), "", world.caption(s)) for s in scenes]
    config = TrainConfig(method=method, steps=steps, batch_size=batch, lr=1e-4, warmup=1, progress=False,
                         log_every=steps)
    trainee = apply_method(loaded.model, config)
    trainable, total = count_parameters(trainee)
    before = _rss_kb()
    started = time.perf_counter()
    train(trainee, loaded.processor, data, config)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"samples_per_s": steps * batch / seconds, "peak_mb": max(0, peak - before) / 1024,
            "trainable": trainable, "total": total, "seconds": seconds}


def _rss_kb() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,random-7m", help="comma-separated (default demo,random-7m)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--batch", type=int, default=16, help="examples per step (default 16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 steps of batch 4: a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch = 3, 4
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.batch, args.threads)))
        return
    _common.setup(argparse.Namespace(threads=args.threads), "training speed and memory per method")
    rows = []
    for model in args.models.split(","):
        base = None
        for method in METHODS:
            done = subprocess.run([sys.executable, __file__, "--child", model, method, "--steps", str(args.steps),
                                   "--batch", str(args.batch), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or r
            rows.append([model, method, f"{r['trainable']:,} / {r['total']:,}", r["samples_per_s"],
                         r["samples_per_s"] / base["samples_per_s"], r["peak_mb"]])
    _common.table(["model", "method", "trainable / total", "samples/s", "vs lora", "peak MB above weights"], rows)


if __name__ == "__main__":
    main()
