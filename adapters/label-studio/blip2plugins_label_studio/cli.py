"""``blip2 serve label-studio``: the backend on uvicorn, with one or more worker processes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
from blip2plugins.cli_options import PathName, host_options, model_option, precision_options
from blip2plugins.types import ImageLimits

from .settings import (ENV_API_KEY, ENV_AUTH_PASS, ENV_AUTH_USER, ENV_SETTINGS, ENV_URL, Settings, default_model_dir,
                       read_recipe_file)

_SECRETS = f"Secrets come from the environment only: {ENV_API_KEY}, {ENV_AUTH_USER} and {ENV_AUTH_PASS}."


@click.command("label-studio", epilog=_SECRETS)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9090, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@model_option(default="demo")
@precision_options
@click.option("--model-dir", envvar="MODEL_DIR", show_envvar=True, type=PathName(file_okay=False, path_type=Path),
              help=f"Folder for the label stores, training runs and image cache.  [default: {default_model_dir()}]")
@click.option("--adapter-store", envvar="BLIP2_ADAPTER_STORE", show_envvar=True,
              type=PathName(file_okay=False, path_type=Path),
              help="Adapter store shared by the workers (and `blip2 adapters`).  [default: the core's store]")
@click.option("--workers", envvar="WORKERS", show_envvar=True, default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes; each loads the model and follows the adapter store's current version.")
@click.option("--label-studio-url", envvar=ENV_URL, show_envvar=True, metavar="URL",
              help="Label Studio's base URL: task images and the project export are fetched from it.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST[:PORT]",
              help="Also fetch task images from this host (without credentials); repeatable; '*' allows any.")
@click.option("--train-config", envvar="BLIP2_LS_TRAIN_CONFIG", show_envvar=True, metavar="FILE|MODULE:ATTR",
              help="Training recipe: a JSON file of FinetuneConfig fields, or a FinetuneConfig object to import.")
@click.option("--train-every", envvar="BLIP2_LS_TRAIN_EVERY", show_envvar=True, default=0, show_default=True,
              type=click.IntRange(0), help="Queue a training run every N new labels (0: only on Start training).")
@click.option("--refresh-predictions", envvar="BLIP2_LS_REFRESH_PREDICTIONS", show_envvar=True, is_flag=True,
              help="After a new version is promoted, have Label Studio retrieve predictions for the tasks not labeled "
                   "yet (with LABEL_STUDIO_API_KEY), so they show the new version's at once.")
@click.option("--train-threads", default=1, show_default=True, type=click.IntRange(1),
              help="Torch threads of a training run (it also runs at a lower priority than serving).")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(1), help="Host batch size.")
@host_options
@click.option("--max-new-tokens", type=click.IntRange(1), help="Longest caption or answer, in tokens.")
@click.option("--max-body-mb", default=32, show_default=True, type=click.IntRange(1), help="Largest request body.")
@click.option("--predict-wait", default=90.0, show_default=True, type=click.FloatRange(0),
              help="Seconds /predict waits for a model that is still loading (Label Studio gives up at 100).")
@click.option("--download-timeout", default=ImageLimits.download_timeout, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a task image's whole download may take.")
@click.option("--max-downloads", default=16, show_default=True, type=click.IntRange(1),
              help="Task images downloaded at once (the others wait for a free slot).")
@click.option("--max-predictions", default=4, show_default=True, type=click.IntRange(1),
              help="Predictions generating on the host at once (the others wait, their images fetched).")
@click.option("--log-level", envvar="LOG_LEVEL", show_envvar=True, default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def serve(host: str, port: int, workers: int, model_dir: Path | None, adapter_store: Path | None,
          allow_hosts: tuple[str, ...], max_body_mb: int, log_level: str, **options: object) -> None:
    """Serve the model as a Label Studio ML backend (health, setup, predict, webhook, versions, metrics).

    Connect it in Label Studio under Project > Settings > Model with this server's URL. Every TextArea
    bound to an Image gets a caption; a TextArea with a question="..." attribute gets the answer.
    """
    import uvicorn

    from .errors import SettingsError

    try:
        settings = Settings(**options, model_dir=str(model_dir or default_model_dir()),  # type: ignore[arg-type]
                            adapter_store=str(adapter_store) if adapter_store else None, allow_hosts=allow_hosts,
                            max_body_bytes=max_body_mb * 1024 * 1024, log_level=log_level.lower())
        Settings.basic_auth()
        _check_recipe_file(settings.train_config)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if not settings.label_studio_url:
        click.echo(f"blip2: warning: {ENV_URL} is not set: images on Label Studio cannot be fetched", err=True)
    common = {"host": host, "port": port, "log_level": settings.log_level, "timeout_graceful_shutdown": 15}
    if workers == 1:
        from .app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    os.environ[ENV_SETTINGS] = settings.to_json()
    with tempfile.TemporaryDirectory(prefix="blip2-ls-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        app = "blip2plugins_label_studio.app:create_app"
        uvicorn.run(app, factory=True, workers=workers, **common)  # type: ignore[arg-type]


def _check_recipe_file(spec: str | None) -> None:
    """Fail early on a recipe file that is missing or not JSON (its fields are checked when a run starts,
    since that needs the training modules, which are slow to import)."""
    if spec is not None and not (":" in spec and not Path(spec).exists()):
        read_recipe_file(spec)
