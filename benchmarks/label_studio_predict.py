"""Label Studio backend: ``/predict`` with 64 tasks over HTTP vs the backend's own host captioning them directly.

The HTTP arm is what Label Studio's "Retrieve predictions" costs: the JSON request, fetching each task's
PNG from a stand-in Label Studio on loopback (with credentials; the backend's image cache emptied before
each call, as for new tasks), the batched host call, the JSON reply. The direct arm is the same host captioning the same image URLs itself (``host.caption(urls)``:
its loader downloads them). A third arm hands the host the PNG bytes already in memory: no download
at all, the floor. Rounds are interleaved; medians are compared. Goal: HTTP adds at most 10 % to the
direct arm.

With ``--real``, the images are uploaded to the real Label Studio 1.23.2 (its cached environment, as the
slow tests start it) and the backend fetches them from it with a personal access token. The arms are
then ``/predict`` with images new to the backend and with images it fetched before (uploads are
cached), the downloads alone (all at once as ``/predict`` fetches them, and one at a time), and the
host on the bytes in memory.

    python benchmarks/label_studio_predict.py [--quick] [--tasks 64] [--rounds 15] [--real]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import httpx

import _common as c
import _label_studio as ls

GOAL = 0.10


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per arm (default 15, --quick 3)")
    p.add_argument("--real", action="store_true", help="fetch the images from the real Label Studio")
    args = p.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    c.setup(args, f"label studio /predict overhead: {args.tasks} tasks, {rounds} rounds")
    if args.real:
        real(args, rounds)
        return

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
                "POST /predict (HTTP)": lambda: forget_images(backend) and [r["result"][0]["value"]["text"][0]
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


def forget_images(backend: Any) -> bool:
    """Empty the backend's image cache: the next ``/predict`` downloads every image, as for new tasks."""
    from blip2plugins_label_studio.cache import ImageCache

    backend.client._cache = ImageCache(backend.client._cache.max_bytes)
    return True


def real(args: Any, rounds: int) -> None:
    """The arms against the real Label Studio."""
    import anyio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "adapters" / "label_studio"))
    import ls_real

    from blip2plugins.demo import scenarios, world
    from blip2plugins_label_studio.client import LabelStudioClient
    from blip2plugins_label_studio.settings import Settings

    scenes = scenarios.scenes(args.tasks, f"bench:{args.seed}")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blip2-bench-ls-real-")))
        label_studio = stack.enter_context(ls_real.running(folder))
        api = label_studio.api()
        project = ls_real.create_project(api, "predict benchmark", ls.CONFIG)
        ls_real.import_images(api, project, {f"img{i}.png": ls.png(world.render(s)) for i, s in enumerate(scenes)})
        tasks = [{"id": t["id"], "data": t["data"]} for t in ls_real.tasks(api, project)]
        refs = [t["data"]["image"] for t in tasks]
        os.environ["LABEL_STUDIO_API_KEY"] = label_studio.personal_token
        settings = Settings(model=args.model, label_studio_url=label_studio.url, model_dir=str(folder / "model-dir"),
                            adapter_store=str(folder / "store"), max_new_tokens=args.max_new_tokens, log_level="warning")
        url, backend = stack.enter_context(ls.backend(settings))
        client = stack.enter_context(httpx.Client(timeout=600))
        host = backend.serving.loaded.result()
        body = {**ls.predict_body(tasks, ls.CONFIG), "project": str(project)}
        blobs: list[bytes] = []

        def download(at_once: int) -> Callable[[], list[bytes]]:
            async def fetch_all() -> list[bytes]:
                async with LabelStudioClient.from_settings(dataclasses.replace(settings, max_downloads=at_once)) as fetcher:
                    await fetcher.image_bytes(refs[0])  # the access token, as a running backend holds it
                    found: dict[int, bytes] = {}

                    async def one(i: int) -> None:
                        found[i] = await fetcher.image_bytes(refs[i])

                    began = time.perf_counter()
                    async with anyio.create_task_group() as group:
                        for i in range(len(refs)):
                            group.start_soon(one, i)
                    timings.append(time.perf_counter() - began)
                    return [found[i] for i in range(len(refs))]

            return lambda: anyio.run(fetch_all)

        timings: list[float] = []
        blobs = download(16)()
        def predict(cold: bool) -> Callable[[], list[str]]:
            def call() -> list[str]:
                if cold:
                    forget_images(backend)
                return [r["result"][0]["value"]["text"][0] for r in client.post(f"{url}/predict", json=body).json()["results"]]

            return call

        arms: dict[str, Callable[[], Any]] = {
            "POST /predict, images new to the backend": predict(cold=True),
            "POST /predict, images fetched before": predict(cold=False),
            "downloads, 16 at once": download(16),
            "downloads, one at a time": download(1),
            "host.caption(bytes)": lambda: [r.text for r in host.caption(blobs, max_new_tokens=args.max_new_tokens)],
        }
        times: dict[str, list[float]] = {name: [] for name in arms}
        order = list(arms)
        for i in range(rounds):
            for name in order[i % len(order):] + order[:i % len(order)]:
                timings.clear()
                elapsed, _ = c.timed(arms[name])
                times[name].append(timings[0] if timings else elapsed)  # downloads: without the client's setup
    c.table(["arm", "median ms", "min ms", "ms/task"], [
        [name, 1000 * c.median(values), 1000 * min(values), 1000 * c.median(values) / len(tasks)]
        for name, values in times.items()])


if __name__ == "__main__":
    main()
