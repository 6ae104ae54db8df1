"""Run ``blip2 ARGS`` and SIGKILL this very process at the K-th file-system operation (before or after it).

Usage: python killpoint.py K before|after COUNT_FILE -- ARGS...   (K = 0: never kill; count the operations
into COUNT_FILE at exit). The operations are those that make a write durable or visible: opening a file
for writing, fsync, rename/replace, mkdir, unlink, rmdir, rmtree.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import sys

target, when, count_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
args = sys.argv[sys.argv.index("--") + 1:]
seen = 0


def _tick(phase: str) -> None:
    global seen
    if phase == "before":
        seen += 1
    if target and seen == target and phase == when:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner: object, name: str, writes_only: bool = False) -> None:
    original = getattr(owner, name)

    def wrapper(*a: object, **k: object) -> object:
        if writes_only:
            mode = a[1] if len(a) > 1 else k.get("mode", "r")
            if isinstance(mode, str) and not any(c in mode for c in "wax+"):
                return original(*a, **k)
        _tick("before")
        result = original(*a, **k)
        _tick("after")
        return result

    setattr(owner, name, wrapper)


for name in ("fsync", "replace", "rename", "mkdir", "unlink", "rmdir"):
    _wrap(os, name)
_wrap(shutil, "rmtree")
_wrap(builtins, "open", writes_only=True)
_wrap(io, "open", writes_only=True)


def _report() -> None:
    if not target:
        with io.FileIO(count_file, "w") as out:
            out.write(str(seen).encode())


import atexit  # noqa: E402

atexit.register(_report)
from blip2plugins.cli import main  # noqa: E402

main(args)
