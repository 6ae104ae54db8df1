"""Default plugin: the ``blip2 demo`` commands (train the bundled demo model, evaluate a model)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..hookspecs import hookimpl
from . import MODEL_DIR


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.group()
    def demo() -> None:
        """The bundled demo model: a tiny BLIP-2 trained from scratch on synthetic shape scenes."""

    @demo.command("train")
    @click.option("--seed", type=int, default=None, help="Seed of the data, weights and order (default: the shipped model's).")
    @click.option("--steps", type=int, default=None, help="Optimizer steps (default: the shipped model's).")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=MODEL_DIR, show_default=True,
                  help="Folder to write the model, processor and model card to.")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    @click.option("--eval-scenes", type=int, default=None, help="Held-out scenes to measure (default: the recipe's).")
    def train_cmd(seed: int | None, steps: int | None, out: Path, threads: int, eval_scenes: int | None) -> None:
        """Train the demo model from scratch, measure it on fresh scenes and save it with its card."""
        from .recipe import DEFAULT_SEED, DEFAULT_STEPS, train_demo

        kwargs = {} if eval_scenes is None else {"eval_scenes": eval_scenes}
        facts = train_demo(out, seed=DEFAULT_SEED if seed is None else seed,
                           steps=DEFAULT_STEPS if steps is None else steps, threads=threads,
                           log=lambda line: click.echo(line, err=True), **kwargs)
        click.echo(json.dumps({"out": str(out), "size_bytes": facts["size_bytes"], "params": facts["params"],
                               "total_seconds": facts["total_seconds"], **facts["metrics"]}, indent=2))

    @demo.command("eval")
    @click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=MODEL_DIR,
                  show_default=True, help="A BLIP-2 folder (model + processor).")
    @click.option("--scenes", type=int, default=500, show_default=True, help="Number of fresh scenes.")
    @click.option("--seed", type=int, default=1, show_default=True, help="Seed of the scenes.")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    def eval_cmd(model_dir: Path, scenes: int, seed: int, threads: int) -> None:
        """Measure caption exact match and VQA accuracy on fresh scenes; prints JSON."""
        import torch

        from ..host import Host
        from .recipe import evaluate, host_fns

        torch.set_num_threads(threads)
        with Host.load(str(model_dir)) as host:
            metrics = evaluate(*host_fns(host), n_scenes=scenes, seed=seed)
        click.echo(json.dumps(metrics, indent=2))
