"""Label Studio backend: ``/predict`` with 64 tasks over HTTP vs the backend's own host captioning them directly.

The HTTP arm is what Label Studio's "Retrieve predictions" costs: the JSON request, fetching each task's
PNG from a stand-in Label Studio on loopback (with credentials), the batched host call, the JSON
reply. The direct arm is the same host captioning the same image URLs itself (``host.caption(urls)``:
its loader downloads them). A third arm hands the host the PNG bytes already in memory: no download
at all, the floor. Rounds are interleaved; medians are compared. Goal: HTTP adds at most 10 % to the
direct arm.

    python benchmarks/label_studio_predict.py [--quick] [--tasks 64] [--rounds 15]
"""

from __future__ import annotations

import os
import tempfile

import httpx

import _common as c
import _label_studio as ls

GOAL = 0.10


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per arm (default 15, --quick 3)")
    args = p.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    c.setup(args, f"label studio /predict overhead: {args.tasks} tasks, {rounds} rounds")

    from blip2plugins.demo import scenarios, world
    from blip2plugins_label_studio.settings import Settings

    scenes = scenarios.scenes(args.tasks, f"bench:{args.seed}")
    files = {f"/data/upload/1/img{i}.png": ls.png(world.render(s)) for i, s in enumerate(scenes)}
    tasks = [{"id": i, "data": {"image": path}} for i, path in enumerate(files)]
    os.environ["LABEL_STUDIO_API_KEY"] = ls.TOKEN
    folder = tempfile.mkdtemp(prefix="blip2-bench-ls-")
    with ls.fake_label_studio(files) as ls_url:
        settings = Settings(model=args.model, label_studio_url=ls_url, model_dir=folder, adapter_store=f"{folder}/store",
                            max_new_tokens=args.max_new_tokens, log_level="warning")
        with ls.backend(settings) as (url, backend), httpx.Client(timeout=600) as client:
            host = backend.serving.loaded.result()
            body = ls.predict_body(tasks, ls.CONFIG)
            urls = [ls_url + path for path in files]
            blobs = list(files.values())
            options = {"max_new_tokens": args.max_new_tokens}
            arms = {
                "POST /predict (HTTP)": lambda: [r["result"][0]["value"]["text"][0]
                                                 for r in client.post(f"{url}/predict", json=body).json()["results"]],
                "host.caption(urls)": lambda: [r.text for r in host.caption(urls, **options)],
                "host.caption(bytes)": lambda: [r.text for r in host.caption(blobs, **options)],
            }
            texts = {name: fn() for name, fn in arms.items()}
            times: dict[str, list[float]] = {name: [] for name in arms}
            order = list(arms)
            for i in range(rounds):
                for name in order[i % len(order):] + order[:i % len(order)]:  # rotate who goes first
                    elapsed, texts[name] = c.timed(arms[name])
                    times[name].append(elapsed)
    medians = {name: c.median(values) for name, values in times.items()}
    c.table(["arm", "median ms", "min ms", "ms/task"], [
        [name, 1000 * medians[name], 1000 * min(times[name]), 1000 * medians[name] / args.tasks] for name in arms])
    http, direct, floor = (medians[name] for name in arms)
    same = sum(len({t[i] for t in texts.values()}) == 1 for i in range(args.tasks))
    print(f"same captions in every arm: {same}/{args.tasks}")
    print(f"vs bytes already in memory (no download): {100 * (http / floor - 1):+.1f}%")
    overhead = http / direct - 1
    print(f"overhead: {100 * overhead:+.1f}% (goal <= {100 * GOAL:g}%) {'PASS' if overhead <= GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
