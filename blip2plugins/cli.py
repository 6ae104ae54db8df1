"""The ``blip2`` command. Every subcommand comes from a plugin's ``register_commands`` hook."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any, NoReturn

import click
from PIL import Image

from . import quiet
from .errors import Blip2Error
from .plugins import call_hook, plugin_info, serve_commands


class PluginGroup(click.Group):
    """A group whose "no such command" names the installed plugins that are not loaded, and why."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            left_out = [f"{i.name} ({i.reason})" for i in plugin_info() if i.status != "loaded"]
            if left_out:
                ctx.fail(f"No such command {name!r}. Installed plugins that are not loaded: {'; '.join(left_out)}")
        return super().resolve_command(ctx, args)


class ServeGroup(PluginGroup):
    """``blip2 serve``: one subcommand per registered serve command, looked up when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(serve_commands())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        served = serve_commands().get(cmd_name)
        return served.command if served else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        served = sorted(serve_commands().items())
        limit = formatter.width - 6 - max((len(name) for name, _ in served), default=0)
        rows = [(name, s.description or s.command.get_short_help_str(limit)) for name, s in served]
        with formatter.section("Servers"):
            formatter.write_dl(rows or [("(none)", "no plugin registers a serve command")])


def build_cli() -> click.Group:
    """The ``blip2`` group with the ``serve`` group and the commands of every plugin that loaded (broken
    plugins are listed by ``blip2 plugins``; any other command then refuses to run, naming them);
    raises ``PluginError`` when a built-in plugin or a ``register_commands`` implementation fails."""

    @click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(package_name="blip2plugins", prog_name="blip2")
    @click.option("-v", "--verbose", is_flag=True,
                  help=f"Show the libraries' progress bars, notices and warnings too (as {quiet.ENV}=info does).")
    def cli(verbose: bool) -> None:
        """Caption images, answer questions about them and chat with BLIP-2.

        Commands come from plugins: `blip2 plugins` lists the loaded ones.
        """
        if verbose and not quiet.verbose():
            os.environ[quiet.ENV] = "info"  # also for the processes a command starts
            logging.getLogger().setLevel(logging.INFO)

    @cli.group(cls=ServeGroup)
    def serve() -> None:
        """Serve the model to other programs (each subcommand comes from a plugin's serve command)."""

    call_hook("register_commands", cli=cli, allow_broken=True)
    return cli


class _OneLine(logging.Formatter):
    """Log records as ``blip2: level: message`` lines; the item that failed reports why, not a traceback."""

    def __init__(self) -> None:
        super().__init__("blip2: %(levelname)s: %(message)s")

    def formatException(self, ei: object) -> str:  # noqa: N802 (logging's name)
        return ""


_MAX_MESSAGE = 1000


def _fail(message: str, status: int = 2) -> NoReturn:
    """``message`` on one line of stderr, its middle cut when it is long (an input echoed whole)."""
    text = " ".join(message.split())
    if len(text) > _MAX_MESSAGE:
        text = f"{text[: _MAX_MESSAGE // 2]}...{text[-_MAX_MESSAGE // 4:]}"
    click.echo(f"blip2: error: {text}", err=True)
    sys.exit(status)


def _idle_threads_sleep() -> None:
    """Make torch's idle OpenMP threads sleep instead of spinning, unless ``OMP_WAIT_POLICY`` is set.

    The host decodes images on its loader threads while the worker runs the model; threads that
    spin between torch ops take CPU from the decoders (measured on 2 cores: 9.0 vs 5.7 ms of CPU an
    image). OpenMP reads the setting once, when torch loads: this must run before torch is imported.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``blip2`` console script."""
    _idle_threads_sleep()
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine())
    logging.basicConfig(level=quiet.log_level(), handlers=[handler])
    # The loader enforces its own pixel cap and says so in one line; Pillow's warning would only add two.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        cli = build_cli()
    except Blip2Error as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # click reports interrupts only once a command runs
        click.echo("Aborted!", err=True)
        sys.exit(130)
    interrupted = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        interrupted.set()
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if SIGINT is ignored (a background job)
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        try:
            cli.main(args=args, prog_name="blip2")
        finally:
            sys.stdout.flush()  # a full disk shows here, not in an "Exception ignored" at exit
    except SystemExit:
        if interrupted.is_set():  # click printed "Aborted!" and exits 1: say it was an interrupt
            sys.exit(130)
        raise
    except Blip2Error as exc:  # a command let one through: still one line, never a traceback
        _fail(str(exc))
    except OSError as exc:  # e.g. a full disk under stdout (click itself ends quietly on a closed pipe)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        except (OSError, ValueError):  # a stdout without a file descriptor (io.UnsupportedOperation is both)
            pass
        _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc), status=1)


if __name__ == "__main__":
    main()
