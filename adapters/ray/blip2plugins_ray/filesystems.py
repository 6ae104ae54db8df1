"""An image source for URIs of the filesystems pyarrow reads (``s3://``, ``gs://``, ``hdfs://``...),
so the host loads such images anywhere: in ``blip2 ray`` jobs and in ``blip2 caption`` alike."""

from __future__ import annotations

from blip2plugins.errors import ImageError
from blip2plugins.images import short_reason
from blip2plugins.types import ImageLimits

from .sources import is_filesystem_uri


def load(ref: str, limits: ImageLimits) -> bytes:
    """The bytes of the file ``ref`` names, at most ``limits.max_bytes``."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(ref)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read(limits.max_bytes + 1)
    except Exception as exc:
        raise ImageError(ref, f"cannot be read: {short_reason(exc)}") from None
    if len(data) > limits.max_bytes:
        raise ImageError(ref, f"larger than {limits.max_bytes} bytes")
    return data


def claims(ref: str) -> bool:
    return is_filesystem_uri(ref)
