"""The one image loader: turns any image input into a checked RGB :class:`PIL.Image.Image`.

Every input (a path, a string claimed by an :class:`~blip2plugins.types.ImageSource`, bytes, a
binary file object or a PIL image) goes through the same checks: a byte cap, a pixel cap read from
the header before decoding, a full decode, EXIF orientation and conversion to RGB. Every failure is
an :class:`~blip2plugins.errors.ImageError` naming the input and one reason.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import stat
from typing import IO, Iterable, Sequence, Union, cast

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .types import ImageLimits, ImageSource

__all__ = ["ImageInput", "describe", "load_image", "printable", "read_limited", "read_path", "short_reason"]

#: Anything :func:`load_image` accepts.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image.Image]

_MAX_DESCRIPTION = 200
_CHUNK = 1024 * 1024
# Opening never blocks (a FIFO waits for a writer otherwise) nor makes a terminal ours; reads are unaffected.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
_KINDS = [(stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device")]
_SURROGATES = re.compile("[\ud800-\udfff]")
# ``scheme://`` with a scheme of two letters or more, so that ``C://x`` stays a Windows path.
_SCHEME_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+://)[^/?#@]*@")
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_16_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# What is left to decode once file objects have been read.
_Decodable = Union[Image.Image, bytes, bytearray, memoryview]


def describe(source: object) -> str:
    """A short, printable description of an image input, for error messages.

    Paths and URLs as given (passwords in URLs masked, cut to about 200 characters),
    ``data:image/png;base64,... (N bytes)`` for data URIs, ``<bytes: N>``, ``<file object>``,
    ``<PIL image>``; always one line of valid UTF-8 (:func:`printable`).
    """
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, (bytes, bytearray)):
        return f"<bytes: {len(source)}>"
    if isinstance(source, memoryview):
        return f"<bytes: {source.nbytes}>"
    if isinstance(source, os.PathLike):
        source = os.fsdecode(os.fspath(source))
    if isinstance(source, str):
        if source[:5].lower() == "data:":
            header, comma, payload = source.partition(",")
            text = f"{header[:60]},... ({len(payload)} bytes)" if comma else f"data:... ({len(source)} bytes)"
        else:
            text = _USERINFO.sub(r"\1***@", source)
        text = printable(text)
        if len(text) <= _MAX_DESCRIPTION:
            return text
        half = (_MAX_DESCRIPTION - 3) // 2  # keep both ends: the file name stays in sight
        return text[:half] + "..." + text[half + 3 - _MAX_DESCRIPTION:]
    if hasattr(source, "read"):
        return "<file object>"
    return f"<{type(source).__name__}>"


def printable(text: str, *, controls: bool = True) -> str:
    """``text`` as valid UTF-8: bytes that were not UTF-8 (the surrogate escapes of ``os.fsdecode``) as
    ``\\xNN`` and, with ``controls``, other unprintable characters as escapes (``\\n``, ``\\t``), so that
    it prints as one line. Without ``controls`` (for JSON, which escapes them itself) only the bytes."""
    if controls:
        return text if text.isprintable() else "".join(c if c.isprintable() else _escape(c) for c in text)
    return _SURROGATES.sub(lambda match: _escape(match.group()), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else ascii(char)[1:-1]


def load_image(
    source: ImageInput,
    *,
    limits: ImageLimits | None = None,
    sources: Sequence[ImageSource] | None = None,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Load ``source`` as an RGB image, or raise :class:`ImageError`.

    A string naming an existing local file is that file; any other string is given to the first of
    ``sources`` (default: every registered image source) that claims it; a string no source claims is
    a local path, unless it looks like ``scheme://...``.
    Transparent images are composited on white; animated images give their first frame.
    ``draft=(width, height)`` lets a JPEG decode at a reduced scale (1/2, 1/4 or 1/8, by DCT scaling)
    that still covers that size: several times faster for large photos, with slightly different pixels.
    """
    limits = limits or ImageLimits()
    description = describe(source)
    if isinstance(source, str):
        loaded = _load_string(source, description, limits, sources)
    elif isinstance(source, os.PathLike):
        loaded = read_path(source, limits.max_bytes, description)
    elif isinstance(source, (Image.Image, bytes, bytearray, memoryview)):
        loaded = source
    elif hasattr(source, "read"):
        loaded = read_limited(source, limits.max_bytes, description)
    else:
        raise ImageError(description, f"unsupported input type {type(source).__name__!r}")
    return _decode(loaded, description, limits, draft)


def is_image_file(name: str) -> bool:
    """Whether a file name has an extension Pillow can open."""
    Image.init()
    return Image.registered_extensions().get(os.path.splitext(name)[1].lower()) in Image.OPEN


def folder_images(folder: str) -> list[str]:
    """The image files under ``folder`` (by extension, recursively), sorted, joined onto ``folder``."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if is_image_file(name))


def expand_folders(sources: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``sources`` with each folder replaced by its image files (:func:`folder_images`), other
    references kept as given; and ``(folder, reason)`` for the folders without image files."""
    refs: list[str] = []
    empty: list[tuple[str, str]] = []
    for source in sources:
        found = folder_images(source) if os.path.isdir(source) else [source]
        if not found:
            empty.append((source, "no image files in this folder"))
        refs += found
    return refs, empty


def read_limited(stream: IO[bytes], max_bytes: int, source: str) -> bytes:
    """Read a binary stream to its end, but never more than ``max_bytes`` + 1 bytes.

    Raises :class:`ImageError` (with ``source`` as its description) when the stream is longer than
    ``max_bytes``, times out, is in text mode, or fails to read.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        try:
            chunk = stream.read(min(_CHUNK, max_bytes + 1 - size))
        except TimeoutError as exc:
            raise ImageError(source, "timed out") from exc
        except Exception as exc:
            raise ImageError(source, f"read failed: {short_reason(exc)}") from exc
        if isinstance(chunk, str):
            raise ImageError(source, "not a binary file (opened in text mode)")
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise ImageError(source, f"too large (over the limit of {max_bytes} bytes)")
    return b"".join(chunks)


def read_path(path: str | os.PathLike[str], max_bytes: int, source: str) -> bytes:
    """Read a local file, refusing missing files, anything but a regular file (directories, named pipes,
    devices: never opened for a blocking read), empty files and files over ``max_bytes``."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(source, "is a directory")
            if not stat.S_ISREG(info.st_mode):
                kind = next((name for test, name in _KINDS if test(info.st_mode)), "special")
                raise ImageError(source, f"not a regular file ({kind})")
            if info.st_size > max_bytes:
                raise ImageError(source, f"too large ({info.st_size} bytes > limit {max_bytes})")
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as file:
            data = read_limited(file, max_bytes, source)
    except FileNotFoundError as exc:
        raise ImageError(source, "file not found") from exc
    except PermissionError as exc:
        reason = "is a directory" if os.path.isdir(path) else "permission denied"
        raise ImageError(source, reason) from exc
    except OSError as exc:
        raise ImageError(source, f"cannot open: {short_reason(exc)}") from exc
    except ValueError as exc:  # e.g. a NUL character in the path
        raise ImageError(source, f"invalid path: {exc}") from exc
    if not data:
        raise ImageError(source, "empty file")
    return data


def _load_string(
    ref: str, description: str, limits: ImageLimits, sources: Sequence[ImageSource] | None
) -> _Decodable:
    if os.path.lexists(ref):  # an existing file is that file, even if named like a URL (``file:x.png``)
        return read_path(ref, limits.max_bytes, description)
    if sources is None:
        from .plugins import image_sources

        sources = image_sources()
    for image_source in sources:
        try:
            claimed = image_source.claims(ref)
        except Exception as exc:
            raise ImageError(description, f"image source {image_source.name!r} failed to say whether it "
                                          f"handles it: {short_reason(exc)}") from exc
        if not claimed:
            continue
        try:
            loaded = image_source.load(ref, limits)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(description, f"image source {image_source.name!r} failed: {short_reason(exc)}") from exc
        if not isinstance(loaded, (Image.Image, bytes, bytearray, memoryview)):
            if not hasattr(loaded, "read"):
                raise ImageError(
                    description, f"image source {image_source.name!r} returned {type(loaded).__name__}"
                )
            stream = loaded
            try:  # a file object handed over by a source is ours to close
                loaded = read_limited(stream, limits.max_bytes, description)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        return loaded
    match = _SCHEME_URL.match(ref)
    if match:
        raise ImageError(description, f"unsupported scheme {match.group(1).lower()!r}")
    return read_path(ref, limits.max_bytes, description)


def _decode(loaded: _Decodable, description: str, limits: ImageLimits, draft: tuple[int, int] | None = None) -> Image.Image:
    if isinstance(loaded, Image.Image):
        image = loaded
    else:
        data = bytes(loaded)
        if not data:
            raise ImageError(description, "empty (0 bytes)")
        if len(data) > limits.max_bytes:
            raise ImageError(description, f"too large ({len(data)} bytes > limit {limits.max_bytes})")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageError(description, _not_an_image(data)) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(description, _bomb_reason(exc)) from exc
        except Exception as exc:
            raise ImageError(description, "truncated or corrupt image") from exc
    width, height = image.size
    if not width or not height:
        raise ImageError(description, f"empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(description, f"too many pixels ({width}x{height} > limit {limits.max_pixels})")
    if draft is not None and image.format == "JPEG" and not isinstance(loaded, Image.Image):
        side = max(draft)  # EXIF rotation comes later: cover the size either way round
        image.draft("RGB", (side, side))
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(description, _bomb_reason(exc)) from exc
    except Exception as exc:
        raise ImageError(description, "truncated or corrupt image") from exc
    ours = not isinstance(loaded, Image.Image)  # decoded here: no caller holds it, so change it in place
    try:
        if ours:
            ImageOps.exif_transpose(image, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)  # a copy: the caller's image stays as it was
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        if not ours:
            image = image.copy()
    try:
        return _to_rgb(image)
    except (ValueError, OSError) as exc:
        raise ImageError(description, f"unsupported image mode {image.mode!r}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: transparency over white, high bit depths scaled to 8 bits.

    An RGB image is returned as it is (the caller owns a copy already).
    """
    if image.mode in _TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if image.mode in _16_BIT_MODES or image.mode in ("I", "F"):
        scale = 255 / 65535 if image.mode in _16_BIT_MODES else _scale_to_8_bit(image)
        if image.mode != "F":
            image = image.convert("I")
        return image.point(lambda value: value * scale + 0.5).convert("L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> float:
    """The factor that maps a 32-bit integer or float image onto 0..255, guessed from its range."""
    _, high = cast("tuple[float, float]", image.getextrema())  # one band
    if image.mode == "F" and high <= 1.0:
        return 255.0
    if high <= 255:
        return 1.0
    if high <= 65535:
        return 255 / 65535
    return 255 / high


def _not_an_image(data: bytes) -> str:
    """``"not an image"``, with what the bytes look like when they are recognisably text."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<head" in head or b"<body" in head:
        return "not an image (got text/html)"
    if head.startswith(b"<svg") or b"<svg" in head:
        return "not an image (got SVG, which is not supported)"
    if b"\0" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head)  # tolerates a character cut at the end
        except UnicodeDecodeError:
            return "not an image"
        return "not an image (got text)"
    return "not an image"


def _bomb_reason(exc: Exception) -> str:
    """Pillow's own decompression-bomb refusal, worded like ours."""
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if match is None:
        return "too many pixels (decompression bomb)"
    return f"too many pixels ({match.group(1)} pixels > Pillow's limit {match.group(2)})"


def short_reason(exc: object) -> str:
    """A one-line cause: an OS error's text without its errno, else the message (or the exception itself)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    return text if len(text) <= 120 else text[:117] + "..."
