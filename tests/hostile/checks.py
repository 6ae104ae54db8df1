"""What every hostile case asserts: only ``Blip2Error`` subclasses with a one-line message from the API,
no traceback and an exit status in {0, 1, 2} from the CLI, bounded time everywhere."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from click.testing import CliRunner

from blip2plugins.errors import Blip2Error

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BLIP2 = str(Path(sys.executable).with_name("blip2"))
MAX_MESSAGE = 2000  # a one-line error that echoes a megabyte of input is not one line a person can read


def short(value: Any, limit: int = 300) -> str:
    try:
        text = repr(value)
    except ValueError:  # holds an int too long to print
        if isinstance(value, int):
            return f"<int of about {value.bit_length() * 30103 // 100000} digits>"
        return f"<{type(value).__name__} holding a huge int>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def assert_message(message: str, what: str) -> None:
    assert message.strip(), f"{what}: empty error message"
    assert "\n" not in message.strip(), f"{what}: multi-line error message: {short(message)}"
    assert "Traceback" not in message, f"{what}: traceback in the message: {short(message)}"
    assert len(message) <= MAX_MESSAGE, f"{what}: error message of {len(message)} chars: {short(message)}"


def api(call: Callable[[], Any], what: str) -> Any:
    """Run ``call``: it may return, or raise a Blip2Error with a one-line message; anything else fails."""
    try:
        value = call()
    except Blip2Error as exc:
        assert_message(str(exc), what)
        return exc
    except Exception as exc:  # noqa: BLE001 - the point of the suite
        raise AssertionError(f"{what}: raised {type(exc).__module__}.{type(exc).__name__}, not a Blip2Error: "
                             f"{short(str(exc))}") from exc
    return value


def results(value: Any, what: str) -> None:
    """Per-item errors of a list call (or one Result) must be one-line messages too."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        error = getattr(item, "error", None)
        if error:
            assert_message(str(error), what)


# -- the command line, in-process ---------------------------------------------------------------------------

@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    args: Sequence[str]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(args: Sequence[str], *, stdin: str | bytes | None = None, env: Mapping[str, str | None] | None = None) -> CliRun:
    """``blip2 ARGS`` through :func:`blip2plugins.cli.main` (what the console script runs), in-process."""
    from blip2plugins import cli as cli_module

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigint = signal.getsignal(signal.SIGINT)
    runner = CliRunner()
    exception: BaseException | None = None
    code = 0
    with runner.isolation(input=stdin, env={"BLIP2_MODEL": None, **(env or {})}) as (out, err, _):
        try:
            cli_module.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001
            exception, code = exc, -1
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            signal.signal(signal.SIGINT, sigint)
        stdout = out.getvalue().decode("utf-8", "replace")
        stderr = err.getvalue().decode("utf-8", "replace")
    return CliRun(code, stdout, stderr, exception, list(args))


def assert_cli_clean(run: CliRun, what: str = "", codes: Sequence[int] = (0, 1, 2)) -> None:
    label = what or " ".join(short(a, 60) for a in run.args)
    if run.exception is not None:
        import traceback

        tb = "".join(traceback.format_exception(run.exception))[-1500:]
        raise AssertionError(f"blip2 {label}: raised {type(run.exception).__name__}: {short(str(run.exception))}\n{tb}")
    assert "Traceback" not in run.output, f"blip2 {label}: traceback printed:\n{run.output[-2500:]}"
    assert run.code in codes, f"blip2 {label}: exit status {run.code}:\n{run.output[-1500:]}"
    if run.code != 0:
        errors = [line for line in run.stderr.splitlines() if line.startswith(("blip2:", "Error:"))]
        assert errors, f"blip2 {label}: exit {run.code} without an error line:\n{run.output[-1500:]}"
        for line in errors:
            assert len(line) <= MAX_MESSAGE, f"blip2 {label}: error line of {len(line)} chars: {short(line)}"


# -- subprocesses, bounded ------------------------------------------------------------------------------------

@dataclass
class Proc:
    code: int | None  # None: killed at the timeout (a hang)
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _limits(memory: int | None, file_size: int | None) -> Callable[[], None]:
    def apply() -> None:
        os.setsid()
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    return apply


def run(args: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None, memory: int | None = 6 << 30, file_size: int | None = None) -> Proc:
    """Run ``args`` in its own session with a memory cap; on ``timeout`` kill the whole group (code None)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("BLIP2_MODEL", None)
    started = time.monotonic()
    process = subprocess.Popen(list(args), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd,
                               preexec_fn=_limits(memory, file_size))
    try:
        out, err = process.communicate(stdin, timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        code = None
    return Proc(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - started)


def blip2(*args: str, timeout: float = 60, **kwargs: Any) -> Proc:
    return run([BLIP2, *args], timeout=timeout, **kwargs)


def python(code: str, *, timeout: float = 60, **kwargs: Any) -> Proc:
    """Run ``code`` in a fresh interpreter (for inputs that may block, never end, or crash the process)."""
    return run([PYTHON, "-c", textwrap.dedent(code)], timeout=timeout, cwd=str(REPO), **kwargs)


def assert_proc_clean(proc: Proc, what: str, codes: Sequence[int] = (0, 1, 2)) -> None:
    assert proc.code is not None, f"{what}: hung (killed after {proc.seconds:.0f} s):\n{proc.output[-1500:]}"
    assert proc.code >= 0, f"{what}: died of signal {-proc.code}:\n{proc.output[-1500:]}"
    assert "Traceback" not in proc.output, f"{what}: traceback:\n{proc.output[-2500:]}"
    assert proc.code in codes, f"{what}: exit status {proc.code}:\n{proc.output[-1500:]}"


API_CHILD = """
import sys
from blip2plugins.errors import Blip2Error
try:
    value = ({call})
except Blip2Error as exc:
    message = str(exc)
    ok = bool(message.strip()) and "\\n" not in message.strip() and len(message) <= {limit}
    print(("BLIP2ERROR " if ok else "BADMESSAGE ") + message[:300].replace("\\n", "\\\\n"))
    sys.exit(0 if ok else 3)
print("RETURNED " + repr(value)[:300])
"""


def api_isolated(setup: str, call: str, what: str, *, timeout: float = 30, memory: int | None = 2 << 30) -> Proc:
    """Run ``call`` (an expression, after ``setup``) in a subprocess: it must return or raise a one-line
    Blip2Error within ``timeout`` seconds and ``memory`` bytes, and never crash."""
    code = textwrap.dedent(setup) + "\n" + API_CHILD.format(call=call, limit=MAX_MESSAGE)
    proc = python(code, timeout=timeout, memory=memory)
    assert proc.code is not None, f"{what}: hung (killed after {proc.seconds:.0f} s):\n{proc.output[-1500:]}"
    assert proc.code == 0, f"{what}: exit {proc.code}:\n{proc.output[-2000:]}"
    return proc
