"""Real-size BLIP-2 on this machine: load time, peak memory and seconds per image, per dtype.

Builds random-weight checkpoints with the published shapes of ``Salesforce/blip2-opt-2.7b`` and
``Salesforce/blip2-flan-t5-xl`` (ViT-g 1408 wide, 39 layers; Q-Former 768, 32 queries; OPT-2.7b or
Flan-T5-XL), stored in float32 as the hub's are, in sharded safetensors. Each load option then runs
in a fresh process: ``Host.load`` (timed), one 640x480 image, then a batch of 8, generating exactly
``--max-new-tokens`` tokens (random weights would otherwise stop at once). Peak resident memory is
the process's own (``wait4``). One ``blip2 caption --model DIR`` run per family checks the command.
Last, ``Host.load(opt, retrieval=ITM)`` with a retrieval checkpoint of the published
``blip2-itm-vit-g`` shapes: with equal vision weights the two share one ViT-g, and the run says
what that saves against a retrieval checkpoint whose vision weights differ.

Not a CI test: it needs about 45 GB of disk and up to 23 GB of memory, and about 20 minutes on 2 cores.

    python benchmarks/real_size.py [--family opt|t5|both] [--folder DIR] [--loads float32,bfloat16,8bit]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the checkout on sys.path)
from _common import table

#: The language models of the published configs (their vision and Q-Former parts are the Blip2Config
#: defaults: ViT-g and a 768-wide Q-Former). Each checkpoint's image_token_index is its tokenizer's.
TEXT: dict[str, dict[str, Any]] = {
    "opt": dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=50304, word_embed_proj_dim=2560, eos_token_id=50118, prefix="</s>"),
    "t5": dict(model_type="t5", d_model=2048, d_ff=5120, d_kv=64, num_layers=24, num_decoder_layers=24, num_heads=32,
               vocab_size=32128, feed_forward_proj="gated-gelu", dense_act_fn="gelu", is_gated_act=True,
               tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
}
NAMES = {"opt": "blip2-opt-2.7b", "t5": "blip2-flan-t5-xl", "itm": "blip2-itm-vit-g"}
CHILD = r"""
import json, sys, time
import torch
from PIL import Image
from blip2plugins.host import Host
folder, load, tokens, rows = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
started = time.perf_counter()
host = Host.load(folder, device="cpu", **load)
loaded = time.perf_counter()
images = [Image.effect_mandelbrot((640, 480), (-2 + i / 10, -1.2, 1, 1.2), 40 + i).convert("RGB") for i in range(rows)]
options = dict(max_new_tokens=tokens, min_new_tokens=tokens)
host.caption(images[0], **options)
one = time.perf_counter()
results = host.caption(images, **options)
done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"load_s": loaded - started, "one_s": one - loaded, "batch_s": done - one,
                  "anon_after_gb": int(status["RssAnon"].split()[0]) * 1024 / 1e9,
                  "ok": all(r.ok for r in results), "shared": bool(host.loaded.retrieval is not None and
                  host.loaded.retrieval.model.vision_model is host.loaded.model.vision_model)}))
"""


def build(kind: str, folder: Path, vision_from: Path | None = None, seed: int = 0) -> Path:
    """A random-weight checkpoint of ``kind`` (opt, t5 or itm) in ``folder``, stored in float32;
    ``vision_from`` gives an itm checkpoint that checkpoint's vision weights. Reused when present."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    from blip2plugins.building import ModelSpec, build_processor, train_tokenizer
    from blip2plugins.demo import world
    from blip2plugins.families import OPT, T5

    if (folder / "config.json").is_file():
        return folder
    started = time.perf_counter()
    family = "t5" if kind == "t5" else "opt"
    processor = build_processor(train_tokenizer(world.corpus((T5 if family == "t5" else OPT).render_question), family),
                                ModelSpec(image_size=224, num_query_tokens=32))
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
    if kind == "itm":
        config = Blip2Config(num_query_tokens=32, image_text_hidden_size=256, image_token_index=image_token,
                             qformer_config={"use_qformer_text_input": True})
        model_class: Any = Blip2ForImageTextRetrieval
    else:
        config = Blip2Config(text_config=TEXT[kind], num_query_tokens=32, image_text_hidden_size=256,
                             image_token_index=image_token, use_decoder_only_language_model=kind == "opt")
        model_class = Blip2ForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config)  # the class's own initialisation, in float32
    if vision_from is not None:
        from safetensors import safe_open

        index = json.loads((vision_from / "model.safetensors.index.json").read_text())["weight_map"]
        state = {}
        for key, shard in index.items():
            if key.startswith("vision_model."):
                with safe_open(vision_from / shard, framework="pt") as weights:
                    state[key.removeprefix("vision_model.")] = weights.get_tensor(key)
        model.vision_model.load_state_dict(state)
    model.save_pretrained(folder, max_shard_size="5GB")
    processor.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {NAMES[kind]}-shaped checkpoint: {params / 1e9:.3f} B parameters, "
          f"{sum(f.stat().st_size for f in folder.glob('*.safetensors')) / 1e9:.1f} GB in {folder} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return folder


def measured(argv: list[str], timeout: float) -> tuple[dict[str, Any] | str, float, float, float]:
    """Run ``argv``: its JSON line (or why it failed), wall seconds, and its peak memory in GB: resident
    (``wait4``; it counts the pages of the mmapped weights files, which the kernel can drop) and
    anonymous (``RssAnon``, sampled every 0.1 s: what the process itself holds)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, text=True,
                                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        anon = 0.0
        while True:
            anon = max(anon, _anon_gb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                return f"over {timeout:.0f} s", time.perf_counter() - started, usage.ru_maxrss / 1e6, anon
            time.sleep(0.1)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall, peak = time.perf_counter() - started, usage.ru_maxrss / 1e6
        out.seek(0)
        err.seek(0)
        if process.returncode:
            return (err.read().strip().splitlines() or ["?"])[-1][:200], wall, peak, anon
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else "no JSON output"), wall, peak, anon


def _anon_gb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["opt", "t5", "both"], default="both")
    parser.add_argument("--folder", type=Path, default=Path.home() / ".cache" / "blip2plugins" / "real-size",
                        help="where the checkpoints are built (and reused; default ~/.cache/blip2plugins/real-size)")
    parser.add_argument("--loads", default="float32,bfloat16,8bit", help="load options to run (default all three)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds each run may take")
    parser.add_argument("--no-sharing", action="store_true", help="skip the vision-sharing check")
    args = parser.parse_args()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    print(f"== real size (machine: {os.cpu_count()} cpus, {memory:.1f} GB memory)")
    families = ["opt", "t5"] if args.family == "both" else [args.family]
    loads = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"}, "8bit": {"quantize": "8bit"}}
    rows = []
    for family in families:
        folder = build(family, args.folder / NAMES[family])
        for label in args.loads.split(","):
            argv = [sys.executable, "-c", CHILD, str(folder), json.dumps(loads[label]), str(args.max_new_tokens),
                    str(args.batch)]
            result, wall, peak, anon = measured(argv, args.timeout)
            if isinstance(result, str):
                rows.append([NAMES[family], label, "-", "-", "-", peak, anon, f"failed: {result}"])
            else:
                rows.append([NAMES[family], label, result["load_s"], result["one_s"], result["batch_s"] / args.batch,
                             peak, anon, "ok" if result["ok"] else "an item failed"])
            print(rows[-1], flush=True)
        image = args.folder / "photo.png"
        if not image.is_file():
            from PIL import Image

            Image.effect_mandelbrot((640, 480), (-2, -1.2, 1, 1.2), 40).convert("RGB").save(image)
        blip2 = Path(sys.executable).with_name("blip2")
        result, wall, peak, anon = measured([str(blip2), "caption", "--model", str(folder), "--dtype", "bfloat16",
                                             "--max-new-tokens", str(args.max_new_tokens), "--json", str(image)],
                                            args.timeout)
        rows.append([NAMES[family], "blip2 caption --dtype bfloat16", "-", wall, "-", peak, anon,
                     "ok" if isinstance(result, dict) and not result.get("error") else f"failed: {result}"])
        print(rows[-1], flush=True)
    table(["checkpoint", "load", "load s", "1 image s", "s/image in 8", "peak RSS GB", "peak anon GB", "result"], rows)
    if args.no_sharing or "opt" not in families:
        return
    opt = args.folder / NAMES["opt"]
    same = build("itm", args.folder / f"{NAMES['itm']}-same-vision", vision_from=opt)
    other = build("itm", args.folder / f"{NAMES['itm']}-other-vision", seed=1)
    sharing = []
    for label, head in (("equal vision weights", same), ("different vision weights", other)):
        code = CHILD.replace('Host.load(folder, device="cpu", **load)',
                             f'Host.load(folder, device="cpu", retrieval={str(head)!r}, **load)')
        result, wall, peak, anon = measured([sys.executable, "-c", code, str(opt), json.dumps({"dtype": "bfloat16"}),
                                             str(args.max_new_tokens), "1"], args.timeout)
        shared = result.get("shared") if isinstance(result, dict) else f"failed: {result}"
        after = result["anon_after_gb"] if isinstance(result, dict) else "-"
        sharing.append([label, shared, result["load_s"] if isinstance(result, dict) else "-", peak, anon, after])
    table(["retrieval checkpoint (bfloat16)", "shares the ViT-g", "load s", "peak RSS GB", "peak anon GB",
           "anon GB after"], sharing)


if __name__ == "__main__":
    main()
