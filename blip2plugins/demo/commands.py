"""Default plugin: the ``blip2 demo`` commands (train and evaluate the bundled demo model and its retrieval head)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_options import PathName
from ..hookspecs import hookimpl
from . import MODEL_DIR


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.group()
    def demo() -> None:
        """The bundled demo model: a tiny BLIP-2 trained from scratch on synthetic shape scenes."""

    @demo.command("train")
    @click.option("--seed", type=int, default=None, help="Seed of the data, weights and order (default: the shipped model's).")
    @click.option("--vision-steps", type=int, default=None,
                  help="Steps of stage 1, the vision encoder's pretraining (default: the shipped model's).")
    @click.option("--steps", type=int, default=None, help="Steps of stage 2, captions and questions (default: the shipped model's).")
    @click.option("--out", type=PathName(file_okay=False, path_type=Path), default=MODEL_DIR, show_default=True,
                  help="Folder to write the model, processor and model card to.")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    @click.option("--eval-scenes", type=int, default=None, help="Held-out scenes to measure (default: the recipe's).")
    def train_cmd(seed: int | None, vision_steps: int | None, steps: int | None, out: Path, threads: int,
                  eval_scenes: int | None) -> None:
        """Train the demo model from scratch, measure it on fresh scenes and save it with its card."""
        from .recipe import DEFAULT_SEED, DEFAULT_STEPS, DEFAULT_VISION_STEPS, train_demo

        kwargs = {} if eval_scenes is None else {"eval_scenes": eval_scenes}
        facts = train_demo(out, seed=DEFAULT_SEED if seed is None else seed,
                           vision_steps=DEFAULT_VISION_STEPS if vision_steps is None else vision_steps,
                           steps=DEFAULT_STEPS if steps is None else steps, threads=threads,
                           log=lambda line: click.echo(line, err=True), **kwargs)
        click.echo(json.dumps({"out": str(out), "size_bytes": facts["size_bytes"], "params": facts["params"],
                               "total_seconds": facts["total_seconds"], **facts["metrics"]}, indent=2))

    @demo.command("eval")
    @click.option("--model-dir", type=PathName(exists=True, file_okay=False, path_type=Path), default=MODEL_DIR,
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

    @demo.command("train-retrieval")
    @click.option("--seed", type=int, default=None, help="Seed of the data, new weights and order (default: the shipped head's).")
    @click.option("--steps", type=int, default=None, help="Optimizer steps (default: the shipped head's).")
    @click.option("--out", type=PathName(file_okay=False, path_type=Path), default=MODEL_DIR / "retrieval",
                  show_default=True, help="Folder to write the retrieval model, processor and model card to.")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    def train_retrieval_cmd(seed: int | None, steps: int | None, out: Path, threads: int) -> None:
        """Train the demo model's retrieval head (ITC + ITM), measure recall on fresh scenes and save it."""
        from .retrieval_recipe import DEFAULT_SEED, DEFAULT_STEPS, train_demo_retrieval

        facts = train_demo_retrieval(out, seed=DEFAULT_SEED if seed is None else seed,
                                     steps=DEFAULT_STEPS if steps is None else steps, threads=threads,
                                     log=lambda line: click.echo(line, err=True))
        click.echo(json.dumps({"out": str(out), "size_bytes": facts["size_bytes"], "params": facts["params"],
                               "train_seconds": facts["train_seconds"], "total_seconds": facts["total_seconds"],
                               **facts["metrics"]}, indent=2))

    @demo.command("eval-retrieval")
    @click.option("--model-dir", type=PathName(exists=True, file_okay=False, path_type=Path),
                  default=MODEL_DIR / "retrieval", show_default=True, help="A BLIP-2 retrieval folder (model + processor).")
    @click.option("--scenes", type=click.IntRange(min=1), default=500, show_default=True, help="Number of fresh scenes.")
    @click.option("--seed", type=int, default=None, help="Seed of the scenes (default: the shipped head's held-out seed).")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    def eval_retrieval_cmd(model_dir: Path, scenes: int, seed: int | None, threads: int) -> None:
        """Measure text->image and image->text recall@1/@5 and ITM accuracy on fresh scenes; prints JSON."""
        import torch

        from .retrieval_recipe import DEFAULT_EVAL_SEED, load_retrieval, model_fns, retrieval_recall

        torch.set_num_threads(threads)
        fns = model_fns(*load_retrieval(model_dir))
        metrics = retrieval_recall(fns.image, fns.text, match_fn=fns.match, n_scenes=scenes,
                                   seed=DEFAULT_EVAL_SEED if seed is None else seed)
        click.echo(json.dumps(metrics, indent=2))

    @demo.command("scenario")
    @click.argument("name", type=click.Choice(["vocabulary", "purple"]))
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the labels and the training run.")
    @click.option("--scenes", type=int, default=200, show_default=True, help="Held-out scenes of each kind.")
    @click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for torch.")
    def scenario_cmd(name: str, seed: int, scenes: int, threads: int) -> None:
        """Fine-tune the demo model on a labeling team's captions and measure it before and after.

        vocabulary: 32 captions calling the square a "tile" + 32 ordinary ones; purple: 128 captions
        of scenes with a colour the model never saw + 512 replayed ordinary ones. Prints JSON.
        """
        import tempfile

        import torch

        from ..host import Host
        from ..training.finetune import finetune
        from . import scenarios
        from .recipe import host_fns

        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as tmp:
            labels = (scenarios.vocabulary_labels(32, 32, seed=seed) if name == "vocabulary"
                      else scenarios.purple_labels(128, 512, seed=seed))
            data = scenarios.write_labels(Path(tmp) / "labels", labels)
            config = scenarios.vocabulary_config(seed) if name == "vocabulary" else scenarios.purple_config(seed)
            result = finetune("demo", data, config, out=Path(tmp) / "adapter", log=lambda line: click.echo(line, err=True))
            with Host.load("demo") as host:
                caption, _ = host_fns(host)
                before = scenarios.measure(caption, name, n=scenes)
                host.use_adapter(str(Path(tmp) / "adapter"))
                after = scenarios.measure(caption, name, n=scenes)
        train = result.report["train"]
        click.echo(json.dumps({"scenario": name, "seed": seed, "labels": len(labels), "before": before, "after": after,
                               "new_words": result.report["new_words"], "train_seconds": round(train["seconds"], 1),
                               "trainable_params": train["trainable_params"], "total_params": train["total_params"]},
                              indent=2))
