"""Label Studio backend: ``/webhook`` latency while 50 ``/predict`` calls wait on a slow image host.

Label Studio gives up on a webhook after 1 s, and the label it carried is lost. A host that drips its
image a byte at a time (here a local server on 127.0.0.1, one byte every 0.5 s) keeps the 50 calls
waiting for the whole ``download_timeout``; meanwhile ANNOTATION_CREATED webhooks are timed, one after
another, as Label Studio sends them, and compared with the same webhooks on the idle backend.
Goal: p99 <= 100 ms while the predictions wait.

    python benchmarks/label_studio_webhook_latency.py [--quick] [--webhooks 200] [--predicts 50]
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

import _common as c
import _label_studio as ls

GOAL_MS = 100.0


def drip_server(stopped: threading.Event, interval: float = 0.5) -> tuple[ThreadingHTTPServer, list[int]]:
    """A host answering every GET with a PNG's headers, then a byte every ``interval`` s; counts live drips."""
    live = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            with lock:
                live[0] += 1
            try:
                while not stopped.wait(interval):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            except OSError:
                pass
            finally:
                with lock:
                    live[0] -= 1
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, live


def webhook(n: int) -> dict[str, Any]:
    region = {"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [f"a red circle {n}"]}}
    return {"action": "ANNOTATION_CREATED",
            "annotation": {"id": 1000 + n, "result": [region], "was_cancelled": False, "task": 1 + n,
                           "updated_at": "2026-11-30T05:00:00Z"},
            "task": {"id": 1 + n, "data": {"image": f"/data/upload/1/img{n}.png"}},
            "project": {"id": 1, "label_config": ls.CONFIG}}


def timed_webhooks(http: httpx.Client, first: int, count: int) -> list[float]:
    """Milliseconds of ``count`` webhooks sent one after another (each must answer 200 with the label recorded)."""
    times = []
    for n in range(first, first + count):
        began = time.perf_counter()
        answer = http.post("/webhook", json=webhook(n))
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200 and answer.json()["recorded"] == 1, answer.text
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--webhooks", type=int, default=None, help="webhooks timed per phase (default 200, --quick 30)")
    p.add_argument("--predicts", type=int, default=50, help="/predict calls waiting on the slow host")
    args = p.parse_args()
    count = args.webhooks or (30 if args.quick else 200)
    c.setup(args, f"label studio /webhook latency: {count} webhooks, idle and with {args.predicts} /predict waiting")

    from blip2plugins_label_studio.settings import Settings

    stopped = threading.Event()
    slow, dripping = drip_server(stopped)
    host = f"127.0.0.1:{slow.server_address[1]}"
    os.environ.pop("LABEL_STUDIO_URL", None)
    with tempfile.TemporaryDirectory(prefix="blip2-bench-ls-") as folder:
        settings = Settings(model=args.model, model_dir=f"{folder}/model-dir", adapter_store=f"{folder}/store",
                            allow_hosts=(host,), download_timeout=600.0, log_level="warning")
        with ls.backend(settings) as (url, backend), httpx.Client(base_url=url, timeout=30) as http:
            timed_webhooks(http, 0, 10)  # warm-up
            idle = timed_webhooks(http, 10, count)
            predicting = httpx.Client(base_url=url, timeout=None, limits=httpx.Limits(max_connections=args.predicts))
            calls = [threading.Thread(target=predicting.post, args=("/predict",), daemon=True,
                                      kwargs={"json": ls.predict_body([{"id": i, "data": {"image": f"http://{host}/{i}.png"}}],
                                                                      ls.CONFIG)})
                     for i in range(1, args.predicts + 1)]
            for call in calls:
                call.start()
            deadline = time.monotonic() + 60
            while dripping[0] < min(args.predicts, settings.max_downloads) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # every call has arrived
            busy = timed_webhooks(http, 10 + count, count)
            still, drips = sum(call.is_alive() for call in calls), dripping[0]
            stopped.set()  # the slow host goes away: the waiting calls end
            for call in calls:
                call.join(60)
            predicting.close()
    slow.shutdown()
    c.table(["phase", "webhooks", "p50 ms", "p99 ms", "max ms"],
            [["idle", count, f"{percentile(idle, 50):.1f}", f"{percentile(idle, 99):.1f}", f"{max(idle):.1f}"],
             [f"{args.predicts} /predict waiting ({still} still waiting at the end, {drips} downloads dripping)",
              count, f"{percentile(busy, 50):.1f}", f"{percentile(busy, 99):.1f}", f"{max(busy):.1f}"]])
    p99 = percentile(busy, 99)
    print(f"webhook p99 while predictions wait: {p99:.1f} ms (goal <= {GOAL_MS:g} ms) "
          f"{'PASS' if p99 <= GOAL_MS and still == args.predicts else 'FAIL'}")


if __name__ == "__main__":
    main()
