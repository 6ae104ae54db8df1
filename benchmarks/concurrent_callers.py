"""Many callers, one host: 16 threads each captioning one image at once vs the same 16 calls one after another.

Each caller calls ``host.caption(path)`` on its own 640x480 PNG file; the threads start together
(``threading.Barrier``) and the host batches what they queue. Several rounds, median reported.
Goal: concurrent at least 4x faster than serialized.

    python benchmarks/concurrent_callers.py [--quick] [--model demo] [--callers 16] [--rounds 7]
"""

from __future__ import annotations

import threading
import time

import _common as c

GOAL = 4.0


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=None, help="rounds per arm (default 7, --quick 2)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 7)
    n = args.callers
    c.setup(args, f"concurrent callers: {n} threads x 1 image {args.width}x{args.height} PNG, "
                  f"max_new_tokens {args.max_new_tokens}, {rounds} rounds")

    host, _ = c.load_host(args)
    paths = c.write_pngs(c.draw_images(n, args.width, args.height, seed=args.seed))
    tokens = args.max_new_tokens

    def serial() -> list[str]:
        return [host.caption(path, max_new_tokens=tokens).text for path in paths]

    def concurrent() -> list[str]:
        barrier = threading.Barrier(n + 1)
        results: list = [None] * n

        def caller(i: int) -> None:
            barrier.wait()
            results[i] = host.caption(paths[i], max_new_tokens=tokens)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()  # the clock starts when every caller is released
        start = time.perf_counter()
        for t in threads:
            t.join()
        concurrent.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
        concurrent.results = results  # type: ignore[attr-defined]
        return [r.text for r in results]

    serial()
    concurrent()
    rows, ratios, serial_times, conc_times, same = [], [], [], [], True
    for r in range(rounds):
        s_time, s_texts = c.timed(serial)
        before = host.stats()
        conc_texts = concurrent()
        after = host.stats()
        k_time = concurrent.elapsed  # type: ignore[attr-defined]
        serial_times.append(s_time)
        conc_times.append(k_time)
        ratios.append(s_time / k_time)
        same &= s_texts == conc_texts
        got = concurrent.results  # type: ignore[attr-defined]
        # per caller: its own image loading + preprocessing, then the wait in the queue; per batch: model time
        prep = max(x.timings["preprocess_s"] for x in got)
        model = sum({(x.timings["encode_s"], x.timings["generate_s"]) for x in got}, ())
        rows.append([r + 1, 1000 * s_time, 1000 * k_time, s_time / k_time,
                     after["batches"] - before["batches"], 1000 * prep, 1000 * sum(model)])
    c.table(["round", "serial ms", "concurrent ms", "ratio", "batches", "slowest caller prep ms",
             "model ms (all batches)"], rows)
    print(f"median: serial {1000 * c.median(serial_times):.1f} ms ({1000 * c.median(serial_times) / n:.1f} ms/call), "
          f"concurrent {1000 * c.median(conc_times):.1f} ms; same captions both ways: {'yes' if same else 'no'}")
    c.verdict(c.median(ratios), GOAL)
    host.close()


if __name__ == "__main__":
    main()
