"""The prepared GPU check: fidelity, quantized loading, throughput and memory at real size, one table.

On CUDA it builds random-weight checkpoints of the published ``blip2-opt-2.7b`` and
``blip2-flan-t5-xl`` shapes in bfloat16 (``real_size.py``'s configs), then runs each step in a process
of its own, with a deadline, so that one failure leaves the other rows:

- fidelity: host against raw ``Blip2ForConditionalGeneration.generate`` one image at a time, in
  float16 and bfloat16, for 8 images with prompts of mixed lengths: tokens equal one by one, and
  in the host's batches;
- ``quantize="8bit"`` and ``"4bit"`` load and caption (needs bitsandbytes);
- ``caption_throughput``, ``concurrent_callers`` and ``batch_overhead`` at real size (their ratios);
- peak GPU memory of each load.

Without CUDA (or with ``--cpu``) the same steps run on a tiny random model on the CPU, with the
CUDA-only rows marked skipped: that is how CI tests this script. Sized for 8 minutes on one H100.

    bash benchmarks/gpu_check.sh [--cpu] [--families opt,t5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STEP = r"""
import json, sys, time
import torch
from PIL import Image
sys.path.insert(0, sys.argv[4])
from blip2plugins.host import Host
folder, device, load = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
images = [Image.effect_mandelbrot((640, 480), (-2 + i / 10, -1.2, 1, 1.2), 30 + 5 * i).convert("RGB") for i in range(8)]
words = "a photo of a red circle and a blue square on a gray background".split()
prompts = [" ".join(words[: 3 * i % 13]) for i in range(8)]
options = dict(max_new_tokens=12, min_new_tokens=12)
started = time.perf_counter()
with Host.load(folder, device=device, retrieval=False, **load) as host:
    loaded = time.perf_counter() - started
    report = {"load_s": loaded}
    ours = [host.caption(image, prompt=prompt, **options) for image, prompt in zip(images, prompts)]
    report["ok"] = all(r.ok for r in ours)
    if "quantize" not in load:
        model, processor = host.loaded.model, host.loaded.processor
        decoder_only = host.loaded.family.decoder_only
        raw = []
        for image, prompt in zip(images, prompts):
            inputs = processor(images=image, text=prompt, return_tensors="pt").to(host.loaded.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(host.loaded.dtype)
            with torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, **options)
            new = out[0, inputs["input_ids"].shape[1]:] if decoder_only else out[0, 1:]
            text = processor.tokenizer.decode(new, skip_special_tokens=True)
            raw.append(((prompt + text) if decoder_only else text).strip())  # the host's caption text
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(lambda item: host.caption(item[0], prompt=item[1], **options), zip(images, prompts)))
        report["alone_equal"] = sum(r.raw_text == t for r, t in zip(ours, raw))
        report["batched_equal"] = sum(r.raw_text == t for r, t in zip(batched, raw))
        report["largest_batch"] = host.stats()["largest_batch"]
    report["seconds"] = time.perf_counter() - started
report["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
print(json.dumps(report))
"""


def run(argv: list[str], timeout: float) -> tuple[str, str, float]:
    """Run ``argv`` with a deadline: (stdout, why it failed or '', seconds)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return "", f"over {timeout:.0f} s", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return done.stdout, (lines or ["exit status %d" % done.returncode])[-1][:160], seconds
    return done.stdout, "", seconds


def build(family: str, folder: Path, *, cuda: bool) -> Path:
    """A checkpoint to check: the published shapes in bfloat16 on CUDA, else a tiny random model."""
    if (folder / "config.json").is_file():
        return folder
    if cuda:
        code = ("import sys; sys.path.insert(0, sys.argv[3]); import real_size, torch; "
                "torch.set_default_device('cuda'); torch.set_default_dtype(torch.bfloat16); "
                "from pathlib import Path; real_size.build(sys.argv[1], Path(sys.argv[2]))")
        _, why, _ = run([sys.executable, "-c", code, family, str(folder), str(HERE)], 600)
        if why:
            raise SystemExit(f"gpu_check: could not build the {family} checkpoint: {why}")
        return folder
    from blip2plugins.building import ModelSpec, build as build_tiny
    from blip2plugins.demo import world
    from blip2plugins.families import OPT, T5

    render = (T5 if family == "t5" else OPT).render_question
    model, processor = build_tiny(world.corpus(render), family, ModelSpec(image_size=48, hidden=64, layers=2, heads=4,
                                                                          num_query_tokens=8, max_positions=96))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU mode even where CUDA is available")
    parser.add_argument("--families", default="opt,t5", help="checkpoints to check fidelity on (default opt,t5)")
    parser.add_argument("--out", type=Path, default=None, help="where checkpoints are built (default: a temp folder)")
    parser.add_argument("--step-timeout", type=float, default=240, help="seconds each step may take (default 240)")
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(HERE.parent))
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    card = torch.cuda.get_device_name() if cuda else "no CUDA: tiny random models on the CPU, CUDA rows skipped"
    print(f"== gpu check: {card}; torch {torch.__version__}", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="blip2-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    folders = {}
    for family in args.families.split(","):
        started = time.perf_counter()
        folders[family] = build(family, out / family, cuda=cuda)
        print(f"built {family} in {time.perf_counter() - started:.0f} s", flush=True)
    loads: list[tuple[str, dict[str, Any]]] = [("float16", {"dtype": "float16"}), ("bfloat16", {"dtype": "bfloat16"}),
                                               ("float32", {"dtype": "float32"}), ("8bit", {"quantize": "8bit"}),
                                               ("4bit", {"quantize": "4bit"})]
    for family, folder in folders.items():
        for label, load in loads:
            if family != "opt" and label not in ("float16", "bfloat16"):  # fidelity only
                continue
            if not cuda and label in ("float16", "8bit", "4bit"):
                rows.append([f"{family} {label}", "skipped: no CUDA", "-", "-"])
                continue
            stdout, why, seconds = run([sys.executable, "-c", STEP, str(folder), device, json.dumps(load), str(HERE.parent)],
                                       args.step_timeout)
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if why or not lines:
                rows.append([f"{family} {label}", f"FAILED: {why or 'no report'}", f"{seconds:.0f}", "-"])
            else:
                report = json.loads(lines[-1])
                what = "captions ok" if report["ok"] else "an item FAILED"
                if "alone_equal" in report:
                    what = (f"tokens equal raw generate: {report['alone_equal']}/8 alone, {report['batched_equal']}/8 "
                            f"batched (largest batch {report['largest_batch']})")
                peak = f"{report['peak_gb']:.2f}" if report["peak_gb"] is not None else "-"
                rows.append([f"{family} {label}", what, f"{report['seconds']:.0f} (load {report['load_s']:.0f})", peak])
            print(rows[-1], flush=True)
    bench = ["--model", str(folders.get("opt", next(iter(folders.values()))))] + ([] if cuda else ["--quick"])
    for name, extra in (("caption_throughput", ["--images", "64", "--rounds", "1", "--no-breakdown"]),
                        ("concurrent_callers", ["--rounds", "3"]), ("batch_overhead", ["--rounds", "10", "--no-breakdown"])):
        stdout, why, seconds = run([sys.executable, str(HERE / f"{name}.py"), *bench, *(extra if cuda else [])],
                                   args.step_timeout)
        ratio = [line for line in stdout.splitlines() if line.startswith("ratio:")]
        rows.append([name, f"FAILED: {why}" if why else (ratio[-1] if ratio else "no ratio printed"), f"{seconds:.0f}", "-"])
        print(rows[-1], flush=True)
    widths = [max(len(row[i]) for row in rows + [["step", "result", "seconds", "peak GPU GB"]]) for i in range(4)]
    print()
    for row in [["step", "result", "seconds", "peak GPU GB"], ["-" * w for w in widths]] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    failed = [row for row in rows if "FAILED" in row[1]]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
