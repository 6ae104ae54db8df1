"""Label Studio backend: prediction latency while a training run is going, vs idle (p95 ratio).

An annotator opening tasks one after another: sequential ``/predict`` calls of one task each (the
task's PNG fetched from a stand-in Label Studio). First for ``--idle`` seconds with nothing else
running, then while a training run started by ``START_TRAINING`` (a LoRA recipe on 64 accepted
labels, in its own niced process) is going. Goal: p95 while training at most 2x the idle p95.

    python benchmarks/label_studio_training_latency.py [--quick] [--idle 20] [--train-steps 400]
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

import httpx

import _common as c
import _label_studio as ls

GOAL = 2.0


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--idle", type=float, default=None, help="seconds of idle measurement (default 20, --quick 5)")
    p.add_argument("--train-steps", type=int, default=None, help="steps of the run (default 400, --quick 40)")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of the training run (default 1)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training run (default 10)")
    args = p.parse_args()
    idle_s = args.idle or (5.0 if args.quick else 20.0)
    steps = args.train_steps or (40 if args.quick else 400)
    c.setup(args, f"label studio prediction latency while training: {steps} LoRA steps, "
                  f"{args.train_threads} training thread(s), nice {args.nice}")

    from blip2plugins.demo import scenarios, world
    from blip2plugins_label_studio.settings import Settings

    labeled = scenarios.vocabulary_labels(32, 32, seed=args.seed)
    probes = scenarios.scenes(32, f"bench-probe:{args.seed}")
    files = {f"/data/upload/1/l{i}.png": ls.png(world.render(s)) for i, (s, _) in enumerate(labeled)}
    files |= {f"/data/upload/1/p{i}.png": ls.png(world.render(s)) for i, s in enumerate(probes)}
    folder = tempfile.mkdtemp(prefix="blip2-bench-ls-train-")
    recipe = os.path.join(folder, "recipe.json")
    with open(recipe, "w") as out:
        json.dump({"train": {"method": "lora", "steps": steps, "batch_size": 16, "lr": 2e-3, "warmup": 10},
                   "eval_split": 0.1}, out)
    os.environ["LABEL_STUDIO_API_KEY"] = ls.TOKEN
    with ls.fake_label_studio(files) as ls_url:
        settings = Settings(model=args.model, label_studio_url=ls_url, model_dir=folder, adapter_store=f"{folder}/store",
                            train_config=recipe, train_threads=args.train_threads, train_nice=args.nice,
                            max_new_tokens=args.max_new_tokens, log_level="warning")
        with ls.backend(settings) as (url, backend), httpx.Client(timeout=120) as client:
            project = {"id": 1, "label_config": ls.CONFIG}
            for i, (_, text) in enumerate(labeled):
                result = [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]
                client.post(f"{url}/webhook", json={"action": "ANNOTATION_CREATED", "project": project,
                                                    "annotation": {"id": i, "result": result, "task": i},
                                                    "task": {"id": i, "data": {"image": f"/data/upload/1/l{i}.png"}}})
            probe = 0

            def one_prediction() -> float:
                nonlocal probe
                image = f"/data/upload/1/p{probe % len(probes)}.png"
                body = ls.predict_body([{"id": 1000 + probe, "data": {"image": image}}], ls.CONFIG)
                probe += 1
                began = time.perf_counter()
                assert client.post(f"{url}/predict", json=body).json()["results"][0]
                return time.perf_counter() - began

            for _ in range(5):
                one_prediction()
            idle, busy = [], []
            end = time.monotonic() + idle_s
            while time.monotonic() < end:
                idle.append(one_prediction())
            client.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": project})
            began = time.monotonic()
            while backend.trainer.queue_length():
                busy.append(one_prediction())
            train_s = time.monotonic() - began
            run = client.get(f"{url}/versions", params={"project": 1}).json()["projects"][0]["runs"][0]
    ratio = p95(busy) / p95(idle)
    c.table(["phase", "calls", "median ms", "p95 ms", "max ms"], [
        ["idle", len(idle), 1000 * statistics.median(idle), 1000 * p95(idle), 1000 * max(idle)],
        ["training", len(busy), 1000 * statistics.median(busy), 1000 * p95(busy), 1000 * max(busy)],
    ])
    print(f"training run: {run['status']} in {train_s:.1f} s ({run.get('reason', '')})")
    print(f"p95 while training / idle: {ratio:.2f}x (goal <= {GOAL:g}x) {'PASS' if ratio <= GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
