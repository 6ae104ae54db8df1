"""What a job reads: SOURCE arguments become work items, and table shards become image rows.

A SOURCE is an image (a path, a URL or any reference an image source plugin claims), a folder (its
images and table shards, recursively), a table shard (``.parquet`` or ``.jsonl`` with an ``image``
column), or a URI of a filesystem pyarrow reads (``s3://``, ``gs://``, ``hdfs://``...), file or folder.
The driver lists sources into :class:`Item` rows; shards are read later, on the cluster
(:func:`expand`), so a collection of any size is never read on one machine. A shard that cannot
be read becomes one row with an ``error``, never a failed job.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from blip2plugins.errors import OptionError
from blip2plugins.images import is_image_file, short_reason

#: File suffixes read as tables of images.
TABLE_SUFFIXES = (".parquet", ".jsonl")
#: URI schemes listed and read through pyarrow's filesystems.
FILESYSTEM_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


@dataclass(frozen=True)
class Item:
    """One unit of listed work: an image reference, or a table shard to expand (``table``)."""

    ref: str
    table: bool = False


def is_filesystem_uri(ref: str) -> bool:
    """Whether ``ref`` is a URI of one of the :data:`FILESYSTEM_SCHEMES`."""
    scheme, sep, _ = ref.partition("://")
    return bool(sep) and scheme.lower() in FILESYSTEM_SCHEMES


def is_table(name: str) -> bool:
    """Whether a file name is a table shard, by its suffix."""
    return name.lower().endswith(TABLE_SUFFIXES)


def plan(sources: Sequence[str], files_from: Iterable[str] = ()) -> list[Item]:
    """The work items of the SOURCE arguments, then of ``files_from``'s lines (each an image or a
    shard), in order, each reference once. Raises :class:`OptionError` naming a SOURCE argument that
    names nothing (a listed file that is missing becomes a row with an error instead)."""
    items: list[Item] = []
    for source in sources:
        items += _listed(source)
    items += [Item(line, is_table(line)) for line in files_from]
    return list(dict.fromkeys(items))


def _listed(source: str) -> list[Item]:
    if is_filesystem_uri(source):
        return _listed_uri(source)
    if "://" in source or (not os.path.exists(source) and ":" in source and not os.path.isabs(source)):
        return [Item(source)]  # a URL, or a reference an image source plugin claims
    if os.path.isdir(source):
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names
                       if is_image_file(name) or is_table(name))
        if not found:
            raise OptionError(f"SOURCE {source!r} is a folder without images or table shards")
        return [Item(path, is_table(path)) for path in found]
    if os.path.isfile(source):
        return [Item(source, is_table(source))]
    raise OptionError(f"SOURCE {source!r} does not exist")


def _listed_uri(uri: str) -> list[Item]:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise OptionError(f"SOURCE {uri!r} does not exist")
        if info.type == fs.FileType.File:
            return [Item(uri, is_table(path))]
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"SOURCE {uri!r} cannot be listed: {short_reason(exc)}") from None
    scheme = uri.split("://", 1)[0] + "://"
    names = sorted(info.path for info in found if info.type == fs.FileType.File
                   and (is_image_file(info.base_name) or is_table(info.base_name)))
    if not names:
        raise OptionError(f"SOURCE {uri!r} is a folder without images or table shards")
    return [Item(scheme + name, is_table(name)) for name in names]


def expand(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The image rows of one work item (``ref``, ``table``): ``image`` (a reference, or
    ``SHARD#ROW`` for image bytes stored in a table), ``data`` (those bytes, else ``None``) and
    ``error`` (why the row cannot be read, else ``None``)."""
    ref = str(row["ref"])
    if not row["table"]:
        yield {"image": ref, "data": None, "error": None}
        return
    try:
        column = _read_image_column(ref)
    except Exception as exc:
        yield {"image": ref, "data": None, "error": f"unreadable table shard: {short_reason(exc)}"}
        return
    for index, value in enumerate(column):
        name = f"{ref}#{index}"
        if isinstance(value, (bytes, bytearray)):
            yield {"image": name, "data": bytes(value), "error": None}
        elif isinstance(value, str) and value:
            yield {"image": _beside(ref, value), "data": None, "error": None}
        else:
            yield {"image": name, "data": None, "error": f"the image column holds {type(value).__name__}, "
                                                        "not a reference or image bytes"}


def _read_image_column(shard: str) -> list[Any]:
    """The ``image`` column of a Parquet or JSONL shard, as Python values."""
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
    from pyarrow import fs

    if is_filesystem_uri(shard):
        filesystem, path = fs.FileSystem.from_uri(shard)
    else:
        filesystem, path = fs.LocalFileSystem(), os.path.abspath(shard)
    if shard.lower().endswith(".parquet"):
        table = pq.read_table(path, filesystem=filesystem)
    else:
        with filesystem.open_input_stream(path) as stream:
            table = pa_json.read_json(stream)
    if "image" not in table.column_names:
        raise ValueError(f"it has no 'image' column (columns: {', '.join(table.column_names) or 'none'})")
    return table.column("image").to_pylist()


def _beside(shard: str, ref: str) -> str:
    """A reference read from ``shard``: a relative path is relative to the shard's folder."""
    if "://" in ref or os.path.isabs(ref) or (":" in ref and not os.path.exists(ref)):
        return ref
    if is_filesystem_uri(shard):
        return posixpath.join(posixpath.dirname(shard), ref)
    return os.path.join(os.path.dirname(shard), ref)
