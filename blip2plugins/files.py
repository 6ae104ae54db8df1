"""Atomic file writes (what is written appears whole or not at all, and survives a crash) and the
exclusive lock that lets several processes update one file or folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

_MAX_NAME = 255
"""Bytes in a file name (ext4, XFS, APFS...)."""
_TEMP_TAG = 32
"""Hex digits that make each temporary file's name unique: ``.NAME.TAG.tmp``."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: write aside, fsync, ``os.replace``, fsync the folder.

    The temporary file is locked while it is written, so :func:`remove_stale_temps` can tell it from
    one whose writer died. Anything at ``path`` but a regular file or a symbolic link (a device such
    as ``/dev/null``, a named pipe, a folder) is refused with an ``OSError``, never replaced.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise OSError(errno.EEXIST, "exists and is not a regular file", str(path))
    tmp, out = _locked_temp(path)
    try:
        with out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files that writes of ``path`` left behind when their process died (those
    no writer holds locked; a live writer's is left alone); returns them."""
    stem = re.escape(sibling(path, "." + "0" * _TEMP_TAG + ".tmp").name[: -_TEMP_TAG - 4])
    try:
        names = [name for name in os.listdir(path.parent) if re.fullmatch(stem + rf"[0-9a-f]{{{_TEMP_TAG}}}\.tmp", name)]
    except OSError:
        return []
    removed = []
    for name in names:
        stale = path.parent / name
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # renamed into place meanwhile, or not a file of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(stale, fd):
                stale.unlink()
                removed.append(stale)
        except OSError:
            continue  # BlockingIOError: its writer is alive
        finally:
            os.close(fd)
    return removed


def _locked_temp(path: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file beside ``path``, open for writing and locked."""
    while True:
        tmp = sibling(path, f".{uuid.uuid4().hex}.tmp")
        out = open(tmp, "xb")
        fcntl.flock(out, fcntl.LOCK_EX)
        if _same_file(tmp, out.fileno()):
            return tmp, out
        out.close()  # removed as stale between its creation and the lock: take another name


def sibling(path: Path, suffix: str) -> Path:
    """``.NAME{suffix}`` beside ``path`` (its lock or a temporary file); ``NAME`` is the SHA-256 of
    ``path``'s name when the result would be longer than a file name may be."""
    name = os.fsencode(path.name)
    if len(name) + len(os.fsencode(suffix)) + 1 > _MAX_NAME:
        return path.with_name(f".{hashlib.sha256(name).hexdigest()}{suffix}")
    return path.with_name(f".{path.name}{suffix}")


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except OSError:
        return False


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new, renamed or removed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``lock_file`` (created if missing), waiting for it; closing
    the file at the end releases it, also when the process dies."""
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
