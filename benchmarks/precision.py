"""Precision and quantization: footprint, accuracy and time of the demo model per load option.

Each option loads the bundled demo model and answers the same fresh scenes through the host
(``recipe.evaluate``): caption exact match, VQA accuracy, seconds. 8/4-bit need bitsandbytes.

    python benchmarks/precision.py [--scenes 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import _common  # noqa: F401  (puts the checkout on sys.path)
import torch

from blip2plugins.demo.recipe import evaluate, host_fns
from blip2plugins.errors import ModelLoadError
from blip2plugins.host import Host

OPTIONS: list[dict[str, str]] = [{}, {"dtype": "bfloat16"}, {"quantize": "8bit"}, {"quantize": "4bit"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="fresh scenes to evaluate (default 200)")
    parser.add_argument("--seed", type=int, default=99, help="seed of the scenes (default 99)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quantize = importlib.util.find_spec("bitsandbytes") is not None
    print(f"{'load':<22} {'footprint':>10} {'caption EM':>10} {'VQA':>6} {'seconds':>8}")
    for option in OPTIONS:
        if "quantize" in option and not quantize:
            print(f"{option['quantize']:<22} skipped: bitsandbytes is not installed")
            continue
        label = ", ".join(f"{k}={v}" for k, v in option.items()) or "float32"
        try:
            host = Host.load("demo", **option)
        except ModelLoadError as error:  # e.g. 4-bit on CPU where a layer's width does not fit the kernels
            print(f"{label:<22} refused: {error}")
            continue
        with host:
            footprint = host.loaded.model.get_memory_footprint()
            started = time.perf_counter()
            metrics = evaluate(*host_fns(host), n_scenes=args.scenes, seed=args.seed)
            seconds = time.perf_counter() - started
        print(f"{label:<22} {footprint / 1e6:>8.2f}MB {metrics['caption_exact_match']:>10.3f} "
              f"{metrics['vqa_accuracy']:>6.3f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
