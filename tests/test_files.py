"""Atomic writes never replace what is not a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from blip2plugins.files import write_atomic


def test_write_atomic_replaces_a_file_or_a_link(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(link, b"three")  # the link itself is replaced, its target left alone
    assert not link.is_symlink() and link.read_bytes() == b"three" and target.read_bytes() == b"two"


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_write_atomic_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:  # a private copy of /dev/null: replacing the real one as root broke the whole machine
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    before = os.lstat(path).st_mode
    with pytest.raises(OSError, match="exists and is not a regular file"):
        write_atomic(path, b"data")
    assert os.lstat(path).st_mode == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no temporary file left
